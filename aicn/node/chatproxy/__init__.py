"""Streaming chat between nodes: the ``/chat-proxy/0.0.1`` tunnel, by role.

* :mod:`~aicn.node.chatproxy.wire` -- what crosses the stream: the request,
  limits, and the worker's error format (written and read in one place);
* :mod:`~aicn.node.chatproxy.worker` -- the worker: call the model, relay;
* :mod:`~aicn.node.chatproxy.requester` -- the requester: a
  :class:`~aicn.node.chatproxy.requester.TunnelStream` once the head came;
* :mod:`~aicn.node.chatproxy.local` -- our own model, as the same kind of
  stream object (:class:`~aicn.node.modelstream.ModelStream`).
"""

from aicn.node.chatproxy.local import LocalStream, local_chat_stream
from aicn.node.chatproxy.requester import TunnelStream, proxy_chat_stream, proxy_edit_stream, proxy_image_stream
from aicn.node.chatproxy.wire import CHAT_PROXY, stream_error
from aicn.node.chatproxy.worker import chat_proxy_handler, serve_chat_proxy

__all__ = [
    "CHAT_PROXY",
    "LocalStream",
    "TunnelStream",
    "chat_proxy_handler",
    "local_chat_stream",
    "proxy_chat_stream",
    "proxy_edit_stream",
    "proxy_image_stream",
    "serve_chat_proxy",
    "stream_error",
]
