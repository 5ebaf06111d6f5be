"""The Kademlia key space: 256-bit ids and XOR distance.

As in go-libp2p-kad-dht and js-libp2p kad-dht, every key (a peer ID's
multihash bytes, a provider key's multihash, any raw key) is placed in the
key space by ``sha256(key)``; distance is the XOR of two such ids read as a
big-endian integer.
"""

from __future__ import annotations

import hashlib

from aicn.p2p.peerid import PeerID

#: Bits in a key-space id.
KEY_BITS = 256


def kad_id(key: bytes | PeerID) -> bytes:
    """The 32-byte key-space id of a raw key, or of a peer ID's multihash."""
    if isinstance(key, PeerID):
        key = key.to_bytes()
    return hashlib.sha256(bytes(key)).digest()


def distance(a: bytes, b: bytes) -> int:
    """XOR distance between two key-space ids."""
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


def common_prefix_len(a: bytes, b: bytes) -> int:
    """How many leading bits two key-space ids share (256 if equal)."""
    d = distance(a, b)
    return KEY_BITS - d.bit_length()
