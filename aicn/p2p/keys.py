"""libp2p identity keys: secp256k1 (our default) and ed25519.

Keys travel in the libp2p ``PublicKey``/``PrivateKey`` protobuf encoding::

    message PublicKey  { required KeyType Type = 1; required bytes Data = 2; }
    message PrivateKey { required KeyType Type = 1; required bytes Data = 2; }

with ``KeyType`` RSA=0, Ed25519=1, Secp256k1=2, ECDSA=3.  libp2p requires the
deterministic encoding (field 1 then field 2, no extra fields), which is what
:meth:`PublicKey.marshal` writes and what peer IDs are hashed from.

* secp256k1: public data is the 33-byte compressed point, private data the
  32-byte scalar; signatures are ECDSA over SHA-256 in DER.  Signing and
  verifying use libsecp256k1 (coincurve), which is about 20 times faster than
  OpenSSL here and matters: every pubsub message is signed and verified.  We
  always sign with a low S value, because js-libp2p (noble-curves) rejects
  high-S signatures; we accept both.
* ed25519: public data is 32 bytes, private data is ``seed || public`` (64
  bytes, as go and js write it); signatures are plain 64-byte ed25519.
* RSA and ECDSA public keys (PKIX DER) can be verified, so that signed
  messages from such peers are understood, but we never create them.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac

import coincurve
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from aicn.p2p.varint import VarintError, decode_uvarint, encode_uvarint

# Order of the secp256k1 group, used to normalise signatures to low S.
_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


class KeyType(enum.IntEnum):
    """The libp2p ``KeyType`` enum."""

    RSA = 0
    Ed25519 = 1
    Secp256k1 = 2
    ECDSA = 3


class InvalidKey(ValueError):
    """A key cannot be decoded or has the wrong shape."""


def _encode_key_proto(key_type: KeyType, data: bytes) -> bytes:
    return b"\x08" + encode_uvarint(int(key_type)) + b"\x12" + encode_uvarint(len(data)) + data


def _decode_key_proto(raw: bytes) -> tuple[KeyType, bytes]:
    """Parse a ``PublicKey``/``PrivateKey`` protobuf leniently (any field order)."""
    key_type = None
    data = None
    pos = 0
    try:
        while pos < len(raw):
            tag, pos = _need(decode_uvarint(raw, pos))
            field, wire = tag >> 3, tag & 7
            if wire == 0:
                value, pos = _need(decode_uvarint(raw, pos))
                if field == 1:
                    key_type = value
            elif wire == 2:
                length, pos = _need(decode_uvarint(raw, pos))
                if pos + length > len(raw):
                    raise InvalidKey("truncated key protobuf")
                if field == 2:
                    data = bytes(raw[pos : pos + length])
                pos += length
            else:
                raise InvalidKey(f"unexpected wire type {wire} in key protobuf")
    except VarintError as exc:
        raise InvalidKey(f"malformed key protobuf: {exc}") from None
    if key_type is None or data is None:
        raise InvalidKey("key protobuf lacks Type or Data")
    try:
        return KeyType(key_type), data
    except ValueError:
        raise InvalidKey(f"unknown key type {key_type}") from None


def _need(decoded):
    if decoded is None:
        raise InvalidKey("truncated key protobuf")
    return decoded


class PublicKey:
    """A libp2p public key that can verify signatures."""

    key_type: KeyType

    def __init__(self, key_type: KeyType, data: bytes, impl) -> None:
        self.key_type = key_type
        self._data = data
        self._impl = impl

    @property
    def raw(self) -> bytes:
        """The key's ``Data`` bytes (compressed point, raw ed25519 key, or DER)."""
        return self._data

    def marshal(self) -> bytes:
        """The deterministic ``PublicKey`` protobuf encoding."""
        return _encode_key_proto(self.key_type, self._data)

    def verify(self, data: bytes, signature: bytes) -> bool:
        """Return whether ``signature`` is valid for ``data`` under this key."""
        try:
            if self.key_type == KeyType.Ed25519:
                self._impl.verify(signature, data)
            elif self.key_type == KeyType.Secp256k1:
                return _secp256k1_verify(self._data, data, signature)
            elif self.key_type == KeyType.ECDSA:
                self._impl.verify(signature, data, ec.ECDSA(hashes.SHA256()))
            elif self.key_type == KeyType.RSA:
                self._impl.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
            else:  # pragma: no cover - constructor rejects other types
                return False
        except (InvalidSignature, ValueError):
            return False
        return True

    def peer_id(self):
        """The :class:`~aicn.p2p.peerid.PeerID` derived from this key."""
        from aicn.p2p.peerid import PeerID

        return PeerID.from_public_key(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PublicKey):
            return NotImplemented
        return self.key_type == other.key_type and hmac.compare_digest(self._data, other._data)

    def __hash__(self) -> int:
        return hash((self.key_type, self._data))

    def __repr__(self) -> str:
        return f"<PublicKey {self.key_type.name} {self._data.hex()[:16]}…>"

    @classmethod
    def unmarshal(cls, raw: bytes) -> "PublicKey":
        """Decode a ``PublicKey`` protobuf (cached, as :meth:`from_raw`)."""
        if cls is PublicKey:
            return _cached_unmarshal(bytes(raw))
        key_type, data = _decode_key_proto(raw)
        return cls.from_raw(key_type, data)

    @classmethod
    def from_raw(cls, key_type: KeyType, data: bytes) -> "PublicKey":
        """Build a key from its type and ``Data`` bytes.

        Keys are immutable, so the same bytes give the same object from a
        small cache: every signed pubsub message and encrypted body names its
        sender's key, and parsing a point costs more than the lookup.
        """
        if cls is not PublicKey:
            return cls._parse(key_type, data)
        return _cached_public_key(KeyType(key_type) if key_type in _KEY_TYPES else key_type, bytes(data))

    @classmethod
    def _parse(cls, key_type: KeyType, data: bytes) -> "PublicKey":
        try:
            if key_type == KeyType.Secp256k1:
                if len(data) != 33:
                    raise InvalidKey("secp256k1 public key must be 33 bytes (compressed)")
                impl = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), data)
            elif key_type == KeyType.Ed25519:
                if len(data) != 32:
                    raise InvalidKey("ed25519 public key must be 32 bytes")
                impl = ed25519.Ed25519PublicKey.from_public_bytes(data)
            elif key_type in (KeyType.RSA, KeyType.ECDSA):
                impl = serialization.load_der_public_key(data)
                want = rsa.RSAPublicKey if key_type == KeyType.RSA else ec.EllipticCurvePublicKey
                if not isinstance(impl, want):
                    raise InvalidKey(f"DER key is not {key_type.name}")
            else:
                raise InvalidKey(f"unsupported key type {key_type}")
        except InvalidKey:
            raise
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            # UnsupportedAlgorithm: DER of a curve OpenSSL lacks (secp112r1), not a ValueError.
            raise InvalidKey(f"invalid {key_type.name} public key: {exc}") from None
        return cls(key_type, bytes(data), impl)


_KEY_TYPES = frozenset(int(t) for t in KeyType)


@functools.lru_cache(maxsize=1024)
def _cached_public_key(key_type, data: bytes) -> PublicKey:
    return PublicKey._parse(key_type, data)


@functools.lru_cache(maxsize=1024)
def _cached_unmarshal(raw: bytes) -> PublicKey:
    key_type, data = _decode_key_proto(raw)
    return PublicKey.from_raw(key_type, data)


class PrivateKey:
    """A libp2p private key (secp256k1 or ed25519) that can sign."""

    def __init__(self, key_type: KeyType, impl) -> None:
        self.key_type = key_type
        self._impl = impl
        self._secp = None  # coincurve key, made on first signature
        pub = impl.public_key()
        if key_type == KeyType.Secp256k1:
            pub_data = pub.public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
            )
        else:
            pub_data = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.public_key = PublicKey(key_type, pub_data, pub)

    # -- construction -------------------------------------------------------------

    @classmethod
    def generate(cls, key_type: KeyType | str = KeyType.Secp256k1) -> "PrivateKey":
        """Make a new random key; ``key_type`` may be a name such as ``"ed25519"``."""
        key_type = parse_key_type(key_type)
        if key_type == KeyType.Secp256k1:
            return cls(key_type, ec.generate_private_key(ec.SECP256K1()))
        if key_type == KeyType.Ed25519:
            return cls(key_type, ed25519.Ed25519PrivateKey.generate())
        raise InvalidKey(f"cannot generate {key_type.name} keys")

    @classmethod
    def from_raw(cls, key_type: KeyType, data: bytes) -> "PrivateKey":
        """Build a key from its type and ``Data`` bytes."""
        try:
            if key_type == KeyType.Secp256k1:
                if len(data) != 32:
                    raise InvalidKey("secp256k1 private key must be 32 bytes")
                scalar = int.from_bytes(data, "big")
                if not 0 < scalar < _SECP256K1_N:
                    raise InvalidKey("secp256k1 private scalar out of range")
                return cls(key_type, ec.derive_private_key(scalar, ec.SECP256K1()))
            if key_type == KeyType.Ed25519:
                # go and js write seed||public (64 bytes); old libp2p code wrote
                # seed||public||public (96 bytes); some tools write the seed alone.
                if len(data) == 96:
                    if data[32:64] != data[64:]:
                        raise InvalidKey("legacy 96-byte ed25519 key has two different public keys")
                    data = data[:64]
                if len(data) not in (32, 64):
                    raise InvalidKey("ed25519 private key must be 32, 64 or 96 bytes")
                key = cls(key_type, ed25519.Ed25519PrivateKey.from_private_bytes(data[:32]))
                if len(data) == 64 and data[32:] != key.public_key.raw:
                    raise InvalidKey("ed25519 private key's public half does not match its seed")
                return key
        except InvalidKey:
            raise
        except ValueError as exc:
            raise InvalidKey(f"invalid {key_type.name} private key: {exc}") from None
        raise InvalidKey(f"unsupported private key type {key_type.name}")

    @classmethod
    def unmarshal(cls, raw: bytes) -> "PrivateKey":
        """Decode a ``PrivateKey`` protobuf (the format of go's ``peer.key``)."""
        key_type, data = _decode_key_proto(raw)
        return cls.from_raw(key_type, data)

    # -- use ----------------------------------------------------------------------

    @property
    def raw(self) -> bytes:
        """The ``Data`` bytes: the 32-byte scalar, or ed25519 ``seed || public``."""
        if self.key_type == KeyType.Secp256k1:
            return self._impl.private_numbers().private_value.to_bytes(32, "big")
        seed = self._impl.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        return seed + self.public_key.raw

    def marshal(self) -> bytes:
        """The ``PrivateKey`` protobuf encoding, as go's ``MarshalPrivateKey`` writes it."""
        return _encode_key_proto(self.key_type, self.raw)

    def sign(self, data: bytes) -> bytes:
        """Sign ``data``: DER low-S ECDSA-SHA256 for secp256k1, raw ed25519 otherwise."""
        if self.key_type == KeyType.Ed25519:
            return self._impl.sign(data)
        if self._secp is None:
            self._secp = coincurve.PrivateKey(self.raw)
        # libsecp256k1 signs deterministically (RFC 6979) and always low-S.
        return self._secp.sign(data, hasher=_sha256)

    def ecdh(self, peer: PublicKey) -> bytes:
        """Static secp256k1 ECDH: the raw 32-byte X coordinate, no KDF (as the Go node)."""
        if self.key_type != KeyType.Secp256k1 or peer.key_type != KeyType.Secp256k1:
            raise InvalidKey("ECDH needs secp256k1 keys on both sides")
        return self._impl.exchange(ec.ECDH(), peer._impl)

    def peer_id(self):
        """The :class:`~aicn.p2p.peerid.PeerID` of this key."""
        return self.public_key.peer_id()

    def __repr__(self) -> str:
        return f"<PrivateKey {self.key_type.name} for {self.peer_id()}>"


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _secp256k1_verify(public: bytes, data: bytes, signature: bytes) -> bool:
    """ECDSA-SHA256 over secp256k1 with libsecp256k1 (coincurve), ~20x faster
    than OpenSSL's generic curve code.  libsecp256k1 only accepts low-S
    signatures, so a valid high-S one (any DER ECDSA signer may make those) is
    normalised first: s and n-s are equally valid."""
    try:
        r, s = decode_dss_signature(signature)
    except ValueError:
        return False
    if not (0 < r < _SECP256K1_N and 0 < s < _SECP256K1_N):
        return False
    if s > _SECP256K1_N // 2:
        signature = encode_dss_signature(r, _SECP256K1_N - s)
    try:
        return coincurve.PublicKey(public).verify(signature, data, hasher=_sha256)
    except (ValueError, TypeError):
        return False


def parse_key_type(value: KeyType | str | int) -> KeyType:
    """Accept ``KeyType``, its number, or a case-insensitive name (``secp256k1``)."""
    if isinstance(value, KeyType):
        return value
    if isinstance(value, int):
        return KeyType(value)
    names = {k.name.lower(): k for k in KeyType}
    try:
        return names[str(value).strip().lower()]
    except KeyError:
        raise InvalidKey(f"unknown key type {value!r}; use secp256k1 or ed25519") from None
