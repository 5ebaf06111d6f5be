"""Kademlia DHT (``<prefix>/kad/1.0.0``), wire-compatible with go-libp2p-kad-dht
and js-libp2p kad-dht.

Pure cores: :mod:`.keyspace` (sha256 ids, XOR distance), :mod:`.routing`
(k-buckets), :mod:`.providers` (provider records), :mod:`.codec` (messages
and framing), :mod:`.lookup` (iterative lookup state machine).  The service
on a host is :class:`~aicn.p2p.kad.dht.KadDHT`.
"""

from aicn.p2p.kad.codec import (
    ConnectionType,
    KadCodecError,
    KadMessage,
    KadPeer,
    KadRecord,
    MessageDecoder,
    MessageType,
    decode_message,
    encode_frame,
    encode_message,
)
from aicn.p2p.kad.dht import (
    DEFAULT_PROTOCOL,
    KadDHT,
    KadError,
    KadProtocolError,
    rendezvous_cid,
    rendezvous_key,
)
from aicn.p2p.kad.keyspace import common_prefix_len, distance, kad_id
from aicn.p2p.kad.lookup import Lookup, PeerState
from aicn.p2p.kad.providers import ProviderStore
from aicn.p2p.kad.routing import RoutingTable

__all__ = [
    "DEFAULT_PROTOCOL",
    "ConnectionType",
    "KadCodecError",
    "KadDHT",
    "KadError",
    "KadMessage",
    "KadPeer",
    "KadProtocolError",
    "KadRecord",
    "Lookup",
    "MessageDecoder",
    "MessageType",
    "PeerState",
    "ProviderStore",
    "RoutingTable",
    "common_prefix_len",
    "decode_message",
    "distance",
    "encode_frame",
    "encode_message",
    "kad_id",
    "rendezvous_cid",
    "rendezvous_key",
]
