"""Go ``encoding/json`` key matching, one rule for the config file and HTTP bodies.

The expected values were produced by Go 1.19: ``json.Unmarshal`` of each
document into ``struct{Model string `json:"model"`; Stream bool
`json:"stream"`; Key string `json:"key"`; Strasse string `json:"strasse"`}``.
"""

from __future__ import annotations

from twisted.trial import unittest

from aicn.api.app import JSONBody
from aicn.config import gojson, parse_config

#: (document, field, what Go stored; None: the field kept its zero value)
GO_CASES = [
    ('{"model":"a","Model":"b"}', "model", "b"),
    ('{"Model":"b","model":"a"}', "model", "a"),
    ('{"model":"a","MODEL":null}', "model", "a"),
    ('{"model":"a","Model":"b","model":"c"}', "model", "c"),
    ('{"MoDeL":"x"}', "model", "x"),
    ('{"\u212aey":"kelvin"}', "key", "kelvin"),
    ('{"\u017ftrasse":"longs"}', "strasse", "longs"),
    ('{"stra\u00dfe":"eszett"}', "strasse", None),
    ('{"stream":true,"STREAM":false}', "stream", False),
]


class GoRuleTests(unittest.TestCase):
    def test_lookup_matches_go(self):
        for doc, field, expected in GO_CASES:
            value = gojson.lookup(gojson.loads(doc), field)[1]
            got = None if value is gojson.MISSING else value
            self.assertEqual(got, expected, doc)

    def test_http_bodies_follow_the_same_rule(self):
        for doc, field, expected in GO_CASES:
            self.assertEqual(JSONBody(gojson.loads(doc)).get(field), expected, doc)

    def test_config_file_follows_the_same_rule(self):
        # The same documents, one level down, as a config's API.Addr.
        for doc, field, expected in GO_CASES:
            if field != "model":
                continue
            text = doc.replace('"model"', '"addr"').replace('"Model"', '"Addr"').replace('"MODEL"', '"ADDR"')
            text = text.replace('"MoDeL"', '"AdDr"').replace('"a"', '"h:1"').replace('"b"', '"h:2"')
            text = text.replace('"c"', '"h:3"').replace('"x"', '"h:9"')
            config, warnings = parse_config(gojson.loads('{"API": %s}' % text))
            want = {"a": "h:1", "b": "h:2", "c": "h:3", "x": "h:9"}[expected]
            self.assertEqual(config.api.addr, want, text)
            self.assertEqual(warnings, [], text)

    def test_a_repeated_key_counts_at_its_last_position(self):
        # json.loads would keep {"a": 3, "A": 2} and so give 2; Go gives 3.
        obj = gojson.loads('{"a": 1, "A": 2, "a": 3}')
        self.assertEqual(gojson.lookup(obj, "a"), ("a", 3))
        self.assertEqual(gojson.matching_keys(obj, "A"), ["a", "A", "a"])
        self.assertEqual(dict(obj), {"a": 3, "A": 2})

    def test_plain_dicts_are_read_too(self):
        self.assertEqual(gojson.lookup({"Model": "m"}, "model"), ("Model", "m"))
        self.assertEqual(gojson.lookup({}, "model"), (None, gojson.MISSING))

    def test_fold_key(self):
        self.assertEqual(gojson.fold_key("PeerID"), "peerid")
        self.assertEqual(gojson.fold_key("\u212a"), "k")
        self.assertEqual(gojson.fold_key("\u00df"), "\u00df")
        self.assertTrue(gojson.keys_equal("\u017f", "S"))
        self.assertFalse(gojson.keys_equal("ss", "\u00df"))
