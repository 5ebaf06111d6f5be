"""Tiny in-test HTTP servers on 127.0.0.1 (model servers, a fake Kubo RPC)."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site


class FuncResource(Resource):
    """Calls ``handler(request)`` for every request, any path and method.

    The handler returns bytes, or NOT_DONE_YET and finishes later.  Every
    request is recorded in ``requests`` as ``(method, uri, headers, body)``;
    ``dropped`` fires the first time a client goes away before the response
    was finished.
    """

    isLeaf = True

    def __init__(self, handler):
        super().__init__()
        self.handler = handler
        self.requests = []
        self.dropped = Deferred()

    def render(self, request):
        body = request.content.read()
        request.content.seek(0)
        self.requests.append((request.method, request.uri, request.requestHeaders, body))

        def gone(failure):
            if not self.dropped.called:
                self.dropped.callback(failure.value)

        request.notifyFinish().addErrback(gone)
        return self.handler(request)


async def serve(test_case, handler) -> tuple[str, FuncResource]:
    """Serve ``handler`` on 127.0.0.1 for the test; return (base URL, resource)."""
    resource = FuncResource(handler)
    site = Site(resource)
    site.noisy = False
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
    test_case.addCleanup(port.stopListening)
    return f"http://127.0.0.1:{port.getHost().port}", resource


def json_reply(request, payload: bytes, status: int = 200, content_type: bytes = b"application/json") -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", content_type)
    return payload


__all__ = ["serve", "json_reply", "FuncResource", "NOT_DONE_YET"]
