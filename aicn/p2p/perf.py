"""libp2p perf, ``/perf/1.0.0`` (specs: perf/perf.md).

The client writes an 8-byte big-endian uint64 N (how many bytes it wants
back), uploads any amount and half-closes; the server reads N, reads the
upload until EOF, and only then writes N bytes and closes.  N at or above
2**53 (the spec's "max uint64" case; js's harness uses the same threshold)
means "send until the reader stops", i.e. until the stream is reset.

Data goes in 64 KiB blocks, the size js uses, cut from one preallocated zero
block, and every write is awaited so the muxer's flow control paces us.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from aicn.log import Logger
from aicn.p2p.stream import IncompleteRead, Stream, StreamError

log = Logger()

PERF = "/perf/1.0.0"
BLOCK_SIZE = 64 * 1024
#: Requests of this many bytes or more mean "until the reader stops".
UNLIMITED = 2**53
_BLOCK = bytes(BLOCK_SIZE)


class PerfError(Exception):
    """The perf exchange broke: short header, or a wrong number of bytes back."""


@dataclass(frozen=True)
class PerfResult:
    """One measurement, as seen by the client."""

    upload_bytes: int
    download_bytes: int
    #: From stream use start to our FIN being accepted.
    upload_seconds: float
    #: From our FIN to the server's EOF.
    download_seconds: float
    total_seconds: float


async def _send(stream: Stream, count: Optional[int]) -> int:
    """Write ``count`` zero bytes (forever when ``None``) in blocks; return bytes sent."""
    sent = 0
    while count is None or sent < count:
        size = BLOCK_SIZE if count is None else min(BLOCK_SIZE, count - sent)
        await stream.write(_BLOCK if size == BLOCK_SIZE else _BLOCK[:size])
        sent += size
    return sent


async def _drain(stream: Stream) -> int:
    """Read and discard until EOF; return the byte count."""
    total = 0
    while True:
        chunk = await stream.read(BLOCK_SIZE * 4)
        if not chunk:
            return total
        total += len(chunk)


async def handle_perf(stream: Stream, ctx=None, unlimited_cap: Optional[int] = None) -> None:
    """Serve one perf request.  Never raises.

    EOF before the 8-byte header resets the stream.  An "unlimited" request
    is served until the client resets the stream, or up to ``unlimited_cap``
    bytes when that is set.
    """
    try:
        try:
            header = await stream.readexactly(8)
        except IncompleteRead as exc:
            log.info("perf stream ended after {n} header bytes", n=len(exc.partial))
            stream.reset()
            return
        wanted = int.from_bytes(header, "big")
        uploaded = await _drain(stream)
        count = wanted if wanted < UNLIMITED else unlimited_cap
        sent = await _send(stream, count)
        await stream.close()
        log.debug("perf served: {up} bytes in, {down} bytes out", up=uploaded, down=sent)
    except (StreamError, EOFError) as exc:
        log.debug("perf stream ended: {error}", error=exc)
    except Exception:
        log.failure("perf handler crashed")
        stream.reset()


async def perf(stream: Stream, upload: int, download: int, clock) -> PerfResult:
    """Run one perf measurement: send ``upload`` bytes, ask for ``download``.

    ``download`` must be below :data:`UNLIMITED` (the timed "unlimited"
    variant is not offered here).  ``clock`` has ``seconds()``.  Raises
    :class:`PerfError` if the server sends a different number of bytes;
    :class:`~aicn.p2p.stream.StreamError` passes through.
    """
    if not 0 <= download < UNLIMITED or upload < 0:
        raise ValueError("upload must be >= 0 and 0 <= download < 2**53")
    start = clock.seconds()
    # One write for the header: js reads N from the first chunk it receives.
    await stream.write(download.to_bytes(8, "big"))
    await _send(stream, upload)
    await stream.close_write()
    uploaded_at = clock.seconds()
    received = await _drain(stream)
    end = clock.seconds()
    if received != download:
        stream.reset()
        raise PerfError(f"asked for {download} bytes, got {received}")
    await stream.close()
    return PerfResult(upload, received, uploaded_at - start, end - uploaded_at, end - start)
