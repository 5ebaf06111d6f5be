"""Circuit relay v2 codec (hypothesis round trips and garbage), vouchers,
limit parsing, and fuzzed reservation/circuit accounting."""

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from multiaddr import Multiaddr
from twisted.trial.unittest import SynchronousTestCase

from aicn.p2p.keys import PrivateKey
from aicn.p2p.record import seal
from aicn.p2p.relay.codec import (
    VOUCHER_DOMAIN,
    HopMessage,
    HopType,
    Limit,
    PeerInfo,
    RelayCodecError,
    Reservation,
    Status,
    StopMessage,
    StopType,
    decode_hop,
    decode_stop,
    encode_hop,
    encode_stop,
    limit_from_wire,
    make_voucher,
    open_voucher,
)
from aicn.p2p.relay.resources import CircuitTable, Refused, RelayLimits, ReservationTable

KEYS = [PrivateKey.generate("ed25519") for _ in range(4)]
PEERS = [k.peer_id() for k in KEYS]
ADDR = Multiaddr("/ip4/1.2.3.4/tcp/4001").to_bytes()

peers = st.sampled_from(PEERS)
limits = st.one_of(st.none(), st.builds(Limit, st.one_of(st.none(), st.integers(1, 2**32 - 1)),
                                        st.one_of(st.none(), st.integers(1, 2**64 - 1))))
peer_infos = st.one_of(st.none(), st.builds(PeerInfo, peers, st.lists(st.just(ADDR), max_size=3).map(tuple)))
statuses = st.one_of(st.none(), st.sampled_from(list(Status)))


class CodecTests(SynchronousTestCase):
    @given(st.sampled_from(list(HopType)), peer_infos, limits, statuses,
           st.one_of(st.none(), st.builds(Reservation, st.integers(0, 2**64 - 1),
                                          st.lists(st.just(ADDR), max_size=3).map(tuple),
                                          st.one_of(st.none(), st.binary(max_size=100)))))
    def test_hop_roundtrip(self, type_, peer, limit, status, reservation):
        msg = HopMessage(type_, peer, reservation, limit, status)
        self.assertEqual(decode_hop(encode_hop(msg)), msg)

    @given(st.sampled_from(list(StopType)), peer_infos, limits, statuses)
    def test_stop_roundtrip(self, type_, peer, limit, status):
        msg = StopMessage(type_, peer, limit, status)
        self.assertEqual(decode_stop(encode_stop(msg)), msg)

    def test_reserve_is_two_bytes(self):
        # What js sends: only field 1 (fact notes §9).
        self.assertEqual(encode_hop(HopMessage(HopType.RESERVE)), b"\x08\x00")

    @settings(max_examples=300)
    @given(st.binary(max_size=300))
    def test_garbage(self, data):
        for decode in (decode_hop, decode_stop):
            try:
                decode(data)
            except RelayCodecError:
                pass

    def test_bad_fields(self):
        self.assertRaises(RelayCodecError, decode_hop, b"")  # no type
        self.assertRaises(RelayCodecError, decode_hop, b"\x08\x09")  # unknown type
        self.assertRaises(RelayCodecError, decode_hop, b"\x08\x01\x12\x02\x0a\x00")  # empty peer id
        self.assertRaises(RelayCodecError, decode_stop, b"\x08\x00" + b"\x12\x03\x0a\x01\xff")
        self.assertRaises(RelayCodecError, decode_hop, b"\x08\x00" + b"\x00" * 9000)

    def test_bad_addrs_dropped(self):
        msg = HopMessage(HopType.CONNECT, PeerInfo(PEERS[0], (b"\xff\xff", ADDR)))
        self.assertEqual(decode_hop(encode_hop(msg)).peer.addrs, (ADDR,))

    def test_limit_from_wire(self):
        self.assertEqual(limit_from_wire(None), Limit())
        self.assertEqual(limit_from_wire(Limit(120, 131072)), Limit(120, 131072))
        # js-libp2p's milliseconds
        self.assertEqual(limit_from_wire(Limit(120000, 131072)), Limit(120, 131072))
        self.assertEqual(limit_from_wire(Limit(2**32 - 1, None)).duration, 24 * 3600)
        self.assertFalse(limit_from_wire(Limit(0, 0)).limited)


class VoucherTests(SynchronousTestCase):
    def test_roundtrip(self):
        env = make_voucher(KEYS[0], PEERS[1], 12345)
        v = open_voucher(env, relay=PEERS[0], peer=PEERS[1])
        self.assertEqual((v.relay, v.peer, v.expiration), (PEERS[0], PEERS[1], 12345))

    def test_wrong_peer_or_relay(self):
        env = make_voucher(KEYS[0], PEERS[1], 1)
        self.assertRaises(RelayCodecError, open_voucher, env, relay=PEERS[2])
        self.assertRaises(RelayCodecError, open_voucher, env, peer=PEERS[2])

    def test_signed_by_someone_else(self):
        from aicn.p2p.pb import voucher_pb2
        payload = voucher_pb2.ReservationVoucher(relay=PEERS[0].to_bytes(), peer=PEERS[1].to_bytes(),
                                                 expiration=1).SerializeToString()
        env = seal(KEYS[2], VOUCHER_DOMAIN, b"\x03\x02", payload)
        self.assertRaises(RelayCodecError, open_voucher, env)
        # Right signer, wrong domain (a peer record signature is no voucher).
        env = seal(KEYS[0], "libp2p-peer-record", b"\x03\x02", payload)
        self.assertRaises(RelayCodecError, open_voucher, env)

    @given(st.binary(max_size=200))
    def test_garbage(self, data):
        try:
            open_voucher(data)
        except RelayCodecError:
            pass


class ResourceTests(SynchronousTestCase):
    def test_refresh_and_expiry(self):
        table = ReservationTable(RelayLimits(reservation_ttl=10, max_reservations=1))
        self.assertEqual(table.reserve(PEERS[0], "1.1.1.1", 0), 10)
        self.assertEqual(table.reserve(PEERS[0], "1.1.1.1", 5), 15)  # refresh, not a second slot
        self.assertRaises(Refused, table.reserve, PEERS[1], "1.1.1.2", 6)
        self.assertFalse(table.has(PEERS[0], 15))
        self.assertEqual(table.reserve(PEERS[1], "1.1.1.2", 16), 26)

    def test_circuits(self):
        table = CircuitTable(RelayLimits(max_circuits=2, max_circuits_per_peer=1))
        table.open(PEERS[0], PEERS[1])
        with self.assertRaises(Refused) as caught:
            table.open(PEERS[2], PEERS[1])
        self.assertEqual(caught.exception.status, Status.RESOURCE_LIMIT_EXCEEDED)
        table.open(PEERS[2], PEERS[3])
        table.close(PEERS[0], PEERS[1])
        self.assertEqual(len(table), 1)
        self.assertEqual(table.count_for(PEERS[1]), 0)


class ReservationFlood(RuleBasedStateMachine):
    """Any sequence of reserve/remove/time steps keeps the table within its limits."""

    LIMITS = RelayLimits(reservation_ttl=10, max_reservations=5, max_reservations_per_ip=2)

    def __init__(self):
        super().__init__()
        self.table = ReservationTable(self.LIMITS)
        self.now = 0.0
        self.peers = [PrivateKey.generate("ed25519").peer_id() for _ in range(3)] + PEERS

    @rule(i=st.integers(0, 6), ip=st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", None]))
    def reserve(self, i, ip):
        try:
            expire = self.table.reserve(self.peers[i], ip, self.now)
        except Refused as exc:
            assert exc.status == Status.RESERVATION_REFUSED
        else:
            assert expire == self.now + 10
            assert self.table.has(self.peers[i], self.now)

    @rule(i=st.integers(0, 6))
    def remove(self, i):
        self.table.remove(self.peers[i])

    @rule(dt=st.floats(0, 20))
    def advance(self, dt):
        self.now += dt
        self.table.expire(self.now)

    @invariant()
    def bounded(self):
        assert len(self.table) <= self.LIMITS.max_reservations
        for ip in ("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"):
            assert self.table.count_for_ip(ip) <= self.LIMITS.max_reservations_per_ip
        assert sum(self.table.count_for_ip(ip) for ip in ("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4")) \
            <= len(self.table)


class ReservationFloodTests(SynchronousTestCase):
    def test_flood_stays_bounded(self):
        run_state_machine_as_test(ReservationFlood)
