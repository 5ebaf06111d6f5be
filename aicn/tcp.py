"""TCP transport helpers shared by the HTTP server and the HTTP clients."""

from __future__ import annotations

__all__ = ["set_tcp_nodelay"]


def set_tcp_nodelay(transport) -> None:
    """Turn Nagle's algorithm off on a TCP transport (anything else: no-op)."""
    set_nodelay = getattr(transport, "setTcpNoDelay", None)
    if set_nodelay is not None:
        try:
            set_nodelay(True)
        except OSError:
            pass  # the connection is already gone; its protocol will hear of it
