"""Upgrading a raw TCP connection to a secured, multiplexed libp2p connection.

The order is the one go-libp2p and js-libp2p use::

    TCP -> [pnet PSK v1] -> multistream-select "/noise" -> noise XX
        -> muxer (inlined in the noise handshake, or multistream-select
           "/yamux/1.0.0" over the encrypted channel) -> muxer

:class:`ConnectionUpgrade` is the sans-IO core that strings the pnet,
multistream and noise cores together.  :class:`ConnectionUpgrader` is the thin
Twisted protocol around it: it writes what the core says, enforces the
handshake timeout, and finally hands a :class:`SecureChannel` (plaintext
in/out) to the muxer factory picked by the negotiation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from aicn.log import Logger
from aicn.p2p.keys import PrivateKey, PublicKey
from aicn.p2p.multistream import PROTOCOL_ID as MULTISTREAM_PROTOCOL_ID
from aicn.p2p.multistream import MultistreamDialer, MultistreamError, MultistreamListener, encode_message
from aicn.p2p.noise import PROTOCOL_ID as NOISE_PROTOCOL_ID
from aicn.p2p.noise import NoiseError, NoiseHandshake, NoiseTransport, PeerIDMismatch
from aicn.p2p.peerid import PeerID
from aicn.p2p.pnet import PnetCodec

__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "UpgradeError",
    "HandshakeTimeout",
    "ConnectionClosedDuringUpgrade",
    "PSKMismatch",
    "PeerIDMismatch",
    "ConnectionUpgrade",
    "ConnectionUpgrader",
    "SecureChannel",
    "Muxer",
]

#: js-libp2p's inbound upgrade timeout.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0


class UpgradeError(Exception):
    """The connection upgrade failed for a reason other than bad protocol data."""


class HandshakeTimeout(UpgradeError):
    """The upgrade did not finish within the handshake timeout."""


class ConnectionClosedDuringUpgrade(UpgradeError):
    """The connection was lost before the upgrade finished."""


class PSKMismatch(UpgradeError):
    """With a private network key, the peer's first bytes (decrypted) are not a
    multistream header: it uses another pre-shared key, or none.  pnet has no
    MAC, so this is the only sign of a wrong key; a client that is no libp2p
    peer at all looks the same."""


# What a peer without a private network sends first, where we expect a nonce.
_PLAIN_HEADER = encode_message(MULTISTREAM_PROTOCOL_ID)

# Errors that mean "the peer sent something wrong"; anything else is a bug.
_PROTOCOL_ERRORS = (MultistreamError, NoiseError, UpgradeError)


class ConnectionUpgrade:
    """Sans-IO upgrade of one connection, from the first byte to the muxer.

    ``start()`` gives the first bytes to write; ``receive(data)`` takes raw
    bytes from the socket and returns raw bytes to write.  When :attr:`ready`
    is true, :attr:`muxer_protocol` is chosen, :attr:`early_plaintext` holds
    muxer bytes that came in with the last handshake bytes, and
    :meth:`encrypt` / :meth:`decrypt` carry the rest of the connection.
    Errors are :class:`MultistreamError` or :class:`NoiseError` (including
    :class:`PeerIDMismatch`), and :class:`PSKMismatch` when the peer's first
    bytes are no multistream header.
    """

    def __init__(
        self,
        identity: PrivateKey,
        initiator: bool,
        muxers: Sequence[str],
        psk: bytes | None = None,
        expected_peer: PeerID | None = None,
        send_muxer_extension: bool = True,
    ) -> None:
        if not muxers:
            raise ValueError("need at least one stream muxer")
        self.identity = identity
        self.initiator = initiator
        self.muxers = list(muxers)
        self.expected_peer = expected_peer
        self.send_muxer_extension = send_muxer_extension
        self._pnet = PnetCodec(psk) if psk is not None else None
        self._raw_start = bytearray()  # the first bytes received, while pnet expects a nonce
        self._security = (
            MultistreamDialer([NOISE_PROTOCOL_ID])
            if initiator
            else MultistreamListener({NOISE_PROTOCOL_ID})
        )
        self._noise: NoiseHandshake | None = None
        self._transport: NoiseTransport | None = None
        self._muxer_select: MultistreamDialer | MultistreamListener | None = None
        #: "security", "handshake", "muxer" or "ready".
        self.phase = "security"
        self.muxer_protocol: str | None = None
        self.early_plaintext = b""

    # -- results ------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.phase == "ready"

    @property
    def remote_peer_id(self) -> PeerID | None:
        return self._noise.remote_peer_id if self._noise else None

    @property
    def remote_public_key(self) -> PublicKey | None:
        return self._noise.remote_public_key if self._noise else None

    # -- byte plumbing --------------------------------------------------------------------

    def start(self) -> bytes:
        """First bytes to write: the pnet nonce, then our multistream opening."""
        first = self._security.start()
        if self._pnet is None:
            return first
        return self._pnet.local_nonce + self._pnet.encrypt(first)

    def receive(self, data: bytes) -> bytes:
        """Feed raw received bytes during the upgrade; return raw bytes to write."""
        if self.ready:
            raise UpgradeError("upgrade already finished; use decrypt()")
        if self._pnet is not None:
            if self.phase == "security" and len(self._raw_start) < len(_PLAIN_HEADER):
                self._check_plain_header(data)
            data = self._pnet.decrypt(data)
        if self.phase == "muxer":
            data = self._transport.decrypt(data)
        out: list[bytes] = []  # clear (pre-noise) bytes, then noise frames
        if self.phase == "security" and data:
            out.append(self._receive_security(data))
            data = b""
            if self._security.done:
                self.phase = "handshake"
                self._noise = NoiseHandshake(
                    self.initiator,
                    self.identity,
                    self.muxers if self.send_muxer_extension else None,
                    expected_peer=self.expected_peer,
                )
                out.append(self._noise.start())
                data = self._security.leftover
        if self.phase == "handshake" and data:
            out.append(self._noise.receive(data))
            data = b""
            if self._noise.complete:
                self._transport = self._noise.transport()
                data = self._transport.decrypt(self._noise.leftover)
                self._enter_muxer_phase(out)
        if self.phase == "muxer" and data:
            out.append(self._transport.encrypt(self._muxer_select.receive(data)))
            if self._muxer_select.done:
                self.muxer_protocol = self._muxer_select.protocol
                self.early_plaintext = self._muxer_select.leftover
                self.phase = "ready"
        elif self.ready and data:
            self.early_plaintext = data
        wire = b"".join(out)
        if self._pnet is not None and wire:
            wire = self._pnet.encrypt(wire)
        return wire

    def _check_plain_header(self, data: bytes) -> None:
        # A peer without a key sends a clear header (20 bytes, shorter than our
        # nonce) and hangs up on our bytes: caught here, or it would look like a
        # connection closed mid-handshake.  A random nonce starts so with
        # probability 2**-160.
        self._raw_start += data[: len(_PLAIN_HEADER) - len(self._raw_start)]
        if bytes(self._raw_start) == _PLAIN_HEADER:
            raise PSKMismatch("private network key mismatch: the peer sent a clear multistream header; "
                              "it uses no private network key")

    def _receive_security(self, data: bytes) -> bytes:
        try:
            return self._security.receive(data)
        except MultistreamError as exc:
            # Without pnet, garbage is only garbage (an HTTP client, say): the
            # peer side, if it has a key, reports the mismatch.
            if self._pnet is None or self._security.header_received:
                raise
            raise PSKMismatch(f"private network key mismatch: the peer's first bytes are not a "
                              f"multistream header once decrypted ({exc}); it uses another key, "
                              "or none") from None

    def _enter_muxer_phase(self, out: list[bytes]) -> None:
        if self._noise.selected_muxer is not None:
            self.muxer_protocol = self._noise.selected_muxer
            self.phase = "ready"
            return
        self.phase = "muxer"
        if self.initiator:
            self._muxer_select = MultistreamDialer(self.muxers)
        else:
            self._muxer_select = MultistreamListener(set(self.muxers))
        out.append(self._transport.encrypt(self._muxer_select.start()))

    def encrypt(self, plaintext: bytes | bytearray | memoryview) -> bytes:
        """Wire bytes for muxer plaintext (after :attr:`ready`)."""
        wire = self._transport.encrypt(plaintext)
        if self._pnet is not None:
            wire = self._pnet.encrypt(wire)
        return wire

    def decrypt(self, data: bytes) -> bytes:
        """Muxer plaintext from wire bytes (after :attr:`ready`)."""
        if self._pnet is not None:
            data = self._pnet.decrypt(data)
        return self._transport.decrypt(data)


class Muxer(TypingProtocol):
    """What a muxer factory returns."""

    def data_received(self, data: bytes) -> None: ...

    def connection_lost(self, reason: Failure) -> None: ...


MuxerFactory = Callable[["SecureChannel"], Muxer]


class SecureChannel:
    """The secured plaintext channel handed to the muxer factory."""

    def __init__(self, upgrader: "ConnectionUpgrader", core: ConnectionUpgrade) -> None:
        self._upgrader = upgrader
        self._core = core
        #: The underlying TCP transport (addresses, registerProducer, ...).
        self.transport = upgrader.transport
        self.remote_peer_id: PeerID = core.remote_peer_id
        self.remote_public_key: PublicKey = core.remote_public_key
        self.local_peer_id: PeerID = core.identity.peer_id()
        self.muxer_protocol: str = core.muxer_protocol
        self.is_initiator: bool = core.initiator
        #: The muxer returned by the factory.
        self.muxer: Muxer | None = None

    def write(self, data: bytes) -> None:
        """Encrypt and send muxer bytes."""
        if data and self._upgrader.open:
            self.transport.write(self._core.encrypt(data))

    def writeSequence(self, data: Sequence[bytes]) -> None:
        """Send several buffers as one noise message (fewer frames, fewer syscalls)."""
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        self.transport.loseConnection()

    def registerProducer(self, producer, streaming: bool) -> None:
        """Let the muxer pause its writers while the TCP send buffer is full."""
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.transport.unregisterProducer()

    def abortConnection(self) -> None:
        self.transport.abortConnection()

    def __repr__(self) -> str:
        return f"<SecureChannel {self.muxer_protocol} with {self.remote_peer_id}>"


class ConnectionUpgrader(Protocol):
    """Twisted protocol that upgrades a raw TCP connection (dialer or listener).

    :attr:`upgraded` fires with the :class:`SecureChannel` (its ``muxer``
    attribute set to the factory's result) or fails with the reason:
    :class:`PeerIDMismatch`, :class:`PSKMismatch`, :class:`NoiseError`, :class:`MultistreamError`,
    :class:`HandshakeTimeout` or :class:`ConnectionClosedDuringUpgrade` (or
    the reason given to :meth:`abort`).  ``handshake_timeout=None``: no timer of
    its own (the caller bounds the upgrade, as a dial does with its deadline).
    On any failure the connection is aborted and one line is logged; the
    caller must consume :attr:`upgraded`'s failure (add an errback).
    """

    _log = Logger()

    def __init__(
        self,
        identity: PrivateKey,
        *,
        initiator: bool,
        muxers: Mapping[str, MuxerFactory],
        clock: IReactorTime,
        psk: bytes | None = None,
        expected_peer: PeerID | None = None,
        send_muxer_extension: bool = True,
        handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
    ) -> None:
        self._factories = dict(muxers)
        self._core = ConnectionUpgrade(
            identity, initiator, list(self._factories), psk, expected_peer, send_muxer_extension
        )
        self._clock = clock
        self._handshake_timeout = handshake_timeout
        self._timeout_call: IDelayedCall | None = None
        self._state = "new"  # new -> upgrading -> ready | failed; closed at the end
        self.channel: SecureChannel | None = None
        self.upgraded: Deferred[SecureChannel] = Deferred()

    # -- Twisted callbacks ------------------------------------------------------------

    def connectionMade(self) -> None:
        # Like go-libp2p: no Nagle delay.  Handshake messages and small
        # stream frames (ping, acks) must go out at once, not wait for the
        # peer's delayed ACK; bulk data is batched above us anyway.
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            try:
                set_no_delay(True)
            except OSError as exc:  # e.g. the socket is already gone
                self._log.debug("TCP_NODELAY not set: {error}", error=exc)
        self._state = "upgrading"
        if self._handshake_timeout is not None:
            self._timeout_call = self._clock.callLater(self._handshake_timeout, self._timed_out)
        self.transport.write(self._core.start())

    def dataReceived(self, data: bytes) -> None:
        if self._state == "ready":
            try:
                plaintext = self._core.decrypt(data)
            except NoiseError as exc:
                self._fail(exc)
                return
            if plaintext:
                self._deliver(plaintext)
        elif self._state == "upgrading":
            try:
                out = self._core.receive(data)
            except _PROTOCOL_ERRORS as exc:
                self._fail(exc)
                return
            if out:
                self.transport.write(out)
            if self._core.ready:
                self._finish()

    def connectionLost(self, reason: Failure) -> None:
        state, self._state = self._state, "closed"
        self._cancel_timeout()
        if state in ("new", "upgrading"):
            exc = ConnectionClosedDuringUpgrade(
                f"connection lost during {self._core.phase}: {reason.getErrorMessage()}"
            )
            self._report_failure(exc)
            self.upgraded.errback(exc)
        if self.channel is not None and self.channel.muxer is not None:
            try:
                self.channel.muxer.connection_lost(reason)
            except Exception:
                self._log.failure("muxer connection_lost raised")

    def abort(self, reason: Exception) -> None:
        """Give up on an upgrade still under way (a dial's deadline): fail
        :attr:`upgraded` with ``reason`` and abort the connection.  Does
        nothing once the upgrade has finished or failed."""
        if self._state in ("new", "upgrading") and self.transport is not None:
            self._fail(reason)

    @property
    def initiator(self) -> bool:
        """Whether we dialed (an outbound connection)."""
        return self._core.initiator

    @property
    def open(self) -> bool:
        """Whether the upgraded channel can carry data (also inside the muxer factory)."""
        return self._core.ready and self._state in ("upgrading", "ready")

    # -- internals ------------------------------------------------------------------------

    def _finish(self) -> None:
        self._cancel_timeout()
        self.channel = SecureChannel(self, self._core)
        factory = self._factories[self._core.muxer_protocol]
        try:
            self.channel.muxer = factory(self.channel)
        except Exception as exc:
            self._log.failure("muxer factory for {muxer} failed", muxer=self._core.muxer_protocol)
            self._fail(exc, logged=True)
            return
        self._state = "ready"
        self.upgraded.callback(self.channel)
        if self._core.early_plaintext and self._state == "ready":
            self._deliver(self._core.early_plaintext)

    def _deliver(self, plaintext: bytes) -> None:
        try:
            self.channel.muxer.data_received(plaintext)
        except Exception:
            self._log.failure(
                "muxer failed on data from {peer}", peer=self._peer_description()
            )
            self._state = "failed"
            self.transport.abortConnection()

    def _timed_out(self) -> None:
        self._timeout_call = None
        if self._state == "upgrading":
            self._fail(
                HandshakeTimeout(
                    f"upgrade not finished after {self._handshake_timeout}s "
                    f"(stuck in {self._core.phase})"
                )
            )

    def _cancel_timeout(self) -> None:
        if self._timeout_call is not None and self._timeout_call.active():
            self._timeout_call.cancel()
        self._timeout_call = None

    def _peer_description(self) -> str:
        try:
            return str(self.transport.getPeer())
        except Exception:  # pragma: no cover - transport without addresses
            return "<unknown>"

    def _report_failure(self, exc: BaseException) -> None:
        if self._core.ready:
            self._log.info(
                "Secured connection with {peer} ({peer_id}) failed: {error}",
                peer=self._peer_description(),
                peer_id=str(self._core.remote_peer_id),
                error=exc,
            )
            return
        # A key mismatch repeats on every redial: the swarm warns about it, at
        # most once per host and window, instead of this line each time.
        emit = self._log.debug if isinstance(exc, PSKMismatch) else self._log.info
        emit(
            "Upgrade of {direction} connection with {peer} failed during {phase}: {error}",
            direction="outbound" if self._core.initiator else "inbound",
            peer=self._peer_description(),
            phase=self._core.phase,
            error=exc,
        )

    def _fail(self, exc: BaseException, logged: bool = False) -> None:
        was_upgrading = self._state in ("new", "upgrading")
        self._state = "failed"
        self._cancel_timeout()
        if not logged:
            self._report_failure(exc)
        self.transport.abortConnection()
        if was_upgrading:
            self.upgraded.errback(exc)
