"""How domain errors reach an HTTP client, in either response shape.

The domain error (:class:`aicn.errors.AICNError`) knows nothing of HTTP.
Here alone its code becomes an HTTP status and a body:

* the spec's shape (v0.1.2): HTTP 200 for every code, as the Go node v0.1.2
  answers, except for the errors that are about HTTP itself (body too large,
  missing token, foreign ``Origin``), raised by the API as :class:`HTTPError`
  with their own status; the body is ``{code, message[, data]}``;
* Go v0.2.3's shape: the statuses its handlers give (400 for parameter and
  parsing errors, 422 for an unreadable form, 504 when a node does not answer
  in time, 500 for the rest), codes renumbered by
  :data:`aicn.errors.V023_CODES`, and an object ``data`` flattened into the
  body as Go's embedded response structs are.
"""

from __future__ import annotations

from aicn.errors import V023_CODES, AICNError, ErrorCode

__all__ = ["HTTPError", "FormError", "http_status", "http_status_v023", "error_body_v023", "v023_code"]


class HTTPError(AICNError):
    """An error about the HTTP request itself, with its HTTP status (413, 401, 403) in both shapes."""

    def __init__(self, code: ErrorCode | int, message: str | None = None, *, status: int) -> None:
        super().__init__(code, message)
        self.status = status


class FormError(AICNError):
    """1001 for a form that cannot be read: HTTP 200 in the spec's shape, 422 in v0.2.3's (as Go's
    ``c.MultipartForm()`` failure)."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.PARAMETER, message)


#: v0.2.3 statuses by (spec) code; anything else is 500, as in Go's handlers.
_V023_STATUS = {
    ErrorCode.PARAMETER: 400,
    ErrorCode.PARSING: 400,
    ErrorCode.TIMEOUT: 504,
}


def http_status(error: AICNError) -> int:
    """The HTTP status that carries ``error`` in the spec's envelope."""
    if isinstance(error, HTTPError):
        return error.status
    return 200


def http_status_v023(error: AICNError) -> int:
    """The HTTP status of ``error`` in Go v0.2.3's shape."""
    if isinstance(error, HTTPError):
        return error.status
    if isinstance(error, FormError):
        return 422
    return _V023_STATUS.get(error.code, 500)


def v023_code(code: ErrorCode | int) -> int:
    """``code`` in v0.2.3's numbering; codes of AI projects (not ours) pass unchanged."""
    return V023_CODES[code] if isinstance(code, ErrorCode) else int(code)


def error_body_v023(error: AICNError) -> dict:
    """``{code, message}`` with v0.2.3's code; an object ``data`` is flattened into it, a list kept
    as ``data``."""
    body: dict = {}
    if isinstance(error.data, dict):
        body.update(error.data)
    elif error.data is not None:
        body["data"] = error.data
    body["code"] = v023_code(error.code)
    body["message"] = error.message
    return body
