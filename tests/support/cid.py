"""
IPFS content identifiers of small files, in pure Python, for checking that a
CID an IPFS node returned really names the bytes we gave it.

``ipfs add`` (Kubo and js-ipfs defaults: CIDv0, 256 KiB fixed-size chunks,
no raw leaves) stores a file of at most one chunk as a single dag-pb node::

    PBNode { Data (field 1) = UnixFS Data { Type (1) = File (2),
                                             Data (2) = <file bytes>,
                                             filesize (3) = len } }

and its CIDv0 is base58btc(multihash sha2-256 of that node's bytes), i.e.
``Qm…``.  A dag-pb node with no links is just its Data field.  An empty file
omits UnixFS ``Data`` but keeps ``filesize = 0``.

With ``--cid-version 1`` (or ``--raw-leaves``) a one-chunk file is a raw
block instead: CIDv1 ``raw`` (0x55) of sha2-256 of the bytes, printed by Kubo
as base32 ``bafkrei…``.
"""

from __future__ import annotations

import base64
import hashlib

#: The default fixed-size chunker's chunk size.
CHUNK_SIZE = 256 * 1024

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_SHA2_256 = 0x12
_RAW = 0x55
_UNIXFS_FILE = 2


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _bytes_field(field: int, value: bytes) -> bytes:
    return _uvarint(field << 3 | 2) + _uvarint(len(value)) + value


def _varint_field(field: int, value: int) -> bytes:
    return _uvarint(field << 3) + _uvarint(value)


def b58encode(data: bytes) -> str:
    """Bitcoin-alphabet base58 (multibase ``z`` without the prefix)."""
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(_B58[r])
    pad = len(data) - len(data.lstrip(b"\0"))
    return "1" * pad + "".join(reversed(out))


def b58decode(text: str) -> bytes:
    """Inverse of :func:`b58encode`; ValueError on a bad character."""
    n = 0
    for c in text:
        i = _B58.find(c)
        if i < 0:
            raise ValueError(f"bad base58 character {c!r}")
        n = n * 58 + i
    pad = len(text) - len(text.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * pad + body


def unixfs_file_node(data: bytes) -> bytes:
    """The dag-pb block ``ipfs add`` makes for a file of one chunk."""
    if len(data) > CHUNK_SIZE:
        raise ValueError(f"only single-chunk files (<= {CHUNK_SIZE} bytes) are supported")
    unixfs = _varint_field(1, _UNIXFS_FILE)
    if data:
        unixfs += _bytes_field(2, data)
    unixfs += _varint_field(3, len(data))
    return _bytes_field(1, unixfs)


def cid_v0(data: bytes) -> str:
    """The ``Qm…`` CID that ``ipfs add`` returns for *data* (one chunk)."""
    digest = hashlib.sha256(unixfs_file_node(data)).digest()
    return b58encode(bytes([_SHA2_256, 32]) + digest)


def cid_v1_raw(data: bytes) -> str:
    """The ``bafkrei…`` CID of *data* as a raw block (CIDv1, base32)."""
    digest = hashlib.sha256(data).digest()
    raw = bytes([1, _RAW, _SHA2_256, 32]) + digest
    return "b" + base64.b32encode(raw).decode().lower().rstrip("=")


def cid_matches(cid: str, data: bytes) -> bool:
    """Whether *cid* (CIDv0, or base32 CIDv1 raw) names *data*."""
    if cid.startswith("Qm"):
        return cid == cid_v0(data)
    if cid.startswith("b"):
        return cid == cid_v1_raw(data)
    return False
