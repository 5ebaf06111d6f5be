"""JSON text from outside the process (HTTP bodies, model and worker replies), decoded safely.

:func:`loads` is :func:`json.loads` with two differences, both found by the
fuzz harness (``tests/fuzz``):

* nesting deeper than the interpreter's stack (``[[[[...``, a few KiB) raises
  :class:`JSONTooDeep`, a ``ValueError`` like every other "not JSON", instead
  of ``RecursionError``;
* a lone UTF-16 surrogate, written as a ``\\ud800`` escape (or as its CESU
  bytes, which :func:`json.loads` lets through), decodes to U+FFFD as in Go's
  ``encoding/json``.  Python would keep the surrogate, a ``str`` that no
  UTF-8 encoder takes: the value could be neither forwarded (protobuf, JSON
  to a model) nor echoed in an error message.

So callers catch ``ValueError`` alone.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["JSONTooDeep", "loads"]


class JSONTooDeep(ValueError):
    """JSON nested deeper than the decoder's stack."""


_SURROGATE = re.compile("[\ud800-\udfff]")
# Each backslash escape in turn (so that "\\\\ud800" is an escaped backslash, then text):
# a valid surrogate pair, a lone surrogate, or any other escape.
_ESCAPE = re.compile(r"\\(u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"  # a pair
                     r"|u[dD][89a-fA-F][0-9a-fA-F]{2}"  # a lone surrogate
                     r"|.)", re.DOTALL)


def _escape(match: re.Match) -> str:
    token = match.group(1)
    if len(token) == 5 and token[0] == "u":  # a lone surrogate (a pair is 11 characters)
        return "\\ufffd"
    return match.group(0)


def loads(text: str | bytes | bytearray, **kwargs: Any) -> Any:
    """:func:`json.loads` (same keyword arguments), lone surrogates as U+FFFD, too deep a
    :class:`JSONTooDeep`.  Raises ``ValueError`` (``json.JSONDecodeError``,
    ``UnicodeDecodeError``, :class:`JSONTooDeep`) for anything that is not JSON."""
    if isinstance(text, (bytes, bytearray)):
        # As json.loads decodes bytes (UTF-8, -16 or -32; surrogates let through).
        text = bytes(text).decode(json.detect_encoding(text), "surrogatepass")
    if _SURROGATE.search(text):
        text = _SURROGATE.sub("\ufffd", text)
    if "\\u" in text:
        text = _ESCAPE.sub(_escape, text)
    try:
        return json.loads(text, **kwargs)
    except RecursionError:
        raise JSONTooDeep("JSON nested too deeply") from None
