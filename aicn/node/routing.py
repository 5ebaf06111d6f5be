"""Choosing the node that answers a ``/proxy`` model request (pure, clock-injected).

The ``/api/v0/chat/completion/proxy`` and ``/api/v0/image/gen/proxy``
endpoints name a project and a model, not a node.  The node gathers the
candidates (fresh heartbeats, our own registry) and asks a
:class:`NodeSelector` for the order in which to try them; after each attempt
it reports the outcome, so that a failing node cools down and the next
request goes elsewhere.

Policy:

* **Order**: nodes with a clean record before nodes whose last attempt
  failed; then our own node (no network hop), then connected peers by
  measured round-trip latency (the peerstore's EWMA), then connected peers
  with no measurement yet, then peers we would first have to dial; the peer
  id breaks ties so the order is deterministic.
* **Tries**: at most ``max_tries`` (3, as the Go node) candidates per request,
  tried one after another.  Model calls are GPU work: fanning one request out
  to three nodes would triple the load of every request to save time only
  when a node fails, and failures of a node whose model is down are fast
  (a 1006 answer), so trying in turn costs little.
* **Cool-down**: a node that fails is skipped for ``base_cooldown * 2**(n-1)``
  seconds after its n-th consecutive failure (capped at ``max_cooldown``); a
  success clears its record.  Records are kept per ``(node, service)`` where
  the service is e.g. ``(project, model)``: one broken model does not take a
  node's other models out of rotation.  Records live in memory only and at
  most ``max_tracked`` of them (the oldest failures are forgotten first).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from typing import Optional

import attrs
from twisted.internet.interfaces import IReactorTime

__all__ = ["Candidate", "Plan", "NodeSelector", "MAX_TRIES"]

#: Candidates tried per request (the Go node's limit).
MAX_TRIES = 3


@attrs.frozen
class Candidate:
    """A node that serves the requested model."""

    node_id: str
    #: Our own node.
    local: bool = False
    #: A libp2p connection to it is open now.
    connected: bool = False
    #: Smoothed round-trip time in seconds, if measured.
    latency: Optional[float] = None


@attrs.frozen
class Plan:
    """What to do for one request."""

    #: Candidates to try, in order (at most ``max_tries``).
    attempts: tuple[Candidate, ...]
    #: Candidates skipped because they are cooling down after failures.
    cooling: tuple[Candidate, ...]
    #: Seconds until the first cooling candidate may be tried again (0 if none).
    retry_after: float = 0.0


@attrs.define
class _Health:
    failures: int = 0
    until: float = 0.0
    last_failure: float = 0.0


class NodeSelector:
    """Ranks candidates and remembers failures.

    :param clock: an ``IReactorTime`` (``seconds()`` only).
    :param max_tries: candidates per request.
    :param base_cooldown: seconds a node is skipped after its first failure.
    :param max_cooldown: upper bound of the exponential back-off.
    :param max_tracked: most ``(node, service)`` records kept.
    """

    def __init__(self, clock: IReactorTime, *, max_tries: int = MAX_TRIES, base_cooldown: float = 2.0,
                 max_cooldown: float = 300.0, max_tracked: int = 4096) -> None:
        if max_tries < 1:
            raise ValueError("max_tries must be at least 1")
        self.clock = clock
        self.max_tries = max_tries
        self.base_cooldown = float(base_cooldown)
        self.max_cooldown = float(max_cooldown)
        self.max_tracked = max_tracked
        self._health: dict[tuple[str, Hashable], _Health] = {}

    # -- ranking ----------------------------------------------------------------------

    @staticmethod
    def _tier(c: Candidate) -> int:
        if c.local:
            return 0
        if c.connected:
            return 1 if c.latency is not None else 2
        return 3

    def _key(self, c: Candidate, service: Hashable):
        health = self._health.get((c.node_id, service))
        latency = c.latency if c.latency is not None and math.isfinite(c.latency) else math.inf
        return (health is not None and health.failures > 0, self._tier(c), latency, c.node_id)

    def plan(self, candidates: Iterable[Candidate], service: Hashable = None) -> Plan:
        """The candidates to try for ``service``, best first.

        Duplicate node ids are merged (local and connected win, the lowest
        latency is kept).  Candidates cooling down are left out.
        """
        merged: dict[str, Candidate] = {}
        for c in candidates:
            old = merged.get(c.node_id)
            if old is not None:
                latencies = [x for x in (old.latency, c.latency) if x is not None]
                c = Candidate(c.node_id, old.local or c.local, old.connected or c.connected,
                              min(latencies) if latencies else None)
            merged[c.node_id] = c
        now = self.clock.seconds()
        ready, cooling = [], []
        for c in merged.values():
            (cooling if self.cooldown_left(c.node_id, service, now) > 0 else ready).append(c)
        ready.sort(key=lambda c: self._key(c, service))
        cooling.sort(key=lambda c: self._health[(c.node_id, service)].until)
        retry_after = self.cooldown_left(cooling[0].node_id, service, now) if cooling else 0.0
        return Plan(tuple(ready[: self.max_tries]), tuple(cooling), retry_after)

    # -- outcomes ---------------------------------------------------------------------

    def cooldown_left(self, node_id: str, service: Hashable = None, now: Optional[float] = None) -> float:
        """Seconds before ``node_id`` may be tried again for ``service`` (0: now)."""
        health = self._health.get((node_id, service))
        if health is None:
            return 0.0
        now = self.clock.seconds() if now is None else now
        return max(0.0, health.until - now)

    def failures(self, node_id: str, service: Hashable = None) -> int:
        """Consecutive failures recorded for ``node_id`` and ``service``."""
        health = self._health.get((node_id, service))
        return health.failures if health is not None else 0

    def failed(self, node_id: str, service: Hashable = None) -> float:
        """Record a failure; returns the cool-down it earned (seconds)."""
        key = (node_id, service)
        now = self.clock.seconds()
        health = self._health.pop(key, None) or _Health()
        health.failures += 1
        cooldown = min(self.max_cooldown, self.base_cooldown * 2 ** min(health.failures - 1, 62))
        health.until = now + cooldown
        health.last_failure = now
        self._health[key] = health  # re-inserted: dict order = least recently failed first
        while len(self._health) > self.max_tracked:
            del self._health[next(iter(self._health))]
        return cooldown

    def succeeded(self, node_id: str, service: Hashable = None) -> None:
        """Record a success: the node's record is cleared."""
        self._health.pop((node_id, service), None)
