# -*- coding: utf-8 -*-
# Python 2.7 compatible on purpose: pyupgrade (UP) and py3-only idioms must not rewrite it.
"""The legacy package's own tests: standard library only (unittest), any interpreter.

Run with the package importable as ``svcbus_legacy`` (a copy of sdk/legacy)::

    PYTHONPATH=/tmp/copy python tests/legacy/legacy_selftest.py

tests/legacy/test_vermin.py runs it on CPython 3 (and PyPy3 when installed).
"""

from __future__ import absolute_import, division, print_function, unicode_literals

import io
import json
import os
import re
import sys
import unittest
from collections import OrderedDict

import svcbus_legacy as legacy
from svcbus_legacy.schema import SchemaError, validate

PROTOCOL = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "docs", "protocol.md"
)


def vector(name):
    """The JSON block after `<!-- vector: NAME -->` in docs/protocol.md, as bytes."""
    with io.open(PROTOCOL, encoding="utf-8") as handle:
        text = handle.read()
    match = re.search(
        r"<!-- vector: " + re.escape(name) + r" -->.*?```json\n(.*?)\n```", text, re.S
    )
    assert match, "vector {0!r} missing".format(name)
    return match.group(1).encode("utf-8")


def od(*pairs):
    return OrderedDict(pairs)


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

CASES = {
    "message": dict(
        body=od(("room", "lobby"), ("nick", "ada"), ("text", "hi")),
        id="5f0c3a9e12d41",
        contract="ChatPosted",
        version=1,
        sent_at=1767225600000,
        expires_at=1767225660000,
    ),
    "request": dict(
        body=od(("room", "lobby")),
        id="5f0c3a9e12d42",
        contract="StatsQuery",
        version=2,
        sent_at=1767225600123,
        expires_at=1767225660123,
        reply_channel="inbox.9a8b7c6d!01f2e3d4c5b6",
        trace=od(("traceparent", TRACEPARENT)),
    ),
    "reply": dict(
        body=od(("room", "lobby"), ("messages", 3)),
        id="77aa01be03c21",
        contract="StatsReply",
        version=1,
        sent_at=1767225600200,
        expires_at=1767225660200,
        reply_to="5f0c3a9e12d42",
    ),
    "error-reply": dict(
        body=None,
        id="77aa01be03c22",
        sent_at=1767225600250,
        expires_at=1767225660250,
        reply_to="5f0c3a9e12d42",
        error=("ValueError", 'room "x" is unknown'),
    ),
    "untyped": dict(
        body=od(("text", "na\u00efve \u2713 \u0000 \U0001f680")),
        id="01",
        sent_at=0,
        headers=od(("x-tenant", "acme")),
    ),
}


class VectorTest(unittest.TestCase):
    def test_encode_matches_vectors_byte_for_byte(self):
        for name, case in CASES.items():
            self.assertEqual(legacy.encode(**case), vector(name), name)

    def test_decode_vectors(self):
        for name, case in CASES.items():
            message = legacy.decode(vector(name), "x")
            self.assertEqual(message.id, case["id"])
            self.assertEqual(message.body, case["body"])
            self.assertEqual(message.sent_at, case["sent_at"])
            self.assertEqual(message.expires_at, case.get("expires_at"))
            self.assertEqual(message.reply_channel, case.get("reply_channel"))
            self.assertEqual(message.reply_to, case.get("reply_to"))
            self.assertEqual(message.error, case.get("error"))
            self.assertEqual(message.contract, case.get("contract"))

    def test_decode_round_trips_through_encode(self):
        for name in CASES:
            m = legacy.decode(vector(name))
            again = legacy.encode(
                m.body,
                id=m.id,
                contract=m.contract,
                version=m.version,
                sent_at=m.sent_at,
                expires_at=m.expires_at,
                reply_channel=m.reply_channel,
                reply_to=m.reply_to,
                trace=m.trace,
                headers=m.headers,
                error=m.error,
            )
            self.assertEqual(again, vector(name), name)

    def test_bad_input_is_refused_with_a_reason(self):
        for data, reason in [
            (b"not json", "not JSON"),
            (b"[1]", "not a JSON object"),
            (b'{"v":2,"id":"a","at":1,"b":{}}', "v: must be 1"),
            (b'{"v":1,"id":5,"at":1,"b":{}}', "id: must be a string"),
            (b'{"v":1,"id":"a","b":{}}', "at: must be an integer"),
            (b'{"v":1,"id":"a","at":1}', "b: missing"),
            (b'{"v":1,"id":"a","at":1,"h":{"x":1},"b":{}}', "h: must be an object of strings"),
            (b"\xff\xfe", "not JSON"),
        ]:
            with self.assertRaises(legacy.MessageInvalid) as caught:
                legacy.decode(data, "chat.in")
            self.assertIn(reason, str(caught.exception))
            self.assertIn("chat.in", str(caught.exception))

    def test_unknown_keys_are_ignored(self):
        message = legacy.decode(b'{"v":1,"id":"a","zz":[1],"at":1,"b":{"k":1}}')
        self.assertEqual(message.body, {"k": 1})

    def test_ids_are_unique_and_hex(self):
        ids = set(legacy.new_message_id() for _ in range(1000))
        self.assertEqual(len(ids), 1000)
        for value in ids:
            self.assertTrue(re.match(r"[0-9a-f]{13,}\Z", value))


class NameTest(unittest.TestCase):
    def test_rules(self):
        for good in ["chat.receive", "a", "edge.3f9a01bc!7d2e44a0c1f9", "x-y_z.0"]:
            self.assertEqual(legacy.validate_channel(good), good)
        for bad in [
            "Chat",
            "a..b",
            ".a",
            "a.",
            "a*",
            "a.>",
            "a b",
            "a!b!c",
            "a" * 101,
            "",
            "caf\u00e9",
            "a!",
        ]:
            self.assertRaises(legacy.InvalidChannelName, legacy.validate_channel, bad)
        self.assertRaises(legacy.InvalidChannelName, legacy.validate_group, "a!b")


# What pydantic's model_json_schema emits for a contract using most field kinds.
SCHEMA = json.loads(
    """
{"$defs": {"Color": {"enum": ["red", "blue"], "title": "Color", "type": "string"},
           "Inner": {"properties": {"x": {"default": 3, "title": "X", "type": "integer"}},
                     "title": "Inner", "type": "object"}},
 "properties": {
   "a": {"maxLength": 5, "minLength": 1, "pattern": "^[a-z]+$", "title": "A", "type": "string"},
   "b": {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": null, "title": "B"},
   "c": {"default": [], "items": {"$ref": "#/$defs/Inner"}, "title": "C", "type": "array"},
   "d": {"$ref": "#/$defs/Color", "default": "red"},
   "e": {"default": "x", "enum": ["x", "y"], "title": "E", "type": "string"},
   "g": {"additionalProperties": {"type": "number"}, "default": {}, "title": "G",
         "type": "object"},
   "h": {"default": [1, "a"], "maxItems": 2, "minItems": 2,
         "prefixItems": [{"type": "integer"}, {"type": "string"}], "title": "H",
         "type": "array"},
   "i": {"default": 1.0, "exclusiveMaximum": 10, "minimum": 0, "title": "I",
         "type": "number"},
   "k": {"const": "fixed", "default": "fixed", "type": "string"}},
 "required": ["a"], "title": "M", "type": "object"}
""",
    object_pairs_hook=OrderedDict,
)


class SchemaTest(unittest.TestCase):
    def test_valid_value_gets_defaults_in_field_order(self):
        value = validate({"c": [{}], "a": "abc", "extra": 1}, SCHEMA)
        self.assertEqual(list(value)[:3], ["a", "b", "c"])
        self.assertEqual(value["c"], [{"x": 3}])
        self.assertEqual(value["d"], "red")
        self.assertEqual(value["b"], None)
        self.assertEqual(value["extra"], 1)

    def test_each_rule_refuses_with_a_path(self):
        cases = [
            ({}, "a: field required"),
            ({"a": ""}, "a: shorter than 1"),
            ({"a": "abcdef"}, "a: longer than 5"),
            ({"a": "AB"}, "a: does not match"),
            ({"a": 5}, "a: expected string, got integer"),
            ({"a": "a", "b": "x"}, "b: fits none"),
            ({"a": "a", "c": [{"x": "no"}]}, "c.0.x: expected integer"),
            ({"a": "a", "d": "green"}, "d: 'green' is not one of"),
            ({"a": "a", "e": "z"}, "e: 'z' is not one of"),
            ({"a": "a", "g": {"k": "v"}}, "g.k: expected number"),
            ({"a": "a", "h": [1]}, "h: fewer than 2"),
            ({"a": "a", "h": ["1", "a"]}, "h.0: expected integer"),
            ({"a": "a", "i": 10}, "i: not less than 10"),
            ({"a": "a", "i": -1}, "i: less than 0"),
            ({"a": "a", "i": True}, "i: expected number, got boolean"),
            ({"a": "a", "k": "other"}, "k: expected 'fixed'"),
            ([], "(body): expected object"),
        ]
        for value, reason in cases:
            with self.assertRaises(SchemaError) as caught:
                validate(value, SCHEMA)
            self.assertIn(reason, str(caught.exception).replace("u'", "'"))

    def test_schema_file(self):
        schemas = legacy.ChannelSchemas.from_dict(
            {
                "svcbus_schemas": 1,
                "channels": {
                    "m.in": {"contract": "M", "version": 2, "schema": SCHEMA, "reply": None}
                },
            }
        )
        self.assertEqual(schemas.contract("m.in").version, 2)
        self.assertIsNone(schemas.reply_contract("m.in"))
        self.assertIsNone(schemas.contract("other"))
        self.assertRaises(legacy.ConfigurationError, legacy.ChannelSchemas.from_dict, {})


class OptionsTest(unittest.TestCase):
    def test_url_options(self):
        from svcbus_legacy.options import split_url

        base, options = split_url("nats://u:p%40ss@h:1?capacity=5&channel_capacity=a.*:9&expiry=2")
        self.assertEqual(base, "nats://u:p%40ss@h:1")
        self.assertEqual(options.capacity_for("a.b"), 9)
        self.assertEqual(options.capacity_for("z"), 5)
        self.assertEqual(options.expiry, 2.0)
        self.assertRaises(legacy.ConfigurationError, split_url, "nats://h?bogus=1")

    def test_durable_settings_from_the_schema_file_and_the_url(self):
        from svcbus_legacy.durable import Durability, attempt_of
        from svcbus_legacy.options import split_url

        schemas = legacy.ChannelSchemas.from_dict(
            {
                "svcbus_schemas": 1,
                "channels": {
                    "o.place": {
                        "contract": "Place",
                        "version": 1,
                        "schema": SCHEMA,
                        "reply": None,
                        "durable": {"max_attempts": 4, "ack_wait": 10.0, "dead_letter": None},
                    }
                },
            }
        )
        contract = schemas.durability("o.place")
        self.assertEqual(
            (contract.max_attempts, contract.ack_wait, contract.backoff_max), (4, 10, 30)
        )
        _, options = split_url(
            "nats://h?durable_max_attempts=o.*:2&durable_dead_letter=o.*:ops.dead"
        )
        settings = options.durability_for("o.place", contract)
        self.assertEqual((settings.max_attempts, settings.ack_wait), (2, 10.0))
        self.assertEqual(settings.dead_letter_channel("o.place"), "ops.dead")
        self.assertEqual([settings.backoff(a) for a in (1, 2, 6)], [1.0, 2.0, 30.0])
        self.assertIs(options.durability_for("x.y", contract), contract)
        self.assertRaises(legacy.ConfigurationError, split_url, "nats://h?durable_retries=o.*:2")
        self.assertRaises(legacy.ConfigurationError, Durability, max_attempts=0)
        self.assertEqual(attempt_of(b"$JS.ACK.s.workers.3.10.9.1767225600000000000.0"), 3)
        self.assertEqual(attempt_of("$JS.ACK.dom.acc.s.workers.2.10.9.1767225600000000000.0.x"), 2)

    def test_bad_urls(self):
        self.assertRaises(legacy.ConfigurationError, legacy.Client, "amqp://h")
        self.assertRaises(legacy.ConfigurationError, legacy.Client, "redis://a:1,b:2/0")
        self.assertRaises(legacy.ConfigurationError, legacy.Client, "tls://h:4222")


if __name__ == "__main__":
    result = unittest.main(exit=False, verbosity=1).result
    sys.exit(0 if result.wasSuccessful() else 1)
