"""libp2p private networks, PSK v1 (``pnet/Private-Networks-PSK-V1.md``).

A private network wraps the raw TCP stream, below multistream-select: right
after connect each side sends a random 24-byte nonce, then every byte it writes
is XORed with XSalsa20(key=PSK, nonce=own nonce), and every byte it reads with
XSalsa20(key=PSK, nonce=peer's nonce).  The key is the raw 32-byte PSK, the
keystream starts at block 0 and runs continuously; there is no MAC and no
framing, so a wrong key only shows up as garbage one layer up.

XSalsa20 = HSalsa20 (derives a subkey from the key and the first 16 nonce
bytes, computed once per direction in pure Python) followed by plain Salsa20
with that subkey and the last 8 nonce bytes, run by pycryptodome's C code.
"""

from __future__ import annotations

import base64
import binascii
import os
import struct

from Crypto.Cipher import Salsa20

__all__ = [
    "NONCE_SIZE",
    "KEY_SIZE",
    "PSK_V1_HEADER",
    "InvalidPSK",
    "XSalsa20",
    "hsalsa20",
    "PnetCodec",
    "parse_psk",
]

#: Size of the clear-text nonce each side sends first.
NONCE_SIZE = 24
#: Size of a PSK v1 key.
KEY_SIZE = 32
#: First line of a PSK v1 key file.
PSK_V1_HEADER = "/key/swarm/psk/1.0.0/"

_MASK = 0xFFFFFFFF
# "expand 32-byte k" as four little-endian words.
_SIGMA = struct.unpack("<4I", b"expand 32-byte k")


class InvalidPSK(ValueError):
    """A pre-shared key (or key file) cannot be parsed or has the wrong size."""


def _rotl(value: int, shift: int) -> int:
    return ((value << shift) | (value >> (32 - shift))) & _MASK


def hsalsa20(key: bytes, nonce16: bytes) -> bytes:
    """HSalsa20: derive a 32-byte subkey from a 32-byte key and 16 nonce bytes.

    Runs the 20-round Salsa20 core without the final feed-forward and outputs
    words 0, 5, 10, 15, 6, 7, 8, 9 (Bernstein, "Extending the Salsa20 nonce").
    """
    if len(key) != KEY_SIZE or len(nonce16) != 16:
        raise ValueError("hsalsa20 needs a 32-byte key and a 16-byte input")
    k = struct.unpack("<8I", key)
    n = struct.unpack("<4I", nonce16)
    x = [
        _SIGMA[0], k[0], k[1], k[2],
        k[3], _SIGMA[1], n[0], n[1],
        n[2], n[3], _SIGMA[2], k[4],
        k[5], k[6], k[7], _SIGMA[3],
    ]  # fmt: skip

    def quarter(a: int, b: int, c: int, d: int) -> None:
        x[b] ^= _rotl((x[a] + x[d]) & _MASK, 7)
        x[c] ^= _rotl((x[b] + x[a]) & _MASK, 9)
        x[d] ^= _rotl((x[c] + x[b]) & _MASK, 13)
        x[a] ^= _rotl((x[d] + x[c]) & _MASK, 18)

    for _ in range(10):
        # column round
        quarter(0, 4, 8, 12)
        quarter(5, 9, 13, 1)
        quarter(10, 14, 2, 6)
        quarter(15, 3, 7, 11)
        # row round
        quarter(0, 1, 2, 3)
        quarter(5, 6, 7, 4)
        quarter(10, 11, 8, 9)
        quarter(15, 12, 13, 14)
    return struct.pack("<8I", x[0], x[5], x[10], x[15], x[6], x[7], x[8], x[9])


class XSalsa20:
    """A continuous XSalsa20 keystream cipher (encryption == decryption).

    ``process`` may be called with chunks of any size; the keystream carries
    on from where the previous call stopped.
    """

    def __init__(self, key: bytes, nonce: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise InvalidPSK(f"XSalsa20 key must be {KEY_SIZE} bytes, got {len(key)}")
        if len(nonce) != NONCE_SIZE:
            raise ValueError(f"XSalsa20 nonce must be {NONCE_SIZE} bytes, got {len(nonce)}")
        subkey = hsalsa20(bytes(key), bytes(nonce[:16]))
        self._cipher = Salsa20.new(key=subkey, nonce=bytes(nonce[16:]))

    def process(self, data: bytes | bytearray | memoryview) -> bytes:
        """XOR ``data`` with the next ``len(data)`` keystream bytes."""
        if not data:
            return b""
        return self._cipher.encrypt(data)


class PnetCodec:
    """Sans-IO PSK v1 codec for one connection.

    Send :attr:`local_nonce` as soon as the connection is up, then pass every
    outgoing byte through :meth:`encrypt` and every incoming byte through
    :meth:`decrypt`.  ``decrypt`` takes the first 24 bytes it sees as the
    peer's nonce and only returns plaintext after that.
    """

    def __init__(self, psk: bytes, nonce: bytes | None = None) -> None:
        if len(psk) != KEY_SIZE:
            raise InvalidPSK(f"PSK must be {KEY_SIZE} bytes, got {len(psk)}")
        self._psk = bytes(psk)
        self.local_nonce = os.urandom(NONCE_SIZE) if nonce is None else bytes(nonce)
        self._encryptor = XSalsa20(self._psk, self.local_nonce)
        self._decryptor: XSalsa20 | None = None
        self._nonce_buf = bytearray()

    @property
    def remote_nonce_received(self) -> bool:
        """Whether the peer's nonce has arrived in full."""
        return self._decryptor is not None

    def encrypt(self, data: bytes | bytearray | memoryview) -> bytes:
        """Encrypt outgoing bytes with our own nonce's keystream."""
        return self._encryptor.process(data)

    def decrypt(self, data: bytes | bytearray | memoryview) -> bytes:
        """Decrypt incoming bytes; the first 24 ever seen are the peer's nonce."""
        if self._decryptor is None:
            need = NONCE_SIZE - len(self._nonce_buf)
            view = memoryview(data)
            self._nonce_buf += view[:need]
            if len(self._nonce_buf) < NONCE_SIZE:
                return b""
            self._decryptor = XSalsa20(self._psk, bytes(self._nonce_buf))
            data = view[need:]
        return self._decryptor.process(data)


def _decode_psk_body(encoding: str, body: bytes) -> bytes:
    try:
        if encoding == "/base16/":
            return bytes.fromhex(body.decode("ascii").strip())
        if encoding == "/base64/":
            return base64.b64decode(body.strip(), validate=True)
        if encoding == "/bin/":
            return body
    except (ValueError, UnicodeDecodeError, binascii.Error) as exc:
        raise InvalidPSK(f"bad {encoding.strip('/')} PSK body: {exc}") from None
    raise InvalidPSK(f"unknown PSK encoding {encoding!r} (want /base16/, /base64/ or /bin/)")


def parse_psk(text: str | bytes) -> bytes:
    """Parse a PSK: 64 hex characters (the DBC config form) or a PSK v1 key file.

    The key file format is ``/key/swarm/psk/1.0.0/\\n/base16/\\n<hex>`` with
    ``/base16/``, ``/base64/`` or ``/bin/`` as the encoding line, as go-libp2p
    reads it.  Returns the raw 32-byte key; raises :class:`InvalidPSK`.
    """
    raw = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    if raw.startswith(PSK_V1_HEADER.encode()):
        parts = raw.split(b"\n", 2)
        if len(parts) < 3:
            raise InvalidPSK("PSK file is truncated: needs header, encoding and key lines")
        encoding = parts[1].rstrip(b"\r").decode("ascii", "replace").strip()
        body = parts[2]
        if encoding != "/bin/":
            body = body.split(b"\n", 1)[0]
        key = _decode_psk_body(encoding, body)
    else:
        stripped = raw.strip()
        if len(stripped) != 2 * KEY_SIZE:
            raise InvalidPSK(
                f"PSK must be {2 * KEY_SIZE} hex characters or a {PSK_V1_HEADER} key file"
            )
        key = _decode_psk_body("/base16/", stripped)
    if len(key) != KEY_SIZE:
        raise InvalidPSK(f"PSK must decode to {KEY_SIZE} bytes, got {len(key)}")
    return key
