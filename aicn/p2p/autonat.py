"""AutoNAT v1 (``/libp2p/autonat/1.0.0``; specs: autonat/autonat-v1.md).

A node asks peers to dial it back at its addresses to learn whether it is
publicly reachable.

* Codec (pure): :func:`encode_request`, :func:`encode_response`,
  :func:`decode_message`; malformed input raises :class:`AutoNATCodecError`.
* :class:`AutoNATService`, the server: dials back only addresses whose IP is
  the observed IP of the requesting connection (the spec's anti-DDoS rule),
  never ourselves, never over relayed connections, rate-limited per peer and
  globally.  Loopback and private addresses are refused unless the
  constructor allows them (js refuses loopback too; tests allow it).  The
  dial-back is a fresh connection that is closed at once
  (:meth:`aicn.p2p.swarm.Swarm.probe`).
* :class:`AutoNATClient`: asks connected peers that serve the protocol and
  decides ``public`` / ``private`` at the first verdict, then changes only
  after ``threshold`` agreeing answers;
  listeners (``add_listener``) hear each change, e.g. to switch the DHT to
  server mode or start the relay client.
"""

from __future__ import annotations

import enum
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional, Union

from google.protobuf.message import DecodeError
from multiaddr import Multiaddr
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.task import LoopingCall

from aicn.log import Logger
from aicn.p2p import binaddr, maddr
from aicn.p2p.pb import autonat_pb2
from aicn.p2p.peerid import InvalidPeerID, PeerID
from aicn.p2p.deadline import with_timeout
from aicn.p2p.framing import FrameError, length_prefixed, read_frame
from aicn.stats import LabelledCounter

log = Logger()

PROTOCOL = "/libp2p/autonat/1.0.0"
MAX_MESSAGE_SIZE = 8 * 1024
#: Addresses considered from one request.
MAX_ADDRS = 16

PUBLIC = "public"
PRIVATE = "private"
UNKNOWN = "unknown"


class AutoNATCodecError(ValueError):
    """An AutoNAT message is malformed or not the one expected."""


class ResponseStatus(enum.IntEnum):
    OK = 0
    E_DIAL_ERROR = 100
    E_DIAL_REFUSED = 101
    E_BAD_REQUEST = 200
    E_INTERNAL_ERROR = 300


@dataclass(frozen=True)
class DialRequest:
    peer: PeerID
    addrs: tuple[bytes, ...]


@dataclass(frozen=True)
class DialResponse:
    status: int
    text: str = ""
    addr: Optional[bytes] = None

    @property
    def ok(self) -> bool:
        return self.status == ResponseStatus.OK


def encode_request(peer: PeerID, addrs: Sequence[bytes]) -> bytes:
    """Body of a DIAL message."""
    msg = autonat_pb2.Message(type=autonat_pb2.Message.DIAL)
    msg.dial.peer.id = peer.to_bytes()
    msg.dial.peer.addrs.extend(addrs)
    return msg.SerializeToString(deterministic=True)


def encode_response(status: int, text: str = "", addr: Optional[bytes] = None) -> bytes:
    """Body of a DIAL_RESPONSE message."""
    msg = autonat_pb2.Message(type=autonat_pb2.Message.DIAL_RESPONSE)
    msg.dialResponse.status = int(status)
    if text:
        msg.dialResponse.statusText = text
    if addr is not None:
        msg.dialResponse.addr = addr
    return msg.SerializeToString(deterministic=True)


def decode_message(body: bytes) -> Union[DialRequest, DialResponse]:
    """Parse a message body into a :class:`DialRequest` or :class:`DialResponse`."""
    if len(body) > MAX_MESSAGE_SIZE:
        raise AutoNATCodecError(f"message of {len(body)} bytes exceeds {MAX_MESSAGE_SIZE}")
    msg = autonat_pb2.Message()
    try:
        msg.ParseFromString(bytes(body))
    except (DecodeError, ValueError) as exc:
        raise AutoNATCodecError(f"malformed message: {exc}") from None
    if msg.type == autonat_pb2.Message.DIAL and msg.HasField("type"):
        if not msg.HasField("dial") or not msg.dial.HasField("peer"):
            raise AutoNATCodecError("DIAL without peer")
        try:
            peer = PeerID.from_bytes(msg.dial.peer.id)
        except InvalidPeerID as exc:
            raise AutoNATCodecError(f"invalid peer ID: {exc}") from None
        addrs = []
        for raw in msg.dial.peer.addrs[:MAX_ADDRS * 2]:
            try:
                addrs.append(binaddr.validate(raw))
            except binaddr.BinaryMultiaddrError:
                continue
        return DialRequest(peer, tuple(addrs[:MAX_ADDRS]))
    if msg.type == autonat_pb2.Message.DIAL_RESPONSE:
        if not msg.HasField("dialResponse") or not msg.dialResponse.HasField("status"):
            raise AutoNATCodecError("DIAL_RESPONSE without status")
        r = msg.dialResponse
        text = r.statusText
        if isinstance(text, bytes):  # proto2 strings that are not valid UTF-8 come back from upb as bytes
            text = text.decode("utf-8", "replace")
        return DialResponse(r.status, text, r.addr if r.HasField("addr") else None)
    raise AutoNATCodecError(f"unknown message type {msg.type}")


async def _read(stream, clock, timeout: float):
    try:
        body = await with_timeout(read_frame(stream, MAX_MESSAGE_SIZE), timeout, clock)
    except FrameError as exc:
        raise AutoNATCodecError(f"bad AutoNAT message framing: {exc}") from None
    return decode_message(body)




class RateLimiter:
    """At most ``per_peer`` requests per peer and ``total`` in all per ``window`` seconds (pure)."""

    def __init__(self, per_peer: int, total: int, window: float) -> None:
        self.per_peer = per_peer
        self.total = total
        self.window = window
        self._times: deque[tuple[float, PeerID]] = deque()
        self._counts: dict[PeerID, int] = {}

    def allow(self, peer: PeerID, now: float) -> bool:
        while self._times and self._times[0][0] <= now - self.window:
            _, old = self._times.popleft()
            self._counts[old] -= 1
            if not self._counts[old]:
                del self._counts[old]
        if len(self._times) >= self.total or self._counts.get(peer, 0) >= self.per_peer:
            return False
        self._times.append((now, peer))
        self._counts[peer] = self._counts.get(peer, 0) + 1
        return True


class AutoNATService:
    """AutoNAT v1 server.  ``start()`` registers the handler."""

    def __init__(self, host, clock, *, allow_loopback: bool = False, allow_private: bool = False,
                 dial_timeout: float = 15.0, per_peer_limit: int = 3, global_limit: int = 30,
                 window: float = 60.0, request_timeout: float = 15.0) -> None:
        self.host = host
        self.clock = clock
        self.allow_loopback = allow_loopback
        self.allow_private = allow_private
        self.dial_timeout = dial_timeout
        self.request_timeout = request_timeout
        self.limiter = RateLimiter(per_peer_limit, global_limit, window)
        #: Dial-back requests answered, by response status name (``OK``, ``E_DIAL_ERROR`` …).
        self.responses = LabelledCounter(("status",))

    def start(self) -> None:
        self.host.set_stream_handler(PROTOCOL, self._handle)

    def stop(self) -> None:
        self.host.remove_stream_handler(PROTOCOL)

    def dialable(self, addrs: Sequence[bytes], observed) -> list[Multiaddr]:
        """What we may dial back: the requested addresses on the observed IP,
        then the observed address itself (as go's service does: behind a NAT
        it is the mapping, whose failure tells the peer it is private); plain
        TCP, allowed by the loopback/private policy, not one of ours."""
        observed_ip = maddr.ip_of(observed) if observed is not None else None
        if observed_ip is None:
            return []
        ours = {str(a) for a in self.host.listen_addrs()}
        out: list[Multiaddr] = []
        for raw in [*addrs, observed.to_bytes()]:
            try:
                addr, peer = maddr.split_peer(Multiaddr(raw))
            except Exception:
                continue
            ip = maddr.ip_of(addr)
            if ip is None or ip != observed_ip or str(addr) in ours or addr in out:
                continue
            if ip.is_loopback:
                if not self.allow_loopback:
                    continue
            elif not ip.is_global and not self.allow_private:
                continue
            out.append(addr)
        return out

    async def _handle(self, stream, conn) -> None:
        status, text, addr = await self._serve(stream, conn)
        self.responses.inc(ResponseStatus(status).name)
        log.debug("AutoNAT request from {peer}: {status} {text}", peer=str(conn.peer),
                  status=ResponseStatus(status).name, text=text)
        await stream.write(length_prefixed(encode_response(status, text, addr)))
        await stream.close()

    async def _serve(self, stream, conn) -> tuple[int, str, Optional[bytes]]:
        try:
            request = await _read(stream, self.clock, self.request_timeout)
        except (AutoNATCodecError, TimeoutError) as exc:
            return ResponseStatus.E_BAD_REQUEST, f"bad request: {exc}", None
        if not isinstance(request, DialRequest):
            return ResponseStatus.E_BAD_REQUEST, "expected a DIAL message", None
        if request.peer != conn.peer:
            return ResponseStatus.E_BAD_REQUEST, "peer ID does not match the connection", None
        if getattr(conn, "relayed", False):
            return ResponseStatus.E_DIAL_REFUSED, "refusing dial-back over a relayed connection", None
        if conn.peer == self.host.peer_id:
            return ResponseStatus.E_DIAL_REFUSED, "refusing to dial ourselves", None
        targets = self.dialable(request.addrs, conn.remote_addr)
        if not targets:
            return ResponseStatus.E_DIAL_REFUSED, "no dialable addresses", None
        if not self.limiter.allow(conn.peer, self.clock.seconds()):
            return ResponseStatus.E_DIAL_REFUSED, "too many dial-back requests", None
        errors = []
        for target in targets:
            try:
                await Deferred.fromCoroutine(self.host.swarm.probe(conn.peer, target)).addTimeout(
                    self.dial_timeout, self.clock)
            except Exception as exc:
                errors.append(f"{target}: {exc or type(exc).__name__}")
                continue
            return ResponseStatus.OK, "OK", target.to_bytes()
        return ResponseStatus.E_DIAL_ERROR, "dial-back failed: " + "; ".join(errors)[:200], None


class AutoNATClient:
    """Learn our reachability from AutoNAT servers among connected peers.

    Each peer that identifies with :data:`PROTOCOL` (or already had when
    :meth:`start` runs) is asked once (and again
    every ``refresh_interval``).  OK votes count for public, ``E_DIAL_ERROR``
    ones for private; refusals do not count.  The first verdict settles an
    unknown reachability; after that ``threshold`` agreeing votes (and more
    than the other kind) change it, and the listeners are called with
    ``"public"`` or ``"private"``.  A node with no
    direct address at all is private without asking.
    """

    def __init__(self, host, clock, *, threshold: int = 3, refresh_interval: float = 15 * 60,
                 request_timeout: float = 30.0, max_votes: int = 16) -> None:
        self.host = host
        self.clock = clock
        self.threshold = threshold
        self.refresh_interval = refresh_interval
        self.request_timeout = request_timeout
        self.max_votes = max_votes
        self.reachability = UNKNOWN
        #: Latest vote per server: True = dialed us back, False = could not.
        self.votes: OrderedDict[PeerID, bool] = OrderedDict()
        self._listeners: list[Callable[[str], object]] = []
        self._asked: dict[PeerID, float] = {}
        self._in_flight: set[PeerID] = set()
        self._loop: Optional[LoopingCall] = None

    def add_listener(self, listener: Callable[[str], object]) -> None:
        """Call ``listener("public" | "private")`` on every change."""
        self._listeners.append(listener)

    def start(self) -> None:
        """Watch for servers, and ask those already connected and identified
        (a node may have dialed its bootstrap peers before starting us)."""
        self.host.add_observer(self)
        for peer in self.host.connected_peers():
            if self.host.peerstore.supports(peer, PROTOCOL):
                self._ask_if_due(peer)
        if self.refresh_interval and self._loop is None:
            self._loop = LoopingCall(self.refresh)
            self._loop.clock = self.clock
            self._loop.start(self.refresh_interval, now=False).addErrback(
                lambda f: log.failure("AutoNAT refresh loop stopped", failure=f))

    def stop(self) -> None:
        self.host.remove_observer(self)
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def our_addrs(self) -> list[bytes]:
        """Direct addresses to have checked (no circuits)."""
        return [a.to_bytes() for a in self.host.listen_addrs()
                if not any(p.name == "p2p-circuit" for p, _ in a.items())]

    def identified(self, peer: PeerID, result) -> None:
        if PROTOCOL in result.protocols:
            self._ask_if_due(peer)

    def _ask_if_due(self, peer: PeerID) -> None:
        """Ask ``peer`` unless it answered within ``refresh_interval``."""
        last = self._asked.get(peer)
        if last is None or self.clock.seconds() - last >= self.refresh_interval:
            Deferred.fromCoroutine(self._ask_quietly(peer))

    def refresh(self) -> None:
        """Ask again every connected server (periodic re-check)."""
        for peer in self.host.connected_peers():
            if PROTOCOL in (self.host.peerstore.protocols(peer) or ()):
                Deferred.fromCoroutine(self._ask_quietly(peer))

    async def ask(self, peer: PeerID) -> DialResponse:
        """Ask ``peer`` to dial us back; record and return its answer."""
        addrs = self.our_addrs()
        self._asked[peer] = self.clock.seconds()
        if not addrs:
            self._set(PRIVATE)
            return DialResponse(ResponseStatus.E_DIAL_REFUSED, "no addresses to check")
        stream = await self.host.new_stream(peer, [PROTOCOL])
        try:
            await stream.write(length_prefixed(encode_request(self.host.peer_id, addrs)))
            response = await _read(stream, self.clock, self.request_timeout)
        except BaseException:
            stream.reset()
            raise
        await stream.close()
        if not isinstance(response, DialResponse):
            raise AutoNATCodecError("expected a DIAL_RESPONSE")
        self._vote(peer, response)
        return response

    async def _ask_quietly(self, peer: PeerID) -> None:
        if peer in self._in_flight:
            return
        self._in_flight.add(peer)
        try:
            await self.ask(peer)
        except Exception as exc:
            log.debug("AutoNAT request to {peer} failed: {error}", peer=str(peer), error=exc)
        finally:
            self._in_flight.discard(peer)

    def _vote(self, peer: PeerID, response: DialResponse) -> None:
        if response.status == ResponseStatus.OK:
            vote = True
        elif response.status == ResponseStatus.E_DIAL_ERROR:
            vote = False
        else:
            return
        self.votes.pop(peer, None)
        self.votes[peer] = vote
        while len(self.votes) > self.max_votes:
            self.votes.popitem(last=False)
        yes = sum(self.votes.values())
        no = len(self.votes) - yes
        # As go's AutoNAT: the first verdict settles an unknown state (a NATed
        # worker often knows a single server, its bootstrap relay); changing
        # a settled state takes ``threshold`` agreeing votes.
        need = 1 if self.reachability == UNKNOWN else self.threshold
        if yes >= need and yes > no:
            self._set(PUBLIC)
        elif no >= need and no > yes:
            self._set(PRIVATE)

    def _set(self, reachability: str) -> None:
        if reachability == self.reachability:
            return
        log.info("AutoNAT: reachability {old} -> {new}", old=self.reachability, new=reachability)
        self.reachability = reachability
        for listener in list(self._listeners):
            try:
                listener(reachability)
            except Exception:
                log.failure("AutoNAT listener failed")
