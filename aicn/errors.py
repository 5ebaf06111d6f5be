"""The domain's error codes and its one error type.

Codes and messages are those of the spec (and of the Go node up to v0.1.8,
whose ``result_message`` strings travel inside protobuf replies too).  This
module is at the bottom of the layers: the network application, the model
clients and the API all raise :class:`AICNError`; only :mod:`aicn.api`
decides how one reaches an HTTP client (:mod:`aicn.api.errors`).
"""

from __future__ import annotations

import enum


class ErrorCode(enum.IntEnum):
    """Error codes of the spec; 0 means success."""

    OK = 0
    PARAMETER = 1001
    PARSING = 1002
    PROTOBUF = 1003
    TIMEOUT = 1004
    RENDEZVOUS = 1005
    MODEL = 1006
    UPLOAD = 1007
    BUFFER = 1008
    PERMISSION = 1009
    UNSUPPORTED = 1010
    HOST_INFO = 1011
    ENCRYPT = 1012
    DECRYPT = 1013
    UUID = 1014
    DATABASE = 1015
    PROXY = 1016
    STREAM = 1017
    DEPRECATED = 1018
    INTERNAL = 5000

    @property
    def message(self) -> str:
        """The standard message for this code."""
        return MESSAGES[self]


MESSAGES = {
    ErrorCode.OK: "ok",
    ErrorCode.PARAMETER: "Parameter error",
    ErrorCode.PARSING: "Parsing error",
    ErrorCode.PROTOBUF: "Protobuf serialization error",
    ErrorCode.TIMEOUT: "Processing timeout",
    ErrorCode.RENDEZVOUS: "Rendezvous error",
    ErrorCode.MODEL: "Model error",
    ErrorCode.UPLOAD: "Upload error",
    ErrorCode.BUFFER: "Buffer error",
    ErrorCode.PERMISSION: "Permission error",
    ErrorCode.UNSUPPORTED: "Unsupported function",
    ErrorCode.HOST_INFO: "Host info error",
    ErrorCode.ENCRYPT: "Encrypt error",
    ErrorCode.DECRYPT: "Decrypt error",
    ErrorCode.UUID: "UUID error",
    ErrorCode.DATABASE: "Database error",
    ErrorCode.PROXY: "Proxy error",
    ErrorCode.STREAM: "Stream error",
    ErrorCode.DEPRECATED: "Deprecated function",
    ErrorCode.INTERNAL: "Internal server error",
}


class AICNError(Exception):
    """An error that reaches an API client as ``{code, message[, data]}``.

    Raise it anywhere (routing, models, storage); the Klein app renders it
    once.  ``message`` defaults to the code's standard message; a more
    specific one (``"empty node_id"``) is better where we have it.
    """

    def __init__(self, code: ErrorCode | int, message: str | None = None, data=None) -> None:
        try:
            self.code: ErrorCode | int = ErrorCode(code)
            default = self.code.message
        except ValueError:
            # A code of an AI project or of a newer node, relayed from a
            # protobuf reply's result_code: keep the number as it came.
            self.code = int(code)
            default = f"Error {self.code}"
        self.message = message if message else default
        self.data = data
        super().__init__(f"{int(self.code)} {self.message}")

    def to_json(self) -> dict:
        """The spec's error envelope."""
        body = {"code": int(self.code), "message": self.message}
        if self.data is not None:
            body["data"] = self.data
        return body


def parameter_error(detail: str) -> AICNError:
    """1001 with a message that names what is wrong, e.g. ``empty node_id``."""
    return AICNError(ErrorCode.PARAMETER, detail)


def unsupported(what: str | None = None) -> AICNError:
    """1010 for endpoints and features this node does not offer (yet)."""
    return AICNError(ErrorCode.UNSUPPORTED, what)
