"""Go ``time.Duration`` text: parsing (``time.ParseDuration``) and formatting
(``Duration.String()``).

The Go node's config files hold durations such as ``"20s"`` or ``"1m30s"``, and
its HTTP API reports latencies with ``Duration.String()`` (``"208.878448ms"``),
so both directions must match Go exactly.  Work is done in integer nanoseconds,
like Go, so that formatting never shows binary floating-point noise.
"""

from __future__ import annotations

import re

__all__ = [
    "DurationError",
    "parse_go_duration",
    "parse_go_duration_ns",
    "format_go_duration",
    "format_go_duration_ns",
]

NANOSECOND = 1
MICROSECOND = 1000 * NANOSECOND
MILLISECOND = 1000 * MICROSECOND
SECOND = 1000 * MILLISECOND
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE

# Go accepts both the micro sign (U+00B5) and the Greek mu (U+03BC).
_UNITS = {
    "ns": NANOSECOND,
    "us": MICROSECOND,
    "\u00b5s": MICROSECOND,
    "\u03bcs": MICROSECOND,
    "ms": MILLISECOND,
    "s": SECOND,
    "m": MINUTE,
    "h": HOUR,
}

_INT64_MAX = (1 << 63) - 1
# One component: digits with an optional fraction, then a unit made of
# anything that is not a digit or a dot (Go reads the unit the same way).
_COMPONENT = re.compile(r"([0-9]*)(?:\.([0-9]*))?([^0-9.]*)")


class DurationError(ValueError):
    """Text that Go's ``time.ParseDuration`` would reject."""


def parse_go_duration_ns(text: str) -> int:
    """Parse Go duration text into integer nanoseconds.

    Accepts what ``time.ParseDuration`` accepts: an optional sign, then one or
    more ``<number><unit>`` components (``"1h2m3.5s"``, ``"300ms"``, ``"1.5h"``),
    or the bare ``"0"``.  Raises :class:`DurationError` otherwise, including on
    int64 overflow.
    """
    if not isinstance(text, str):
        raise DurationError(f"invalid duration {text!r}: not a string")
    orig = text
    neg = False
    if text[:1] in ("-", "+"):
        neg = text[0] == "-"
        text = text[1:]
    if text == "0":
        return 0
    if not text:
        raise DurationError(f'invalid duration "{orig}"')
    total = 0
    pos = 0
    while pos < len(text):
        m = _COMPONENT.match(text, pos)
        whole, frac, unit = m.group(1), m.group(2), m.group(3)
        if not whole and not frac:
            # Go: "missing digits" (covers ".s", "s", and a leading unit).
            raise DurationError(f'invalid duration "{orig}"')
        if not unit:
            raise DurationError(f'invalid duration "{orig}": missing unit')
        if unit not in _UNITS:
            raise DurationError(f'invalid duration "{orig}": unknown unit "{unit}"')
        scale = _UNITS[unit]
        value = int(whole or "0") * scale
        if frac:
            # Truncate toward zero like Go does for fractional parts.
            value += int(frac) * scale // (10 ** len(frac))
        total += value
        if total > _INT64_MAX + (1 if neg else 0):
            raise DurationError(f'invalid duration "{orig}": out of range')
        pos = m.end()
    return -total if neg else total


def parse_go_duration(text: str) -> float:
    """Parse Go duration text (``"20s"``, ``"1m30s"``) into float seconds."""
    return parse_go_duration_ns(text) / SECOND


def _fmt_frac(value: int, prec: int) -> tuple[int, str]:
    """Split ``value`` into ``value // 10**prec`` and its fraction as ``.ddd``
    with trailing zeros removed (Go's ``fmtFrac``)."""
    whole, frac = divmod(value, 10**prec)
    if frac == 0:
        return whole, ""
    digits = str(frac).rjust(prec, "0").rstrip("0")
    return whole, "." + digits


def format_go_duration_ns(ns: int) -> str:
    """Format integer nanoseconds exactly as Go's ``Duration.String()``."""
    ns = int(ns)
    sign = "-" if ns < 0 else ""
    u = abs(ns)
    if u < SECOND:
        if u == 0:
            return "0s"
        if u < MICROSECOND:
            return f"{sign}{u}ns"
        if u < MILLISECOND:
            whole, frac = _fmt_frac(u, 3)
            return f"{sign}{whole}{frac}\u00b5s"
        whole, frac = _fmt_frac(u, 6)
        return f"{sign}{whole}{frac}ms"
    secs, frac = _fmt_frac(u, 9)
    out = f"{secs % 60}{frac}s"
    minutes = secs // 60
    if minutes:
        out = f"{minutes % 60}m" + out
        hours = minutes // 60
        if hours:
            out = f"{hours}h" + out
    return sign + out


def format_go_duration(seconds: float) -> str:
    """Format seconds as Go's ``Duration.String()`` would
    (``0.208878448`` → ``"208.878448ms"``, ``90`` → ``"1m30s"``).

    The value is rounded to the nearest nanosecond first.
    """
    return format_go_duration_ns(round(seconds * SECOND))
