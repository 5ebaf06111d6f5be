"""Counts and timings of the model requests this node makes for its API clients.

:class:`ModelRequestStats` is kept by the model backend
(:class:`~aicn.node.modelapi.ModelBackend`); each request of the chat and
image endpoints (direct or ``/proxy``, and any other API built on them) is
one :class:`RequestTimer`.  The metrics and the dashboard read the counters:

* ``requests``: by ``(kind, route, code, node)``: kind ``chat``,
  ``chat_stream`` or ``image``; route ``direct`` or ``proxy``; ``code`` the
  result code (``0`` for success, else the AICN error code); ``node`` the
  node that answered (on failure: the node asked on a direct request, ``""``
  when none was, or a ``/proxy`` that found no working node);
* ``duration``: seconds from the request to its whole answer (a stream: its
  end, whatever the outcome); ``ttfb``: to the first byte of the answer (a
  non-streamed answer arrives whole, so both are the same);
* ``failovers``: ``/proxy`` attempts that failed and moved on, by node and code;
* ``code`` ``cancelled``: the request was cancelled (its client left) before an answer;
* ``streams_ended``: streamed answers by :class:`~aicn.node.modelstream.Outcome`.
"""

from __future__ import annotations

from typing import Optional

from twisted.internet.defer import CancelledError

from aicn.errors import AICNError
from aicn.node.modelstream import ModelStream, Outcome
from aicn.stats import LabelledCounter, LabelledHistogram

__all__ = ["ModelRequestStats", "RequestTimer"]


class ModelRequestStats:
    """The counters and histograms of model requests (see the module docstring)."""

    def __init__(self, clock) -> None:
        self.clock = clock
        self.requests = LabelledCounter(("kind", "route", "code", "node"))
        self.duration = LabelledHistogram(("kind", "route"))
        self.ttfb = LabelledHistogram(("kind", "route"))
        self.failovers = LabelledCounter(("node", "code"))
        self.streams_ended = LabelledCounter(("outcome",))
        #: Requests started and not yet answered (streams: until their end).
        self.in_flight = 0

    def failover(self, node: str, error: AICNError) -> None:
        """A ``/proxy`` attempt at ``node`` failed; the next node is tried."""
        self.failovers.inc(node, str(int(error.code)))

    def start(self, kind: str, route: str) -> "RequestTimer":
        """Time one request of ``kind`` by ``route``."""
        self.in_flight += 1
        return RequestTimer(self, kind, route, self.clock.seconds())


class RequestTimer:
    """One model request, from its start to its answer; records exactly once."""

    def __init__(self, stats: ModelRequestStats, kind: str, route: str, started: float) -> None:
        self._stats = stats
        self.kind = kind
        self.route = route
        self._started = started
        self._done = False

    def _elapsed(self) -> float:
        return self._stats.clock.seconds() - self._started

    def _finish(self, code: str, node: str) -> bool:
        if self._done:
            return False
        self._done = True
        self._stats.requests.inc(self.kind, self.route, code, node)
        return True

    def answered(self, node: Optional[str]) -> None:
        """A whole (non-streamed) answer from ``node``."""
        if self._finish("0", node or ""):
            elapsed = self._elapsed()
            self._stats.ttfb.observe(self.kind, self.route, value=elapsed)
            self._stats.duration.observe(self.kind, self.route, value=elapsed)
            self._stats.in_flight -= 1

    def failed(self, error: BaseException, node: Optional[str] = None) -> None:
        """No answer: ``error`` (an :class:`AICNError` carries its code, a cancellation
        is ``cancelled``, anything else 5000)."""
        if isinstance(error, AICNError):
            code = str(int(error.code))
        else:
            code = "cancelled" if isinstance(error, CancelledError) else "5000"
        if self._finish(code, node or ""):
            self._stats.duration.observe(self.kind, self.route, value=self._elapsed())
            self._stats.in_flight -= 1

    def streaming(self, stream: ModelStream, node: Optional[str]) -> None:
        """A stream's head arrived from ``node``; the duration is recorded at its end."""
        if not self._finish("0", node or ""):
            return
        self._stats.ttfb.observe(self.kind, self.route, value=self._elapsed())
        stream.when_done().addCallback(self._stream_ended)

    def _stream_ended(self, outcome: Outcome) -> None:
        self._stats.duration.observe(self.kind, self.route, value=self._elapsed())
        self._stats.streams_ended.inc(outcome.value)
        self._stats.in_flight -= 1
