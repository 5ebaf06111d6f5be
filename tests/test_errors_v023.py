"""Go v0.2.3's error numbering, shared by the HTTP API's v0.2.3 shape and the v0.2.3 wire."""

from twisted.trial.unittest import TestCase

from aicn.errors import FROM_V023_CODES, MESSAGES, V023_CODES, V023_JSON_ERROR, V023_MESSAGES, ErrorCode

#: Go v0.2.3 ``pkg/types/error.go``, transcribed: ``iota + 1001`` in this order, then 5000.
GO_V023 = [
    "Parameter error", "Parsing error", "Json error", "Protobuf serialization error", "Processing timeout",
    "Rendezvous error", "Model error", "Upload error", "Buffer error", "Permission error",
    "Unsupported function", "Host info error", "Encrypt error", "Decrypt error", "UUID error",
    "Database error", "Proxy error", "Stream error", "Deprecated function",
]


class V023CodeTests(TestCase):
    def test_table_is_go_v023(self):
        expected = {1001 + i: message for i, message in enumerate(GO_V023)}
        expected[5000] = "Internal server error"
        expected[0] = "ok"
        self.assertEqual(V023_MESSAGES, expected)

    def test_every_code_maps_by_message(self):
        for code in ErrorCode:
            number = V023_CODES[code]
            self.assertEqual(V023_MESSAGES[number], MESSAGES[code], code)
            self.assertEqual(FROM_V023_CODES[number], code)

    def test_the_shift(self):
        self.assertEqual(V023_CODES[ErrorCode.PARSING], 1002)
        self.assertEqual(V023_CODES[ErrorCode.PROTOBUF], 1004)
        self.assertEqual(V023_CODES[ErrorCode.DEPRECATED], 1019)
        self.assertEqual(FROM_V023_CODES[V023_JSON_ERROR], ErrorCode.PARSING)
