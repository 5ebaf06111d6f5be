"""End-to-end connection upgrades between two ConnectionUpgraders over iosim."""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.test.iosim import FakeTransport, connect
from twisted.trial.unittest import SynchronousTestCase

from aicn.p2p.keys import PrivateKey
from aicn.p2p.multistream import MultistreamError
from aicn.p2p.noise import NoiseError
from aicn.p2p.upgrade import (
    ConnectionClosedDuringUpgrade,
    ConnectionUpgrade,
    ConnectionUpgrader,
    HandshakeTimeout,
    PeerIDMismatch,
    PSKMismatch,
    UpgradeError,
)

PSK = bytes.fromhex("f504f536a912a8cf7d00adacee8ed20270c5040d961d7f3da4fccbcbec0ec48a")
OTHER_PSK = bytes(range(32))
IDENTITY = PrivateKey.generate("ed25519")
YAMUX = "/yamux/1.0.0"
MPLEX = "/mplex/6.7.0"


class RecordingMuxer:
    """Stands in for yamux: records plaintext, optionally greets on creation."""

    def __init__(self, channel, greeting=b""):
        self.channel = channel
        self.received = bytearray()
        self.lost = None
        if greeting:
            channel.write(greeting)

    def data_received(self, data):
        self.received += data

    def connection_lost(self, reason):
        self.lost = reason


def recording(greeting=b""):
    return lambda channel: RecordingMuxer(channel, greeting)


class Node:
    def __init__(self, initiator, key_type="secp256k1", clock=None, **kw):
        self.identity = PrivateKey.generate(key_type)
        kw.setdefault("muxers", {YAMUX: recording(b"hello from " + (b"dialer" if initiator else b"listener"))})
        self.protocol = ConnectionUpgrader(
            self.identity, initiator=initiator, clock=clock or Clock(), **kw
        )
        self.result = None
        self.failure = None
        self.protocol.upgraded.addCallbacks(self._ok, self._err)

    def _ok(self, channel):
        self.result = channel

    def _err(self, failure):
        self.failure = failure


def wire_up(dialer, listener, chunk=None):
    """Connect over iosim; with ``chunk``, deliver every write in pieces of that size."""
    server_io = FakeTransport(listener.protocol, isServer=True)
    client_io = FakeTransport(dialer.protocol, isServer=False)
    pump = connect(listener.protocol, server_io, dialer.protocol, client_io, greet=False)
    if chunk:
        def split_pump(debug=False, advanceClock=True):
            moved = False
            for src, dst in ((client_io, server_io), (server_io, client_io)):
                data = src.getOutBuffer() or b""
                for k in range(0, len(data), chunk):
                    dst.bufferReceived(data[k : k + chunk])
                moved = moved or bool(data)
            if moved:
                return True
            return original(debug, advanceClock)

        original = pump.pump
        pump.pump = split_pump
    pump.flush()
    return pump


class UpgradeTests(SynchronousTestCase):
    def _pair(self, dialer_kw=None, listener_kw=None, **common):
        dialer = Node(True, **{**common, **(dialer_kw or {})})
        listener = Node(False, **{**common, **(listener_kw or {})})
        return dialer, listener

    def _assert_upgraded(self, dialer, listener, pump, muxer=YAMUX):
        self.assertIsNone(dialer.failure)
        self.assertIsNone(listener.failure)
        d, l = dialer.result, listener.result
        self.assertEqual(d.remote_peer_id, listener.identity.peer_id())
        self.assertEqual(l.remote_peer_id, dialer.identity.peer_id())
        self.assertEqual(d.local_peer_id, dialer.identity.peer_id())
        self.assertEqual(d.remote_public_key, listener.identity.public_key)
        self.assertEqual((d.muxer_protocol, l.muxer_protocol), (muxer, muxer))
        self.assertEqual((d.is_initiator, l.is_initiator), (True, False))
        self.assertIs(d.transport, dialer.protocol.transport)
        # Greetings written inside the factory arrive intact, in both directions.
        self.assertEqual(bytes(l.muxer.received), b"hello from dialer")
        self.assertEqual(bytes(d.muxer.received), b"hello from listener")
        big = bytes(range(256)) * 1000
        d.write(big)
        l.writeSequence([b"a", b"b", b"c"])
        pump.flush()
        self.assertEqual(bytes(l.muxer.received), b"hello from dialer" + big)
        self.assertEqual(bytes(d.muxer.received), b"hello from listenerabc")

    def test_tcp_nodelay(self):
        """Both ends turn Nagle off, so handshake and ping frames are not held back;
        transports without ``setTcpNoDelay`` (or where it fails) still upgrade."""

        class NoDelayTransport(FakeTransport):
            no_delay = None

            def setTcpNoDelay(self, enabled):
                self.no_delay = enabled

        class BrokenNoDelayTransport(FakeTransport):
            def setTcpNoDelay(self, enabled):
                raise OSError("socket closed")

        dialer, listener = self._pair()
        server_io = NoDelayTransport(listener.protocol, isServer=True)
        client_io = BrokenNoDelayTransport(dialer.protocol, isServer=False)
        pump = connect(listener.protocol, server_io, dialer.protocol, client_io, greet=False)
        pump.flush()
        self.assertIs(server_io.no_delay, True)
        self._assert_upgraded(dialer, listener, pump)

    def test_matrix(self):
        for psk in (None, PSK):
            for key_type in ("secp256k1", "ed25519"):
                for inline in (True, False):
                    with self.subTest(psk=bool(psk), key_type=key_type, inline=inline):
                        dialer, listener = self._pair(
                            psk=psk, key_type=key_type, send_muxer_extension=inline
                        )
                        pump = wire_up(dialer, listener)
                        self._assert_upgraded(dialer, listener, pump)
                        self.assertEqual(
                            dialer.protocol._core._noise.selected_muxer, YAMUX if inline else None
                        )

    def test_split_reads(self):
        for chunk in (1, 7, 100):
            for inline in (True, False):
                dialer, listener = self._pair(psk=PSK, send_muxer_extension=inline)
                pump = wire_up(dialer, listener, chunk=chunk)
                self._assert_upgraded(dialer, listener, pump)

    def test_extension_on_one_side_only(self):
        """Whoever gets no list from the other side falls back to multistream."""
        for dialer_ext in (True, False):
            dialer, listener = self._pair(
                dialer_kw={"send_muxer_extension": dialer_ext},
                listener_kw={"send_muxer_extension": not dialer_ext},
            )
            self._assert_upgraded(dialer, listener, wire_up(dialer, listener))

    def test_muxer_preference(self):
        both = {MPLEX: recording(b"hello from dialer"), YAMUX: recording(b"hello from dialer")}
        lboth = {YAMUX: recording(b"hello from listener"), MPLEX: recording(b"hello from listener")}
        for inline in (True, False):
            dialer, listener = self._pair(
                dialer_kw={"muxers": both},
                listener_kw={"muxers": lboth},
                send_muxer_extension=inline,
            )
            # Both ways the dialer's preference wins.
            self._assert_upgraded(dialer, listener, wire_up(dialer, listener), muxer=MPLEX)

    def test_no_common_muxer(self):
        for inline, error in ((True, NoiseError), (False, MultistreamError)):
            dialer, listener = self._pair(
                dialer_kw={"muxers": {MPLEX: recording()}}, send_muxer_extension=inline
            )
            wire_up(dialer, listener)
            self.assertIsNone(dialer.result)
            self.assertIsNone(listener.result)
            failures = [dialer.failure, listener.failure]
            self.assertTrue(any(f.check(error) for f in failures), failures)
            self.assertTrue(dialer.protocol.transport.disconnected)

    def test_wrong_psk(self):
        """A side with a key fails with PSKMismatch, logged at debug level only (the
        swarm warns, rate-limited); a side without one sees bad multistream."""
        for dialer_psk, listener_psk in ((PSK, OTHER_PSK), (PSK, None), (None, PSK)):
            clock = Clock()
            dialer, listener = self._pair(
                dialer_kw={"psk": dialer_psk}, listener_kw={"psk": listener_psk}, clock=clock
            )
            with capturedLogs() as events:
                pump = wire_up(dialer, listener)
                clock.advance(10)
                pump.flush()
            for node, psk in ((dialer, dialer_psk), (listener, listener_psk)):
                self.assertIsNone(node.result)
                if psk is not None:
                    node.failure.trap(PSKMismatch)
                    self.assertIn("private network key mismatch", str(node.failure.value))
                else:
                    node.failure.trap(MultistreamError)
                self.assertTrue(node.protocol.transport.disconnected)
            lines = [e for e in events if "failed during" in e["log_format"]]
            self.assertEqual(len(lines), (dialer_psk is None) + (listener_psk is None))
            for line in lines:
                self.assertIn("peer", line)

    def test_expected_peer_mismatch(self):
        dialer, listener = self._pair(
            dialer_kw={"expected_peer": PrivateKey.generate("ed25519").peer_id()}
        )
        wire_up(dialer, listener)
        dialer.failure.trap(PeerIDMismatch)
        self.assertEqual(dialer.failure.value.actual, listener.identity.peer_id())
        listener.failure.trap(ConnectionClosedDuringUpgrade)
        self.assertTrue(dialer.protocol.transport.disconnected)

    def test_expected_peer_match(self):
        dialer, listener = self._pair()
        dialer.protocol._core.expected_peer = listener.identity.peer_id()
        self._assert_upgraded(dialer, listener, wire_up(dialer, listener))

    def test_stall_times_out(self):
        clock = Clock()
        dialer = Node(True, clock=clock, psk=PSK, handshake_timeout=5)
        silent = Protocol()
        server_io = FakeTransport(silent, isServer=True)
        client_io = FakeTransport(dialer.protocol, isServer=False)
        pump = connect(silent, server_io, dialer.protocol, client_io, greet=False)
        pump.flush()
        clock.advance(4.9)
        self.assertIsNone(dialer.failure)
        clock.advance(0.2)
        dialer.failure.trap(HandshakeTimeout)
        self.assertTrue(client_io.disconnecting)
        pump.flush()
        self.assertFalse(clock.getDelayedCalls())

    def test_garbage_is_rejected(self):
        listener = Node(False)
        io = FakeTransport(listener.protocol, isServer=True)
        listener.protocol.makeConnection(io)
        listener.protocol.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
        listener.failure.trap(MultistreamError)
        self.assertTrue(io.disconnecting)
        listener.protocol.dataReceived(b"more")  # ignored after failure
        listener.protocol.connectionLost(None)

    def test_bad_noise_frame_after_upgrade(self):
        dialer, listener = self._pair()
        pump = wire_up(dialer, listener)
        with capturedLogs() as events:
            listener.protocol.dataReceived(b"\x00\x20" + bytes(32))
        self.assertTrue(listener.protocol.transport.disconnecting)
        self.assertEqual(len(events), 1)
        pump.flush()
        self.assertIsNotNone(listener.result.muxer.lost)
        self.assertIsNotNone(dialer.result.muxer.lost)
        # Writes after the end are dropped quietly.
        listener.result.write(b"late")

    def test_connection_lost_after_upgrade(self):
        dialer, listener = self._pair(psk=PSK)
        pump = wire_up(dialer, listener)
        dialer.result.loseConnection()
        pump.flush()
        self.assertIsNotNone(dialer.result.muxer.lost)
        self.assertIsNotNone(listener.result.muxer.lost)

    def test_core_requires_muxer(self):
        self.assertRaises(ValueError, ConnectionUpgrade, PrivateKey.generate("ed25519"), True, [])


class CoreTests(SynchronousTestCase):
    def test_dialer_opening_bytes(self):
        """The dialer's first write is nonce + XSalsa20(header + /noise), as js sends."""
        from aicn.p2p.pnet import XSalsa20

        core = ConnectionUpgrade(PrivateKey.generate("ed25519"), True, [YAMUX], psk=PSK)
        first = core.start()
        self.assertEqual(len(first), 24 + 28)
        plain = XSalsa20(PSK, first[:24]).process(first[24:])
        self.assertEqual(plain, b"\x13/multistream/1.0.0\n\x07/noise\n")
        plain_core = ConnectionUpgrade(PrivateKey.generate("ed25519"), False, [YAMUX])
        self.assertEqual(plain_core.start(), b"\x13/multistream/1.0.0\n")

    @given(st.binary(max_size=400), st.booleans(), st.booleans())
    @settings(max_examples=60, deadline=None)
    def test_garbage_raises_protocol_errors_only(self, data, initiator, with_psk):
        core = ConnectionUpgrade(
            IDENTITY, initiator, [YAMUX], psk=PSK if with_psk else None
        )
        core.start()
        prefix = b"" if with_psk else b"\x13/multistream/1.0.0\n\x07/noise\n"
        try:
            core.receive(prefix + data)
        except (MultistreamError, NoiseError, UpgradeError):
            pass
