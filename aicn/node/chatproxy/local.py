"""A streamed chat with our own model: the same stream object as the tunnel's.

The model's HTTP response becomes a :class:`LocalStream`; its connection is
the consumer's push producer (a slow client pauses the model), and
:meth:`~aicn.node.modelstream.ModelStream.abort` closes it.
"""

from __future__ import annotations

from typing import Optional

from twisted.internet.defer import CancelledError, Deferred

from aicn.log import Logger
from aicn.models.chat import CHAT_TIMEOUT, open_chat_stream
from aicn.models.http import BodyPump, body_ended_cleanly, read_body, with_timeout
from aicn.node.chatproxy.wire import MAX_ERROR_BODY, REQUEST_READ_TIMEOUT, error_from_reply
from aicn.node.httpwire import end_to_end_headers
from aicn.node.modelstream import Consumer, ModelStream, Outcome

__all__ = ["LocalStream", "local_chat_stream"]

log = Logger()


class LocalStream(ModelStream):
    """A model server's streamed response, head read, body not yet."""

    def __init__(self, response, api_url: str, *, node_id: Optional[str] = None) -> None:
        raw = [(name, value) for name, values in response.headers.getAllRawHeaders() for value in values]
        super().__init__(response.code, response.phrase or b"", end_to_end_headers(raw), node_id=node_id)
        self._response = response
        self._api_url = api_url
        self._pump: Optional[BodyPump] = None
        self._consumer: Optional[Consumer] = None

    def _start(self, consumer: Consumer) -> None:
        self._consumer = consumer
        self._pump = BodyPump(consumer.write, self._body_ended)
        consumer.registerProducer(self._pump, True)
        self._response.deliverBody(self._pump)

    def _body_ended(self, reason) -> None:
        if self.outcome is not None:
            return
        if self._consumer is not None:
            self._consumer.unregisterProducer()
            self._consumer = None
        if body_ended_cleanly(reason):
            self._end(Outcome.COMPLETE)
        else:
            log.info("Model stream {url} failed: {reason}", url=self._api_url, reason=reason)
            self._end(Outcome.BROKEN)

    def _stop(self) -> None:
        self._consumer = None  # gone with its client
        if self._pump is not None:
            self._pump.abort()
        else:
            _discard(self._response)


def _discard(response) -> None:
    """Drop an unbuffered treq response: its connection is closed."""
    pump = BodyPump(lambda _data: None, lambda _reason: None)
    response.deliverBody(pump)
    pump.abort()


async def local_chat_stream(api_url: str, body: bytes, *, reactor, client=None,
                            head_timeout: float = CHAT_TIMEOUT, reject_errors: bool = False,
                            node_id: Optional[str] = None) -> LocalStream:
    """Call our model with a streaming request; return once its head arrived.

    Raises :class:`~aicn.models.errors.ModelError` if the model cannot be
    reached; with ``reject_errors`` also if it answers with a status other
    than 200 (its body, read up to 64 KiB, gives the message).  Cancelling
    the call closes the model connection.
    """
    upstream = Deferred.fromCoroutine(open_chat_stream(api_url, body, None, reactor=reactor, client=client,
                                                       timeout=head_timeout))
    response = await upstream
    if reject_errors and response.code != 200:
        try:
            error_body = await with_timeout(read_body(response, MAX_ERROR_BODY), REQUEST_READ_TIMEOUT, reactor)
        except CancelledError:
            raise
        except Exception:  # too large, too slow, cut: the status says enough
            error_body = b""
        raise error_from_reply(response.code, error_body)
    return LocalStream(response, api_url, node_id=node_id)
