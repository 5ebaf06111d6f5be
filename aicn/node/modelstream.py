"""What the node hands the API for a model call: data, or a stream object.

The node never touches an HTTP request.  A non-streamed call returns its
``data`` (a dict), or an :class:`Answer` when the API should also say which
node answered; a streamed chat returns a :class:`ModelStream` once the
model's response head is known (status and headers), with the body still to
come.  The API writes the head, then calls :meth:`ModelStream.deliver` with
its response as the consumer, and :meth:`ModelStream.abort` if its client
leaves.  Errors before the head are raised as :class:`~aicn.errors.AICNError`.
"""

from __future__ import annotations

import enum
from typing import Any, Optional, Protocol

import attrs
from twisted.internet.defer import Deferred

__all__ = ["Answer", "Consumer", "ModelStream", "Outcome"]


@attrs.frozen
class Answer:
    """A non-streamed result and the node that produced it."""

    data: Any
    node_id: Optional[str] = None


class Consumer(Protocol):
    """Where a stream's body goes (``twisted.internet.interfaces.IConsumer``,
    as an HTTP response is): the stream registers itself as its producer, so
    a slow consumer pauses the source."""

    def write(self, data: bytes) -> None: ...

    def registerProducer(self, producer, streaming: bool) -> None: ...

    def unregisterProducer(self) -> None: ...


class Outcome(enum.Enum):
    """How a stream ended."""

    #: The whole body was delivered.
    COMPLETE = "complete"
    #: The source failed part-way (a consumer must show the body is incomplete).
    BROKEN = "broken"
    #: :meth:`ModelStream.abort` was called (the client left).
    ABORTED = "aborted"


class ModelStream:
    """A model's streamed answer: the head is here, the body is coming.

    Subclasses implement :meth:`_start` (begin writing the body into a
    consumer, then call :meth:`_end`) and :meth:`_stop` (drop the source).
    """

    def __init__(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], *,
                 node_id: Optional[str] = None) -> None:
        #: HTTP status and reason of the model's answer.
        self.status = status
        self.reason = reason
        #: End-to-end headers (framing headers are the consumer's business).
        self.headers = headers
        #: The node whose model answers (None: not said, as on a direct request).
        self.node_id = node_id
        self._outcome: Optional[Outcome] = None
        self._waiters: list[Deferred] = []
        self._delivering = False

    @property
    def outcome(self) -> Optional[Outcome]:
        """How the stream ended; None while it runs."""
        return self._outcome

    def when_done(self) -> Deferred:
        """A new Deferred firing with the :class:`Outcome`."""
        d: Deferred = Deferred()
        if self._outcome is not None:
            d.callback(self._outcome)
        else:
            self._waiters.append(d)
        return d

    def deliver(self, consumer: Consumer) -> Deferred:
        """Write the body into ``consumer``; fires with the :class:`Outcome`.

        Call once.  The consumer is left open: the caller finishes it on
        ``COMPLETE`` and cuts it (so its client sees an incomplete response)
        on ``BROKEN``.
        """
        if self._delivering:
            raise RuntimeError("a stream's body is delivered once")
        self._delivering = True
        done = self.when_done()
        if self._outcome is None:
            self._start(consumer)
        return done

    def abort(self) -> None:
        """Drop the stream (the client left): the source is told to stop."""
        if self._outcome is None:
            self._stop()
            self._end(Outcome.ABORTED)

    def _end(self, outcome: Outcome) -> None:
        if self._outcome is not None:
            return
        self._outcome = outcome
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(outcome)

    def _start(self, consumer: Consumer) -> None:
        raise NotImplementedError

    def _stop(self) -> None:
        raise NotImplementedError
