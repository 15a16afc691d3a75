"""The contracts of a system as one Markdown file, for browsing in a repository.

An index (channels, services), the diagram as a Mermaid block (GitHub and
GitLab draw it), then one section per channel with its payload table and
examples. User text is escaped so that a docstring cannot inject markup.
"""

from __future__ import annotations

import json
from typing import Any

from .asyncapi import REPLY_SUFFIX, channel_message, durable_extension, durable_summary
from .collect import ChannelDoc, System
from .fields import FieldRow, rows
from .svg import edges

_SPECIAL = "\\`*_[]<>|#"


def text(value: str) -> str:
    """``value`` as inert Markdown text on one line (table-safe)."""
    value = " ".join(value.split())
    return "".join("\\" + c if c in _SPECIAL else c for c in value)


def code(value: str) -> str:
    """``value`` as an inline code span that is also safe inside a table cell."""
    value = " ".join(value.split()).replace("|", "\\|")
    fence = "``" if "`" in value else "`"
    return f"{fence}{value}{fence}" if fence == "`" else f"{fence} {value} {fence}"


def anchor(channel: str) -> str:
    """The explicit anchor id of a channel's section."""
    return f"channel-{channel}"


def render_markdown(system: System, document: dict[str, Any]) -> str:
    """The whole Markdown document."""
    out = [f"# {text(system.title)}", ""]
    description = system.description or document["info"].get("description", "")
    out += [_paragraphs(description), ""]
    out += ["## Diagram", "", mermaid(system), ""]

    out += ["## Channels", ""]
    out += [
        "| Channel | Contract | Kind | Producers | Consumers | Summary |",
        "|---|---|---|---|---|---|",
    ]
    for name, chan in system.channels.items():
        out.append(
            f"| [{code(name)}](#{anchor(name)}) | {text(_contract_label(chan))} | "
            f"{'request/reply' if chan.is_request else 'event'} | "
            f"{text(', '.join(chan.producers)) or '—'} | {text(', '.join(chan.consumers)) or '—'} | "
            f"{text(_first_line(chan.description))} |"
        )
    out += ["", "## Services", ""]
    out += ["| Service | Consumes | Sends | Description |", "|---|---|---|---|"]
    for service in system.services:
        out.append(
            f"| **{text(service.name)}** | {', '.join(code(c) for c in service.consumes) or '—'} | "
            f"{', '.join(code(c) for c in service.produces) or '—'} | {text(service.description)} |"
        )
    out.append("")
    for chan in system.channels.values():
        out += _channel_section(chan, document)
    return "\n".join(out).rstrip() + "\n"


def mermaid(system: System) -> str:
    """The services-and-channels diagram as a fenced Mermaid flowchart."""
    service_ids = {s.name: f"s{i}" for i, s in enumerate(system.services)}
    channel_ids = {name: f"c{i}" for i, name in enumerate(system.channels)}
    lines = ["```mermaid", "flowchart LR"]
    for name, node in service_ids.items():
        lines.append(f'  {node}["{_mermaid_label(name)}"]')
    for name, node in channel_ids.items():
        lines.append(f'  {node}(["{_mermaid_label(name)}"])')
    for edge in edges(system):
        s, c = service_ids[edge.service], channel_ids[edge.channel]
        if edge.kind == "produce":
            lines.append(f"  {s} -->|sends| {c}")
        elif edge.kind == "consume":
            lines.append(f"  {c} -->|consumed by| {s}")
        else:
            lines.append(f"  {s} -.->|replies| {c}")
    lines.append("```")
    return "\n".join(lines)


def _mermaid_label(value: str) -> str:
    # Mermaid's own entity syntax: quotes and angle brackets cannot break out.
    return (
        value.replace("#", "#35;").replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")
    )


def _paragraphs(value: str) -> str:
    blocks = [text(b) for b in value.split("\n\n") if b.strip()]
    return "\n\n".join(blocks)


def _contract_label(chan: ChannelDoc) -> str:
    if chan.contract is None:
        return "untyped"
    return f"{chan.contract.__contract_name__} v{chan.contract.__version__}"


def _first_line(value: str) -> str:
    return value.strip().splitlines()[0] if value.strip() else ""


def _channel_section(chan: ChannelDoc, document: dict[str, Any]) -> list[str]:
    out = [f'<a id="{anchor(chan.name)}"></a>', "", f"## {code(chan.name)}", ""]
    if chan.description:
        out += [_paragraphs(chan.description), ""]
    out.append(f"- **Contract:** {text(_contract_label(chan))}")
    out.append(f"- **Kind:** {'request/reply' if chan.is_request else 'event'}")
    out.append(f"- **Producers:** {text(', '.join(chan.producers)) or 'none declared'}")
    out.append(f"- **Consumers:** {text(', '.join(chan.consumers)) or 'none'}")
    if chan.reply is not None:
        out.append(
            f"- **Reply:** {text(f'{chan.reply.__contract_name__} v{chan.reply.__version__}')}"
        )
    durable = durable_extension(chan.contract)
    if durable is not None:
        out.append(f"- **Durable:** {text(durable_summary(durable))}")
    for route in chan.routes:
        out.append(
            f"- **Edge route:** {text(route.kind)} {code(route.path)} {text(route.detail)}".rstrip()
        )
    out.append("")
    schemas = document.get("components", {}).get("schemas", {})
    message = channel_message(document, chan.name)
    if message is None:
        out += ["Untyped channel: any JSON value.", ""]
    else:
        out += ["### Payload", "", *_table(rows(message.get("payload", {}), schemas))]
        out += _examples(message)
    reply = channel_message(document, chan.name + REPLY_SUFFIX)
    if reply is not None:
        out += ["### Reply payload", "", *_table(rows(reply.get("payload", {}), schemas))]
        out += _examples(reply)
    return out


def _table(field_rows: list[FieldRow]) -> list[str]:
    if not field_rows:
        return ["No fields.", ""]
    out = [
        "| Field | Type | Required | Description | Constraints |",
        "|---|---|---|---|---|",
    ]
    for row in field_rows:
        out.append(
            f"| {code(row.path)} | {code(row.type)} | {'yes' if row.required else 'no'} | "
            f"{text(row.description)} | {'; '.join(text(c) for c in row.constraints)} |"
        )
    out.append("")
    return out


def _examples(message: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for example in message.get("examples") or []:
        body = json.dumps(example.get("payload"), indent=2, sort_keys=True, ensure_ascii=False)
        fence = "```" if "```" not in body else "````"
        out += [
            f"Example {code(str(example.get('name', '')))}:",
            "",
            f"{fence}json",
            body,
            fence,
            "",
        ]
    return out
