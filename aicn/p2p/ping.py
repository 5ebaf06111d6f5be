"""libp2p ping, ``/ipfs/ping/1.0.0`` (specs: ping/ping.md).

The dialer writes 32 random bytes and the listener echoes them; the dialer
may repeat on the same stream and half-closes after the last one.  The
listener echoes 32-byte blocks until EOF.  js-libp2p's connection monitor
pings every connection every 10 s and drops connections whose ping fails, so
the handler must answer promptly and never hang.
"""

from __future__ import annotations

import os
from typing import Callable

from aicn.log import Logger
from aicn.p2p.stream import IncompleteRead, Stream, StreamError

log = Logger()

PING = "/ipfs/ping/1.0.0"
#: Size of every ping payload.
PING_SIZE = 32


class PingError(Exception):
    """The peer did not echo our payload (wrong bytes, or EOF mid-ping)."""


async def handle_ping(stream: Stream, ctx=None) -> None:
    """Echo 32-byte blocks until EOF, then half-close.  Never raises.

    ``readexactly`` reassembles blocks that arrive split; EOF or a reset ends
    the loop quietly, and a trailing partial block is dropped.
    """
    try:
        while True:
            try:
                block = await stream.readexactly(PING_SIZE)
            except IncompleteRead as exc:
                if exc.partial:
                    log.debug("ping stream ended inside a block ({n} bytes)", n=len(exc.partial))
                break
            await stream.write(block)
        await stream.close_write()
    except (StreamError, EOFError) as exc:
        log.debug("ping stream ended: {error}", error=exc)
    except Exception:
        log.failure("ping handler crashed")
        stream.reset()


async def ping(
    stream: Stream,
    clock,
    count: int = 1,
    random_bytes: Callable[[int], bytes] = os.urandom,
) -> list[float]:
    """Ping ``count`` times over ``stream``; return the round-trip times in seconds.

    ``clock`` is anything with ``seconds()`` (the reactor, ``task.Clock``).
    Each RTT runs from just before the write to the complete echo.  Raises
    :class:`PingError` (after resetting the stream) if an echo differs or the
    peer closes early; :class:`~aicn.p2p.stream.StreamError` passes through.
    The stream is closed after the last ping.
    """
    rtts = []
    for _ in range(count):
        payload = random_bytes(PING_SIZE)
        start = clock.seconds()
        await stream.write(payload)
        try:
            echo = await stream.readexactly(PING_SIZE)
        except IncompleteRead as exc:
            stream.reset()
            raise PingError(f"peer closed the ping stream after {len(exc.partial)} bytes") from None
        if echo != payload:
            stream.reset()
            raise PingError("ping echo does not match the payload")
        rtts.append(clock.seconds() - start)
    await stream.close()
    return rtts
