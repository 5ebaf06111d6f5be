"""The iterative Kademlia lookup as a pure state machine.

A :class:`Lookup` knows nothing of streams or time.  Its driver asks
:meth:`Lookup.next_queries` which peers to query, and reports each outcome
with :meth:`Lookup.on_response` (with the closer peers the answer named) or
:meth:`Lookup.on_failure` (error, refusal or timeout).  The rules follow the
paper and go/js:

* at most ``alpha`` queries are in flight;
* the next peer to query is always the closest one heard of but not yet
  queried, among the ``k`` closest peers that have not failed;
* the lookup is done once those ``k`` closest non-failed peers have all
  answered (or there is nobody left to ask), or when :meth:`stop` is called
  (e.g. the target peer was found).

:meth:`Lookup.closest` then gives the closest peers that answered.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from aicn.p2p.kad.keyspace import distance, kad_id
from aicn.p2p.peerid import PeerID

ALPHA = 3
K = 20


class PeerState(enum.Enum):
    HEARD = "heard"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class Lookup:
    """Lookup of the key-space id ``target`` starting from ``seeds``.

    ``exclude`` (usually our own peer ID) is never queried nor returned.
    """

    def __init__(self, target: bytes, seeds: Iterable[PeerID], *, k: int = K, alpha: int = ALPHA,
                 exclude: Iterable[PeerID] = ()) -> None:
        self.target = target
        self.k = k
        self.alpha = alpha
        self._exclude = set(exclude)
        self._state: dict[PeerID, PeerState] = {}
        self._distance: dict[PeerID, int] = {}
        self._hops: dict[PeerID, int] = {}
        self._stopped = False
        for peer in seeds:
            self._hear(peer, 0)

    # -- inputs --------------------------------------------------------------------

    def _hear(self, peer: PeerID, hops: int) -> None:
        if peer in self._state or peer in self._exclude:
            return
        self._state[peer] = PeerState.HEARD
        self._distance[peer] = distance(kad_id(peer), self.target)
        self._hops[peer] = hops

    def next_queries(self) -> list[PeerID]:
        """Peers to query now (marked in flight); empty when nothing is due."""
        if self.done:
            return []
        free = self.alpha - self.in_flight
        out = []
        for peer in self._window():
            if free <= 0:
                break
            if self._state[peer] is PeerState.HEARD:
                self._state[peer] = PeerState.WAITING
                out.append(peer)
                free -= 1
        return out

    def on_response(self, peer: PeerID, closer: Iterable[PeerID]) -> None:
        """``peer`` answered, naming ``closer`` peers."""
        if self._state.get(peer) is not PeerState.WAITING:
            return  # late answer after a timeout was reported: ignore
        self._state[peer] = PeerState.SUCCEEDED
        hops = self._hops[peer] + 1
        for other in closer:
            self._hear(other, hops)

    def on_failure(self, peer: PeerID) -> None:
        """``peer`` failed to answer (error, refusal, timeout)."""
        if self._state.get(peer) is PeerState.WAITING:
            self._state[peer] = PeerState.FAILED

    def stop(self) -> None:
        """End the lookup early; in-flight answers are then ignored."""
        self._stopped = True

    # -- state ---------------------------------------------------------------------

    def _window(self) -> list[PeerID]:
        """The k closest peers that have not failed, nearest first."""
        live = [p for p, s in self._state.items() if s is not PeerState.FAILED]
        live.sort(key=self._distance.__getitem__)
        return live[: self.k]

    @property
    def in_flight(self) -> int:
        return sum(1 for s in self._state.values() if s is PeerState.WAITING)

    @property
    def done(self) -> bool:
        """True once stopped, or once the k closest live peers have all answered
        (which includes "nobody left to ask")."""
        if self._stopped:
            return True
        return all(self._state[p] is PeerState.SUCCEEDED for p in self._window())

    @property
    def stopped(self) -> bool:
        return self._stopped

    def state(self, peer: PeerID) -> PeerState | None:
        return self._state.get(peer)

    @property
    def queried(self) -> int:
        """How many peers were asked so far (answered, failed or in flight)."""
        return sum(1 for s in self._state.values() if s is not PeerState.HEARD)

    def hops(self, peer: PeerID) -> int | None:
        """How many answers it took to hear of ``peer``: 0 for a seed, 1 for a
        peer a seed named, and so on (the first referral counts).  ``None`` for
        a peer never heard of."""
        return self._hops.get(peer)

    def closest(self, count: int | None = None) -> list[PeerID]:
        """The closest peers that answered, nearest first (at most ``count``, default k)."""
        count = self.k if count is None else count
        answered = [p for p, s in self._state.items() if s is PeerState.SUCCEEDED]
        answered.sort(key=self._distance.__getitem__)
        return answered[:count]
