"""JSON objects read the way Go's ``encoding/json`` fills a struct.

The Go node reads its config file and every HTTP request body with
``json.Unmarshal`` into structs, so a key reaches a field by this rule
(``decode.go``, ``(*decodeState).object``), which both the config reader and
the HTTP API's body parsing use:

* a key matches a field whose name equals it exactly, else one whose name is
  equal under Unicode simple case folding (so ``MODEL`` and ``Model`` reach
  ``model``; ``\\u212aey``, with the Kelvin sign, reaches ``key``; ``straße``
  does not reach ``strasse``);
* keys are applied in document order, so when several keys match one field the
  **last** one wins, exact or not (``{"model": "a", "Model": "b"}`` gives
  ``"b"``), and a repeated identical key counts at its last position;
* ``null`` leaves the field as it was (an earlier key's value stays).

Checked against Go 1.19 (``json.Unmarshal`` into a struct with tagged fields).
Python's :func:`json.loads` keeps a repeated key's *first* position with its
last value, which would misplace it; :func:`loads` keeps every pair in order.
"""

from __future__ import annotations

from typing import Any, Iterable

from aicn import jsontext

__all__ = ["MISSING", "GoObject", "fold_key", "keys_equal", "loads", "lookup", "matching_keys"]


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


#: No key matches the field (or every matching key is ``null``).
MISSING: Any = _Missing()


class GoObject(dict):
    """A JSON object that also keeps all its ``(key, value)`` pairs in order.

    As a ``dict`` it behaves as :func:`json.loads` would build it; :attr:`pairs`
    keeps repeated keys at each position, for :func:`lookup`.
    """

    __slots__ = ("pairs",)

    def __init__(self, pairs: Iterable[tuple[str, Any]] = ()) -> None:
        pairs = list(pairs)
        super().__init__(pairs)
        self.pairs = pairs


def _fold_char(ch: str) -> str:
    # Simple (one-to-one) case folding: "ſ" → "s", "K" (Kelvin) → "k"; a letter
    # whose full folding is longer ("ß" → "ss") folds to itself, as in Go.
    up = ch.upper()
    if len(up) == 1:
        low = up.lower()
        if len(low) == 1:
            return low
    low = ch.lower()
    return low if len(low) == 1 else ch


def fold_key(key: str) -> str:
    """``key`` under simple case folding (the form that :func:`keys_equal` compares)."""
    if key.isascii():
        return key.lower()
    return "".join(_fold_char(ch) for ch in key)


def keys_equal(key: str, name: str) -> bool:
    """Whether JSON ``key`` reaches the field called ``name`` (exactly or folded)."""
    return key == name or fold_key(key) == fold_key(name)


def loads(text: str | bytes) -> Any:
    """:func:`aicn.jsontext.loads` (:func:`json.loads` that decodes a lone surrogate to U+FFFD, as
    Go does), with every object a :class:`GoObject`.

    Raises ``ValueError`` for anything that is not JSON: :class:`json.JSONDecodeError`,
    :class:`UnicodeDecodeError` for bytes that are not UTF-8, :class:`~aicn.jsontext.JSONTooDeep`.
    """
    return jsontext.loads(text, object_pairs_hook=GoObject)


def lookup(obj: dict, name: str) -> tuple[str | None, Any]:
    """``(key, value)`` of the key that Go would store in field ``name``.

    ``(None, MISSING)`` when no key matches or every match is ``null``.
    ``obj`` may be a plain ``dict`` (its items are the pairs then).
    """
    pairs = obj.pairs if isinstance(obj, GoObject) else obj.items()
    folded = fold_key(name)
    found_key, found = None, MISSING
    for key, value in pairs:
        if value is not None and (key == name or fold_key(key) == folded):
            found_key, found = key, value
    return found_key, found


def matching_keys(obj: dict, name: str) -> list[str]:
    """Every key of ``obj`` that reaches field ``name`` (``null`` ones too)."""
    pairs = obj.pairs if isinstance(obj, GoObject) else obj.items()
    folded = fold_key(name)
    return [key for key, _ in pairs if key == name or fold_key(key) == folded]
