"""Model results onto HTTP responses: the one place a node's stream meets twisted.web.

The node returns data, an :class:`~aicn.node.modelstream.Answer` or a
:class:`~aicn.node.modelstream.ModelStream`; :func:`send_stream` writes a
stream's head, delivers its body into the response (the stream is the
response's producer, so a slow client pushes back), finishes the response
when the body is complete and cuts the connection when it broke (the client
then sees an incomplete response, not a clean end).  :class:`ClientWatch`
notices a client that leaves, before or during the stream, and aborts it.
"""

from __future__ import annotations

from typing import Optional

from twisted.internet.defer import Deferred

from aicn.log import Logger
from aicn.node.modelstream import ModelStream, Outcome

__all__ = ["NODE_HEADER", "ClientWatch", "send_stream"]

log = Logger()

#: Response header naming the node that answered a ``/proxy`` request.
NODE_HEADER = b"X-AICN-Node"


class ClientWatch:
    """Whether a request's client is still there; aborts the stream it is given if not.

    Made when the request arrives: twisted.web tells of a lost connection
    only to the ``notifyFinish`` Deferreds that exist at that moment.
    """

    def __init__(self, request) -> None:
        self.left = False
        self._stream: Optional[ModelStream] = None
        request.notifyFinish().addErrback(self._lost)

    def _lost(self, failure) -> None:
        self.left = True
        log.debug("HTTP client left: {why}", why=failure.getErrorMessage())
        if self._stream is not None:
            self._stream.abort()

    def watch(self, stream: ModelStream) -> None:
        """Abort ``stream`` when the client leaves (at once if it already has)."""
        self._stream = stream
        if self.left:
            stream.abort()


def send_stream(request, stream: ModelStream, client: ClientWatch) -> Deferred:
    """Answer ``request`` with ``stream``.

    Returns a Deferred that fires (with None) once the response is over:
    Klein finishes a request when a route's result arrives (and writes a
    ``bytes`` one even to a finished request), so a route returns this.
    """
    over = request.notifyFinish()
    over.addBoth(lambda _: None)
    request.setResponseCode(stream.status, stream.reason or None)
    for name, value in stream.headers:
        request.responseHeaders.addRawHeader(name, value)
    if stream.node_id:
        request.setHeader(NODE_HEADER, stream.node_id.encode("ascii"))
    client.watch(stream)
    if stream.outcome is Outcome.ABORTED:
        return over

    def ended(outcome: Outcome) -> None:
        if outcome is Outcome.COMPLETE:
            request.finish()
        elif outcome is Outcome.BROKEN:
            # Headers are out: end without the final chunk, so the client knows.
            request.loseConnection()

    stream.deliver(request).addCallback(ended)
    return over
