"""A small, deterministic byte mutator: the fuzz engine when atheris is not installed.

It mutates the target's seeds (valid messages) the way libFuzzer's default
mutators do: flip bits, set bytes to boundary values, insert, erase, duplicate
and splice ranges, insert the format's tokens, and put length-like integers
(uvarints, big-endian u16/u32, ASCII decimals and hex) where a length may
sit -- ``0``, ``0x7f``, ``0x80``, ``0xffff``, ``2**31``, ``2**32`` (4 GiB),
``2**64-1``.  A few inputs are random bytes.  There is no coverage feedback,
but mutants are kept in a small pool and mutated again, so several changes
compose.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Sequence

from aicn.p2p.varint import encode_uvarint

__all__ = ["Mutator", "INTERESTING"]

#: Values a length, a count or an id likes to be tested with.
INTERESTING = (0, 1, 2, 7, 8, 16, 0x7F, 0x80, 0xFF, 0x100, 0x3FFF, 0x4000, 0x7FFF, 0xFFFF, 0x10000,
               1 << 20, 1 << 24, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 32, (1 << 63) - 1, (1 << 64) - 1)

_TOKENS = (b"\x00", b"\xff", b"\r\n", b"\n", b"\r\n\r\n", b":", b";", b",", b"/", b"%", b"?", b"&", b"=",
           b'"', b"{", b"}", b"[", b"]", b"\\u", b"\\ud800", b"-", b"e999", b"0x", b" ", b"\t")


def _encodings(value: int) -> list[bytes]:
    out = [encode_uvarint(value), str(value).encode(), b"%x" % value]
    if value < 1 << 16:
        out.append(struct.pack(">H", value))
    if value < 1 << 32:
        out.append(struct.pack(">I", value))
    return out


class Mutator:
    """``next()`` gives the next input: a mutant of a seed or of an earlier mutant."""

    def __init__(self, seeds: Sequence[bytes], *, max_len: int = 8192, dictionary: Sequence[bytes] = (),
                 seed: int = 0, pool_size: int = 256) -> None:
        self.rng = random.Random(seed)
        self.seeds = [bytes(s) for s in seeds] or [b""]
        self.max_len = max_len
        self.tokens = list(_TOKENS) + [bytes(t) for t in dictionary]
        self.numbers = [e for v in INTERESTING for e in _encodings(v)]
        self.pool: list[bytes] = []
        self.pool_size = pool_size

    def next(self) -> bytes:
        """The next input to try."""
        rng = self.rng
        roll = rng.random()
        if roll < 0.03:
            return rng.randbytes(rng.randrange(0, 64))
        source = rng.choice(self.pool) if self.pool and roll < 0.4 else rng.choice(self.seeds)
        data = bytearray(source)
        for _ in range(1 + int(rng.expovariate(0.7))):
            self._mutate(data)
        if len(data) > self.max_len:
            del data[self.max_len:]
        out = bytes(data)
        if rng.random() < 0.05:
            if len(self.pool) < self.pool_size:
                self.pool.append(out)
            else:
                self.pool[rng.randrange(self.pool_size)] = out
        return out

    def _span(self, data: bytearray) -> tuple[int, int]:
        start = self.rng.randrange(len(data) + 1)
        return start, min(len(data), start + 1 + int(self.rng.expovariate(0.1)))

    def _mutate(self, data: bytearray) -> None:
        rng = self.rng
        op = rng.randrange(10)
        if not data and op < 4:
            op = 4
        if op == 0:  # flip a bit
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        elif op == 1:  # a random or boundary byte
            data[rng.randrange(len(data))] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))
        elif op == 2:  # erase a range
            start, end = self._span(data)
            del data[start:end]
        elif op == 3:  # duplicate a range somewhere
            start, end = self._span(data)
            at = rng.randrange(len(data) + 1)
            data[at:at] = data[start:end] * rng.choice((1, 1, 2, 16))
        elif op == 4:  # insert random bytes
            at = rng.randrange(len(data) + 1)
            data[at:at] = rng.randbytes(rng.randrange(1, 9))
        elif op == 5:  # a token of the format
            at = rng.randrange(len(data) + 1)
            data[at:at] = rng.choice(self.tokens)
        elif op == 6:  # a length-like number, inserted or over existing bytes
            number = rng.choice(self.numbers)
            at = rng.randrange(len(data) + 1)
            if rng.random() < 0.5:
                data[at:at + len(number)] = number
            else:
                data[at:at] = number
        elif op == 7:  # splice with another seed
            other = rng.choice(self.seeds)
            cut_a, cut_b = rng.randrange(len(data) + 1), rng.randrange(len(other) + 1)
            data[cut_a:] = other[cut_b:]
        elif op == 8:  # truncate
            del data[rng.randrange(len(data) + 1):]
        else:  # add or subtract a little from a byte (lengths off by one)
            i = rng.randrange(len(data)) if data else 0
            if data:
                data[i] = (data[i] + rng.choice((-2, -1, 1, 2))) % 256
