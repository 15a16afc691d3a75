# -*- coding: utf-8 -*-
# Python 2.7 compatible on purpose: pyupgrade (UP) and py3-only idioms must not rewrite it.
"""Contracts for the legacy runtime: JSON Schema from the main SDK, and a small validator.

The main SDK writes the contracts' schemas to a JSON file
(``python -m svcbus.legacy_export mycontracts -o contracts.json``)::

    {"svcbus_schemas": 1,
     "channels": {"stats.get": {"contract": "StatsQuery", "version": 2, "schema": {...},
                                "reply": {"contract": "StatsReply", "version": 1,
                                          "schema": {...}}}}}

:func:`validate` covers the subset of JSON Schema that pydantic's
``model_json_schema`` emits: ``type``, ``properties``, ``required``,
``additionalProperties``, ``enum``, ``const``, ``minLength``/``maxLength``,
``minimum``/``maximum`` (and exclusive ones), ``multipleOf``, ``pattern``,
``items``, ``prefixItems``, ``minItems``/``maxItems``, ``uniqueItems``, ``$ref`` into
``$defs``, ``anyOf``/``oneOf``/``allOf``, ``default``. ``format`` is not checked.
"""

from __future__ import absolute_import, division, print_function, unicode_literals

import copy
import io
import json
import re
from collections import OrderedDict

from .compat import integer_types, string_types
from .durable import Durability
from .errors import ConfigurationError

FILE_VERSION = 1


class SchemaError(ValueError):
    """A value does not fit a schema; ``path`` says where (``items.0.name``)."""

    def __init__(self, path, message):
        ValueError.__init__(self, "{0}: {1}".format(path or "(body)", message))
        self.path = path
        self.reason = message


class Contract(object):
    """A contract as the legacy runtime knows it: name, version, schema."""

    __slots__ = ("name", "schema", "version")

    def __init__(self, name, version, schema):
        self.name = name
        self.version = version
        self.schema = schema

    def validate(self, value):
        """The value checked, with defaults filled and keys in contract order."""
        return validate(value, self.schema)


class ChannelSchemas(object):
    """The contract (and reply contract) of every channel in an exported schema file."""

    def __init__(self, channels=None, durable=None):
        self.channels = channels or {}
        self.durable = durable or {}
        """Durable channels' settings (``Durability``), from their contracts."""

    @classmethod
    def load(cls, path):
        """Read a file written by ``svcbus.legacy_export``."""
        try:
            with io.open(path, "r", encoding="utf-8") as handle:
                data = json.load(handle, object_pairs_hook=OrderedDict)
        except (IOError, OSError) as exc:
            raise ConfigurationError("cannot read schema file {0!r}: {1}".format(path, exc))
        except ValueError as exc:
            raise ConfigurationError("schema file {0!r} is not JSON: {1}".format(path, exc))
        return cls.from_dict(data, path)

    @classmethod
    def from_dict(cls, data, where="(schemas)"):
        """Build from the decoded JSON of a schema file."""
        if not isinstance(data, dict) or data.get("svcbus_schemas") != FILE_VERSION:
            raise ConfigurationError(
                "{0} is not a svcbus schema file (version {1}); write it with "
                "`python -m svcbus.legacy_export`".format(where, FILE_VERSION)
            )
        channels = {}
        durable = {}
        for channel, entry in data.get("channels", {}).items():
            if entry.get("durable"):
                durable[channel] = Durability(**entry["durable"])
            reply = entry.get("reply")
            channels[channel] = (
                Contract(entry["contract"], entry.get("version", 1), entry["schema"]),
                Contract(reply["contract"], reply.get("version", 1), reply["schema"])
                if reply
                else None,
            )
        return cls(channels, durable)

    def durability(self, channel):
        """The settings of ``channel`` if its contract is durable, else None."""
        return self.durable.get(channel)

    def contract(self, channel):
        """The contract of ``channel``, or None for an untyped channel."""
        entry = self.channels.get(channel)
        return entry[0] if entry else None

    def reply_contract(self, channel):
        """The contract of replies to requests on ``channel``, or None."""
        entry = self.channels.get(channel)
        return entry[1] if entry else None


_TYPES = {
    "string": lambda v: isinstance(v, string_types),
    "integer": lambda v: (
        (isinstance(v, integer_types) and not isinstance(v, bool))
        or (isinstance(v, float) and v.is_integer())
    ),
    "number": lambda v: isinstance(v, integer_types + (float,)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, (list, tuple)),
    "null": lambda v: v is None,
}

_pattern_cache = {}


def _pattern(text):
    compiled = _pattern_cache.get(text)
    if compiled is None:
        compiled = _pattern_cache[text] = re.compile(text)
    return compiled


def validate(value, schema, root=None):
    """Check ``value`` against ``schema``; return it with defaults filled.

    Raises :class:`SchemaError` naming the first offending path.
    """
    return _check(value, schema, root if root is not None else schema, "")


def _join(path, key):
    return "{0}.{1}".format(path, key) if path else "{0}".format(key)


def _resolve(ref, root):
    if not ref.startswith("#/"):
        raise SchemaError("", "unsupported $ref {0!r} (only #/... references)".format(ref))
    node = root
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _check(value, schema, root, path):
    if schema is True or schema == {}:
        return value
    if schema is False:
        raise SchemaError(path, "no value is allowed here")
    if "$ref" in schema:
        value = _check(value, _resolve(schema["$ref"], root), root, path)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            value = _any_of(value, schema[key], root, path)
    for sub in schema.get("allOf", ()):
        value = _check(value, sub, root, path)
    kind = schema.get("type")
    if kind is not None:
        kinds = kind if isinstance(kind, list) else [kind]
        if not any(_TYPES[k](value) for k in kinds if k in _TYPES):
            raise SchemaError(
                path, "expected {0}, got {1}".format(" or ".join(kinds), _name(value))
            )
    if "const" in schema and value != schema["const"]:
        raise SchemaError(path, "expected {0!r}".format(schema["const"]))
    if "enum" in schema and not any(_same(value, option) for option in schema["enum"]):
        raise SchemaError(
            path,
            "{0!r} is not one of {1}".format(value, ", ".join(repr(e) for e in schema["enum"])),
        )
    if isinstance(value, string_types):
        _check_string(value, schema, path)
    elif isinstance(value, (integer_types, float)) and not isinstance(value, bool):
        _check_number(value, schema, path)
    elif isinstance(value, dict):
        value = _check_object(value, schema, root, path)
    elif isinstance(value, (list, tuple)):
        value = _check_array(value, schema, root, path)
    return value


def _same(a, b):
    # JSON equality: 1 == 1.0 but True != 1.
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def _name(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, string_types):
        return "string"
    if isinstance(value, integer_types):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, (list, tuple)):
        return "array"
    return type(value).__name__


def _any_of(value, options, root, path):
    reasons = []
    for option in options:
        try:
            return _check(value, option, root, path)
        except SchemaError as exc:
            reasons.append(exc.reason)
    raise SchemaError(path, "fits none of the allowed forms ({0})".format("; ".join(reasons)))


def _check_string(value, schema, path):
    if "minLength" in schema and len(value) < schema["minLength"]:
        raise SchemaError(path, "shorter than {0} characters".format(schema["minLength"]))
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        raise SchemaError(path, "longer than {0} characters".format(schema["maxLength"]))
    if "pattern" in schema and not _pattern(schema["pattern"]).search(value):
        raise SchemaError(path, "does not match {0!r}".format(schema["pattern"]))


def _check_number(value, schema, path):
    if "minimum" in schema and value < schema["minimum"]:
        raise SchemaError(path, "less than {0}".format(schema["minimum"]))
    if "maximum" in schema and value > schema["maximum"]:
        raise SchemaError(path, "greater than {0}".format(schema["maximum"]))
    if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
        raise SchemaError(path, "not greater than {0}".format(schema["exclusiveMinimum"]))
    if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
        raise SchemaError(path, "not less than {0}".format(schema["exclusiveMaximum"]))
    step = schema.get("multipleOf")
    if step and (value / step) != int(value / step):
        raise SchemaError(path, "not a multiple of {0}".format(step))


def _check_object(value, schema, root, path):
    properties = schema.get("properties", {})
    for name in schema.get("required", ()):
        if name not in value:
            raise SchemaError(_join(path, name), "field required")
    extra = schema.get("additionalProperties", True)
    out = OrderedDict()
    # Contract fields first, in declaration order (as pydantic serialises them).
    for name, sub in properties.items():
        if name in value:
            out[name] = _check(value[name], sub, root, _join(path, name))
        elif isinstance(sub, dict) and "default" in sub:
            out[name] = copy.deepcopy(sub["default"])
    for name, item in value.items():
        if name in properties:
            continue
        if extra is False:
            raise SchemaError(_join(path, name), "unexpected field")
        if not isinstance(name, string_types):
            raise SchemaError(path, "object keys must be strings")
        out[name] = item if extra is True else _check(item, extra, root, _join(path, name))
    return out


def _check_array(value, schema, root, path):
    if "minItems" in schema and len(value) < schema["minItems"]:
        raise SchemaError(path, "fewer than {0} items".format(schema["minItems"]))
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        raise SchemaError(path, "more than {0} items".format(schema["maxItems"]))
    prefix = schema.get("prefixItems", ())
    items = schema.get("items", True)
    out = []
    for index, item in enumerate(value):
        sub = prefix[index] if index < len(prefix) else items
        out.append(_check(item, sub, root, _join(path, index)))
    if schema.get("uniqueItems"):
        seen = [json.dumps(v, sort_keys=True) for v in out]
        if len(set(seen)) != len(seen):
            raise SchemaError(path, "items are not unique")
    return out
