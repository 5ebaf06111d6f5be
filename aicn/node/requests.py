"""The table of requests this node has sent and awaits answers for.

Each entry is keyed by a fresh UUIDv4 and holds a :class:`Deferred` that the
caller awaits.  The entry leaves the table exactly once: when the answer
arrives (:meth:`RequestTable.resolve` / :meth:`RequestTable.fail`), when its
timeout fires on the injected clock (the caller gets 1004 "Processing
timeout"), or when the caller cancels the Deferred (e.g. the HTTP client went
away).  Answers for ids that are not (or no longer) in the table are the
caller's to drop and count.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from aicn.errors import AICNError, ErrorCode
from aicn.log import Logger
from aicn.wire.versions import V012

__all__ = ["DEFAULT_TIMEOUT", "PendingRequest", "RequestTable"]

log = Logger()

#: Seconds to wait for an answer: the Go node's 2 minutes, for every type.
DEFAULT_TIMEOUT = 120.0


@attrs.define(eq=False)
class PendingRequest:
    """One request awaiting its answer."""

    request_id: str
    #: The node the request was sent to; only it may answer.
    node_id: str
    msg_type: int
    deferred: Deferred
    timeout_call: IDelayedCall | None = None
    #: The schema the request went out in (its answer is read that way when it names none).
    wire: str = V012


class RequestTable:
    """Pending requests with per-type timeouts on ``clock``.

    ``timeouts`` maps a message type to its timeout in seconds; types not in
    it use ``default_timeout``.
    """

    def __init__(
        self,
        clock: IReactorTime,
        timeouts: Mapping[int, float] | None = None,
        default_timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self._clock = clock
        self._timeouts = dict(timeouts or {})
        self._default_timeout = default_timeout
        self._pending: dict[str, PendingRequest] = {}
        #: Requests that timed out.
        self.timed_out = 0

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._pending

    def timeout_for(self, msg_type: int) -> float:
        """The timeout applied to requests of ``msg_type``."""
        return self._timeouts.get(msg_type, self._default_timeout)

    @staticmethod
    def new_id() -> str:
        """A fresh request id (UUIDv4 text, as the Go node uses)."""
        try:
            return str(uuid.uuid4())
        except Exception as exc:  # os.urandom failing: the Go node's 1014 "UUID error"
            raise AICNError(ErrorCode.UUID, f"UUID error: {exc}") from None

    def add(self, request_id: str, node_id: str, msg_type: int, timeout: float | None = None, *,
            wire: str = V012) -> Deferred:
        """Register a request; returns the Deferred that fires with its answer.

        The Deferred fires with whatever :meth:`resolve` is given, or fails
        with what :meth:`fail` is given, or with 1004 after ``timeout``
        seconds (default: :meth:`timeout_for` its type).  Cancelling it
        removes the entry.
        """
        if request_id in self._pending:
            raise ValueError(f"request id {request_id} is already pending")

        def cancel(_d: Deferred) -> None:
            self._remove(request_id)

        entry = PendingRequest(request_id, node_id, msg_type, Deferred(cancel), wire=wire)
        seconds = self.timeout_for(msg_type) if timeout is None else timeout
        entry.timeout_call = self._clock.callLater(seconds, self._expire, request_id)
        self._pending[request_id] = entry
        return entry.deferred

    def get(self, request_id: str) -> PendingRequest | None:
        """The pending entry for ``request_id``, if any."""
        return self._pending.get(request_id)

    def resolve(self, request_id: str, result: object) -> bool:
        """Complete a request with ``result``; False if it is not pending."""
        entry = self._remove(request_id)
        if entry is None:
            return False
        entry.deferred.callback(result)
        return True

    def fail(self, request_id: str, error: BaseException) -> bool:
        """Complete a request with ``error``; False if it is not pending."""
        entry = self._remove(request_id)
        if entry is None:
            return False
        entry.deferred.errback(error)
        return True

    def fail_all(self, error: BaseException) -> None:
        """Fail every pending request (on shutdown)."""
        for request_id in list(self._pending):
            self.fail(request_id, error)

    def _remove(self, request_id: str) -> PendingRequest | None:
        entry = self._pending.pop(request_id, None)
        if entry is not None and entry.timeout_call is not None and entry.timeout_call.active():
            entry.timeout_call.cancel()
        return entry

    def _expire(self, request_id: str) -> None:
        entry = self._pending.pop(request_id, None)
        if entry is None:
            return
        self.timed_out += 1
        log.info(
            "Request {request_id} to {node_id} timed out", request_id=request_id, node_id=entry.node_id
        )
        entry.deferred.errback(AICNError(ErrorCode.TIMEOUT))
