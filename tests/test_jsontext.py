"""aicn.jsontext: JSON from outside the process decodes, or raises ValueError, nothing else."""

import json

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from aicn.jsontext import JSONTooDeep, loads


class LoadsTests(SynchronousTestCase):
    def test_deep_nesting_is_a_value_error(self):
        # Found by the fuzz harness: json.loads raises RecursionError for "[[[[..." (a few KiB).
        for raw in (b"[" * 100000, b'{"a":' * 50000 + b"1" + b"}" * 50000, "[" * 5000):
            with self.assertRaises(JSONTooDeep) as caught:
                loads(raw)
            self.assertIsInstance(caught.exception, ValueError)

    def test_lone_surrogates_become_replacement_characters(self):
        # Found by the fuzz harness: "\\ud800" decoded to a str no UTF-8 encoder takes, which
        # failed later (protobuf fields, JSON sent to the model) with UnicodeEncodeError.
        cases = {
            b'"\\ud800"': "\ufffd",
            b'"a\\udfffb"': "a\ufffdb",
            b'"\\uDBFF\\u0041"': "\ufffdA",
            b'"\\ud83d\\ude00"': "\U0001f600",  # a pair stays one character
            b'"\\\\ud800"': "\\ud800",  # an escaped backslash, then text
            b'"\xed\xa0\x80"': "\ufffd",  # CESU bytes of a surrogate, which json.loads lets through
            '"\ud800"'.encode("utf-8", "surrogatepass"): "\ufffd",
            b'{"\\ud800": ["\\udc00"]}': {"\ufffd": ["\ufffd"]},
        }
        for raw, expected in cases.items():
            value = loads(raw)
            self.assertEqual(value, expected, raw)
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        self.assertEqual(loads('"\ud800"'), "\ufffd")

    def test_keyword_arguments_pass_through(self):
        pairs = loads(b'{"a": 1, "a": 2}', object_pairs_hook=list)
        self.assertEqual(pairs, [("a", 1), ("a", 2)])

    def test_not_json_is_a_value_error(self):
        for raw in (b"", b"{", b"\xff", b'"\\ud8"', b"nul"):
            self.assertRaises(ValueError, loads, raw)

    @given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                        lambda c: st.lists(c) | st.dictionaries(st.text(), c), max_leaves=20))
    def test_same_as_json_loads_for_valid_unicode(self, value):
        for raw in (json.dumps(value), json.dumps(value, ensure_ascii=False).encode("utf-8")):
            self.assertEqual(loads(raw), json.loads(raw))
