"""libp2p Noise: ``Noise_XX_25519_ChaChaPoly_SHA256`` (libp2p specs ``noise/README.md``).

Three layers, all sans-IO:

* :class:`CipherState`, :class:`SymmetricState` and :class:`XXHandshakeState`
  implement the Noise Protocol Framework (revision 34) for the XX pattern::

      -> e
      <- e, ee, s, es
      -> s, se

* :class:`NoiseHandshake` adds the libp2p handshake payload (identity key,
  signature over the static key, stream-muxer extension) and the 2-byte
  length framing of handshake messages.
* :class:`NoiseTransport` encrypts and frames the transport phase: each
  message is a 2-byte big-endian length and at most 65535 bytes of ciphertext
  (plaintext chunks of at most 65519 bytes plus the 16-byte tag).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from aicn.p2p.keys import InvalidKey, PrivateKey, PublicKey
from aicn.p2p.peerid import PeerID
from aicn.p2p.varint import VarintError, decode_uvarint, encode_uvarint

__all__ = [
    "PROTOCOL_ID",
    "PROTOCOL_NAME",
    "SIGNATURE_PREFIX",
    "MAX_FRAME",
    "MAX_PLAINTEXT",
    "NoiseError",
    "PeerIDMismatch",
    "CipherState",
    "SymmetricState",
    "XXHandshakeState",
    "HandshakePayload",
    "encode_handshake_payload",
    "decode_handshake_payload",
    "select_muxer",
    "NoiseHandshake",
    "NoiseTransport",
]

#: multistream-select protocol id of libp2p noise.
PROTOCOL_ID = "/noise"
#: Full Noise protocol name (exactly 32 bytes, so it is used as ``h`` unhashed).
PROTOCOL_NAME = b"Noise_XX_25519_ChaChaPoly_SHA256"
#: What the identity key signs, followed by the X25519 static public key.
SIGNATURE_PREFIX = b"noise-libp2p-static-key:"
#: Largest noise message on the wire (the 2-byte length prefix's range).
MAX_FRAME = 65535
TAG_SIZE = 16
#: Largest plaintext per transport message.
MAX_PLAINTEXT = MAX_FRAME - TAG_SIZE
DH_LEN = 32
HASH_LEN = 32
# Noise reserves the nonce 2**64-1; reaching it means the session is used up.
_NONCE_LIMIT = (1 << 64) - 1
_NONCE = struct.Struct("<4xQ")
_LEN = struct.Struct(">H")


class NoiseError(Exception):
    """The noise handshake or transport failed (bad MAC, bad signature, bad framing...)."""


class PeerIDMismatch(NoiseError):
    """The remote proved an identity other than the peer ID we dialled."""

    def __init__(self, expected: PeerID, actual: PeerID) -> None:
        super().__init__(f"dialled {expected} but the remote is {actual}")
        self.expected = expected
        self.actual = actual


# -- Noise Protocol Framework ---------------------------------------------------------


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def _hkdf2(chaining_key: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    """Noise's HKDF with two outputs."""
    temp = _hmac(chaining_key, ikm)
    out1 = _hmac(temp, b"\x01")
    out2 = _hmac(temp, out1 + b"\x02")
    return out1, out2


def _dh(private: X25519PrivateKey, public: bytes) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as exc:  # low-order point gives an all-zero secret
        raise NoiseError(f"invalid X25519 public key: {exc}") from None


def _x25519_public(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes_raw()


class CipherState:
    """A ChaCha20-Poly1305 key with its 64-bit message counter."""

    __slots__ = ("_aead", "n")

    def __init__(self, key: bytes | None = None) -> None:
        self._aead = ChaCha20Poly1305(key) if key is not None else None
        #: Next nonce.
        self.n = 0

    @property
    def has_key(self) -> bool:
        return self._aead is not None

    def _next_nonce(self) -> bytes:
        n = self.n
        if n >= _NONCE_LIMIT:
            raise NoiseError("noise nonce exhausted; the session must be closed")
        self.n = n + 1
        return _NONCE.pack(n)

    def encrypt_with_ad(self, ad: bytes | None, plaintext) -> bytes:
        """Encrypt (or pass through while there is no key yet)."""
        if self._aead is None:
            return bytes(plaintext)
        return self._aead.encrypt(self._next_nonce(), plaintext, ad)

    def decrypt_with_ad(self, ad: bytes | None, ciphertext) -> bytes:
        """Decrypt and authenticate; raises :class:`NoiseError` on a bad tag."""
        if self._aead is None:
            return bytes(ciphertext)
        if self.n >= _NONCE_LIMIT:
            raise NoiseError("noise nonce exhausted; the session must be closed")
        try:
            plaintext = self._aead.decrypt(_NONCE.pack(self.n), ciphertext, ad)
        except InvalidTag:
            raise NoiseError("noise message failed authentication (bad MAC)") from None
        self.n += 1
        return plaintext


class SymmetricState:
    """Noise ``SymmetricState``: chaining key, handshake hash and current cipher."""

    def __init__(self, protocol_name: bytes = PROTOCOL_NAME) -> None:
        if len(protocol_name) <= HASH_LEN:
            self.h = protocol_name.ljust(HASH_LEN, b"\0")
        else:
            self.h = hashlib.sha256(protocol_name).digest()
        self.ck = self.h
        self.cipher = CipherState()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = _hkdf2(self.ck, ikm)
        self.cipher = CipherState(temp_k)

    def mix_hash(self, data: bytes) -> None:
        self.h = hashlib.sha256(self.h + data).digest()

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        k1, k2 = _hkdf2(self.ck, b"")
        return CipherState(k1), CipherState(k2)


class XXHandshakeState:
    """Noise ``HandshakeState`` for the XX pattern, with raw (unframed) messages.

    Messages 0 and 2 go from initiator to responder, message 1 the other way.
    ``ephemeral`` may be given for test vectors; otherwise one is generated.
    After the third message :attr:`complete` is true and :attr:`send_cipher`
    / :attr:`recv_cipher` hold the transport keys.
    """

    def __init__(
        self,
        initiator: bool,
        static: X25519PrivateKey,
        prologue: bytes = b"",
        ephemeral: X25519PrivateKey | None = None,
    ) -> None:
        self.initiator = initiator
        self.s = static
        self.s_pub = _x25519_public(static)
        self.e = ephemeral
        self.re: bytes | None = None
        #: The remote's X25519 static key, once received.
        self.rs: bytes | None = None
        self.symmetric = SymmetricState()
        self.symmetric.mix_hash(prologue)
        self.message_index = 0
        self.send_cipher: CipherState | None = None
        self.recv_cipher: CipherState | None = None
        #: Final handshake hash (channel binding), once complete.
        self.handshake_hash: bytes | None = None

    @property
    def complete(self) -> bool:
        return self.message_index >= 3

    @property
    def my_turn(self) -> bool:
        """Whether the next message is ours to write."""
        return not self.complete and (self.message_index % 2 == 0) == self.initiator

    def _new_ephemeral(self) -> bytes:
        if self.e is None:
            self.e = X25519PrivateKey.generate()
        pub = _x25519_public(self.e)
        self.symmetric.mix_hash(pub)
        return pub

    def write_message(self, payload: bytes = b"") -> bytes:
        """Produce the next handshake message carrying ``payload``."""
        if not self.my_turn:
            raise NoiseError("not our turn to write a handshake message")
        sym = self.symmetric
        index = self.message_index
        if index == 0:  # -> e
            out = self._new_ephemeral()
        elif index == 1:  # <- e, ee, s, es
            out = self._new_ephemeral()
            sym.mix_key(_dh(self.e, self.re))
            out += sym.encrypt_and_hash(self.s_pub)
            sym.mix_key(_dh(self.s, self.re))
        else:  # -> s, se
            out = sym.encrypt_and_hash(self.s_pub)
            sym.mix_key(_dh(self.s, self.re))
        out += sym.encrypt_and_hash(payload)
        self._advance()
        return out

    def read_message(self, message: bytes) -> bytes:
        """Consume the peer's next handshake message; return its payload."""
        if self.complete or self.my_turn:
            raise NoiseError("not expecting a handshake message now")
        message = bytes(message)
        sym = self.symmetric
        index = self.message_index
        if index == 0:  # -> e
            self._need(message, DH_LEN)
            self.re, rest = message[:DH_LEN], message[DH_LEN:]
            sym.mix_hash(self.re)
        elif index == 1:  # <- e, ee, s, es
            self._need(message, DH_LEN + DH_LEN + 2 * TAG_SIZE)
            self.re = message[:DH_LEN]
            sym.mix_hash(self.re)
            sym.mix_key(_dh(self.e, self.re))
            self.rs = sym.decrypt_and_hash(message[DH_LEN : 2 * DH_LEN + TAG_SIZE])
            sym.mix_key(_dh(self.e, self.rs))
            rest = message[2 * DH_LEN + TAG_SIZE :]
        else:  # -> s, se
            self._need(message, DH_LEN + 2 * TAG_SIZE)
            self.rs = sym.decrypt_and_hash(message[: DH_LEN + TAG_SIZE])
            sym.mix_key(_dh(self.e, self.rs))
            rest = message[DH_LEN + TAG_SIZE :]
        payload = sym.decrypt_and_hash(rest)
        self._advance()
        return payload

    @staticmethod
    def _need(message: bytes, size: int) -> None:
        if len(message) < size:
            raise NoiseError(f"handshake message too short ({len(message)} < {size} bytes)")

    def _advance(self) -> None:
        self.message_index += 1
        if self.complete:
            c1, c2 = self.symmetric.split()
            self.send_cipher, self.recv_cipher = (c1, c2) if self.initiator else (c2, c1)
            self.handshake_hash = self.symmetric.h


# -- libp2p handshake payload -----------------------------------------------------------


@dataclass
class HandshakePayload:
    """``NoiseHandshakePayload`` with its ``NoiseExtensions`` flattened in."""

    identity_key: bytes = b""
    identity_sig: bytes = b""
    stream_muxers: list[str] = field(default_factory=list)
    webtransport_certhashes: list[bytes] = field(default_factory=list)
    #: Whether an ``extensions`` field was present at all.
    has_extensions: bool = False


def _pb_bytes(field_no: int, value: bytes) -> bytes:
    return encode_uvarint(field_no << 3 | 2) + encode_uvarint(len(value)) + value


def encode_handshake_payload(payload: HandshakePayload) -> bytes:
    """Encode a ``NoiseHandshakePayload`` protobuf."""
    out = b""
    if payload.identity_key:
        out += _pb_bytes(1, payload.identity_key)
    if payload.identity_sig:
        out += _pb_bytes(2, payload.identity_sig)
    if payload.has_extensions or payload.stream_muxers or payload.webtransport_certhashes:
        ext = b"".join(_pb_bytes(1, c) for c in payload.webtransport_certhashes)
        ext += b"".join(_pb_bytes(2, m.encode("utf-8")) for m in payload.stream_muxers)
        out += _pb_bytes(4, ext)
    return out


def _iter_fields(buf: bytes):
    """Yield ``(field, wire_type, value)``; skips nothing, validates lengths."""
    pos = 0
    end = len(buf)
    try:
        while pos < end:
            decoded = decode_uvarint(buf, pos)
            if decoded is None:
                raise NoiseError("truncated protobuf tag")
            tag, pos = decoded
            field_no, wire = tag >> 3, tag & 7
            if field_no == 0:
                raise NoiseError("protobuf field number 0")
            if wire == 0:
                decoded = decode_uvarint(buf, pos)
                if decoded is None:
                    raise NoiseError("truncated protobuf varint")
                value, pos = decoded
            elif wire == 2:
                decoded = decode_uvarint(buf, pos)
                if decoded is None:
                    raise NoiseError("truncated protobuf length")
                length, pos = decoded
                if pos + length > end:
                    raise NoiseError("truncated protobuf bytes field")
                value = buf[pos : pos + length]
                pos += length
            elif wire in (1, 5):
                size = 8 if wire == 1 else 4
                if pos + size > end:
                    raise NoiseError("truncated protobuf fixed field")
                value = buf[pos : pos + size]
                pos += size
            else:
                raise NoiseError(f"unsupported protobuf wire type {wire}")
            yield field_no, wire, value
    except VarintError as exc:
        raise NoiseError(f"malformed protobuf: {exc}") from None


def decode_handshake_payload(data: bytes) -> HandshakePayload:
    """Decode a ``NoiseHandshakePayload`` leniently (unknown fields are skipped).

    Raises :class:`NoiseError` on malformed protobuf.
    """
    payload = HandshakePayload()
    for field_no, wire, value in _iter_fields(bytes(data)):
        if wire != 2:
            continue
        if field_no == 1:
            payload.identity_key = value
        elif field_no == 2:
            payload.identity_sig = value
        elif field_no == 4:
            payload.has_extensions = True
            for ext_no, ext_wire, ext_value in _iter_fields(value):
                if ext_wire != 2:
                    continue
                if ext_no == 1:
                    payload.webtransport_certhashes.append(ext_value)
                elif ext_no == 2:
                    try:
                        payload.stream_muxers.append(ext_value.decode("utf-8"))
                    except UnicodeDecodeError:
                        raise NoiseError("stream muxer name is not UTF-8") from None
    return payload


def select_muxer(initiator_muxers: Sequence[str], responder_muxers: Sequence[str]) -> str | None:
    """The inlined muxer choice (``connections/inlined-muxer-negotiation.md``).

    Returns ``None`` when either list is empty (negotiate with
    multistream-select after the handshake); otherwise the first entry of
    the initiator's list that the responder also has.  Raises
    :class:`NoiseError` when both lists are non-empty but disjoint.

    When the responder is us, the initiator's list is the remote's, so this
    matches js-libp2p (which takes the first of the remote's list it supports).
    """
    if not initiator_muxers or not responder_muxers:
        return None
    for muxer in initiator_muxers:
        if muxer in responder_muxers:
            return muxer
    raise NoiseError(
        f"no common stream muxer: initiator offers {list(initiator_muxers)}, "
        f"responder {list(responder_muxers)}"
    )


# -- libp2p noise handshake -----------------------------------------------------------


class NoiseHandshake:
    """The libp2p noise XX handshake for one connection, sans-IO.

    Two interfaces:

    * framed: ``start()`` then ``receive(data)`` for every read; each returns
      the bytes to write (length prefixes included).  When :attr:`complete`,
      :attr:`leftover` holds any transport ciphertext that came in behind the
      last handshake message, and :meth:`transport` gives the codec for the
      rest of the connection.
    * unframed: ``write_message()`` / ``read_message(message)``.

    ``muxers``: stream muxers we support, in preference order, sent in the
    ``stream_muxers`` extension; ``None`` or empty sends no extension, and the
    muxer is then negotiated with multistream-select afterwards.
    ``expected_peer``: fail with :class:`PeerIDMismatch` if the remote is
    someone else (checked as soon as its identity is proven).
    """

    def __init__(
        self,
        initiator: bool,
        identity: PrivateKey,
        muxers: Sequence[str] | None = None,
        static_key: X25519PrivateKey | None = None,
        *,
        expected_peer: PeerID | None = None,
        prologue: bytes = b"",
        ephemeral_key: X25519PrivateKey | None = None,
    ) -> None:
        self.initiator = initiator
        self.identity = identity
        self.muxers = list(muxers) if muxers else []
        self.expected_peer = expected_peer
        self._state = XXHandshakeState(
            initiator, static_key or X25519PrivateKey.generate(), prologue, ephemeral_key
        )
        self._frames = bytearray()
        self._failed: NoiseError | None = None
        #: The remote's libp2p identity key / peer ID, once verified.
        self.remote_public_key: PublicKey | None = None
        self.remote_peer_id: PeerID | None = None
        #: The remote's ``stream_muxers`` list (empty if it sent none).
        self.remote_muxers: list[str] = []
        #: The inlined muxer choice; ``None`` means "use multistream-select".
        self.selected_muxer: str | None = None
        #: Ciphertext received after the final handshake message.
        self.leftover = b""

    # -- state --------------------------------------------------------------------

    @property
    def complete(self) -> bool:
        return self._state.complete

    @property
    def send_cipher(self) -> CipherState | None:
        return self._state.send_cipher

    @property
    def recv_cipher(self) -> CipherState | None:
        return self._state.recv_cipher

    @property
    def handshake_hash(self) -> bytes | None:
        return self._state.handshake_hash

    @property
    def local_static_public(self) -> bytes:
        return self._state.s_pub

    def transport(self) -> "NoiseTransport":
        """The transport codec; only once :attr:`complete`."""
        if not self.complete:
            raise NoiseError("handshake is not complete")
        return NoiseTransport(self._state.send_cipher, self._state.recv_cipher)

    # -- unframed messages ----------------------------------------------------------

    def _our_payload(self) -> bytes:
        return encode_handshake_payload(
            HandshakePayload(
                identity_key=self.identity.public_key.marshal(),
                identity_sig=self.identity.sign(SIGNATURE_PREFIX + self._state.s_pub),
                stream_muxers=self.muxers,
            )
        )

    def write_message(self) -> bytes:
        """Our next handshake message (msg1 carries an empty payload, like js)."""
        payload = b"" if self._state.message_index == 0 else self._our_payload()
        return self._state.write_message(payload)

    def read_message(self, message: bytes) -> None:
        """Consume one handshake message from the remote."""
        index = self._state.message_index
        payload = self._state.read_message(message)
        if index == 0:
            return  # msg1's payload carries nothing we use
        self._verify_remote(decode_handshake_payload(payload))

    def _verify_remote(self, payload: HandshakePayload) -> None:
        if not payload.identity_key:
            raise NoiseError("handshake payload lacks the identity key")
        try:
            key = PublicKey.unmarshal(payload.identity_key)
        except (InvalidKey, UnsupportedAlgorithm) as exc:
            raise NoiseError(f"invalid identity key: {exc}") from None
        if not key.verify(SIGNATURE_PREFIX + self._state.rs, payload.identity_sig):
            raise NoiseError("identity signature over the noise static key is invalid")
        peer_id = PeerID.from_public_key(key)
        if self.expected_peer is not None and peer_id != self.expected_peer:
            raise PeerIDMismatch(self.expected_peer, peer_id)
        if self.muxers and payload.stream_muxers:
            if self.initiator:
                self.selected_muxer = select_muxer(self.muxers, payload.stream_muxers)
            else:
                self.selected_muxer = select_muxer(payload.stream_muxers, self.muxers)
        self.remote_public_key = key
        self.remote_peer_id = peer_id
        self.remote_muxers = list(payload.stream_muxers)

    # -- framed interface -------------------------------------------------------------

    def start(self) -> bytes:
        """First bytes to send: framed msg1 for the initiator, nothing for the responder."""
        if self.initiator and self._state.message_index == 0:
            return self._framed(self.write_message())
        return b""

    @staticmethod
    def _framed(message: bytes) -> bytes:
        if len(message) > MAX_FRAME:
            raise NoiseError(f"handshake message of {len(message)} bytes is too large")
        return _LEN.pack(len(message)) + message

    def receive(self, data: bytes) -> bytes:
        """Feed received bytes; return framed handshake bytes to send."""
        if self._failed is not None:
            raise self._failed
        if self.complete:
            raise NoiseError("handshake already complete")
        try:
            return self._receive(data)
        except NoiseError as exc:
            self._failed = exc
            raise

    def _receive(self, data: bytes) -> bytes:
        buf = self._frames
        buf += data
        out = []
        pos = 0
        while not self.complete and len(buf) - pos >= 2:
            length = (buf[pos] << 8) | buf[pos + 1]
            if len(buf) - pos - 2 < length:
                break
            self.read_message(buf[pos + 2 : pos + 2 + length])
            pos += 2 + length
            if self._state.my_turn:
                out.append(self._framed(self.write_message()))
        del buf[:pos]
        if self.complete:
            self.leftover = bytes(buf)
            buf.clear()
        return b"".join(out)


# -- transport phase --------------------------------------------------------------------


class NoiseTransport:
    """Encrypts and frames plaintext, and decrypts a stream of frames.

    ``decrypt`` accepts any split of the incoming byte stream: many frames in
    one read, or a frame spread over several.  It returns all plaintext that
    became available (possibly ``b""``).
    """

    def __init__(self, send: CipherState, recv: CipherState) -> None:
        self._send = send
        self._recv = recv
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame waiting for the rest."""
        return len(self._buf)

    def encrypt(self, plaintext: bytes | bytearray | memoryview) -> bytes:
        """Encrypt ``plaintext`` as one or more framed noise messages."""
        size = len(plaintext)
        if size == 0:
            return b""
        send = self._send
        if size <= MAX_PLAINTEXT:
            ciphertext = send.encrypt_with_ad(None, plaintext)
            return _LEN.pack(len(ciphertext)) + ciphertext
        view = memoryview(plaintext)
        parts = []
        for start in range(0, size, MAX_PLAINTEXT):
            ciphertext = send.encrypt_with_ad(None, view[start : start + MAX_PLAINTEXT])
            parts.append(_LEN.pack(len(ciphertext)))
            parts.append(ciphertext)
        return b"".join(parts)

    def decrypt(self, data: bytes | bytearray | memoryview) -> bytes:
        """Feed received bytes; return the plaintext of every complete frame."""
        if self._buf:
            self._buf += data
            buf = self._buf
        else:
            buf = data
        recv = self._recv
        out = []
        pos = 0
        end = len(buf)
        with memoryview(buf) as view:
            while end - pos >= 2:
                length = (view[pos] << 8) | view[pos + 1]
                stop = pos + 2 + length
                if stop > end:
                    break
                if length < TAG_SIZE:
                    raise NoiseError(f"noise frame of {length} bytes is shorter than its tag")
                out.append(recv.decrypt_with_ad(None, view[pos + 2 : stop]))
                pos = stop
            if buf is self._buf:
                tail = None
            else:
                tail = bytes(view[pos:]) if pos < end else b""
        if tail is None:
            del self._buf[:pos]
        elif tail:
            self._buf = bytearray(tail)
        if len(out) == 1:
            return out[0]
        return b"".join(out)
