"""Deadlines on coroutines, the one helper every protocol's timeouts use."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from twisted.internet.defer import Deferred

__all__ = ["with_timeout"]


def with_timeout(work: Coroutine | Deferred, seconds: float, clock) -> Deferred:
    """``work`` as a Deferred that fails with ``TimeoutError`` (Twisted's,
    ``twisted.internet.defer.TimeoutError``) after ``seconds`` on ``clock``,
    cancelling it then."""
    d: Deferred[Any] = work if isinstance(work, Deferred) else Deferred.fromCoroutine(work)
    return d.addTimeout(seconds, clock)
