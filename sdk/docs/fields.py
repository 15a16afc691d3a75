"""A payload's JSON schema flattened into readable rows, for HTML and Markdown tables.

Nested models are expanded in place (``author.name``, ``tags[]``), each row
saying its type in Python-ish words, whether it is required, its description
and its constraints. Recursive models stop at the first repeat.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

REF_PREFIX = "#/components/schemas/"

# JSON schema keyword -> how a constraint reads in a table
_CONSTRAINTS = (
    ("minLength", "min length"),
    ("maxLength", "max length"),
    ("minimum", ">="),
    ("exclusiveMinimum", ">"),
    ("maximum", "<="),
    ("exclusiveMaximum", "<"),
    ("multipleOf", "multiple of"),
    ("minItems", "min items"),
    ("maxItems", "max items"),
    ("uniqueItems", "unique items"),
    ("pattern", "pattern"),
    ("format", "format"),
)


@dataclass
class FieldRow:
    """One row of a schema table."""

    path: str
    type: str
    required: bool
    description: str = ""
    constraints: list[str] = field(default_factory=list)


def resolve(schema: Any, schemas: dict[str, Any]) -> Any:
    """Follow a local ``$ref`` (keeping sibling keywords such as ``description``)."""
    seen = 0
    while isinstance(schema, dict) and "$ref" in schema and seen < 50:
        ref = schema["$ref"]
        if not isinstance(ref, str) or not ref.startswith(REF_PREFIX):
            return schema
        target = schemas.get(ref[len(REF_PREFIX) :], {})
        siblings = {k: v for k, v in schema.items() if k != "$ref"}
        schema = {**target, **siblings}
        seen += 1
    return schema


def ref_name(schema: Any) -> str | None:
    """The component name a ``$ref`` points to, if ``schema`` is one."""
    if isinstance(schema, dict) and isinstance(schema.get("$ref"), str):
        ref: str = schema["$ref"]
        if ref.startswith(REF_PREFIX):
            return ref[len(REF_PREFIX) :]
    return None


def type_name(schema: Any, schemas: dict[str, Any]) -> str:
    """A short, readable type: ``string``, ``list[Author]``, ``Mood | null``..."""
    if schema is True or schema == {}:
        return "any"
    if not isinstance(schema, dict):
        return "never"
    name = ref_name(schema)
    if name is not None:
        target = schemas.get(name, {})
        return str(target.get("title") or name)
    combined = _combined_name(schema, schemas)
    if combined is not None:
        return combined
    if "const" in schema:
        return json.dumps(schema["const"])
    kind = schema.get("type")
    if isinstance(kind, list):
        return " | ".join(type_name({**schema, "type": k}, schemas) for k in kind)
    if kind == "array":
        return _array_name(schema, schemas)
    if kind == "object":
        return _object_name(schema, schemas)
    if kind == "string" and schema.get("format") in ("base64url", "base64", "binary"):
        return "bytes"
    if kind is None:
        return "any"
    return str(kind)


def _combined_name(schema: dict[str, Any], schemas: dict[str, Any]) -> str | None:
    """``A | B`` for a union, the one member of a single ``allOf``; else None."""
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " | ".join(type_name(branch, schemas) for branch in schema[key])
    if "allOf" in schema and len(schema["allOf"]) == 1:
        return type_name(schema["allOf"][0], schemas)
    return None


def _array_name(schema: dict[str, Any], schemas: dict[str, Any]) -> str:
    """``list[X]``, or ``tuple[X, Y]`` for fixed-length arrays."""
    if isinstance(schema.get("prefixItems"), list):  # pydantic's tuples
        return "tuple[" + ", ".join(type_name(i, schemas) for i in schema["prefixItems"]) + "]"
    items = schema.get("items")
    if isinstance(items, list):  # a tuple
        return "tuple[" + ", ".join(type_name(i, schemas) for i in items) + "]"
    return f"list[{type_name(items if items is not None else {}, schemas)}]"


def _object_name(schema: dict[str, Any], schemas: dict[str, Any]) -> str:
    """``dict[str, X]`` for a plain mapping, else the model's title."""
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict) and not schema.get("properties"):
        return f"dict[str, {type_name(extra, schemas)}]"
    return str(schema.get("title") or "object")


def constraints(schema: Any, schemas: dict[str, Any]) -> list[str]:
    """Readable constraints of ``schema`` (enum values, limits, pattern, default)."""
    if not isinstance(schema, dict):
        return []
    found: list[str] = []
    resolved = resolve(schema, schemas)
    for branch in _branches(resolved):
        branch = resolve(branch, schemas)
        if isinstance(branch, dict) and "enum" in branch:
            found.append("one of: " + ", ".join(json.dumps(v) for v in branch["enum"]))
        if isinstance(branch, dict):
            for key, label in _CONSTRAINTS:
                if key in branch:
                    value = branch[key]
                    found.append(label if value is True else f"{label} {value}")
    if "default" in schema:
        found.append(f"default {json.dumps(schema['default'], sort_keys=True)}")
    return list(dict.fromkeys(found))  # keep order, drop repeats


def _branches(schema: Any) -> list[Any]:
    if isinstance(schema, dict):
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return list(schema[key])
    return [schema]


def rows(schema: Any, schemas: dict[str, Any]) -> list[FieldRow]:
    """The rows of a payload schema: one per field, nested models expanded."""
    found: list[FieldRow] = []
    _object_rows(resolve(schema, schemas), schemas, "", found, ())
    return found


def _object_rows(
    schema: Any, schemas: dict[str, Any], prefix: str, out: list[FieldRow], seen: tuple[str, ...]
) -> None:
    if not isinstance(schema, dict):
        return
    required = set(schema.get("required", ()))
    for name, prop in (schema.get("properties") or {}).items():
        path = prefix + name
        resolved = resolve(prop, schemas)
        description = ""
        if isinstance(prop, dict):
            description = str(prop.get("description") or "")
        if not description and isinstance(resolved, dict) and "properties" not in resolved:
            description = str(resolved.get("description") or "")
        out.append(
            FieldRow(
                path=path,
                type=type_name(prop, schemas),
                required=name in required,
                description=description,
                constraints=constraints(prop, schemas),
            )
        )
        _nested(prop, schemas, path, out, seen)


def _nested(
    prop: Any, schemas: dict[str, Any], path: str, out: list[FieldRow], seen: tuple[str, ...]
) -> None:
    # Expand the models a field holds: directly, as list items, or in a union.
    for branch in _branches(prop):
        name = ref_name(branch)
        target = resolve(branch, schemas)
        if not isinstance(target, dict):
            continue
        if target.get("type") == "array" and isinstance(target.get("items"), dict):
            _nested(target["items"], schemas, path + "[]", out, seen)
        elif target.get("properties"):
            if name is not None and name in seen:
                continue  # recursive model: its fields are listed above
            _object_rows(target, schemas, path + ".", out, (*seen, name) if name else seen)
