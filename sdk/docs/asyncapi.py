"""Render a :class:`~svcbus.docs.collect.System` as an AsyncAPI 3.0.0 document.

The mapping:

* **servers**: one per layer URL (``nats``, ``redis`` or ``memory`` protocol);
  credentials and query strings never reach the document.
* **channels**: one per svcbus channel, keyed and addressed by its name, with
  its contract as the one message. A request/reply channel also gets a reply
  channel ``<name>.Reply`` (upper case cannot clash with a svcbus name) whose
  address is ``null``: replies go to a process-specific channel the requester
  names at run time, in the envelope's ``rc`` field.
* **operations**: ``receive`` per consuming service, ``send`` per declared
  producer, each with ``reply`` on request/reply channels.
* **components**: message objects, and the payload schemas pydantic generates,
  all nested models lifted into ``components/schemas``. The envelope metadata
  (id, contract name and version, reply channel...) is described as the
  message ``headers``: svcbus carries it inside the JSON envelope rather than as
  transport headers (see ``docs/protocol.md``), but it plays their role.

Output is deterministic (sorted keys, sorted lists) so committed docs diff
cleanly.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from pydantic.json_schema import models_json_schema

from ..contract import Contract
from ..envelope import Envelope
from .collect import System

ASYNCAPI_VERSION = "3.0.0"
CONTENT_TYPE = "application/json"
ENVELOPE_SCHEMA = "SvcbusEnvelope"
REPLY_SUFFIX = ".Reply"
SCHEMA_REF = "#/components/schemas/{model}"

# layer URL scheme -> AsyncAPI protocol
PROTOCOLS = {
    "nats": "nats",
    "tls": "nats",
    "redis": "redis",
    "rediss": "redis",
    "redis+sentinel": "redis",
    "memory": "memory",
}


def build_document(system: System) -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of ``system`` as a JSON-compatible dict."""
    schemas, schema_keys = contract_schemas(system.contracts())
    message_keys = _message_keys(system.contracts())
    messages = {
        message_keys[_ident(c)]: message_object(c, schema_keys[_ident(c)], schemas)
        for c in system.contracts()
    }
    servers = dict(server_entries(system.servers))
    prefixes = transport_prefixes(system.servers)

    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for name, chan in system.channels.items():
        entry: dict[str, Any] = {"address": name, "title": name}
        if chan.description:
            entry["description"] = chan.description
        if chan.contract is None:
            entry["summary"] = "Untyped channel: any JSON value."
        else:
            key = message_keys[_ident(chan.contract)]
            entry["messages"] = {key: {"$ref": f"#/components/messages/{key}"}}
            entry["summary"] = _summary(chan.contract)
        entry.update(transport_bindings(name, prefixes))
        durable = durable_extension(chan.contract)
        if durable is not None:
            entry["x-svcbus-durable"] = durable
        if chan.routes:
            entry["x-svcbus-routes"] = [
                {"kind": r.kind, "path": r.path, **({"detail": r.detail} if r.detail else {})}
                for r in chan.routes
            ]
        channels[name] = entry

        reply = None
        if chan.reply is not None:
            reply_id = name + REPLY_SUFFIX
            reply_key = message_keys[_ident(chan.reply)]
            channels[reply_id] = {
                "address": None,
                "title": f"Replies on {name}",
                "description": (
                    "Process-specific channel named by the requester at run time; "
                    "its name travels in the request envelope's `rc` field."
                ),
                "messages": {reply_key: {"$ref": f"#/components/messages/{reply_key}"}},
            }
            reply = {
                "address": {
                    "description": "The requester's reply channel.",
                    "location": "$message.header#/rc",
                },
                "channel": {"$ref": f"#/channels/{_pointer(reply_id)}"},
                "messages": [{"$ref": f"#/channels/{_pointer(reply_id)}/messages/{reply_key}"}],
            }
        for action, services in (("receive", chan.consumers), ("send", chan.producers)):
            for service in services:
                operations[f"{_key(service)}.{action}.{name}"] = _operation(
                    action, service, name, entry, reply
                )
    document: dict[str, Any] = {
        "asyncapi": ASYNCAPI_VERSION,
        "info": _info(system),
        "defaultContentType": CONTENT_TYPE,
        "channels": channels,
        "operations": operations,
        "components": {"schemas": schemas, "messages": messages},
    }
    if servers:
        document["servers"] = servers
    return document


def _info(system: System) -> dict[str, Any]:
    info: dict[str, Any] = {
        "title": system.title,
        "version": system.version,
        "description": system.description
        or (
            "Channels, contracts and services of a svcbus system. Every message is one "
            "JSON envelope: metadata (described as the message headers) and the payload "
            "in its b field; see svcbus docs/protocol.md."
        ),
    }
    tags = [
        {"name": s.name, **({"description": s.description} if s.description else {})}
        for s in system.services
    ]
    if tags:
        info["tags"] = tags
    return info


def _operation(
    action: str,
    service: str,
    channel: str,
    entry: dict[str, Any],
    reply: dict[str, Any] | None,
) -> dict[str, Any]:
    verb = "consumes" if action == "receive" else "sends to"
    operation: dict[str, Any] = {
        "action": action,
        "channel": {"$ref": f"#/channels/{_pointer(channel)}"},
        "summary": f"{service} {verb} {channel}",
        "tags": [{"name": service}],
        "x-svcbus-service": service,
    }
    if "messages" in entry:
        operation["messages"] = [
            {"$ref": f"#/channels/{_pointer(channel)}/messages/{key}"} for key in entry["messages"]
        ]
    if reply is not None:
        operation["reply"] = reply
    return operation


def contract_schemas(
    contracts: list[type[Contract]],
) -> tuple[dict[str, Any], dict[tuple[str, str], str]]:
    """JSON schemas of ``contracts`` and the envelope, for ``components/schemas``.

    Returns the schemas by name and the schema name of each contract. One
    pydantic call for all models makes nested models shared and gives models
    of the same name from different modules distinct names.
    """
    envelope = Envelope[dict[str, Any]]
    pairs: list[tuple[Any, Any]] = [(c, "validation") for c in contracts]
    pairs.append((envelope, "validation"))
    refs, top = models_json_schema(pairs, ref_template=SCHEMA_REF)
    schemas: dict[str, Any] = dict(top.get("$defs", {}))
    names = {_ident(c): refs[(c, "validation")]["$ref"].rsplit("/", 1)[-1] for c in contracts}
    envelope_name = refs[(envelope, "validation")]["$ref"].rsplit("/", 1)[-1]
    schemas[ENVELOPE_SCHEMA] = _envelope_headers(schemas.pop(envelope_name))
    return schemas, names


def _envelope_headers(schema: dict[str, Any]) -> dict[str, Any]:
    # The envelope without its body: the metadata every message carries.
    schema = dict(schema)
    schema["properties"] = {k: v for k, v in schema["properties"].items() if k != "b"}
    schema["required"] = [k for k in schema.get("required", []) if k != "b"]
    schema["title"] = "svcbus envelope"
    schema["description"] = (
        "Metadata of every svcbus message, carried in the JSON envelope around the "
        "payload (the payload is its `b` field): v protocol version, id message id, "
        "ct/cv contract name and version, rc reply channel, re id of the request "
        "answered, at sent time and ex expiry (Unix ms), tc trace context, h "
        "application headers, er error instead of a reply."
    )
    return schema


def message_object(
    contract: type[Contract], schema_name: str, schemas: dict[str, Any]
) -> dict[str, Any]:
    """The AsyncAPI message object of ``contract``."""
    message: dict[str, Any] = {
        "name": contract.__contract_name__,
        "title": contract.__contract_name__,
        "contentType": CONTENT_TYPE,
        "payload": {"$ref": SCHEMA_REF.format(model=schema_name)},
        "headers": {"$ref": SCHEMA_REF.format(model=ENVELOPE_SCHEMA)},
        "x-svcbus-version": contract.__version__,
    }
    summary = _summary(contract)
    if summary:
        message["summary"] = summary
    doc = contract.__dict__.get("__doc__")
    if doc:
        message["description"] = inspect.cleandoc(doc)
    examples = payload_examples(schemas[schema_name])
    if examples:
        message["examples"] = [
            {"name": f"example-{i}", "payload": example} for i, example in enumerate(examples, 1)
        ]
    return message


def payload_examples(schema: dict[str, Any]) -> list[Any]:
    """Examples of a payload: the model's own, else one built from field examples.

    A model's ``json_schema_extra={"examples": [...]}`` wins. Otherwise, when
    every required field has an example (``Field(examples=[...])``), one
    example is assembled from the first example of each field that has one.
    """
    own = schema.get("examples")
    if isinstance(own, list) and own:
        return list(own)
    if isinstance(own, dict) and own:  # pydantic's older mapping form
        return list(own.values())
    properties = schema.get("properties") or {}
    example = {
        name: prop["examples"][0]
        for name, prop in properties.items()
        if isinstance(prop.get("examples"), list) and prop["examples"]
    }
    if not example or any(name not in example for name in schema.get("required", [])):
        return []
    return [example]


def server_entries(urls: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """``(id, server object)`` for each layer URL, without credentials or options."""
    entries: list[tuple[str, dict[str, Any]]] = []
    used: set[str] = set()
    for url in urls:
        parts = urlsplit(url)
        protocol = PROTOCOLS.get(parts.scheme.lower())
        if protocol is None:
            known = ", ".join(f"{s}://" for s in PROTOCOLS)
            raise ValueError(f"server URL {url!r}: unknown scheme; use one of {known}")
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        server: dict[str, Any] = {
            "host": host or ("in-process" if protocol == "memory" else "localhost"),
            "protocol": protocol,
            "description": _SERVER_DESCRIPTIONS[protocol],
        }
        if parts.scheme.lower() in ("tls", "rediss"):
            server["x-svcbus-tls"] = True
        if parts.path and parts.path != "/":
            server["pathname"] = parts.path
        server_id, n = protocol, 1
        while server_id in used:
            n += 1
            server_id = f"{protocol}-{n}"
        used.add(server_id)
        entries.append((server_id, server))
    return entries


def durable_extension(contract: type[Contract] | None) -> dict[str, Any] | None:
    """The ``x-svcbus-durable`` object of a durable contract's channel, or None.

    Every setting of :class:`~svcbus.durable.Durability`, seconds as numbers, with
    the dead-letter channel resolved, so readers (and ``svc contracts check``)
    need no defaults of their own.
    """
    settings = getattr(contract, "__durability__", None) if contract is not None else None
    if settings is None:
        return None
    found: dict[str, Any] = {"delivery": "at-least-once", **dataclasses.asdict(settings)}
    found["dead_letter"] = settings.dead_letter_channel(contract.__channel__)  # type: ignore[union-attr]
    return found


def durable_summary(durable: dict[str, Any]) -> str:
    """One line for HTML and Markdown: the settings a reader acts on."""
    return (
        f"at least once: {durable['max_attempts']} attempts, ack wait {durable['ack_wait']:g}s, "
        f"dead letters to {durable['dead_letter']}, {durable['replicas']} replica(s)"
    )


def transport_prefixes(urls: list[str]) -> dict[str, str]:
    """The key/subject prefix (``?prefix=``, default ``svcbus``) per protocol, first URL wins."""
    found: dict[str, str] = {}
    for url in urls:
        parts = urlsplit(url)
        protocol = PROTOCOLS.get(parts.scheme.lower())
        if protocol in ("nats", "redis") and protocol not in found:
            query = dict(parse_qsl(parts.query))
            found[protocol] = query.get("prefix", "svcbus")
    return found


def transport_bindings(channel: str, prefixes: dict[str, str]) -> dict[str, Any]:
    """Where a named channel lives on each listed transport.

    The official NATS and Redis binding objects have nothing to say about
    svcbus's mapping (NATS's only field, ``queue``, is for core queue groups,
    and svcbus uses JetStream work queues), so the names go in extensions.
    They follow the layers' docstrings (layers/nats.py, layers/redis.py) and
    docs/protocol.md.
    """
    found: dict[str, Any] = {}
    if "nats" in prefixes:
        prefix = prefixes["nats"]
        found["x-svcbus-nats"] = {
            "consumer": "receivers",
            "stream": f"{prefix}_ch_{channel.replace('.', ':')}",
            "subject": f"{prefix}.ch.{channel}",
        }
    if "redis" in prefixes:
        found["x-svcbus-redis"] = {"list": f"{prefixes['redis']}:c:{channel}"}
    return found


_SERVER_DESCRIPTIONS = {
    "nats": "svcbus NATS layer: named channels are JetStream work-queue streams.",
    "redis": "svcbus Redis layer.",
    "memory": "svcbus embedded memory layer (one process).",
}


def channel_message(document: dict[str, Any], channel_id: str) -> dict[str, Any] | None:
    """The (first) message object of a channel in ``document``, following its ``$ref``."""
    channel = document.get("channels", {}).get(channel_id) or {}
    for ref in (channel.get("messages") or {}).values():
        key = ref.get("$ref", "").rsplit("/", 1)[-1]
        message: dict[str, Any] | None = document.get("components", {}).get("messages", {}).get(key)
        return message
    return None


def to_json(document: dict[str, Any]) -> str:
    """The document as stable, indented JSON (with a final newline)."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def to_yaml(document: dict[str, Any]) -> str:
    """The document as stable YAML."""
    import yaml  # heavy and optional: only `svc docs` needs it

    return yaml.safe_dump(
        document, sort_keys=True, allow_unicode=True, default_flow_style=False, width=100
    )


def _ident(contract: type[Contract]) -> tuple[str, str]:
    return (contract.__module__, contract.__qualname__)


def _message_keys(contracts: list[type[Contract]]) -> dict[tuple[str, str], str]:
    # Component keys must match ^[\w\d.\-_]+$; distinct contracts sharing a name
    # get a numbered key, in the stable order of `contracts`.
    keys: dict[tuple[str, str], str] = {}
    used: set[str] = set()
    for contract in contracts:
        base = _key(contract.__contract_name__)
        key, n = base, 1
        while key in used:
            n += 1
            key = f"{base}_{n}"
        used.add(key)
        keys[_ident(contract)] = key
    return keys


def _key(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text) or "_"


def _pointer(text: str) -> str:
    return text.replace("~", "~0").replace("/", "~1")


def _summary(contract: type[Contract]) -> str:
    doc = (contract.__dict__.get("__doc__") or "").strip()
    return doc.splitlines()[0].strip() if doc else ""
