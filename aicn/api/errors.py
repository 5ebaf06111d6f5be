"""How domain errors reach an HTTP client.

The domain error (:class:`aicn.errors.AICNError`) knows nothing of HTTP.
Here alone its code becomes an HTTP status: 200 for every code, as the Go
node (v0.1.2) answers, except for the errors that are about HTTP itself
(body too large, missing token, foreign ``Origin``), raised by the API as
:class:`HTTPError` with their own status.
"""

from __future__ import annotations

from aicn.errors import AICNError, ErrorCode

__all__ = ["HTTPError", "http_status"]


class HTTPError(AICNError):
    """An error about the HTTP request itself, with its HTTP status (413, 401, 403)."""

    def __init__(self, code: ErrorCode | int, message: str | None = None, *, status: int) -> None:
        super().__init__(code, message)
        self.status = status


def http_status(error: AICNError) -> int:
    """The HTTP status that carries ``error`` in the spec's envelope."""
    if isinstance(error, HTTPError):
        return error.status
    return 200
