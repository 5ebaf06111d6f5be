"""The twisted.web ``Site`` that serves the HTTP API."""

from __future__ import annotations

from twisted.web.server import Site

from aicn.tcp import set_tcp_nodelay

__all__ = ["APISite"]


class APISite(Site):
    """A quiet :class:`~twisted.web.server.Site` whose connections have
    Nagle's algorithm off, and which leaves request bodies to the API.

    A streamed answer is relayed in small writes (SSE events); with Nagle on,
    a write waits while an earlier one is unacknowledged, and the client may
    delay that ACK by up to 40 ms.
    """

    noisy = False

    def __init__(self, resource, *args, **kwargs) -> None:
        # The API reads bodies itself, within its limits; twisted.web would
        # otherwise parse every form (of any size) into request.args first.
        kwargs.setdefault("parsePOSTFormSubmission", False)
        super().__init__(resource, *args, **kwargs)

    def buildProtocol(self, addr):
        protocol = super().buildProtocol(addr)
        if protocol is not None:
            make_connection = protocol.makeConnection

            def makeConnection(transport) -> None:
                set_tcp_nodelay(transport)
                make_connection(transport)

            protocol.makeConnection = makeConnection
        return protocol
