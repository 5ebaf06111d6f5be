"""libp2p pubsub for aicn: floodsub (``/floodsub/1.0.0``) with StrictSign.

* :mod:`.rpc`: RPC protobuf framing (pure).
* :mod:`.sign`: message signing, validation, seqnos, message ids (pure).
* :mod:`.seen`: the seen-message cache (pure, injected clock).
* :mod:`.floodsub`: the router on top of a :class:`~aicn.p2p.host.Host`.
"""

from aicn.p2p.pubsub.floodsub import FloodSub, MessageTooLarge, PubSubMessage
from aicn.p2p.pubsub.rpc import DEFAULT_MAX_MESSAGE_SIZE, FLOODSUB, RPCError, RPCTooLarge
from aicn.p2p.pubsub.sign import MessageError, SignatureError

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "FLOODSUB",
    "FloodSub",
    "MessageError",
    "MessageTooLarge",
    "PubSubMessage",
    "RPCError",
    "RPCTooLarge",
    "SignatureError",
]
