"""Logging for aicn on top of :mod:`twisted.logger`.

Every aicn module logs through :class:`Logger`, whose events pass a level
filter before they reach the global log publisher.  ``--log-level`` (or
``App.LogLevel``) sets that filter with :func:`set_log_level`, so operators
can turn aicn's debug output on without drowning in Twisted's own.
"""

from __future__ import annotations

import sys

from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)
from twisted.logger import Logger as _TwistedLogger

#: Level names accepted from the command line and config (Go's names included).
LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "warning": LogLevel.warn,
    "error": LogLevel.error,
    "critical": LogLevel.critical,
    "panic": LogLevel.critical,
    "fatal": LogLevel.critical,
}

_predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)


def _forward(event: dict) -> None:
    globalLogPublisher(event)


_filtered = FilteringLogObserver(_forward, [_predicate])


def parse_log_level(name: str) -> LogLevel:
    """Map a level name (``debug``, ``info``, ``warn``, ``error``, …) to a LogLevel."""
    try:
        return LEVELS[name.strip().lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"unknown log level {name!r}; use one of {', '.join(sorted(LEVELS))}") from None


def set_log_level(level: LogLevel | str) -> None:
    """Set the lowest level of aicn events that are emitted."""
    if isinstance(level, str):
        level = parse_log_level(level)
    _predicate.defaultLogLevel = level
    _predicate.clearLogLevels()


class Logger(_TwistedLogger):
    """A :class:`twisted.logger.Logger` whose events pass aicn's level filter."""

    def __init__(self, namespace=None, source=None, observer=None):
        if namespace is None:
            # The module that created us, as twisted.logger.Logger would find it.
            namespace = sys._getframe(1).f_globals.get("__name__", "aicn")
        super().__init__(namespace, source, observer if observer is not None else _filtered)


def log_to_file(path: str, *, rotate_bytes: int = 10 * 1024 * 1024, max_files: int = 30):
    """Also write every log event to ``path`` (``App.LogFile``), rotated at
    ``rotate_bytes`` with ``max_files`` old files kept, like the Go node's
    lumberjack sink.  Returns the observer (remove it to stop)."""
    import os

    from twisted.logger import textFileLogObserver
    from twisted.python.logfile import LogFile

    directory, name = os.path.split(os.path.abspath(os.path.expanduser(path)))
    os.makedirs(directory, exist_ok=True)
    logfile = LogFile(name, directory, rotateLength=rotate_bytes, maxRotatedFiles=max_files)
    observer = textFileLogObserver(logfile)
    globalLogPublisher.addObserver(observer)
    return observer


class RateLimit:
    """At most one event per key (a remote host, say) every ``window`` seconds.

    ``allow(key)`` is True when ``key`` was not allowed within the last
    ``window`` seconds on ``clock`` (anything with ``seconds()``, e.g. the
    reactor or a test's ``Clock``); callers log only then.  At most
    ``max_keys`` keys are remembered: expired ones go first, then the oldest,
    so a flood of distinct keys costs bounded memory (and may log again).
    """

    def __init__(self, clock, window: float, *, max_keys: int = 4096) -> None:
        self.clock = clock
        self.window = window
        self.max_keys = max_keys
        self._last: dict = {}  # key -> time allowed, oldest first

    def allow(self, key) -> bool:
        now = self.clock.seconds()
        last = self._last.get(key)
        if last is not None and now - last < self.window:
            return False
        self._last.pop(key, None)
        if len(self._last) >= self.max_keys:
            self._prune(now)
        self._last[key] = now
        return True

    def _prune(self, now: float) -> None:
        # Keys are in the order they were allowed, so the expired ones lead.
        while self._last:
            key, when = next(iter(self._last.items()))
            if now - when < self.window and len(self._last) < self.max_keys:
                break
            del self._last[key]


class LogThrottle:
    """At most one log line per ``interval`` seconds for a repeated event.

    ``hit()`` counts an occurrence; ``emit(count)`` (which logs) is called
    at once when no line went out in the last ``interval``, else once when
    the interval ends, with the occurrences since the previous line.  So a
    flood (thousands of refused connections) costs one line per interval,
    and no occurrence waits longer than that to be reported.  ``stop()``
    reports what is pending and cancels the timer (on shutdown).
    """

    def __init__(self, clock, emit, interval: float = 10.0) -> None:
        self.clock = clock
        self.interval = interval
        self._emit = emit
        self._last: float | None = None
        self._unlogged = 0
        self._call = None

    def hit(self) -> None:
        self._unlogged += 1
        now = self.clock.seconds()
        if self._last is None or now - self._last >= self.interval:
            self._flush()
        elif self._call is None:
            self._call = self.clock.callLater(self._last + self.interval - now, self._flush)

    def _flush(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._unlogged:
            count, self._unlogged = self._unlogged, 0
            self._last = self.clock.seconds()
            self._emit(count)

    def stop(self) -> None:
        self._flush()
