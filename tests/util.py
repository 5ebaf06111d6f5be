"""Small helpers shared by the test modules."""

from __future__ import annotations

import inspect

from twisted.internet import reactor
from twisted.internet.task import deferLater

#: The DBC network's private-network key.
DBC_PSK_HEX = "f504f536a912a8cf7d00adacee8ed20270c5040d961d7f3da4fccbcbec0ec48a"
DBC_PSK = bytes.fromhex(DBC_PSK_HEX)


async def sleep(seconds: float) -> None:
    """Let the real reactor run for ``seconds``."""
    await deferLater(reactor, seconds, lambda: None)


async def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02):
    """Poll ``predicate()`` (plain or async) until it is true; return its value.

    Raises ``AssertionError`` after ``timeout`` seconds.
    """
    for _ in range(max(1, int(timeout / interval))):
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        await sleep(interval)
    raise AssertionError(f"condition not reached in {timeout} s")


async def echo_handler(stream, conn) -> None:
    """A ``/echo/1.0.0`` stream handler: send back everything until EOF, then half-close."""
    while True:
        data = await stream.read()
        if not data:
            break
        await stream.write(data)
    stream.close_write()


async def read_all(stream) -> bytes:
    """Read a stream until EOF."""
    out = bytearray()
    while True:
        data = await stream.read()
        if not data:
            return bytes(out)
        out += data
