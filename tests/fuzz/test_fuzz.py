"""The short fuzz run: every target of :mod:`tests.fuzz.targets`, three ways.

* ``test_<target>_seeds_and_mutants``: the seeds, then deterministic mutants of
  them (:class:`tests.fuzz.mutate.Mutator`, ``5 * AICN_FUZZ_EXAMPLES``);
* ``test_<target>_bytes``: hypothesis ``binary()``;
* ``test_<target>_structured``: hypothesis inputs shaped like the format
  (protobuf fields, yamux frames, multistream messages, HTTP messages, JSON
  documents) with odd values where lengths, counts and numbers go.

``AICN_FUZZ_EXAMPLES`` (default 100) sets the hypothesis examples per test;
the long run is ``bench/fuzz.py``.  A crash fails the test with the input and
the traceback.
"""

from __future__ import annotations

import json
import os
import struct
import traceback

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from aicn.log import set_log_level
from aicn.p2p.framing import length_prefixed
from aicn.p2p.multistream import encode_message as ms_message
from aicn.p2p.varint import encode_uvarint
from tests.fuzz.mutate import INTERESTING, Mutator
from tests.fuzz.targets import TARGETS, check, seeds

EXAMPLES = int(os.environ.get("AICN_FUZZ_EXAMPLES", "100"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))

# -- strategies ---------------------------------------------------------------------------------

#: Integers where lengths and counts break: boundaries of every width, and 4 GiB.
odd_ints = st.sampled_from(INTERESTING) | st.integers(0, 300) | st.integers(0, (1 << 64) - 1)


def _protobuf(children):
    """One protobuf message: fields of every wire type; bytes fields nested messages, or lying lengths."""
    value = st.one_of(
        odd_ints.map(lambda n: (0, encode_uvarint(n))),
        (st.binary(max_size=40) | children).map(lambda b: (2, length_prefixed(b))),
        st.tuples(odd_ints, st.binary(max_size=8)).map(lambda t: (2, encode_uvarint(t[0]) + t[1])),
        st.binary(min_size=8, max_size=8).map(lambda b: (1, b)),
        st.binary(min_size=4, max_size=4).map(lambda b: (5, b)),
    )
    fields = st.lists(st.tuples(st.integers(1, 18), value), max_size=8)
    return fields.map(lambda items: b"".join(encode_uvarint(n << 3 | w) + v for n, (w, v) in items))


protobuf = st.recursive(st.binary(max_size=16), _protobuf, max_leaves=12)
frames = st.lists(protobuf, max_size=4).map(lambda bodies: b"".join(length_prefixed(b) for b in bodies))
lying_frames = st.tuples(frames, odd_ints, st.binary(max_size=32)).map(
    lambda t: t[0] + encode_uvarint(t[1]) + t[2])

yamux_frame = st.tuples(
    st.sampled_from([0, 0, 0, 1]),  # version, mostly right
    st.integers(0, 5), st.integers(0, 15),
    st.sampled_from([0, 1, 2, 3, 5, 7, 0xFFFFFFFF]) | st.integers(0, 40),
    st.sampled_from([0, 1, 4, 0xFFFF, 1 << 18, 0xFFFFFFFF]) | st.integers(0, 64), st.binary(max_size=64),
).map(lambda t: struct.pack(">BBHII", *t[:5]) + (t[5] if t[1] == 0 else b""))
yamux = st.lists(yamux_frame, max_size=10).map(b"".join)

ms_text = (st.sampled_from(["/multistream/1.0.0", "/yamux/1.0.0", "/noise", "na", "ls", "/ipfs/id/1.0.0", ""])
           | st.text(max_size=30))
multistream = st.lists(ms_text.map(ms_message) | st.binary(max_size=8), max_size=6).map(b"".join)

noise_wire = st.lists(st.tuples(st.sampled_from([0, 15, 16, 32, 48, 80, 0xFFFF]) | st.integers(0, 200),
                                st.binary(max_size=120)), max_size=4).map(
    lambda items: b"".join(struct.pack(">H", n) + data for n, data in items))

varints = odd_ints.map(encode_uvarint) | st.binary(max_size=12)

# JSON: the fields the parsers read, values of every type (huge, infinite, surrogates), deep nesting.
KEYS = ["node_id", "project", "model", "messages", "role", "content", "stream", "timeout", "temperature",
        "top_p", "prompt", "n", "size", "width", "height", "step", "response_format", "number", "models",
        "api", "type", "cid", "image", "mask", "choices", "message", "delta", "index", "created", "usage",
        "code", "error", "data", "url", "imageUrl", "id", "MODEL", "Project", "\u212aey", "text", "image_url"]
json_text = st.text(alphabet=st.characters() | st.sampled_from(["\ud800", "\udfff", "\u212a", "\u017f"]),
                    max_size=20)
json_scalar = (st.none() | st.booleans() | st.sampled_from([10 ** 400, -(10 ** 400), 2 ** 63, 2 ** 31, 0, -1])
               | st.integers() | st.floats() | json_text
               | st.sampled_from(["http://127.0.0.1:8080/v1", "http://[x", "data:image/png;base64,aGk="]))
json_value = st.recursive(json_scalar, lambda c: st.lists(c, max_size=4)
                          | st.dictionaries(st.sampled_from(KEYS) | json_text, c, max_size=6), max_leaves=25)
#: Numbers that int(), float() or math.isfinite() cannot take, and the edges of int32/int64.
json_odd_number = st.sampled_from([10 ** 400, -(10 ** 400), float("inf"), float("-inf"), float("nan"), 1e308,
                                   2 ** 63, -(2 ** 63) - 1, 2 ** 31, -(2 ** 31) - 1, 0.5, -0.0, 0])
json_object = st.dictionaries(st.sampled_from(KEYS), json_odd_number | json_value, max_size=10)


def _dump(obj) -> bytes:
    return json.dumps(obj).encode()  # ASCII: surrogates and non-finite numbers stay escapes / NaN


json_doc = (json_object.map(_dump) | json_value.map(_dump)
            | st.tuples(st.integers(1, 5000), json_object).map(
                lambda t: b'{"a":' * t[0] + _dump(t[1]) + b"}" * t[0])
            | st.integers(900, 6000).map(lambda n: b"[" * n + b"]" * n))

header_name = st.sampled_from([b"Content-Length", b"Transfer-Encoding", b"Content-Type", b"Host",
                               b"Connection", b"content-length", b"X-A"]) | st.binary(min_size=1, max_size=6)
header_value = st.sampled_from([b"0", b"5", b"4294967296", b"18446744073709551616", b"-1", b"chunked",
                                b"gzip, chunked", b"chunked, chunked", b"application/json", b"close"]) \
    | st.binary(max_size=10)
headers = st.lists(st.tuples(header_name, header_value), max_size=5).map(
    lambda hs: b"".join(n + b": " + v + b"\r\n" for n, v in hs))
chunk_size = (st.sampled_from([b"0", b"5", b"ffffffff", b"100000000", b"fffffffffffffff", b"x"])
              | st.integers(0, 40).map(lambda n: b"%x" % n))
chunked = st.lists(st.tuples(chunk_size, st.binary(max_size=40)), max_size=4).map(
    lambda cs: b"".join(size + b"\r\n" + data + b"\r\n" for size, data in cs) + b"0\r\n\r\n")
body = json_doc | chunked | st.binary(max_size=64)
target_path = st.sampled_from([b"/v1/chat/completions?model=m&project=p", b"/?model=%ff", b"//[x", b"*",
                               b"/a?b=c&b=d&e"]) | st.binary(min_size=1, max_size=20)
http_request = st.tuples(st.sampled_from([b"POST", b"GET", b"P OST"]), target_path,
                         st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2"]), headers, body).map(
    lambda t: t[0] + b" " + t[1] + b" " + t[2] + b"\r\n" + t[3] + b"\r\n" + t[4])
http_response = st.tuples(st.sampled_from([b"200", b"502", b"400", b"100", b"204", b"999", b"20"]), headers,
                          body).map(lambda t: b"HTTP/1.1 " + t[0] + b" X\r\n" + t[1] + b"\r\n" + t[2])
image_edit = st.tuples(st.sampled_from([b"application/json", b"multipart/form-data; boundary=XyZ",
                                        b"multipart/form-data", b"text/plain"]),
                       json_doc | st.binary(max_size=80)).map(lambda t: t[0] + b"\n" + t[1])

STRUCTURED = {
    "varint": varints,
    "framing": frames | lying_frames,
    "multistream": multistream,
    "noise_payload": protobuf,
    "noise_wire": noise_wire,
    "yamux_frames": yamux,
    "yamux_session": yamux,
    "identify": frames | lying_frames,
    "kad": frames | lying_frames,
    "pubsub": frames | lying_frames,
    "relay": protobuf | frames,
    "autonat": protobuf,
    "records": protobuf,
    "envelope": protobuf,
    "chatproxy_request": http_request,
    "chatproxy_response": http_response,
    "model_replies": json_doc | body,
    "api_json": json_doc,
    "image_edit": image_edit,
}


# -- the tests ----------------------------------------------------------------------------------


class FuzzCase(SynchronousTestCase):
    """Asserts that no input crashes a target."""

    def setUp(self) -> None:
        set_log_level("critical")  # failures are critical: they still reach trial
        self.addCleanup(set_log_level, "info")

    def assertNoCrash(self, target, data: bytes) -> None:
        crash = check(target, data[: target.max_len])
        if crash is not None:
            self.fail(f"{target.name} crashed on {data[:2000]!r} ({len(data)} bytes):\n"
                      + "".join(traceback.format_exception(crash))[-4000:])


def _mutants_test(name):
    def test(self):
        target = TARGETS[name]
        corpus = seeds(target)
        self.assertTrue(corpus, "a target needs seeds")
        mutator = Mutator(corpus, max_len=target.max_len, dictionary=target.dictionary, seed=0)
        for data in corpus + [mutator.next() for _ in range(5 * EXAMPLES)]:
            self.assertNoCrash(target, data)
    return test


def _bytes_test(name):
    @FUZZ
    @given(st.binary(max_size=2048))
    def test(self, data):
        self.assertNoCrash(TARGETS[name], data)
    return test


def _structured_test(name):
    @FUZZ
    @given(STRUCTURED[name])
    def test(self, data):
        self.assertNoCrash(TARGETS[name], data)
    return test


class EveryTargetTests(FuzzCase):
    def test_every_target_has_a_structured_strategy(self):
        self.assertEqual(set(STRUCTURED), set(TARGETS))


for _name in TARGETS:
    for _kind, _make in (("seeds_and_mutants", _mutants_test), ("bytes", _bytes_test),
                         ("structured", _structured_test)):
        _test = _make(_name)
        _test.__name__ = f"test_{_name}_{_kind}"
        _test.__doc__ = f"{_name}: {TARGETS[_name].doc}"
        setattr(EveryTargetTests, _test.__name__, _test)
del _name, _kind, _make, _test
