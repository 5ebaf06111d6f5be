"""The aicn application protocol over pubsub (the Go node's "network application").

One topic (``DeepBrainChain`` by default) carries every request, response and
heartbeat as a ``protocol.Message`` (:mod:`aicn.node.envelope`).  This module
owns what happens around the envelopes:

* **requests**: :meth:`Application.request` sends a request to one node and
  awaits its answer; the body is encrypted for the receiver
  (:mod:`aicn.node.crypto`), the id is a UUIDv4 tracked in a
  :class:`~aicn.node.requests.RequestTable` with a timeout on the injected
  clock.  A request to ourselves is answered locally, without the network.
  Before anything is sent, :class:`~aicn.node.reach.Reachability` looks for
  evidence that the request can reach the node and fails it fast (1005)
  when there is none.
* **answers**: addressed requests are answered from the identify provider
  (PEER_IDENTITY), the host-info provider (HOST_INFO), our registry
  (AI_PROJECT) or the model handlers (CHAT_COMPLETION, IMAGE_GENERATION).
  A body that does not decrypt gets a 1013 error reply, an unknown type 1010,
  a body that does not parse 1003; error replies are plaintext with an empty
  body.  A message with a non-zero ``result_code`` is never answered (the
  Go node's error ping-pong).
* **heartbeat**: every ``heartbeat_interval`` seconds, and right after every
  register/unregister, a plaintext AI_PROJECT broadcast of our projects, in
  the schema ``wire_version`` names (``App.WireVersion``).  In v0.2.3's
  schema a heartbeat carries each model's calls in flight (``idle``), so a
  change of them (:meth:`Application.load_changed`) sends one too: Go
  v0.2.1+ broadcasts at the start and at the end of every model call; we
  coalesce, at most one per ``load_heartbeat_interval`` (1 s), the last one
  always with the current counts, so collectors pick the least busy node
  without a broadcast storm under load.
  Collectors store everyone's heartbeats, of either schema, with their
  receive time and prune those older than 24 hours on each tick.
* **schemas** (:mod:`aicn.node.schemas`): a request goes out in the schema
  the receiver speaks (the version its latest message carried, else its
  identify ``agent_version``, else ``wire_version``); a request is answered
  in the schema it came in; every body is decoded its sender's way, falling
  back to the other schema when it does not fit.  ``result_code`` follows
  the message's schema (Go v0.1.9 renumbered the codes) and is mapped both
  ways.
* **registry**: our AI projects, persisted in the database; the config file's
  ``AIProjects`` are loaded at start, the database's entries win.

Messages whose header ``node_id`` differs from the pubsub author, or whose
``node_pub_key`` is not the key of that ``node_id``, are dropped and counted
in :attr:`Application.stats` (the Go node trusts both).

The pubsub object is used only through ``subscribe(topic, handler)``,
``unsubscribe(topic, handler)``, ``await publish(topic, data)`` and
``peers(topic)``; a handler receives objects with ``from_peer``, ``data``,
``seqno``, ``topic`` and ``received_from``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol

import attrs
from google.protobuf.message import Message as ProtoMessage
from twisted.internet.defer import CancelledError, Deferred, TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from aicn import AGENT_VERSION
from aicn import hostinfo as _hostinfo
from aicn.errors import AICNError, ErrorCode
from aicn.config import AIModel, AIProject
from aicn.log import Logger
from aicn.wire import protocol_pb2 as pb
from aicn.wire.versions import (
    V023,
    WIRE_VERSIONS,
    header_version,
    is_aicn,
    module_of,
    schema_of_version,
    version_of,
)
from aicn.node.crypto import (
    BodyDecryptError,
    BodyEncryptError,
    key_matches_peer,
    open_body,
    public_key_from_peer_id,
    seal_body,
)
from aicn.node.envelope import (
    BODY_TYPES,
    BodyDecodeError,
    Disposition,
    EnvelopeError,
    build_heartbeat,
    build_message,
    classify,
    decode_message,
    encode_request,
    encode_response,
    type_name,
)
from aicn.node.reach import PEER_FRESH_AGE, Reachability
from aicn.node.schemas import code_from_wire, code_to_wire, decode_body_tolerant, to_wire
from aicn.node.requests import RequestTable
from aicn.p2p.keys import PrivateKey
from aicn.p2p.peerid import InvalidPeerID, PeerID
from aicn.storage import Database, PeerRecord, StorageError

__all__ = [
    "DEFAULT_TOPIC",
    "PEER_FRESH_AGE",
    "PEER_RETENTION",
    "STRICT_ENCRYPTION_TYPES",
    "ApplicationSettings",
    "RequestContext",
    "AnswerError",
    "ModelHandler",
    "Application",
]

log = Logger()

DEFAULT_TOPIC = "DeepBrainChain"
#: Most heartbeats every node keeps in memory (one per node; the oldest go first).
RECENT_HEARTBEATS = 10000
#: Most peers whose schema we remember (the least recently heard go first).
KNOWN_SCHEMAS = 10000
#: ``AIProjectResponse.node_type`` bits of Go v0.2.3 (``types.NodeType``).
NODE_TYPE_RELAY, NODE_TYPE_COLLECTOR, NODE_TYPE_MODEL = 0x01, 0x02, 0x04
#: Collectors delete heartbeats older than this (seconds) on every tick.
PEER_RETENTION = 24 * 3600.0
#: Types whose bodies must be encrypted: if that fails the request aborts with
#: 1012 instead of going out in plaintext (user prompts and model output).
STRICT_ENCRYPTION_TYPES = frozenset({pb.CHAT_COMPLETION, pb.IMAGE_GENERATION})


@attrs.frozen
class ApplicationSettings:
    """The settings the application reads (a :class:`aicn.config.NodeSettings` has them all)."""

    topic: str = DEFAULT_TOPIC
    heartbeat_interval: float = 60.0
    collector: bool = False
    ai_projects: tuple[AIProject, ...] = ()
    #: The schema of our heartbeats and of requests to peers of unknown version.
    wire_version: str = V023
    #: Whether we run a relay service (a bit of v0.2.3's ``node_type``).
    relay_service: bool = False
    #: Least seconds between two heartbeats sent because calls in flight changed.
    load_heartbeat_interval: float = 1.0


@attrs.frozen
class RequestContext:
    """Who asked: passed to model handlers with the request."""

    #: The requesting node's peer ID (our own for a local request).
    requester: str
    #: The request id ("" for a local request).
    request_id: str
    #: True when the request never left this node.
    local: bool = False
    #: The schema the request came in (``v0.1.2``/``v0.2.3``; "" for a local one).
    wire: str = ""


class AnswerError(AICNError):
    """The answering node (possibly this one) replied with a non-zero ``result_code``.

    ``response`` is the response it sent along, if any (a HOST_INFO failure
    carries the partial host information), else ``None``.
    """

    def __init__(self, code: int, message: str, response: ProtoMessage | None = None) -> None:
        super().__init__(code, message)
        self.response = response


class ModelHandler(Protocol):
    """Answers CHAT_COMPLETION or IMAGE_GENERATION requests.

    ``request`` is a message of either schema (``context.wire`` says which),
    or for a local request whatever the caller passed.  Returns
    ``(result_code, result_message, response)``; ``response`` may be ``None``
    on failure, a message of either schema or an object with
    ``to_protobuf(module)`` (converted to the requester's schema).  Raising
    :class:`AICNError` is the same as returning its code and message with no
    response.
    """

    def __call__(
        self, request: ProtoMessage, context: RequestContext
    ) -> Awaitable[tuple[int, str, ProtoMessage | None]]: ...


IdentifyProvider = Callable[[], Mapping[str, Any]]
#: ``peer id -> identify agent_version`` (None: not known).
PeerAgent = Callable[[str], "str | None"]
#: ``(project, model, cid) -> model calls in flight`` (v0.2.3's ``idle``).
ModelLoad = Callable[[str, str, str], int]
HostInfoProvider = Callable[[], Awaitable[_hostinfo.HostInfoReport]]


def _as_model(model: AIModel | Mapping[str, Any]) -> AIModel:
    if isinstance(model, AIModel):
        return model
    return AIModel(
        model=str(model["model"]),
        api=str(model.get("api", "")),
        type=int(model.get("type", 0)),
        cid=str(model.get("cid", "")),
    )


class Application:
    """The application protocol of one node on one pubsub topic.

    :param clock: time source for timestamps, timeouts and the heartbeat loop.
    :param key: our node key (secp256k1 for encryption to work).
    :param pubsub: the pubsub router (see the module docstring).
    :param db: the node database (registry and collected heartbeats).
    :param settings: anything with ``topic``, ``heartbeat_interval``,
        ``collector`` and ``ai_projects`` (:class:`ApplicationSettings`,
        :class:`aicn.config.NodeSettings`).
    :param identify_provider: returns our ``/api/v0/id`` dict
        (``peer_id, protocol_version, agent_version, addresses, protocols``).
    :param hostinfo_provider: async; returns a :class:`aicn.hostinfo.HostInfoReport`
        (e.g. ``lambda: hostinfo.collect_in_thread(reactor)``).
    :param model_handlers: message type → :class:`ModelHandler`; types without
        one are answered 1010.
    :param client_version: our agent, in ``header.client_version`` of everything we
        send after the message's schema (``v0.2.3 (aicn-py/0.1.0)``).
    :param request_timeouts: message type → seconds (default 120 for all).
    :param reachability: decides whether a request can be delivered before
        it is sent (:class:`~aicn.node.reach.Reachability`; default: one that
        knows only the pubsub peers and the heartbeats heard).
    :param peer_agent: a peer's identify ``agent_version``, or None (default: unknown).
    :param model_load: calls in flight per model instance, for v0.2.3 heartbeats'
        ``idle`` (default: 0).
    """

    def __init__(
        self,
        clock: IReactorTime,
        key: PrivateKey,
        pubsub: Any,
        db: Database,
        settings: Any,
        *,
        identify_provider: IdentifyProvider,
        hostinfo_provider: HostInfoProvider,
        model_handlers: Mapping[int, ModelHandler] | None = None,
        client_version: str = AGENT_VERSION,
        request_timeouts: Mapping[int, float] | None = None,
        reachability: Reachability | None = None,
        peer_agent: PeerAgent | None = None,
        model_load: ModelLoad | None = None,
    ) -> None:
        self.clock = clock
        self.db = db
        self.pubsub = pubsub
        self.topic: str = settings.topic or DEFAULT_TOPIC
        self.heartbeat_interval: float = float(settings.heartbeat_interval)
        self.collector: bool = bool(settings.collector)
        self.client_version = client_version
        wire = getattr(settings, "wire_version", V023) or V023
        if wire not in WIRE_VERSIONS:
            raise ValueError(f"wire_version must be one of {', '.join(WIRE_VERSIONS)}, not {wire!r}")
        self.wire_version: str = wire
        self.relay_service: bool = bool(getattr(settings, "relay_service", False))
        self.load_heartbeat_interval: float = float(getattr(settings, "load_heartbeat_interval", 1.0))
        self.node_id: str = str(key.peer_id())
        self.requests = RequestTable(clock, request_timeouts)
        self.reachability = reachability if reachability is not None else Reachability(clock, pubsub, self.topic)
        #: Counters: ``dropped_spoofed``, ``dropped_bad_key``, ``dropped_malformed``,
        #: ``dropped_unknown_reply``, ``ignored_own``, ``ignored_not_for_us``,
        #: ``heartbeats_received``, ``heartbeats_stored``, ``heartbeats_sent``,
        #: ``requests_answered``, ``error_replies_sent``, ``sent_plaintext``, ``errors``,
        #: ``schema_fallbacks`` (bodies that fitted the other schema than their sender's version),
        #: ``load_heartbeats`` (heartbeats sent because calls in flight changed).
        self.stats: Counter[str] = Counter()
        self._key = key
        self._config_projects = tuple(settings.ai_projects or ())
        self._identify_provider = identify_provider
        self._hostinfo_provider = hostinfo_provider
        self._model_handlers = dict(model_handlers or {})
        self._projects: dict[str, AIProject] = {}
        self._loop: LoopingCall | None = None
        self._inflight: set[Deferred] = set()
        self._running = False
        #: Requests waiting for the host-info collection in progress, or None.
        self._hostinfo_waiters: list[Deferred] | None = None
        #: The latest heartbeat of each node, heard by any node (not only collectors).
        self._recent: dict[str, PeerRecord] = {}
        self._peer_agent = peer_agent
        self._model_load = model_load
        #: When we last published a heartbeat (clock seconds), and the pending load heartbeat.
        self._last_heartbeat: float | None = None
        self._load_beat: IDelayedCall | None = None
        #: The schema each peer's latest message spoke (by its version, or its body), and
        #: whether the peer is an aicn node.
        self._schemas: dict[str, tuple[str, bool]] = {}

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        """Load the registry, subscribe to the topic and start the heartbeat loop."""
        if self._running:
            return
        self._running = True
        self._load_projects()
        self.pubsub.subscribe(self.topic, self._on_message)
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self.clock
        # As the Go node's ticker: the first beat after one interval.
        self._loop.start(self.heartbeat_interval, now=False).addErrback(
            lambda f: log.failure("Heartbeat loop failed", failure=f)
        )
        log.info("Application protocol on topic {topic} as {node_id}", topic=self.topic, node_id=self.node_id)

    def stop(self) -> None:
        """Stop the loop, leave the topic, fail pending requests and cancel answers in progress."""
        if not self._running:
            return
        self._running = False
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._load_beat is not None and self._load_beat.active():
            self._load_beat.cancel()
        self._load_beat = None
        self.pubsub.unsubscribe(self.topic, self._on_message)
        self.requests.fail_all(AICNError(ErrorCode.INTERNAL, "node is stopping"))
        for d in list(self._inflight):
            d.cancel()

    def _load_projects(self) -> None:
        projects = {p.project: p for p in self._config_projects}
        try:
            stored = self.db.list_projects()
        except StorageError as exc:
            log.error("Cannot read registered AI projects: {error}", error=str(exc))
            stored = []
        for project in stored:  # the database wins over the config file
            projects[project.project] = project
        self._projects = projects

    # -- registry ---------------------------------------------------------------------

    def projects(self) -> list[AIProject]:
        """Our registered AI projects, in registration order."""
        return list(self._projects.values())

    async def register(self, project: str, models: Iterable[AIModel | Mapping[str, Any]]) -> None:
        """Register ``project`` (replacing its models if known), persist it and send a heartbeat."""
        entry = AIProject(project=project, models=tuple(_as_model(m) for m in models))
        try:
            self.db.replace_project(project, entry.models)
        except StorageError as exc:
            raise AICNError(ErrorCode.DATABASE, f"Database error: {exc}") from None
        if entry.models:
            self._projects[project] = entry  # an existing key keeps its position
        else:
            self._projects.pop(project, None)
        await self._heartbeat_now()

    async def unregister(self, project: str) -> bool:
        """Forget ``project`` and send a heartbeat; returns whether it was registered."""
        existed = project in self._projects
        try:
            self.db.remove_project(project)
        except StorageError as exc:
            raise AICNError(ErrorCode.DATABASE, f"Database error: {exc}") from None
        self._projects.pop(project, None)
        await self._heartbeat_now()
        return existed

    def _project_list(self) -> list[tuple[str, list[str]]]:
        return [(p.project, [m.model for m in p.models]) for p in self._projects.values()]

    def node_type(self) -> int:
        """v0.2.3's ``node_type`` bits: relay service, collector, serves a model."""
        return ((NODE_TYPE_RELAY if self.relay_service else 0)
                | (NODE_TYPE_COLLECTOR if self.collector else 0)
                | (NODE_TYPE_MODEL if any(p.models for p in self._projects.values()) else 0))

    def projects_response(self, wire: str) -> ProtoMessage:
        """Our ``AIProjectResponse`` in ``wire``'s schema: model names (v0.1.2), or models with
        their type, calls in flight (``idle``) and ``cid``, and ``node_type`` (v0.2.3).  The
        model's API URL is this node's business and is never sent (Go sends it)."""
        if wire != V023:
            return pb.AIProjectResponse(projects=[pb.AIProjectOfNode(project=name, models=models)
                                                  for name, models in self._project_list()])
        pb23 = module_of(V023)
        load = self._model_load or (lambda project, model, cid: 0)
        return pb23.AIProjectResponse(node_type=self.node_type(), projects=[
            pb23.AIProjectOfNode(project=p.project, models=[
                pb23.AIModelOfProject(model=m.model, type=max(0, m.type), cid=m.cid,
                                      idle=max(0, int(load(p.project, m.model, m.cid))))
                for m in p.models])
            for p in self._projects.values()])

    # -- schemas ----------------------------------------------------------------------

    def _agent(self, node_id: str) -> str | None:
        if self._peer_agent is None:
            return None
        try:
            return self._peer_agent(node_id)
        except Exception:
            return None

    def wire_for(self, node_id: str, request: Any = None) -> str:
        """The schema to send ``node_id`` a request in: what its latest message spoke (an aicn
        node's latest heartbeat), else what its identify ``agent_version`` says, else
        :attr:`wire_version`.  An aicn node reads both: there a request's own
        ``preferred_wire()`` wins (an image request wants v0.1.2's IPFS answer,
        :meth:`~aicn.models.image.ImageRequest.preferred_wire`)."""
        schema, aicn = self._schemas.get(node_id, (None, False))
        agent = self._agent(node_id) if schema is None or not aicn else None
        preferred = getattr(request, "preferred_wire", None)
        if preferred is not None and (aicn or is_aicn(agent)):
            choice = preferred()
            if choice in WIRE_VERSIONS:
                return choice
        return schema or schema_of_version(agent) or self.wire_version

    def _note_schema(self, node_id: str, schema: str | None, header: str = "") -> None:
        if schema is None:
            return
        self._schemas.pop(node_id, None)  # re-insert: dict order = least recently heard first
        self._schemas[node_id] = (schema, is_aicn(header))
        while len(self._schemas) > KNOWN_SCHEMAS:
            del self._schemas[next(iter(self._schemas))]

    def _header_version(self, wire: str) -> str:
        return header_version(wire, self.client_version)

    # -- heartbeat --------------------------------------------------------------------

    def _tick(self) -> Deferred:
        if self.collector:
            try:
                pruned = self.db.prune_peers(self.clock.seconds(), PEER_RETENTION)
            except StorageError as exc:
                log.error("Cannot prune collected peers: {error}", error=str(exc))
            else:
                if pruned:
                    log.debug("Pruned {count} stale heartbeats", count=pruned)
        return Deferred.fromCoroutine(self._heartbeat_now())

    async def _heartbeat_now(self) -> None:
        """Publish a heartbeat; failures are logged, never raised."""
        if not self._running:
            return
        try:
            await self.send_heartbeat()
        except Exception as exc:
            self.stats["errors"] += 1
            log.warn("Cannot publish heartbeat: {error}", error=repr(exc))

    async def send_heartbeat(self) -> None:
        """Publish our AI-project broadcast now, in :attr:`wire_version`'s schema."""
        msg = build_heartbeat(
            client_version=self._header_version(self.wire_version),
            timestamp=int(self.clock.seconds()),
            node_id=self.node_id,
            response=self.projects_response(self.wire_version),
        )
        self._last_heartbeat = self.clock.seconds()
        await self.pubsub.publish(self.topic, msg.SerializeToString())
        self.stats["heartbeats_sent"] += 1

    def load_changed(self) -> None:
        """Calls in flight to one of our models changed: send a heartbeat soon (see the module
        docstring).  Nothing to do over v0.1.2's schema, whose heartbeats carry no load."""
        if not self._running or self.wire_version != V023:
            return
        if self._load_beat is not None and self._load_beat.active():
            return  # the pending one will carry this change too: it reads the counts when it runs
        now = self.clock.seconds()
        last = self._last_heartbeat if self._last_heartbeat is not None else now - self.load_heartbeat_interval
        delay = max(0.0, last + self.load_heartbeat_interval - now)
        self._load_beat = self.clock.callLater(delay, self._send_load_beat)

    def _send_load_beat(self) -> None:
        self._load_beat = None
        self.stats["load_heartbeats"] += 1
        Deferred.fromCoroutine(self._heartbeat_now())

    # -- the peers-collect store ------------------------------------------------------

    def fresh_peers(self, max_age: float = PEER_FRESH_AGE):
        """Collected heartbeats at most ``max_age`` seconds old, newest first
        (:class:`aicn.storage.PeerRecord`, ``projects`` = ``[{project, models}]``)."""
        try:
            return self.db.fresh_peers(self.clock.seconds(), max_age)
        except StorageError as exc:
            raise AICNError(ErrorCode.DATABASE, f"Database error: {exc}") from None

    def recent_heartbeats(self, max_age: float = PEER_FRESH_AGE) -> list[PeerRecord]:
        """Heartbeats heard at most ``max_age`` seconds ago, newest first, kept in
        memory by every node (collector or not) for routing ``/proxy`` requests."""
        cutoff = self.clock.seconds() - max_age
        return sorted((r for r in self._recent.values() if r.received_at >= cutoff),
                      key=lambda r: (-r.received_at, r.node_id))

    def heartbeat_records(self, max_age: float = PEER_FRESH_AGE, *,
                          collected: bool = True) -> list[PeerRecord]:
        """What routing and the views read: :meth:`recent_heartbeats`, then (with
        ``collected``) the collector store's :meth:`fresh_peers`; a database error
        is logged and leaves the heard ones only."""
        records = self.recent_heartbeats(max_age)
        if collected:
            try:
                records += self.fresh_peers(max_age)
            except AICNError as exc:
                log.warn("Cannot read collected heartbeats: {error}", error=exc.message)
        return records

    def heard_at(self, node_id: str) -> float | None:
        """When the latest heartbeat of ``node_id`` arrived (None: none kept)."""
        record = self._recent.get(node_id)
        return None if record is None else record.received_at

    def _on_heartbeat(self, msg: pb.Message) -> None:
        self.stats["heartbeats_received"] += 1
        node_id = msg.header.node_id
        if msg.type != pb.AI_PROJECT:
            self.stats["dropped_malformed"] += 1
            log.debug("Heartbeat of type {type} from {node_id} dropped", type=type_name(msg.type), node_id=node_id)
            return
        claimed = schema_of_version(msg.header.client_version)
        try:
            # Heartbeats are plaintext by definition; a node_pub_key is ignored.
            wire, kind, response = decode_body_tolerant(pb.AI_PROJECT, msg.body,
                                                        claimed or self.wire_for(node_id))
        except EnvelopeError as exc:
            wire, kind, response = None, "error", str(exc)
        if kind != "res":
            self.stats["dropped_malformed"] += 1
            log.debug("Malformed heartbeat from {node_id} dropped: {error}", node_id=node_id,
                      error=response if kind == "error" else "no response")
            return
        self._decoded_as(node_id, claimed, wire, "heartbeat", msg.header.client_version)
        projects, node_type = heartbeat_projects(response)
        now = self.clock.seconds()
        self._recent.pop(node_id, None)  # re-insert: dict order = least recently heard first
        self._recent[node_id] = PeerRecord(node_id, projects, node_type, now)
        while len(self._recent) > RECENT_HEARTBEATS:
            del self._recent[next(iter(self._recent))]
        if not self.collector:
            return
        try:
            self.db.store_heartbeat(node_id, projects, node_type, now)
        except StorageError as exc:
            self.stats["errors"] += 1
            log.error("Cannot store heartbeat of {node_id}: {error}", node_id=node_id, error=str(exc))
            return
        self.stats["heartbeats_stored"] += 1

    def _decoded_as(self, node_id: str, claimed: str | None, wire: str, what: str, header: str) -> None:
        """Remember the schema a peer's body spoke; count and log a body that contradicted
        the version in its header."""
        if claimed is not None and wire != claimed:
            self.stats["schema_fallbacks"] += 1
            log.info("{what} from {node_id} claims {claimed} but fits {wire} only", what=what,
                     node_id=node_id, claimed=claimed, wire=wire)
        # An aicn node speaks our schema to us: only its heartbeats say what it prefers.
        if what == "heartbeat" or not is_aicn(header) or node_id not in self._schemas:
            self._note_schema(node_id, wire, header)

    # -- sending requests -------------------------------------------------------------

    async def request(self, node_id: str, msg_type: int, request: ProtoMessage, *,
                      timeout: float | None = None) -> ProtoMessage:
        """Send ``request`` (e.g. ``PeerIdentityRequest()``) to ``node_id``; returns its response.

        ``request`` is a message of either schema or an object with
        ``to_protobuf(module)``; it goes out in :meth:`wire_for` the node's
        schema, and the response comes back as a message of the schema it
        arrived in (:class:`~aicn.models.chat.ChatResult` and the like read both).

        ``timeout`` (seconds) replaces the type's timeout of the request table.
        Raises :class:`AICNError`: 1001 for an invalid ``node_id``, 1005 at
        once (or after a DHT lookup of a few seconds) when nothing shows that
        the request can reach the node (:mod:`aicn.node.reach`), 1012 when a
        CHAT/IMAGE body cannot be encrypted, 1004 on timeout, 1013 when the
        answer does not decrypt, 1003 when it does not parse, and
        :class:`AnswerError` when the node answers with a non-zero code.
        A request to our own ``node_id`` is answered locally (within
        ``timeout`` if one is given).
        """
        if msg_type not in BODY_TYPES:
            raise AICNError(ErrorCode.UNSUPPORTED, f"Unsupported message type {type_name(msg_type)}")
        if node_id == self.node_id:
            return await self._request_locally(msg_type, request, timeout)
        try:
            PeerID.from_string(node_id)
        except InvalidPeerID:
            raise AICNError(ErrorCode.PARAMETER, "invalid node_id") from None
        evidence = await self.reachability.check(node_id, self.heard_at(node_id))
        wire = self.wire_for(node_id, request)
        body, node_pub_key = self._seal(node_id, msg_type, encode_request(msg_type, to_wire(request, wire)))
        request_id = self.requests.new_id()
        answer = self.requests.add(request_id, node_id, msg_type, timeout, wire=wire)
        log.debug("Request {request_id} ({type}, {wire}) to {node_id}, reachable: {evidence}",
                  request_id=request_id, type=type_name(msg_type), wire=wire, node_id=node_id,
                  evidence=evidence)
        msg = build_message(
            msg_type=msg_type,
            client_version=self._header_version(wire),
            timestamp=int(self.clock.seconds()),
            node_id=self.node_id,
            request_id=request_id,
            receiver=node_id,
            node_pub_key=node_pub_key,
            body=body,
        )
        try:
            await self.pubsub.publish(self.topic, msg.SerializeToString())
        except Exception as exc:
            log.warn("Cannot publish request {request_id}: {error}", request_id=request_id, error=repr(exc))
            self.requests.fail(request_id, AICNError(ErrorCode.INTERNAL, f"cannot publish request: {exc}"))
        return await answer

    async def _request_locally(self, msg_type: int, request: ProtoMessage, timeout: float | None) -> ProtoMessage:
        d = Deferred.fromCoroutine(self.answer(msg_type, request, RequestContext(self.node_id, "", local=True)))
        if timeout is not None:
            d.addTimeout(timeout, self.clock)
        try:
            code, message, response = await d
        except DeferredTimeout:
            raise AICNError(ErrorCode.TIMEOUT) from None
        if code:
            raise AnswerError(code, message, response)
        return response

    def _seal(self, node_id: str, msg_type: int, plaintext: bytes) -> tuple[bytes, bytes]:
        """Encrypt a body for ``node_id``: ``(body, node_pub_key)``.

        Falls back to plaintext (empty ``node_pub_key``) when encryption is not
        possible, except for :data:`STRICT_ENCRYPTION_TYPES` (1012).
        """
        try:
            return seal_body(self._key, public_key_from_peer_id(node_id), plaintext)
        except BodyEncryptError as exc:
            if msg_type in STRICT_ENCRYPTION_TYPES:
                raise AICNError(ErrorCode.ENCRYPT, f"Encrypt error: {exc}") from None
            self.stats["sent_plaintext"] += 1
            log.debug("Sending {type} to {node_id} in plaintext: {error}",
                      type=type_name(msg_type), node_id=node_id, error=str(exc))
            return plaintext, b""

    # -- receiving --------------------------------------------------------------------

    def _on_message(self, message: Any) -> None:
        """The pubsub handler: never raises."""
        try:
            self._receive(message)
        except Exception:
            self.stats["errors"] += 1
            log.failure("Error handling a message on {topic}", topic=self.topic)

    def _receive(self, message: Any) -> None:
        try:
            msg = decode_message(message.data)
        except EnvelopeError as exc:
            self.stats["dropped_malformed"] += 1
            log.debug("Dropped undecodable message from {peer}: {error}",
                      peer=str(message.from_peer), error=str(exc))
            return
        author = None if message.from_peer is None else str(message.from_peer)
        disposition = classify(msg, self.node_id, author, key_matches_peer)
        header = msg.header
        if disposition is Disposition.SPOOFED:
            self.stats["dropped_spoofed"] += 1
            log.warn("Dropped message claiming node_id {node_id} published by {author}",
                     node_id=header.node_id, author=author)
        elif disposition is Disposition.BAD_KEY:
            self.stats["dropped_bad_key"] += 1
            log.warn("Dropped message from {node_id} whose node_pub_key is another node's",
                     node_id=header.node_id)
        elif disposition is Disposition.HEARTBEAT:
            self._on_heartbeat(msg)
        elif disposition is Disposition.OWN:
            self.stats["ignored_own"] += 1
        elif disposition is Disposition.NOT_FOR_US:
            self.stats["ignored_not_for_us"] += 1
        elif not header.id:
            self.stats["dropped_malformed"] += 1
            log.debug("Dropped addressed message without id from {node_id}", node_id=header.node_id)
        else:
            pending = self.requests.get(header.id)
            if pending is not None and pending.node_id == header.node_id:
                self._on_answer(msg, pending.msg_type, pending.wire)
            elif msg.result_code != 0:
                # An error reply to nothing we wait for; never answer it.
                self.stats["dropped_unknown_reply"] += 1
                log.debug("Dropped unexpected error reply {request_id} from {node_id}",
                          request_id=header.id, node_id=header.node_id)
            else:
                self._spawn(self._serve(msg))

    def _on_answer(self, msg: pb.Message, expected_type: int, sent_wire: str) -> None:
        """Complete the pending request that ``msg`` answers (we asked in ``sent_wire``)."""
        request_id = msg.header.id
        claimed = schema_of_version(msg.header.client_version)
        wire = claimed or sent_wire
        code = code_from_wire(msg.result_code, wire)
        try:
            plaintext = open_body(self._key, msg.header.node_pub_key, msg.body)
        except BodyDecryptError as exc:
            error = (AnswerError(code, msg.result_message) if code
                     else AICNError(ErrorCode.DECRYPT, f"Decrypt error: {exc}"))
            self.requests.fail(request_id, error)
            return
        kind, response = None, None
        problem = None
        if msg.type != expected_type:
            problem = f"answer of type {type_name(msg.type)} to a {type_name(expected_type)} request"
        else:
            try:
                decoded, kind, response = decode_body_tolerant(msg.type, plaintext, wire)
            except EnvelopeError as exc:
                problem = str(exc)
            else:
                self._decoded_as(msg.header.node_id, claimed, decoded, "answer", msg.header.client_version)
        if code:
            self.requests.fail(
                request_id, AnswerError(code, msg.result_message, response if kind == "res" else None)
            )
        elif problem is not None or kind != "res":
            self.requests.fail(
                request_id, AICNError(ErrorCode.PROTOBUF, problem or "answer carries no response")
            )
        else:
            self.requests.resolve(request_id, response)

    def _spawn(self, coro) -> None:
        d = Deferred.fromCoroutine(coro)
        self._inflight.add(d)

        def done(result):
            self._inflight.discard(d)
            if isinstance(result, Failure) and not result.check(CancelledError):
                self.stats["errors"] += 1
                log.failure("Error answering a request", failure=result)
            return None

        d.addBoth(done)

    async def _serve(self, msg: pb.Message) -> None:
        """Answer one addressed request, in the schema it came in."""
        header = msg.header
        claimed = schema_of_version(header.client_version)
        wire = claimed or self.wire_for(header.node_id)
        if msg.type not in BODY_TYPES:
            await self._send_error(msg, ErrorCode.UNSUPPORTED, wire=wire)
            return
        try:
            plaintext = open_body(self._key, header.node_pub_key, msg.body)
        except BodyDecryptError as exc:
            log.info("Cannot decrypt {type} request from {node_id}: {error}",
                     type=type_name(msg.type), node_id=header.node_id, error=str(exc))
            await self._send_error(msg, ErrorCode.DECRYPT, wire=wire)
            return
        try:
            wire, kind, request = decode_body_tolerant(msg.type, plaintext, wire)
        except BodyDecodeError as exc:
            log.info("Bad {type} body from {node_id}: {error}",
                     type=type_name(msg.type), node_id=header.node_id, error=str(exc))
            await self._send_error(msg, ErrorCode.PROTOBUF, wire=wire)
            return
        self._decoded_as(header.node_id, claimed, wire, "request", header.client_version)
        if kind == "res":
            # A response to a request that is no longer pending (timed out).
            self.stats["dropped_unknown_reply"] += 1
            log.debug("Dropped late answer {request_id} from {node_id}",
                      request_id=header.id, node_id=header.node_id)
            return
        if kind is None:
            await self._send_error(msg, ErrorCode.PROTOBUF, "Protobuf serialization error: empty body",
                                   wire=wire)
            return
        context = RequestContext(header.node_id, header.id, wire=wire)
        code, message, response = await self.answer(msg.type, request, context)
        await self._send_answer(msg, code, message, response, wire)

    async def answer(
        self, msg_type: int, request: ProtoMessage, context: RequestContext
    ) -> tuple[int, str, ProtoMessage | None]:
        """Our answer to a request: ``(result_code, result_message, response)``."""
        try:
            if msg_type == pb.PEER_IDENTITY:
                return 0, "ok", self._identity_response()
            if msg_type == pb.HOST_INFO:
                return await self._host_info_answer()
            if msg_type == pb.AI_PROJECT:
                # A local request gets the richer schema.
                return 0, "ok", self.projects_response(context.wire or V023)
            handler = self._model_handlers.get(msg_type)
            if handler is None:
                return int(ErrorCode.UNSUPPORTED), ErrorCode.UNSUPPORTED.message, None
            return await handler(request, context)
        except AICNError as exc:
            return int(exc.code), exc.message, None
        except CancelledError:
            raise
        except Exception:
            log.failure("Error answering a {type} request", type=type_name(msg_type))
            return int(ErrorCode.INTERNAL), ErrorCode.INTERNAL.message, None

    def _identity_response(self) -> pb.PeerIdentityResponse:
        info = self._identify_provider()
        return pb.PeerIdentityResponse(
            listen_addrs=[str(a) for a in info.get("addresses") or ()],
            protocols=[str(p) for p in info.get("protocols") or ()],
            protocol_version=str(info.get("protocol_version") or ""),
            agent_version=str(info.get("agent_version") or ""),
        )

    async def _collect_host_info(self) -> _hostinfo.HostInfoReport:
        """Run the host-info provider; concurrent requests share one collection
        (it walks sysfs in a thread, and any peer can ask for it)."""
        if self._hostinfo_waiters is not None:
            waiter: Deferred = Deferred()
            self._hostinfo_waiters.append(waiter)
            return await waiter
        self._hostinfo_waiters = []
        try:
            report = await self._hostinfo_provider()
        except BaseException:
            waiters, self._hostinfo_waiters = self._hostinfo_waiters, None
            failure = Failure()
            for waiter in waiters:
                waiter.errback(failure)
            raise
        waiters, self._hostinfo_waiters = self._hostinfo_waiters, None
        for waiter in waiters:
            waiter.callback(report)
        return report

    async def _host_info_answer(self) -> tuple[int, str, ProtoMessage | None]:
        try:
            report = await self._collect_host_info()
        except CancelledError:
            raise
        except Exception as exc:
            log.failure("Host info collection failed")
            return int(ErrorCode.HOST_INFO), f"Host info error: {exc}", pb.HostInfoResponse()
        response = _hostinfo.to_proto(report.info)
        if report.ok:
            return 0, "ok", response
        return int(ErrorCode.HOST_INFO), report.error_text or ErrorCode.HOST_INFO.message, response

    async def _send_answer(
        self, request: pb.Message, code: int, message: str, response: Any, wire: str
    ) -> None:
        requester = request.header.node_id
        body, node_pub_key = b"", b""
        if response is not None:
            try:
                response = to_wire(response, wire)
                body, node_pub_key = self._seal(requester, request.type, encode_response(request.type, response))
            except AICNError as exc:
                await self._send_error(request, exc.code, exc.message, wire=wire)
                return
        timestamp = int(self.clock.seconds())
        if request.type in (pb.CHAT_COMPLETION, pb.IMAGE_GENERATION) and getattr(response, "created", 0) \
                and isinstance(response.created, int):
            timestamp = response.created  # as the Go node does
        await self._publish_reply(request, code, message, body, node_pub_key, timestamp, wire)
        self.stats["requests_answered"] += 1

    async def _send_error(self, request: pb.Message, code: int, message: str | None = None, *,
                          wire: str) -> None:
        """A plaintext error reply with an empty body."""
        if message is None:
            message = ErrorCode(code).message
        self.stats["error_replies_sent"] += 1
        await self._publish_reply(request, int(code), message, b"", b"", int(self.clock.seconds()), wire)

    async def _publish_reply(
        self, request: pb.Message, code: int, message: str, body: bytes, node_pub_key: bytes, timestamp: int,
        wire: str,
    ) -> None:
        """Publish an answer in ``wire``'s schema (its header version, its code numbering)."""
        reply = build_message(
            msg_type=request.type,
            client_version=self._header_version(wire),
            timestamp=timestamp,
            node_id=self.node_id,
            request_id=request.header.id,
            receiver=request.header.node_id,
            node_pub_key=node_pub_key,
            body=body,
            result_code=code_to_wire(code, wire),
            result_message=message,
        )
        try:
            await self.pubsub.publish(self.topic, reply.SerializeToString())
        except Exception as exc:
            self.stats["errors"] += 1
            log.warn("Cannot publish answer {request_id}: {error}", request_id=request.header.id, error=repr(exc))

    # -- misc -------------------------------------------------------------------------

    def topic_peers(self) -> list[str]:
        """Peers known to be subscribed to our topic."""
        return [str(p) for p in self.pubsub.peers(self.topic)]


def heartbeat_projects(response) -> tuple[list[dict], int]:
    """What a heartbeat (an ``AIProjectResponse`` of either schema) stores: ``([{project,
    models: [names][, instances: [{model, type, idle, cid}]]}], node_type)``.

    v0.2.3's model entries become ``instances`` (without their API URL, a detail of
    the worker) and their distinct names ``models``, so that readers of names see
    both schemas alike; v0.1.2 has names only and no ``node_type`` (0).
    """
    if version_of(response) != V023:
        return [{"project": p.project, "models": list(p.models)} for p in response.projects], 0
    projects = []
    for p in response.projects:
        names = list(dict.fromkeys(m.model for m in p.models))
        instances = [{"model": m.model, "type": m.type, "idle": m.idle, "cid": m.cid} for m in p.models]
        projects.append({"project": p.project, "models": names, "instances": instances})
    return projects, response.node_type
