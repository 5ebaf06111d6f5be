"""Encryption of addressed message bodies, compatible with the Go node.

Only ``Message.body`` of requests and responses sent to one ``node_id`` is
encrypted; headers, heartbeats and error replies are plaintext.  The scheme
(Go ``pkg/p2p/secp256k1.go``) is:

* key: static-static ECDH on secp256k1 between the sender's node key and the
  receiver's node public key; the AES key is the raw 32-byte big-endian X
  coordinate of the shared point, with no hashing or KDF.  The key is the same
  in both directions for a pair of nodes.
* cipher: AES-256-GCM, random 12-byte nonce, no associated data.
* wire: ``nonce (12) || ciphertext || tag (16)``.

The sender puts its own libp2p-marshalled public key in
``MessageHeader.node_pub_key``; an empty ``node_pub_key`` means the body is
plaintext.  The receiver therefore learns the sender's key from the header
(not from ``header.node_id``); callers that care who sent a message must check
that the key matches the claimed ``node_id`` (:func:`key_matches_peer`).

A reused nonce under one static key would be fatal for GCM; 96 random bits
per message keep the collision probability negligible for any realistic
message count between two nodes.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from aicn.p2p.keys import InvalidKey, KeyType, PrivateKey, PublicKey
from aicn.p2p.peerid import InvalidPeerID, PeerID

NONCE_SIZE = 12
TAG_SIZE = 16
#: The smallest valid encrypted body (an empty plaintext).
MIN_SEALED_SIZE = NONCE_SIZE + TAG_SIZE

# Indirection so tests can freeze the nonce; never replace it in production code.
_random_bytes = os.urandom


class BodyCryptoError(ValueError):
    """Base class of body encryption errors."""


class BodyEncryptError(BodyCryptoError):
    """A body cannot be encrypted for a peer (API code 1012 "Encrypt error")."""


class BodyDecryptError(BodyCryptoError):
    """A body cannot be decrypted or authenticated (API code 1013 "Decrypt error")."""


#: Shared keys computed lately: ``(id(own_key), peer key bytes) -> (own_key, key)``.
#: ECDH costs about 0.5 ms and every request and answer needs one; the key of
#: a pair of nodes never changes.
_SHARED_KEYS: dict = {}
_SHARED_KEYS_MAX = 1024


def shared_key(own_key: PrivateKey, peer_public: PublicKey) -> bytes:
    """The 32-byte AES key for ``own_key`` and ``peer_public`` (ECDH X coordinate).

    Raises :class:`~aicn.p2p.keys.InvalidKey` unless both keys are secp256k1.
    """
    cache_key = (id(own_key), peer_public.marshal())
    hit = _SHARED_KEYS.get(cache_key)
    if hit is not None and hit[0] is own_key:
        return hit[1]
    key = own_key.ecdh(peer_public)
    if len(_SHARED_KEYS) >= _SHARED_KEYS_MAX:
        del _SHARED_KEYS[next(iter(_SHARED_KEYS))]
    _SHARED_KEYS[cache_key] = (own_key, key)
    return key


def encrypt_body(own_key: PrivateKey, peer_public: PublicKey, plaintext: bytes) -> bytes:
    """Encrypt ``plaintext`` for ``peer_public``; returns ``nonce || ciphertext || tag``.

    Raises :class:`BodyEncryptError` if either key is not secp256k1.
    """
    try:
        key = shared_key(own_key, peer_public)
    except InvalidKey as exc:
        raise BodyEncryptError(str(exc)) from None
    nonce = _random_bytes(NONCE_SIZE)
    return nonce + AESGCM(key).encrypt(nonce, bytes(plaintext), None)


def decrypt_body(own_key: PrivateKey, sender_public: PublicKey, data: bytes) -> bytes:
    """Decrypt a body that ``sender_public`` encrypted for ``own_key``.

    Raises :class:`BodyDecryptError` for wrong keys, non-secp256k1 keys,
    truncated input or any modification of nonce, ciphertext or tag.
    """
    data = bytes(data)
    if len(data) < MIN_SEALED_SIZE:
        raise BodyDecryptError(
            f"encrypted body is {len(data)} bytes, shorter than nonce and tag ({MIN_SEALED_SIZE})"
        )
    try:
        key = shared_key(own_key, sender_public)
    except InvalidKey as exc:
        raise BodyDecryptError(str(exc)) from None
    try:
        return AESGCM(key).decrypt(data[:NONCE_SIZE], data[NONCE_SIZE:], None)
    except InvalidTag:
        raise BodyDecryptError("body authentication failed (wrong key or corrupted)") from None


# -- where the peer's key comes from -------------------------------------------------


def public_key_from_peer_id(peer_id: PeerID | str) -> PublicKey:
    """The secp256k1 key inlined in ``peer_id`` (``16Uiu2…`` IDs).

    Raises :class:`BodyEncryptError` when the ID is malformed, hashes its key
    (the caller must then ask the peerstore or the DHT), or is not secp256k1.
    """
    try:
        if not isinstance(peer_id, PeerID):
            peer_id = PeerID.from_string(peer_id)
        key = peer_id.extract_public_key()
    except (InvalidPeerID, InvalidKey) as exc:
        raise BodyEncryptError(f"cannot get a public key from peer ID: {exc}") from None
    if key is None:
        raise BodyEncryptError(f"peer ID {peer_id} does not inline its public key")
    if key.key_type != KeyType.Secp256k1:
        raise BodyEncryptError(f"peer {peer_id} has a {key.key_type.name} key, not secp256k1")
    return key


def public_key_from_header(node_pub_key: bytes) -> PublicKey:
    """Parse ``MessageHeader.node_pub_key`` (a libp2p ``PublicKey`` protobuf).

    Raises :class:`BodyDecryptError` if it is malformed or not secp256k1.
    """
    try:
        key = PublicKey.unmarshal(bytes(node_pub_key))
    except InvalidKey as exc:
        raise BodyDecryptError(f"bad node_pub_key: {exc}") from None
    if key.key_type != KeyType.Secp256k1:
        raise BodyDecryptError(f"node_pub_key is {key.key_type.name}, not secp256k1")
    return key


def key_matches_peer(node_pub_key: bytes, node_id: str) -> bool:
    """Whether ``node_pub_key`` is the key of ``node_id`` (False for anything malformed).

    The Go node never checks this, so its ``node_id`` header is spoofable; use
    this before trusting who sent an encrypted message.
    """
    try:
        return PeerID.from_string(node_id).matches_public_key(PublicKey.unmarshal(node_pub_key))
    except (InvalidKey, InvalidPeerID):
        return False


# -- message-level helpers --------------------------------------------------------


def seal_body(own_key: PrivateKey, peer_public: PublicKey, plaintext: bytes) -> tuple[bytes, bytes]:
    """Encrypt a body; returns ``(body, node_pub_key)`` ready for the Message header."""
    return encrypt_body(own_key, peer_public, plaintext), own_key.public_key.marshal()


def open_body(own_key: PrivateKey, node_pub_key: bytes, body: bytes) -> bytes:
    """The plaintext of a received ``Message.body``.

    An empty ``node_pub_key`` means the sender did not encrypt (as the Go node
    does when it cannot get the receiver's key); the body is returned as is.
    Otherwise the body must decrypt, else :class:`BodyDecryptError`.
    """
    if not node_pub_key:
        return bytes(body)
    return decrypt_body(own_key, public_key_from_header(node_pub_key), body)
