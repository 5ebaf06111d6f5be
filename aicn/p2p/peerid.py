"""Peer IDs: multihashes of public keys (libp2p specs, ``peer-ids/peer-ids.md``).

A peer ID is the identity multihash of the ``PublicKey`` protobuf when that
encoding is at most 42 bytes (secp256k1, ed25519), and its sha2-256 multihash
otherwise (RSA).  The text form is base58btc of the multihash (``16Uiu2…``,
``12D3KooW…``, ``Qm…``); we also parse the CIDv1 form (multibase, version 1,
codec ``libp2p-key`` 0x72).
"""

from __future__ import annotations

import base64
import hashlib
from functools import total_ordering
from typing import Optional

from aicn.p2p.varint import VarintError, decode_uvarint, encode_uvarint

IDENTITY = 0x00
SHA2_256 = 0x12
LIBP2P_KEY_CODEC = 0x72
_MAX_INLINE_KEY_LEN = 42

_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58_ALPHABET)}


class InvalidPeerID(ValueError):
    """A string or byte sequence is not a valid peer ID."""


def b58encode(data: bytes) -> str:
    """Bitcoin-alphabet base58 (as used by libp2p and IPFS)."""
    zeros = len(data) - len(data.lstrip(b"\0"))
    num = int.from_bytes(data, "big")
    out = []
    while num:
        num, rem = divmod(num, 58)
        out.append(_B58_ALPHABET[rem])
    return "1" * zeros + "".join(reversed(out))


def b58decode(text: str) -> bytes:
    """Inverse of :func:`b58encode`; raises :class:`InvalidPeerID` on bad characters."""
    num = 0
    for ch in text:
        try:
            num = num * 58 + _B58_INDEX[ch]
        except KeyError:
            raise InvalidPeerID(f"invalid base58 character {ch!r}") from None
    zeros = len(text) - len(text.lstrip("1"))
    body = num.to_bytes((num.bit_length() + 7) // 8, "big") if num else b""
    return b"\0" * zeros + body


def _multibase_decode(text: str) -> bytes:
    prefix, rest = text[0], text[1:]
    try:
        if prefix == "z":
            return b58decode(rest)
        if prefix in "bB":
            rest = rest.upper()
            return base64.b32decode(rest + "=" * (-len(rest) % 8))
        if prefix in "fF":
            return bytes.fromhex(rest)
        if prefix == "m":
            return base64.b64decode(rest + "=" * (-len(rest) % 4))
        if prefix == "u":
            return base64.urlsafe_b64decode(rest + "=" * (-len(rest) % 4))
    except ValueError as exc:
        raise InvalidPeerID(f"bad multibase text: {exc}") from None
    raise InvalidPeerID(f"unsupported multibase prefix {prefix!r}")


def _check_multihash(mh: bytes) -> None:
    try:
        decoded = decode_uvarint(mh, 0)
        if decoded is None:
            raise InvalidPeerID("truncated multihash")
        code, pos = decoded
        decoded = decode_uvarint(mh, pos)
        if decoded is None:
            raise InvalidPeerID("truncated multihash")
        length, pos = decoded
    except VarintError as exc:
        raise InvalidPeerID(f"malformed multihash: {exc}") from None
    if code not in (IDENTITY, SHA2_256):
        raise InvalidPeerID(f"unsupported multihash code 0x{code:x}")
    if len(mh) - pos != length:
        raise InvalidPeerID("multihash length does not match its digest")
    if code == SHA2_256 and length != 32:
        raise InvalidPeerID("sha2-256 multihash must have a 32-byte digest")
    if code == IDENTITY and length > _MAX_INLINE_KEY_LEN:
        raise InvalidPeerID("identity multihash longer than 42 bytes")


@total_ordering
class PeerID:
    """An immutable peer ID, compared and hashed by its multihash bytes."""

    __slots__ = ("_mh", "_text")

    def __init__(self, multihash: bytes, _text: Optional[str] = None) -> None:
        multihash = bytes(multihash)
        _check_multihash(multihash)
        self._mh = multihash
        # The base58 text is computed on first use: peer IDs are built for
        # every signed message and key check, and most are only compared.
        self._text = _text

    @classmethod
    def from_public_key(cls, key) -> "PeerID":
        """The peer ID of an :class:`~aicn.p2p.keys.PublicKey`."""
        encoded = key.marshal()
        if len(encoded) <= _MAX_INLINE_KEY_LEN:
            mh = encode_uvarint(IDENTITY) + encode_uvarint(len(encoded)) + encoded
        else:
            mh = encode_uvarint(SHA2_256) + b"\x20" + hashlib.sha256(encoded).digest()
        return cls(mh)

    @classmethod
    def from_string(cls, text: str) -> "PeerID":
        """Parse base58btc (``Qm…``, ``1…``) or CIDv1 (``bafz…``, ``z…``) text."""
        if not isinstance(text, str) or not text.strip():
            raise InvalidPeerID("empty peer ID")
        text = text.strip()
        if text[0] in "Q1":
            # base58 round-trips exactly, so the text is already the canonical form.
            return cls(b58decode(text), text)
        raw = _multibase_decode(text)
        try:
            version = decode_uvarint(raw, 0)
            codec = decode_uvarint(raw, version[1]) if version else None
        except VarintError:
            raise InvalidPeerID("malformed CID") from None
        if version is None or codec is None:
            raise InvalidPeerID("truncated CID")
        if version[0] != 1:
            raise InvalidPeerID("peer ID CID must be version 1")
        if codec[0] != LIBP2P_KEY_CODEC:
            raise InvalidPeerID(f"CID codec 0x{codec[0]:x} is not libp2p-key")
        pos = codec[1]
        return cls(raw[pos:])

    @classmethod
    def from_bytes(cls, multihash: bytes) -> "PeerID":
        """Build from the binary multihash (as in protobuf ``bytes`` fields)."""
        return cls(multihash)

    def to_bytes(self) -> bytes:
        """The binary multihash."""
        return self._mh

    def to_base58(self) -> str:
        """The canonical text form."""
        text = self._text
        if text is None:
            text = self._text = b58encode(self._mh)
        return text

    def to_cid(self) -> str:
        """The CIDv1 text form (base32, ``bafz…``)."""
        raw = encode_uvarint(1) + encode_uvarint(LIBP2P_KEY_CODEC) + self._mh
        return "b" + base64.b32encode(raw).decode().lower().rstrip("=")

    def extract_public_key(self):
        """The inlined public key, or ``None`` for hashed (RSA) IDs."""
        from aicn.p2p.keys import PublicKey

        if self._mh[0] != IDENTITY:
            return None
        _, pos = decode_uvarint(self._mh, 0)
        _, pos = decode_uvarint(self._mh, pos)
        return PublicKey.unmarshal(self._mh[pos:])

    def matches_public_key(self, key) -> bool:
        """Whether ``key`` hashes to this ID."""
        return PeerID.from_public_key(key) == self

    def short(self) -> str:
        """A short form for logs."""
        text = self.to_base58()
        return text[:6] + "…" + text[-6:]

    def __str__(self) -> str:
        return self.to_base58()

    def __repr__(self) -> str:
        return f"PeerID({self.to_base58()})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PeerID):
            return self._mh == other._mh
        return NotImplemented

    def __lt__(self, other: "PeerID") -> bool:
        return self._mh < other._mh

    def __hash__(self) -> int:
        return hash(self._mh)
