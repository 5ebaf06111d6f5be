"""Floodsub (``/floodsub/1.0.0``) over a :class:`~aicn.p2p.host.Host`.

Wire behaviour, as go-libp2p-pubsub and js-libp2p expect it:

* Once identify shows a peer speaks ``/floodsub/1.0.0`` (or the peer opens
  a floodsub stream to us), we open one long-lived outbound stream to it and
  send our full subscription list first (an empty RPC when we have none).
  The peer does the same; we read RPCs from the peer's stream until EOF.
* A peer may have several connections (a reconnect race, or a second process
  with the same key): we keep one outbound stream per peer, and read one
  inbound stream per connection (a new one on the same connection replaces
  the old).  The peer's topics are the union of what its live inbound
  streams announced; the first RPC on a stream is its full subscription
  list and replaces what the stream it replaced had said.  When the last
  inbound stream ends while the peer stays connected, its topics are kept
  until a new stream announces them again.
* Our outbound stream is watched (like go's ``handlePeerDead``: the peer
  never writes on it, so EOF, a reset or data means it is dead).  When it
  dies while the peer is still connected, it is reopened at once if its
  connection closed, else after a backoff (1, 2, 4, 8, 16 s), each time on
  the next of the peer's connections.  After :data:`MAX_RETRIES` failures in
  a row we give up (logged; the peer leaves :meth:`FloodSub.peers`) until it
  opens a new stream to us or identify shows floodsub again.
* Floodsub state exists only for connected peers: it goes when the last
  connection to the peer closes, never when one of several does.
* Subscribe and unsubscribe are announced to every floodsub peer at once.
* Messages are StrictSign-signed.  Every valid message not seen before is
  delivered to our local handlers and forwarded to every peer subscribed to
  its topic, except the one it came from and its author.  Our own messages
  are delivered locally too (go nodes receive their own publications).

Robustness: a peer's messages that are invalid, unsigned, oversize or
duplicated are dropped and counted in :attr:`FloodSub.stats`; a malformed
or oversize frame resets that peer's stream.  Each peer has an outbound
queue bounded in messages and bytes; when a slow peer falls behind, new
messages for it are dropped (counted, logged at a limited rate) rather than
buffered without bound.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

from twisted.internet.defer import Deferred

from aicn.log import Logger
from aicn.p2p.peerid import PeerID
from aicn.p2p.pubsub.rpc import (
    DEFAULT_MAX_MESSAGE_SIZE,
    FLOODSUB,
    RPC_OVERHEAD,
    RPC,
    Message,
    RPCError,
    RPCReader,
    RPCTooLarge,
    publish_frame,
    subscriptions_frame,
)
from aicn.p2p.pubsub.seen import SEEN_MAX, SEEN_TTL, SeenCache
from aicn.p2p.pubsub.sign import (
    MAX_TOPIC_LEN,
    MessageError,
    SeqnoCounter,
    SignatureError,
    ValidMessage,
    message_id,
    message_key,
    sign_message,
    validate_message,
)
from aicn.p2p.stream import StreamError

log = Logger()

#: Default bound on one peer's outbound queue, in messages and in bytes.
OUTBOUND_QUEUE = 256
OUTBOUND_QUEUE_BYTES = 4 * 1024 * 1024
#: Most topics we remember per peer (bounds memory per peer).
MAX_PEER_TOPICS = 512
#: Seconds allowed to open and negotiate the outbound stream.
OPEN_TIMEOUT = 30.0
#: Reopening a dead outbound stream: the first delay (doubled on each failure in a row),
#: the most failures in a row before giving up, and after how many seconds of no
#: failure (or of a stream that stayed up) the count starts again.
RETRY_DELAY = 1.0
MAX_RETRIES = 5
RETRY_RESET = 30.0
#: Least seconds between two "dropping messages to slow peer" log lines per peer.
DROP_LOG_INTERVAL = 10.0
READ_CHUNK = 65536

#: The counters in :attr:`FloodSub.stats`.
STAT_NAMES = (
    "received",  # messages received from peers
    "delivered",  # messages handed to local handlers (once per message and topic)
    "published",  # messages we published
    "forwarded",  # message copies queued to peers (ours and relayed)
    "duplicates",  # received messages already seen
    "invalid_signature",  # bad signature, or a key that does not match `from`
    "invalid_message",  # missing or malformed fields
    "self_origin",  # claims to be from us but came from the network
    "too_large",  # oversize messages and frames
    "malformed_rpc",  # undecodable frames (the stream is reset)
    "dropped_queue_full",  # copies not sent because a peer's queue was full
    "handler_errors",  # exceptions raised by local handlers
)


class MessageTooLarge(ValueError):
    """A message to publish exceeds the maximum message size."""


@dataclass(frozen=True)
class PubSubMessage:
    """A message delivered to a topic handler."""

    #: The author (the ``from`` field, signature verified).
    from_peer: PeerID
    data: bytes
    #: As sent by the author (js strips leading zero bytes, go sends 8 bytes).
    seqno: bytes
    topic: str
    #: The neighbour it arrived from; ``None`` for our own publications.
    received_from: Optional[PeerID]


Handler = Callable[[PubSubMessage], None]


class _Outbound:
    """Our long-lived stream to one peer and its bounded queue of frames."""

    def __init__(self, peer: PeerID, max_count: int, max_bytes: int) -> None:
        self.peer = peer
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.conn = None
        self.stream = None  # set once negotiated
        self.opened_at: Optional[float] = None
        #: Failures in a row before this attempt: each retry tries the next connection.
        self.attempt = 0
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self.writing = False
        self.closed = False
        self.drops_unlogged = 0
        self.last_drop_log: Optional[float] = None

    def offer(self, frame: bytes, force: bool = False) -> bool:
        """Queue ``frame``; ``False`` if the queue is full (``force`` ignores the bound)."""
        if self.closed:
            return False
        if not force and (
            len(self.queue) >= self.max_count or self.queued_bytes + len(frame) > self.max_bytes
        ):
            return False
        self.queue.append(frame)
        self.queued_bytes += len(frame)
        return True

    def pop(self) -> bytes:
        frame = self.queue.popleft()
        self.queued_bytes -= len(frame)
        return frame


class _Inbound:
    """One floodsub stream the peer opened to us, on one connection."""

    def __init__(self, stream, conn, topics) -> None:
        self.stream = stream
        self.conn = conn
        #: What this stream announced; until its first RPC, what the stream it
        #: replaced had announced (so the peer never looks unsubscribed meanwhile).
        self.topics: set[str] = set(topics)
        self.hello = False  # its first RPC has arrived


class _PeerState:
    """What we know about one connected floodsub peer."""

    def __init__(self) -> None:
        #: Live inbound streams, one per connection.
        self.inbound: dict[object, _Inbound] = {}
        #: The topics of the peer's last inbound stream to end, used while none is live.
        self.last_topics: set[str] = set()
        self.outbound: Optional[_Outbound] = None
        #: A pending reopen of the outbound stream (an IDelayedCall).
        self.retry = None
        self.failures = 0
        self.last_failure: Optional[float] = None
        #: True after MAX_RETRIES failures: no outbound stream, none pending.
        self.gave_up = False
        self.removed = False

    @property
    def topics(self) -> set[str]:
        """The topics the peer is subscribed to (do not modify)."""
        if not self.inbound:
            return self.last_topics
        if len(self.inbound) == 1:
            return next(iter(self.inbound.values())).topics
        return set().union(*(rec.topics for rec in self.inbound.values()))

    @property
    def sendable(self) -> bool:
        """Our outbound stream is up, being opened, or about to be reopened."""
        return self.outbound is not None or (self.retry is not None and self.retry.active())


class FloodSub:
    """Floodsub router for ``host``.

    Construction registers the ``/floodsub/1.0.0`` handler and a host
    observer, and starts streams to peers already connected; :meth:`close`
    undoes that.

    ``clock`` provides ``seconds()`` and ``callLater()`` (the reactor, or a
    ``task.Clock`` in tests).  ``max_message_size`` bounds ``data`` of
    published and received messages (frames may be
    ``max_message_size + RPC_OVERHEAD``).  ``outbound_queue`` and
    ``outbound_queue_bytes`` bound each peer's queue of unsent frames.
    """

    def __init__(
        self,
        host,
        clock,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        outbound_queue: int = OUTBOUND_QUEUE,
        outbound_queue_bytes: int = OUTBOUND_QUEUE_BYTES,
        seen_ttl: float = SEEN_TTL,
        seen_max: int = SEEN_MAX,
        seqno_seed: Optional[int] = None,
    ) -> None:
        self.host = host
        self.clock = clock
        self.max_message_size = max_message_size
        self.max_frame = max_message_size + RPC_OVERHEAD
        self.outbound_queue = outbound_queue
        # The queue must fit at least one maximum-size frame.
        self.outbound_queue_bytes = max(outbound_queue_bytes, self.max_frame)
        self._seen = SeenCache(clock, seen_ttl, seen_max)
        self._seqno = SeqnoCounter(seqno_seed)
        self._handlers: dict[str, list[Handler]] = {}
        self._peers: dict[PeerID, _PeerState] = {}
        self._stats = dict.fromkeys(STAT_NAMES, 0)
        self._closed = False
        host.set_stream_handler(FLOODSUB, self._handle_stream)
        host.add_observer(self)
        for peer in host.connected_peers():
            if host.peerstore.supports(peer, FLOODSUB):
                self._ensure_outbound(peer)

    @property
    def peer_id(self) -> PeerID:
        return self.host.peer_id

    # -- public API ---------------------------------------------------------------------------

    def subscribe(self, topic: str, handler: Handler) -> None:
        """Call ``handler(PubSubMessage)`` for each message on ``topic``.

        The first handler for a topic announces the subscription to all peers.
        Handlers run synchronously; their exceptions are logged and counted.
        """
        if not isinstance(topic, str) or not topic or len(topic) > MAX_TOPIC_LEN:
            raise ValueError(f"invalid topic {topic!r}")
        if not callable(handler):
            raise TypeError("handler must be callable")
        handlers = self._handlers.get(topic)
        if handlers is None:
            self._handlers[topic] = [handler]
            self._announce(topic, True)
        else:
            handlers.append(handler)

    def unsubscribe(self, topic: str, handler: Optional[Handler] = None) -> None:
        """Remove ``handler`` (or every handler) from ``topic``.

        When no handler is left, the unsubscription is announced to all peers.
        Unknown topics and handlers are ignored.
        """
        handlers = self._handlers.get(topic)
        if handlers is None:
            return
        if handler is None:
            handlers.clear()
        elif handler in handlers:
            handlers.remove(handler)
        if not handlers:
            del self._handlers[topic]
            self._announce(topic, False)

    async def publish(self, topic: str, data: bytes) -> None:
        """Sign and publish ``data`` on ``topic``.

        Our own handlers for ``topic`` get it first (``received_from=None``);
        then it is queued to every peer subscribed to ``topic``.  Raises
        :class:`MessageTooLarge` if ``data`` exceeds ``max_message_size``.
        """
        if not isinstance(topic, str) or not topic or len(topic) > MAX_TOPIC_LEN:
            raise ValueError(f"invalid topic {topic!r}")
        data = bytes(data)
        if len(data) > self.max_message_size:
            raise MessageTooLarge(
                f"message of {len(data)} bytes exceeds the maximum of {self.max_message_size}"
            )
        seqno = self._seqno.next()
        msg = sign_message(self.host.key, topic, data, seqno)
        self._seen.add(message_id(self.peer_id, seqno))
        self._stats["published"] += 1
        self._deliver(ValidMessage(self.peer_id, data, seqno, (topic,)), None)
        self._forward(msg, (topic,), exclude=())

    def peers(self, topic: Optional[str] = None) -> list[PeerID]:
        """Connected peers that announced a subscription to ``topic`` (or to any
        topic) and that we can send to (our stream is up or being reopened)."""
        if topic is None:
            return sorted(p for p, st in self._peers.items() if st.topics and st.sendable)
        return sorted(p for p, st in self._peers.items() if topic in st.topics and st.sendable)

    def topics(self) -> list[str]:
        """The topics we are subscribed to."""
        return sorted(self._handlers)

    @property
    def stats(self) -> dict[str, int]:
        """A copy of the counters (see :data:`STAT_NAMES`)."""
        return dict(self._stats)

    def close(self) -> None:
        """Stop: unregister from the host and close every floodsub stream."""
        if self._closed:
            return
        self._closed = True
        self.host.remove_observer(self)
        self.host.remove_stream_handler(FLOODSUB)
        for peer in list(self._peers):
            self._remove_peer(peer)

    # -- host observer --------------------------------------------------------------------------

    def identified(self, peer: PeerID, result) -> None:
        if FLOODSUB in result.protocols and self.host.is_connected(peer):
            self._ensure_outbound(peer, fresh=True)

    def disconnected(self, conn) -> None:
        peer = conn.peer
        state = self._peers.get(peer)
        if state is None:
            return
        if not self.host.is_connected(peer):
            self._remove_peer(peer)
            return
        # Another connection remains: drop only what lived on this one.
        rec = state.inbound.get(conn)
        if rec is not None:
            self._end_inbound(state, rec)
            rec.stream.reset()
            if state.gave_up and not state.inbound:
                self._remove_peer(peer)
                return
        out = state.outbound
        if out is not None and out.conn is conn:
            self._drop_outbound(out)
            self._reopen_now(peer, state)

    # -- peers and outbound streams ----------------------------------------------------------

    def _ensure_outbound(self, peer: PeerID, fresh: bool = False) -> None:
        """Have an outbound stream to ``peer``, opening one unless one is up or due.

        ``fresh``: the peer just showed it speaks floodsub; after giving up, try
        again once :data:`RETRY_RESET` seconds have passed since the last failure.
        """
        if self._closed:
            return
        state = self._peers.get(peer)
        if state is None:
            state = self._peers[peer] = _PeerState()
        if state.outbound is not None or (state.retry is not None and state.retry.active()):
            return
        if state.gave_up:
            if not fresh or self.clock.seconds() - state.last_failure < RETRY_RESET:
                return
            state.gave_up = False
            state.failures = 0
        self._start_outbound(peer, state)

    def _start_outbound(self, peer: PeerID, state: _PeerState) -> None:
        state.retry = None
        out = state.outbound = _Outbound(peer, self.outbound_queue, self.outbound_queue_bytes)
        out.attempt = state.failures
        out.offer(subscriptions_frame((topic, True) for topic in self._handlers), force=True)
        Deferred.fromCoroutine(self._open(out))

    def _reopen_now(self, peer: PeerID, state: _PeerState) -> None:
        """The outbound stream's connection closed, another remains: move there at once."""
        if state.retry is not None and state.retry.active():
            state.retry.cancel()
        state.retry = None
        if not self._closed and not state.removed and not state.gave_up:
            self._start_outbound(peer, state)

    def _retry(self, peer: PeerID) -> None:
        state = self._peers.get(peer)
        if state is None or self._closed:
            return
        state.retry = None
        if not self.host.is_connected(peer):
            self._remove_peer(peer)
        elif state.outbound is None:
            self._start_outbound(peer, state)

    async def _open(self, out: _Outbound) -> None:
        conns = self.host.connections(out.peer)
        if not conns:
            self._outbound_lost(out, "not connected")
            return
        # The oldest connection first; on retries the others in turn (one of them may
        # lead to a process that shares the peer's key but does not speak floodsub).
        out.conn = conns[out.attempt % len(conns)]
        try:
            d = Deferred.fromCoroutine(out.conn.new_stream([FLOODSUB]))
            stream = await d.addTimeout(OPEN_TIMEOUT, self.clock)
        except Exception as exc:
            self._outbound_lost(out, f"cannot open a stream: {exc}")
            return
        if out.closed:
            stream.reset()
            return
        out.stream = stream
        out.opened_at = self.clock.seconds()
        log.debug("Floodsub stream to {peer} open", peer=str(out.peer))
        Deferred.fromCoroutine(self._watch(out))
        self._pump(out)

    async def _watch(self, out: _Outbound) -> None:
        """Notice when the peer ends our stream (it never writes on it), as go does."""
        try:
            data = await out.stream.read(READ_CHUNK)
        except StreamError as exc:
            why = f"stream ended: {exc}"
        except Exception as exc:
            why = f"stream failed: {exc!r}"
        else:
            why = "unexpected data from the peer" if data else "closed by the peer"
        self._outbound_lost(out, why)

    def _pump(self, out: _Outbound) -> None:
        if out.stream is not None and not out.writing and not out.closed and out.queue:
            out.writing = True
            Deferred.fromCoroutine(self._drain(out))

    async def _drain(self, out: _Outbound) -> None:
        try:
            while out.queue and not out.closed:
                await out.stream.write(out.pop())
        except StreamError as exc:
            self._outbound_lost(out, f"write failed: {exc}")
        except Exception:
            log.failure("Floodsub writer for {peer} crashed", peer=str(out.peer))
            self._outbound_lost(out, "writer crashed")
        finally:
            out.writing = False

    def _outbound_lost(self, out: _Outbound, why: str) -> None:
        """``out`` died: reopen it while the peer is connected, with backoff."""
        if out.closed:
            return  # dropped on purpose
        state = self._peers.get(out.peer)
        current = state is not None and state.outbound is out
        self._drop_outbound(out)
        if not current or self._closed:
            return
        peer = out.peer
        log.debug("Floodsub stream to {peer} lost: {why}", peer=str(peer), why=why)
        if not self.host.is_connected(peer):
            self._remove_peer(peer)
            return
        if out.conn is not None and out.conn.closed:
            self._reopen_now(peer, state)  # not the peer's fault: use the connection that is left
            return
        now = self.clock.seconds()
        if ((out.opened_at is not None and now - out.opened_at >= RETRY_RESET)
                or (state.last_failure is not None and now - state.last_failure >= RETRY_RESET)):
            state.failures = 0
        state.failures += 1
        state.last_failure = now
        if state.failures > MAX_RETRIES:
            state.gave_up = True
            log.info("Floodsub: giving up on a stream to {peer} after {count} failures ({why})",
                     peer=str(peer), count=MAX_RETRIES, why=why)
            if not state.inbound:
                self._remove_peer(peer)
            return
        state.retry = self.clock.callLater(RETRY_DELAY * 2 ** (state.failures - 1), self._retry, peer)

    def _drop_outbound(self, out: _Outbound) -> None:
        if not out.closed:
            out.closed = True
            out.queue.clear()
            out.queued_bytes = 0
            if out.stream is not None:
                out.stream.reset()
        state = self._peers.get(out.peer)
        if state is not None and state.outbound is out:
            state.outbound = None

    def _remove_peer(self, peer: PeerID) -> None:
        state = self._peers.pop(peer, None)
        if state is None:
            return
        state.removed = True
        if state.retry is not None and state.retry.active():
            state.retry.cancel()
        state.retry = None
        if state.outbound is not None:
            self._drop_outbound(state.outbound)
        for rec in list(state.inbound.values()):
            rec.stream.reset()
        state.inbound.clear()
        state.last_topics = set()

    def _send(self, out: _Outbound, frame: bytes, force: bool = False) -> bool:
        if out.offer(frame, force):
            self._pump(out)
            return True
        self._stats["dropped_queue_full"] += 1
        out.drops_unlogged += 1
        now = self.clock.seconds()
        if out.last_drop_log is None or now - out.last_drop_log >= DROP_LOG_INTERVAL:
            log.warn(
                "Floodsub peer {peer} is too slow: dropped {count} messages",
                peer=str(out.peer), count=out.drops_unlogged,
            )
            out.last_drop_log = now
            out.drops_unlogged = 0
        return False

    def _announce(self, topic: str, subscribe: bool) -> None:
        frame = subscriptions_frame([(topic, subscribe)])
        for state in self._peers.values():
            if state.outbound is not None:
                # Announcements are tiny and only we make them: never drop one,
                # or the peer's view of our subscriptions would go stale.
                self._send(state.outbound, frame, force=True)

    # -- inbound ------------------------------------------------------------------------------

    async def _handle_stream(self, stream, conn) -> None:
        peer = conn.peer
        if self._closed or conn.closed:
            stream.reset()
            return
        self._ensure_outbound(peer, fresh=True)  # it speaks floodsub, whatever identify said
        state = self._peers.get(peer)
        if state is None:  # the peer went while we tried to open our stream
            stream.reset()
            return
        old = state.inbound.get(conn)
        if old is not None:
            # As go does: a new stream from the peer replaces the old one (on this
            # connection; streams on other connections may come from another process).
            inherited = old.topics
            self._end_inbound(state, old)
            old.stream.reset()
        elif not state.inbound:
            inherited = state.last_topics
        else:
            inherited = ()
        rec = state.inbound[conn] = _Inbound(stream, conn, inherited)
        reader = RPCReader(self.max_frame)
        try:
            while not state.removed:
                chunk = await stream.read(READ_CHUNK)
                if not chunk:
                    break
                for rpc in reader.feed(chunk):
                    if state.removed or state.inbound.get(conn) is not rec:
                        break
                    self._handle_rpc(peer, rec, rpc)
        except RPCTooLarge as exc:
            self._stats["too_large"] += 1
            log.info("Oversize floodsub frame from {peer}: {error}", peer=str(peer), error=exc)
            stream.reset()
        except RPCError as exc:
            self._stats["malformed_rpc"] += 1
            log.info("Malformed floodsub RPC from {peer}: {error}", peer=str(peer), error=exc)
            stream.reset()
        except StreamError as exc:
            log.debug("Floodsub stream from {peer} ended: {error}", peer=str(peer), error=exc)
        except Exception:
            log.failure("Floodsub reader for {peer} crashed", peer=str(peer))
            stream.reset()
        else:
            try:
                await stream.close()
            except StreamError:
                pass
        finally:
            if state.inbound.get(conn) is rec:
                self._end_inbound(state, rec)
                if state.gave_up and not state.inbound:
                    self._remove_peer(peer)  # nothing left to do with this peer

    def _end_inbound(self, state: _PeerState, rec: _Inbound) -> None:
        if state.inbound.get(rec.conn) is rec:
            del state.inbound[rec.conn]
            if not state.inbound:
                # Keep what the peer said until a new stream says it again.
                state.last_topics = rec.topics

    def _handle_rpc(self, peer: PeerID, rec: _Inbound, rpc: RPC) -> None:
        if not rec.hello:
            rec.hello = True
            if rpc.subscriptions or not (rpc.publish or rpc.HasField("control")):
                # The first RPC on a stream is the peer's full subscription list.
                rec.topics = set()
        topics = rec.topics
        for sub in rpc.subscriptions:
            topic = sub.topicid
            if not isinstance(topic, str) or not topic or len(topic) > MAX_TOPIC_LEN:
                continue  # absent, not UTF-8, or absurd
            if sub.subscribe:
                if topic in topics or len(topics) < MAX_PEER_TOPICS:
                    topics.add(topic)
            else:
                topics.discard(topic)
        for msg in rpc.publish:
            self._handle_message(peer, msg)
        # rpc.control (gossipsub) is ignored: we are a floodsub router.

    def _handle_message(self, peer: PeerID, msg: Message) -> None:
        stats = self._stats
        stats["received"] += 1
        if len(msg.data) > self.max_message_size:
            stats["too_large"] += 1
            return
        try:
            author, mid = message_key(msg)
        except MessageError as exc:
            stats["invalid_message"] += 1
            log.debug("Invalid floodsub message from {peer}: {error}", peer=str(peer), error=exc)
            return
        if mid in self._seen:
            stats["duplicates"] += 1
            return
        if author == self.peer_id:
            stats["self_origin"] += 1
            return
        try:
            valid = validate_message(msg, self.max_message_size)
        except SignatureError as exc:
            stats["invalid_signature"] += 1
            log.info("Dropping floodsub message from {peer}: {error}", peer=str(peer), error=exc)
            return
        except MessageError as exc:
            stats["invalid_message"] += 1
            log.debug("Invalid floodsub message from {peer}: {error}", peer=str(peer), error=exc)
            return
        # Marked seen only once valid, so a forgery cannot shadow the real message.
        self._seen.add(mid)
        self._deliver(valid, peer)
        self._forward(msg, valid.topics, exclude=(peer, author))

    # -- delivery and forwarding ------------------------------------------------------------

    def _deliver(self, valid: ValidMessage, received_from: Optional[PeerID]) -> None:
        for topic in valid.topics:
            handlers = self._handlers.get(topic)
            if not handlers:
                continue
            message = PubSubMessage(valid.author, valid.data, valid.seqno, topic, received_from)
            self._stats["delivered"] += 1
            for handler in list(handlers):
                try:
                    handler(message)
                except Exception:
                    self._stats["handler_errors"] += 1
                    log.failure("Floodsub handler for {topic} failed", topic=topic)

    def _forward(self, msg: Message, topics, exclude) -> None:
        frame = None
        for peer, state in list(self._peers.items()):
            out = state.outbound
            if out is None or peer in exclude or state.topics.isdisjoint(topics):
                continue
            if frame is None:
                frame = publish_frame(msg)  # forwarded as received: signature and key intact
            if self._send(out, frame):
                self._stats["forwarded"] += 1
