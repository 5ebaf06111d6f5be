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


# -- Go v0.2.3's numbering (data only) ---------------------------------------------------
#
# Go v0.1.9 renumbered the codes (``pkg/types/error.go``): a new 1003 "Json
# error", every code from 1003 up shifted by one; 5000 stays.  Go v0.2.3
# nodes send these numbers in HTTP bodies and in ``result_code`` on the wire.
# The HTTP API's v0.2.3 shape and the v0.2.3 wire share these tables.

#: The v0.2.3 "Json error" code, which has no spec (v0.1.2) counterpart.
V023_JSON_ERROR = 1003

#: Our (spec) code → the same error's v0.2.3 number.
V023_CODES: dict[ErrorCode, int] = {
    ErrorCode.OK: 0,
    ErrorCode.PARAMETER: 1001,
    ErrorCode.PARSING: 1002,
    ErrorCode.PROTOBUF: 1004,
    ErrorCode.TIMEOUT: 1005,
    ErrorCode.RENDEZVOUS: 1006,
    ErrorCode.MODEL: 1007,
    ErrorCode.UPLOAD: 1008,
    ErrorCode.BUFFER: 1009,
    ErrorCode.PERMISSION: 1010,
    ErrorCode.UNSUPPORTED: 1011,
    ErrorCode.HOST_INFO: 1012,
    ErrorCode.ENCRYPT: 1013,
    ErrorCode.DECRYPT: 1014,
    ErrorCode.UUID: 1015,
    ErrorCode.DATABASE: 1016,
    ErrorCode.PROXY: 1017,
    ErrorCode.STREAM: 1018,
    ErrorCode.DEPRECATED: 1019,
    ErrorCode.INTERNAL: 5000,
}

#: A v0.2.3 code → our (spec) code; 1003 "Json error" maps to 1002 "Parsing error", its nearest.
FROM_V023_CODES: dict[int, ErrorCode] = {
    **{number: code for code, number in V023_CODES.items()},
    V023_JSON_ERROR: ErrorCode.PARSING,
}

#: The v0.2.3 standard message of each v0.2.3 code.
V023_MESSAGES: dict[int, str] = {
    **{number: MESSAGES[code] for code, number in V023_CODES.items()},
    V023_JSON_ERROR: "Json error",
}
