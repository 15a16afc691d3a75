"""Breaking-change detection between two AsyncAPI documents made by ``svc docs``.

Every change is judged twice, because a message has two sides:

* **consumers**: services built against the OLD contract that receive
  messages sent by producers already on the NEW one;
* **producers**: services built against the OLD contract whose messages
  reach consumers already on the NEW one.

(For a reply the roles swap: the channel's consumers write it, its producers,
the requesters, read it.) svcbus validates on receive, so a consumer rejects
what its contract does not allow; the verdicts follow from that:

========================  ==========  ==========
change                    consumers   producers
========================  ==========  ==========
field removed             breaking    compatible
field added, required     compatible  breaking
field added, optional     compatible  compatible
optional -> required      compatible  breaking
required -> optional      breaking    compatible
type changed              breaking    breaking
type narrowed             compatible  breaking
type widened              warning     compatible
enum value removed        compatible  breaking
enum value added          warning     compatible
constraint tightened      compatible  breaking
constraint loosened       warning     compatible
pattern/format changed    warning     breaking
channel removed           breaking    breaking
message removed           breaking    breaking
========================  ==========  ==========

*Warning* marks a change that only widens what a message may hold (a new enum
value, a longer maximum): old consumers reject exactly the messages that use
the new values. It is compatible when consumers are deployed before producers
start using them, so it does not fail the check unless ``--strict`` is given.
A breaking change on a channel whose contract version was not bumped is
reported once more as *version not bumped*.
"""

from __future__ import annotations

import enum
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .fields import ref_name, resolve


class DocumentError(ValueError):
    """An input is missing, unreadable, or not an AsyncAPI 3 document."""


class Impact(str, enum.Enum):
    """How a change affects one side of a channel."""

    COMPATIBLE = "compatible"
    WARNING = "warning"
    BREAKING = "breaking"

    @property
    def rank(self) -> int:
        """Order for "the worse of two"."""
        return {"compatible": 0, "warning": 1, "breaking": 2}[self.value]


OK, WARN, BREAK = Impact.COMPATIBLE, Impact.WARNING, Impact.BREAKING


@dataclass(frozen=True)
class Change:
    """One difference between the old and the new contracts of a channel."""

    channel: str
    kind: str
    """A stable, machine-readable name: ``field-removed``, ``enum-value-added``..."""
    detail: str
    consumers: Impact
    producers: Impact
    path: str = ""
    """Where in the payload (``author.id``, ``reply:posts``); empty for the channel."""

    @property
    def impact(self) -> Impact:
        """The worse of the two sides."""
        return max(self.consumers, self.producers, key=lambda i: i.rank)

    def as_dict(self) -> dict[str, str]:
        """JSON-friendly form (``--json``)."""
        return {
            "channel": self.channel,
            "kind": self.kind,
            "path": self.path,
            "consumers": self.consumers.value,
            "producers": self.producers.value,
            "impact": self.impact.value,
            "detail": self.detail,
        }


@dataclass
class Report:
    """Every change found, in a stable order."""

    changes: list[Change] = field(default_factory=list)

    @property
    def breaking(self) -> list[Change]:
        """Changes that break consumers or producers."""
        return [c for c in self.changes if c.impact is BREAK]

    @property
    def warnings(self) -> list[Change]:
        """Changes that need consumers deployed first."""
        return [c for c in self.changes if c.impact is WARN]

    def kinds(self) -> set[str]:
        """The kinds of change present (handy in tests)."""
        return {c.kind for c in self.changes}


# --------------------------------------------------------------------------
# reading documents


def load_document(spec: str, *, cwd: str | Path | None = None) -> dict[str, Any]:
    """Read an AsyncAPI document from a file (JSON or YAML) or ``git:REF:path``.

    ``git:REF:path`` reads ``path`` (relative to the current directory, like a
    file argument) as it is at ``REF``: ``git:origin/main:docs/contracts/asyncapi.json``.
    Raises :class:`DocumentError` with a readable reason.
    """
    if spec.startswith("git:"):
        ref, sep, path = spec[4:].partition(":")
        if not ref or not sep or not path:
            raise DocumentError(f"{spec!r}: write git:REF:path, e.g. git:origin/main:asyncapi.json")
        if not path.startswith(("/", "./", "../")):
            path = "./" + path  # git's relative-to-cwd form
        try:
            done = subprocess.run(
                ["git", "show", f"{ref}:{path}"],
                cwd=cwd,
                capture_output=True,
                check=False,
                timeout=30,
            )
        except FileNotFoundError:
            raise DocumentError("git is not installed, so git:REF:path cannot be read") from None
        if done.returncode != 0:
            reason = done.stderr.decode(errors="replace").strip() or "git show failed"
            raise DocumentError(f"{spec!r}: {reason}")
        text = done.stdout.decode("utf-8", errors="replace")
    else:
        file = Path(cwd or ".") / spec
        try:
            text = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise DocumentError(f"{spec!r}: no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise DocumentError(f"{spec!r}: cannot read it ({exc})") from None
    return parse_document(text, spec)


def parse_document(text: str, name: str = "document") -> dict[str, Any]:
    """Parse JSON or YAML text and check it is an AsyncAPI 3 document."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        import yaml  # only YAML inputs need it

        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise DocumentError(f"{name!r} is neither JSON nor YAML: {exc}") from None
    if not isinstance(document, dict) or not str(document.get("asyncapi", "")).startswith("3."):
        raise DocumentError(
            f"{name!r} is not an AsyncAPI 3 document (make it with `svc docs --format asyncapi`)"
        )
    if not isinstance(document.get("channels", {}), dict):
        raise DocumentError(f"{name!r}: `channels` is not a mapping")
    return document


# --------------------------------------------------------------------------
# what a document says about each channel


@dataclass
class MessageView:
    """A message as the checker needs it."""

    name: str
    version: int | None
    payload: Any
    description: str = ""


@dataclass
class ChannelView:
    """A channel as the checker needs it."""

    name: str
    description: str = ""
    messages: dict[str, MessageView] = field(default_factory=dict)
    replies: dict[str, MessageView] = field(default_factory=dict)
    durable: bool = False
    """Whether the channel carries ``x-svcbus-durable`` (at least once)."""


def _follow(document: dict[str, Any], node: Any) -> Any:
    # Follow any local JSON pointer ($ref) in the document.
    hops = 0
    while isinstance(node, dict) and isinstance(node.get("$ref"), str) and hops < 20:
        ref = node["$ref"]
        if not ref.startswith("#/"):
            return {}
        target: Any = document
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            target = target.get(part, {}) if isinstance(target, dict) else {}
        node, hops = target, hops + 1
    return node


def _messages(document: dict[str, Any], channel: dict[str, Any]) -> dict[str, MessageView]:
    found: dict[str, MessageView] = {}
    for key, ref in (channel.get("messages") or {}).items():
        message = _follow(document, ref)
        if not isinstance(message, dict):
            continue
        name = str(message.get("name") or key)
        version = message.get("x-svcbus-version")
        found[name] = MessageView(
            name=name,
            version=version if isinstance(version, int) else None,
            payload=message.get("payload", {}),
            description=str(message.get("description") or ""),
        )
    return found


def channels_of(document: dict[str, Any]) -> dict[str, ChannelView]:
    """The channels of ``document`` by address, with their messages and replies."""
    raw = document.get("channels") or {}
    reply_ids: dict[str, str] = {}  # reply channel id -> request channel id
    for operation in (document.get("operations") or {}).values():
        if not isinstance(operation, dict) or not isinstance(operation.get("reply"), dict):
            continue
        request = str((operation.get("channel") or {}).get("$ref", "")).rsplit("/", 1)[-1]
        reply = str((operation["reply"].get("channel") or {}).get("$ref", "")).rsplit("/", 1)[-1]
        if request and reply:
            reply_ids[reply] = request
    views: dict[str, ChannelView] = {}
    ids_to_name: dict[str, str] = {}
    for channel_id, channel in raw.items():
        if channel_id in reply_ids or not isinstance(channel, dict):
            continue
        channel = _follow(document, channel)
        name = str(channel.get("address") or channel_id)
        ids_to_name[channel_id] = name
        views[name] = ChannelView(
            name=name,
            description=str(channel.get("description") or ""),
            messages=_messages(document, channel),
            durable=isinstance(channel.get("x-svcbus-durable"), dict),
        )
    for reply_id, request_id in reply_ids.items():
        request_name = ids_to_name.get(request_id)
        if request_name is not None:
            views[request_name].replies = _messages(
                document, _follow(document, raw.get(reply_id, {}))
            )
    return views


# --------------------------------------------------------------------------
# comparing


def compare(old: dict[str, Any], new: dict[str, Any]) -> Report:
    """Every change from ``old`` to ``new``, judged for consumers and producers."""
    old_channels, new_channels = channels_of(old), channels_of(new)
    old_schemas = (old.get("components") or {}).get("schemas") or {}
    new_schemas = (new.get("components") or {}).get("schemas") or {}
    changes: list[Change] = []
    for name in sorted(old_channels.keys() | new_channels.keys()):
        before, after = old_channels.get(name), new_channels.get(name)
        if after is None:
            changes.append(Change(name, "channel-removed", "channel removed", BREAK, BREAK))
            continue
        if before is None:
            changes.append(Change(name, "channel-added", "new channel", OK, OK))
            continue
        differ = _Differ(name, old_schemas, new_schemas)
        if before.description != after.description:
            changes.append(
                Change(name, "description-changed", "channel description changed", OK, OK)
            )
        changes += _durability(name, before, after)
        differ.messages(before.messages, after.messages, reply=False)
        differ.replies(before, after)
        changes += differ.changes
    return Report(changes)


def _durability(name: str, before: ChannelView, after: ChannelView) -> list[Change]:
    """Durability off breaks both sides: senders lose "stored on send", consumers retries."""
    if before.durable and not after.durable:
        detail = "durability turned off: messages are at most once now (no storage, no retries)"
        return [Change(name, "durability-removed", detail, BREAK, BREAK)]
    if after.durable and not before.durable:
        return [Change(name, "durability-added", "durability turned on (at least once)", OK, OK)]
    return []


class _Differ:
    """Compares the messages of one channel, collecting :class:`Change` objects."""

    def __init__(self, channel: str, old: dict[str, Any], new: dict[str, Any]) -> None:
        self.channel = channel
        self.old_schemas = old
        self.new_schemas = new
        self.changes: list[Change] = []
        self.reply = False

    # who reads and who writes: consumers read messages, producers read replies
    def add(self, kind: str, path: str, detail: str, reader: Impact, writer: Impact) -> None:
        consumers, producers = (writer, reader) if self.reply else (reader, writer)
        where = ("reply:" + path if path else "reply") if self.reply else path
        if self.reply:
            detail = "reply: " + detail
        self.changes.append(Change(self.channel, kind, detail, consumers, producers, where))

    def replies(self, before: ChannelView, after: ChannelView) -> None:
        if before.replies and not after.replies:
            # requesters would wait for replies that never come
            self.changes.append(
                Change(
                    self.channel,
                    "reply-removed",
                    "consumers no longer reply",
                    OK,
                    BREAK,
                    "reply",
                )
            )
        elif after.replies and not before.replies:
            self.changes.append(
                Change(self.channel, "reply-added", "consumers now reply", OK, OK, "reply")
            )
        elif before.replies:
            self.messages(before.replies, after.replies, reply=True)

    def messages(
        self, before: dict[str, MessageView], after: dict[str, MessageView], *, reply: bool
    ) -> None:
        self.reply = reply
        pairs: list[tuple[MessageView, MessageView]] = []
        if len(before) == 1 and len(after) == 1:
            (old,), (new,) = before.values(), after.values()
            if old.name != new.name:
                self.add(
                    "message-renamed",
                    "",
                    f"contract {old.name} is now {new.name}",
                    WARN,
                    WARN,
                )
            pairs.append((old, new))
        else:
            for name in sorted(before.keys() - after.keys()):
                self.add("message-removed", "", f"message {name} removed", BREAK, BREAK)
            for name in sorted(after.keys() - before.keys()):
                if before:
                    self.add("message-added", "", f"message {name} added", WARN, OK)
                else:
                    # untyped -> typed: old producers' free-form messages now validated
                    self.add("message-added", "", f"channel now typed by {name}", OK, BREAK)
            pairs += [(before[n], after[n]) for n in sorted(before.keys() & after.keys())]
        for old, new in pairs:
            start = len(self.changes)
            if old.description != new.description:
                self.add("description-changed", "", f"{new.name} description changed", OK, OK)
            self.schema(old.payload, new.payload, "", set())
            self.version(old, new, self.changes[start:])

    def version(self, old: MessageView, new: MessageView, found: list[Change]) -> None:
        if old.version is None or new.version is None:
            return
        broke = any(c.impact is BREAK for c in found)
        if new.version > old.version:
            self.add("version-bumped", "", f"version {old.version} -> {new.version}", OK, OK)
        elif new.version < old.version:
            self.add(
                "version-decreased",
                "",
                f"version went down, {old.version} -> {new.version}",
                BREAK,
                BREAK,
            )
        elif broke:
            self.add(
                "version-not-bumped",
                "",
                f"breaking change but version is still {new.version}: bump version= on {new.name}",
                BREAK,
                BREAK,
            )

    # -- schemas ----------------------------------------------------------

    def schema(self, old: Any, new: Any, path: str, seen: set[tuple[str, str]]) -> None:
        pair = (ref_name(old) or "", ref_name(new) or "")
        if all(pair):
            if pair in seen:
                return  # a recursive model: compared already
            seen = seen | {pair}
        o, n = resolve(old, self.old_schemas), resolve(new, self.new_schemas)
        if not isinstance(o, dict) or not isinstance(n, dict):
            if o != n:
                self.add("type-changed", path, f"{_at(path)}schema changed", BREAK, BREAK)
            return
        if not self.types(o, n, path):
            return  # unrelated types: nothing below is comparable
        self.values(o, n, path)
        old_branches, new_branches = _branches(o, self.old_schemas), _branches(n, self.new_schemas)
        for ob in old_branches:
            nb = _match(ob, new_branches, self.old_schemas, self.new_schemas)
            if nb is not None:
                self.structure(ob, nb, path, seen)

    def types(self, o: dict[str, Any], n: dict[str, Any], path: str) -> bool:
        before, after = _kinds(o, self.old_schemas), _kinds(n, self.new_schemas)
        if before == after:
            return True
        if before is None:
            self.add("type-narrowed", path, f"{_at(path)}was any, now {_show(after)}", OK, BREAK)
            return True
        if after is None:
            self.add("type-widened", path, f"{_at(path)}{_show(before)} -> any", WARN, OK)
            return True
        removed = {k for k in before - after if not (k == "integer" and "number" in after)}
        added = {k for k in after - before if not (k == "integer" and "number" in before)}
        common = (
            (before & after)
            | ({"integer"} if ("integer" in before and "number" in after) else set())
            | ({"integer"} if ("integer" in after and "number" in before) else set())
        )
        common.discard("null")
        if removed and not common:
            self.add(
                "type-changed",
                path,
                f"{_at(path)}type {_show(before)} -> {_show(after)}",
                BREAK,
                BREAK,
            )
            return False
        if removed:
            self.add(
                "type-narrowed",
                path,
                f"{_at(path)}type {_show(before)} -> {_show(after)}",
                OK,
                BREAK,
            )
        if added:
            self.add(
                "type-widened",
                path,
                f"{_at(path)}type {_show(before)} -> {_show(after)}",
                WARN,
                OK,
            )
        return True

    def values(self, o: dict[str, Any], n: dict[str, Any], path: str) -> None:
        before, after = _values(o, self.old_schemas), _values(n, self.new_schemas)
        if before == after:
            return
        if before is None and after is not None:
            self.add("enum-added", path, f"{_at(path)}now limited to {_show(after)}", OK, BREAK)
        elif after is None and before is not None:
            self.add("enum-dropped", path, f"{_at(path)}no longer limited to a set", WARN, OK)
        elif before is not None and after is not None:
            for value in sorted(before - after):
                self.add("enum-value-removed", path, f"{_at(path)}value {value} removed", OK, BREAK)
            for value in sorted(after - before):
                self.add("enum-value-added", path, f"{_at(path)}value {value} added", WARN, OK)

    def structure(
        self, o: dict[str, Any], n: dict[str, Any], path: str, seen: set[tuple[str, str]]
    ) -> None:
        self.limits(o, n, path)
        if path and o.get("description") != n.get("description"):
            self.add("description-changed", path, f"{_at(path)}description changed", OK, OK)
        if "properties" in o or "properties" in n:
            self.properties(o, n, path, seen)
        o_items, n_items = o.get("items"), n.get("items")
        if isinstance(o_items, dict) and isinstance(n_items, dict):
            self.schema(o_items, n_items, path + "[]", seen)
        o_extra, n_extra = o.get("additionalProperties"), n.get("additionalProperties")
        if isinstance(o_extra, dict) and isinstance(n_extra, dict):
            self.schema(o_extra, n_extra, path + "{}", seen)

    def properties(
        self, o: dict[str, Any], n: dict[str, Any], path: str, seen: set[tuple[str, str]]
    ) -> None:
        old_props, new_props = o.get("properties") or {}, n.get("properties") or {}
        old_req, new_req = set(o.get("required", ())), set(n.get("required", ()))
        closed = n.get("additionalProperties") is False
        for name in sorted(old_props.keys() | new_props.keys()):
            where = f"{path}.{name}" if path else name
            if name not in new_props:
                # old producers still send it: harmless unless extra fields are now refused
                self.add(
                    "field-removed",
                    where,
                    f"field {where} removed",
                    BREAK,
                    BREAK if closed else OK,
                )
            elif name not in old_props:
                if name in new_req:
                    self.add(
                        "field-added-required", where, f"required field {where} added", OK, BREAK
                    )
                else:
                    self.add("field-added-optional", where, f"optional field {where} added", OK, OK)
            else:
                if name in old_req and name not in new_req:
                    self.add(
                        "required-to-optional", where, f"{where} is no longer required", BREAK, OK
                    )
                elif name in new_req and name not in old_req:
                    self.add("optional-to-required", where, f"{where} is now required", OK, BREAK)
                elif name not in new_req:
                    self._default(old_props[name], new_props[name], where)
                self.schema(old_props[name], new_props[name], where, seen)

    def _default(self, o: Any, n: Any, where: str) -> None:
        if not (isinstance(o, dict) and isinstance(n, dict)):
            return
        if "default" in o and "default" in n and o["default"] != n["default"]:
            # old producers that leave the field out now mean something else
            self.add(
                "default-changed",
                where,
                f"{where} default {json.dumps(o['default'])} -> {json.dumps(n['default'])}",
                OK,
                WARN,
            )

    def limits(self, o: dict[str, Any], n: dict[str, Any], path: str) -> None:
        for key, label, upper in _LIMITS:
            if key not in o and key not in n:
                continue
            before, after = o.get(key), n.get(key)
            if before == after:
                continue
            if before is None:
                tighter = True
            elif after is None:
                tighter = False
            else:
                tighter = after < before if upper else after > before
            change = f"{_at(path)}{label} {_num(before)} -> {_num(after)}"
            if tighter:
                self.add("constraint-tightened", path, change, OK, BREAK)
            else:
                self.add("constraint-loosened", path, change, WARN, OK)
        for key in ("pattern", "format", "multipleOf", "uniqueItems"):
            before, after = o.get(key), n.get(key)
            if before == after or after is False:
                continue
            change = f"{_at(path)}{key} {_num(before)} -> {_num(after)}"
            if before is None:
                self.add("constraint-tightened", path, change, OK, BREAK)
            elif after is None:
                self.add("constraint-loosened", path, change, WARN, OK)
            else:
                # neither contains the other in general: assume both directions
                self.add(f"{key.lower()}-changed", path, change, WARN, BREAK)


# (keyword, label, is an upper bound)
_LIMITS = (
    ("maxLength", "max length", True),
    ("maximum", "maximum", True),
    ("exclusiveMaximum", "exclusive maximum", True),
    ("maxItems", "max items", True),
    ("maxProperties", "max properties", True),
    ("minLength", "min length", False),
    ("minimum", "minimum", False),
    ("exclusiveMinimum", "exclusive minimum", False),
    ("minItems", "min items", False),
    ("minProperties", "min properties", False),
)


def _at(path: str) -> str:
    return f"{path}: " if path else ""


def _num(value: Any) -> str:
    return "none" if value is None else json.dumps(value)


def _show(kinds: set[str] | None) -> str:
    return "any" if kinds is None else "|".join(sorted(kinds))


_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null"}


def _value_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return _JSON_TYPES.get(type(value), "string")


def _kinds(schema: Any, schemas: dict[str, Any]) -> set[str] | None:
    """The JSON types ``schema`` accepts; ``None`` for any."""
    schema = resolve(schema, schemas)
    if schema is True or schema == {} or not isinstance(schema, dict):
        return None if schema is not False else set()
    for key in ("anyOf", "oneOf"):
        if key in schema:
            found: set[str] = set()
            for branch in schema[key]:
                kinds = _kinds(branch, schemas)
                if kinds is None:
                    return None
                found |= kinds
            return found
    if "allOf" in schema and len(schema["allOf"]) == 1:
        return _kinds(schema["allOf"][0], schemas)
    return _own_kinds(schema)


def _own_kinds(schema: dict[str, Any]) -> set[str] | None:
    """The JSON types a schema without branches accepts; ``None`` for any."""
    kind = schema.get("type")
    if isinstance(kind, str):
        return {kind}
    if isinstance(kind, list):
        return set(kind)
    if "enum" in schema:
        return {_value_kind(v) for v in schema["enum"]}
    if "const" in schema:
        return {_value_kind(schema["const"])}
    if "properties" in schema:
        return {"object"}
    if "items" in schema:
        return {"array"}
    return None


def _values(schema: Any, schemas: dict[str, Any]) -> set[str] | None:
    """The allowed non-null values (JSON-encoded) when ``schema`` is an enum; else None."""
    schema = resolve(schema, schemas)
    if not isinstance(schema, dict):
        return None
    if "enum" in schema:
        return {json.dumps(v, sort_keys=True) for v in schema["enum"] if v is not None}
    if "const" in schema:
        return {json.dumps(schema["const"], sort_keys=True)}
    for key in ("anyOf", "oneOf"):
        if key in schema:
            found: set[str] = set()
            for branch in schema[key]:
                if _kinds(branch, schemas) == {"null"}:
                    continue
                values = _values(branch, schemas)
                if values is None:
                    return None
                found |= values
            return found
    return None


def _branches(schema: dict[str, Any], schemas: dict[str, Any]) -> list[dict[str, Any]]:
    """The non-null alternatives of a union (or the schema itself), resolved."""
    for key in ("anyOf", "oneOf"):
        if key in schema:
            out = []
            for branch in schema[key]:
                resolved = resolve(branch, schemas)
                if isinstance(resolved, dict) and _kinds(resolved, schemas) != {"null"}:
                    out.append(resolved)
            return out
    return [schema]


def _match(
    branch: dict[str, Any],
    candidates: list[dict[str, Any]],
    old_schemas: dict[str, Any],
    new_schemas: dict[str, Any],
) -> dict[str, Any] | None:
    # The new alternative that corresponds to an old one: same types if possible.
    kinds = _kinds(branch, old_schemas)
    if len(candidates) == 1:
        return candidates[0]
    for candidate in candidates:
        if _kinds(candidate, new_schemas) == kinds:
            return candidate
    return None


def iter_rows(report: Report) -> Iterator[tuple[str, str, str, str, str, str]]:
    """``(channel, change, where, consumers, producers, detail)`` rows, breaking first."""
    order = sorted(
        report.changes,
        key=lambda c: (
            -c.impact.rank,
            c.channel,
            c.kind == "version-not-bumped",  # the consequence after its causes
            c.path,
            c.kind,
            c.detail,
        ),
    )
    for c in order:
        yield (c.channel, c.kind, c.path, c.consumers.value, c.producers.value, c.detail)
