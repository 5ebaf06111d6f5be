"""The node's Prometheus metrics, read from its components at scrape time.

Each node has its own :class:`~prometheus_client.CollectorRegistry` (never
the global one: several nodes may run in one process, as in the tests).
Components count for themselves (:mod:`aicn.stats`, ``FloodSub.stats``,
``Application.stats`` …); :class:`NodeCollector` turns what they hold into
metric families when Prometheus asks, so nothing in the node calls the
metrics library.  The process collector adds ``process_*`` (memory, CPU,
file descriptors of our pid).

README.md ("Metrics") lists every metric; a family that fails to read is
logged and left out, never the whole scrape.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.utils import floatToGoString

from aicn import AGENT_VERSION, PROTOCOL_VERSION
from aicn.log import Logger
from aicn.node.reach import PEER_FRESH_AGE
from aicn.node.status import NodeStatus
from aicn.stats import LabelledCounter, LabelledHistogram

__all__ = ["CONTENT_TYPE", "DROP_REASONS", "NodeCollector", "NodeMetrics"]

log = Logger()

#: The Prometheus text format (0.0.4), as ``generate_latest`` writes it.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

#: ``reason`` of ``aicn_pubsub_messages_dropped_total`` for each counter:
#: floodsub's (the router, before delivery) and the application's (valid
#: floodsub messages whose AICN envelope is refused).
DROP_REASONS = {
    "pubsub": {
        "duplicates": "duplicate",
        "invalid_signature": "bad_signature",
        "invalid_message": "invalid",
        "self_origin": "self_origin",
        "too_large": "oversize",
        "malformed_rpc": "malformed_rpc",
        "dropped_queue_full": "queue_full",
    },
    "application": {
        "dropped_spoofed": "spoof",
        "dropped_bad_key": "bad_key",
        "dropped_malformed": "malformed",
        "dropped_unknown_reply": "unknown_reply",
    },
}


def _counter(name: str, doc: str, counter: LabelledCounter) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=counter.labels)
    for values, value in counter.items():
        family.add_metric(values, value)
    return family


def _histogram(name: str, doc: str, histograms: LabelledHistogram) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=histograms.labels)
    for values, h in histograms.items():
        family.add_metric(values, [(floatToGoString(b), c) for b, c in h.cumulative()], h.sum)
    return family


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc)
    family.add_metric([], value)
    return family


def _total(name: str, doc: str, value: float) -> CounterMetricFamily:
    """An unlabelled counter (``name`` without ``_total``: the library adds it)."""
    family = CounterMetricFamily(name, doc)
    family.add_metric([], value)
    return family


class NodeCollector:
    """A custom collector over a :class:`~aicn.node.status.NodeStatus`."""

    def __init__(self, status: NodeStatus) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        for part in (self._info, self._swarm, self._pubsub, self._dht, self._application, self._models,
                     self._relay, self._autonat):
            try:
                yield from part()
            except Exception:
                log.failure("Cannot read metrics from {part}", part=part.__name__.lstrip("_"))

    def _info(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("aicn_info", "This node: always 1, with its identity as labels",
                                 labels=("peer_id", "agent_version", "protocol_version"))
        info.add_metric([str(self.status.host.peer_id), AGENT_VERSION, PROTOCOL_VERSION], 1)
        yield info
        yield _gauge("aicn_start_time_seconds", "When the node started (Unix time)",
                     self.status.started_at)

    def _swarm(self) -> Iterator[Metric]:
        host = self.status.host
        swarm = host.swarm
        open_now = GaugeMetricFamily("aicn_connections", "Open libp2p connections",
                                     labels=("direction", "transport"))
        counts: dict[tuple[str, str], int] = {(d, t): 0 for d in ("inbound", "outbound")
                                              for t in ("direct", "relayed")}
        for conn in host.connections():
            key = (conn.direction.lower(), conn.transport)
            counts[key] = counts.get(key, 0) + 1
        for key, value in sorted(counts.items()):
            open_now.add_metric(key, value)
        yield open_now
        yield _counter("aicn_connections_opened", "libp2p connections opened", swarm.connections_opened)
        yield _counter("aicn_connections_closed", "libp2p connections closed", swarm.connections_closed)
        yield _total("aicn_dial_failures", "Dials that found no working address",
                     swarm.dial_failures)
        streams = GaugeMetricFamily("aicn_streams", "Open streams, by protocol ('' while negotiating)",
                                    labels=("protocol",))
        for protocol, value in sorted(swarm.open_streams().items()):
            streams.add_metric([protocol], value)
        yield streams
        yield _counter("aicn_streams_opened", "Streams opened", swarm.streams_opened)
        yield _gauge("aicn_peers_connected", "Peers with an open connection",
                     len(host.connected_peers()))
        yield _gauge("aicn_peers_known", "Peers in the peerstore",
                     len(host.peerstore.peers()))

    def _pubsub(self) -> Iterator[Metric]:
        pubsub, app = self.status.pubsub, self.status.app
        dropped = CounterMetricFamily("aicn_pubsub_messages_dropped",
                                      "Messages dropped, by reason (floodsub and the AICN envelope)",
                                      labels=("layer", "reason"))
        if pubsub is not None:
            stats = pubsub.stats
            for name, doc in (("received", "Messages received from peers"),
                              ("published", "Messages we published"),
                              ("forwarded", "Message copies queued to peers (ours and relayed)"),
                              ("delivered", "Messages handed to our topic handlers")):
                yield _total(f"aicn_pubsub_messages_{name}", doc, stats.get(name, 0))
            yield _total("aicn_pubsub_handler_errors", "Exceptions in topic handlers",
                         stats.get("handler_errors", 0))
            for key, reason in DROP_REASONS["pubsub"].items():
                dropped.add_metric(["pubsub", reason], stats.get(key, 0))
            yield _gauge("aicn_pubsub_topic_peers", "Peers subscribed to our topic",
                         len(pubsub.peers(app.topic)))
        for key, reason in DROP_REASONS["application"].items():
            dropped.add_metric(["application", reason], app.stats.get(key, 0))
        yield dropped

    def _dht(self) -> Iterator[Metric]:
        dht = self.status.dht
        if dht is None:
            return
        yield _gauge("aicn_dht_routing_table_peers", "Peers in the DHT routing table",
                     len(dht.routing_table))
        yield _gauge("aicn_dht_serving", "1 while we answer DHT requests (server mode)",
                     1 if dht.serving else 0)
        yield _gauge("aicn_dht_provider_records", "Provider records we store",
                     len(dht.providers))
        yield _histogram("aicn_dht_query_duration_seconds",
                         "One DHT request and its reply, by type and result", dht.query_seconds)
        yield _histogram("aicn_dht_lookup_duration_seconds", "Iterative DHT lookups, by type",
                         dht.lookup_seconds)
        yield _counter("aicn_dht_requests_served", "DHT requests we answered, by type", dht.requests_served)

    def _application(self) -> Iterator[Metric]:
        app = self.status.app
        stats = app.stats
        fresh = f"Nodes (ours included) whose heartbeat we heard in the last {PEER_FRESH_AGE / 60:g} minutes"
        yield _gauge("aicn_heartbeats_fresh", fresh, len(app.recent_heartbeats(PEER_FRESH_AGE)))
        for name, doc in (("heartbeats_received", "Heartbeats received"),
                          ("heartbeats_sent", "Heartbeats we published"),
                          ("load_heartbeats", "Heartbeats we published because calls in flight changed"),
                          ("heartbeats_stored", "Heartbeats stored (collector)"),
                          ("requests_answered", "Requests from other nodes we answered"),
                          ("error_replies_sent", "Error replies we sent"),
                          ("errors", "Errors while handling application messages")):
            yield _total(f"aicn_app_{name}", doc, stats.get(name, 0))
        yield _gauge("aicn_app_pending_requests", "Our requests waiting for an answer",
                     len(app.requests))
        yield _gauge("aicn_app_registered_models", "Models this node serves",
                     sum(len(p.models) for p in app.projects()))

    def _models(self) -> Iterator[Metric]:
        stats = self.status.model_stats
        if stats is None:
            return
        yield _counter("aicn_model_requests",
                       "Model requests, by kind, route, result code and answering node", stats.requests)
        yield _histogram("aicn_model_request_duration_seconds",
                         "Model requests, from the request to the whole answer", stats.duration)
        yield _histogram("aicn_model_request_ttfb_seconds",
                         "Model requests, from the request to the first byte of the answer", stats.ttfb)
        yield _counter("aicn_model_proxy_failovers",
                       "/proxy attempts that failed, so the next node was tried", stats.failovers)
        yield _counter("aicn_model_streams_ended", "Streamed answers, by how they ended",
                       stats.streams_ended)
        yield _gauge("aicn_model_requests_in_flight", "Model requests not answered yet",
                     stats.in_flight)

    def _relay(self) -> Iterator[Metric]:
        service, client = self.status.relay_service, self.status.relay_client
        if service is not None:
            yield _gauge("aicn_relay_reservations", "Reservations other peers hold on us",
                         service.active_reservations())
            yield _gauge("aicn_relay_circuits", "Circuits we relay now", service.active_circuits)
            yield _counter("aicn_relay_requests", "Hop requests answered, by type and status",
                           service.requests)
            yield _total("aicn_relay_relayed_bytes", "Bytes relayed through our circuits",
                         service.bytes_relayed)
        if client is not None:
            yield _gauge("aicn_relay_client_reservations", "Reservations we hold on relays",
                         len(client.reservations))

    def _autonat(self) -> Iterator[Metric]:
        reachability = GaugeMetricFamily("aicn_autonat_reachability",
                                         "1 for AutoNAT's current verdict on our reachability",
                                         labels=("state",))
        current = self.status.reachability
        for state in ("public", "private", "unknown"):
            reachability.add_metric([state], 1 if current == state else 0)
        yield reachability
        if self.status.autonat_service is not None:
            yield _counter("aicn_autonat_responses", "AutoNAT dial-back requests answered, by status",
                           self.status.autonat_service.responses)


class NodeMetrics:
    """One node's registry: :class:`NodeCollector` plus the process and platform collectors."""

    def __init__(self, status: NodeStatus | None) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        if status is not None:
            self.registry.register(NodeCollector(status))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format (:data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)
