"""A static HTML site of a system's contracts: an index and one page per channel.

The site works offline from ``file://``: no JavaScript, no fonts or styles
from the internet, the diagram inline as SVG. Every piece of user text
(descriptions, names, examples) is escaped: contract docstrings are input, not
markup. Pages read the AsyncAPI document for schemas and examples, so the
site and ``asyncapi.json`` can never disagree.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

from . import svg
from .asyncapi import REPLY_SUFFIX, channel_message, durable_extension, durable_summary
from .collect import ChannelDoc, System
from .fields import FieldRow, rows

STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #0f172a; }
header { background: #1e293b; color: #f8fafc; padding: 14px 28px; }
header a { color: #c7d2fe; }
main { padding: 8px 28px 40px; max-width: 1200px; }
h1 { font-size: 22px; margin: 0; }
h2 { font-size: 18px; margin-top: 28px; border-bottom: 1px solid #e2e8f0; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border: 1px solid #cbd5e1; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f1f5f9; }
code, pre { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 13px; }
pre { background: #f8fafc; border: 1px solid #e2e8f0; padding: 8px; overflow-x: auto; }
.diagram { overflow-x: auto; border: 1px solid #e2e8f0; padding: 8px; background: #fff; }
.svcbus-diagram { font-family: system-ui, sans-serif; font-size: 13px; }
.muted { color: #64748b; }
"""


def render_site(system: System, document: dict[str, Any]) -> dict[str, str]:
    """Every page of the site: relative path -> HTML text."""
    pages = {"index.html": index_page(system, document)}
    for name, chan in system.channels.items():
        pages[channel_path(name)] = channel_page(system, chan, document)
    return pages


def channel_path(channel: str) -> str:
    """The site-relative path of a channel's page (channel names are file-safe)."""
    return f"channels/{channel}.html"


def _page(title: str, body: str, *, root: str) -> str:
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        # Nothing may load from elsewhere: the site must work offline.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; img-src 'self' data:\">\n"
        f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f'<header><h1><a href="{root}index.html">{escape(title)}</a></h1></header>\n'
        f"<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


def _paragraphs(text: str) -> str:
    blocks = [b.strip() for b in text.split("\n\n") if b.strip()]
    return "\n".join(f"<p>{escape(b)}</p>" for b in blocks)


def _list(items: list[str], empty: str = "none") -> str:
    if not items:
        return f'<span class="muted">{escape(empty)}</span>'
    return ", ".join(items)


def index_page(system: System, document: dict[str, Any]) -> str:
    """The site's front page: services, channels, the diagram."""
    diagram = svg.render(system, href=channel_path)
    parts = [_paragraphs(system.description or document["info"].get("description", ""))]
    parts.append(f'<h2>Diagram</h2>\n<div class="diagram" id="diagram">{diagram}</div>')

    parts.append("<h2>Channels</h2>")
    parts.append(
        "<table><tr><th>Channel</th><th>Contract</th><th>Kind</th><th>Producers</th>"
        "<th>Consumers</th><th>Summary</th></tr>"
    )
    for name, chan in system.channels.items():
        parts.append(
            "<tr>"
            f'<td><a href="{escape(channel_path(name))}"><code>{escape(name)}</code></a></td>'
            f"<td>{escape(_contract_label(chan))}</td>"
            f"<td>{'request/reply' if chan.is_request else 'event'}</td>"
            f"<td>{_list([escape(p) for p in chan.producers])}</td>"
            f"<td>{_list([escape(c) for c in chan.consumers])}</td>"
            f"<td>{escape(_first_line(chan.description))}</td>"
            "</tr>"
        )
    parts.append("</table>")

    parts.append("<h2>Services</h2>")
    parts.append(
        "<table><tr><th>Service</th><th>Consumes</th><th>Sends</th><th>Description</th></tr>"
    )
    for service in system.services:
        parts.append(
            "<tr>"
            f"<td><strong>{escape(service.name)}</strong></td>"
            f"<td>{_list([_channel_link(c) for c in service.consumes])}</td>"
            f"<td>{_list([_channel_link(c) for c in service.produces])}</td>"
            f"<td>{escape(service.description)}</td>"
            "</tr>"
        )
    parts.append("</table>")

    servers = document.get("servers") or {}
    if servers:
        parts.append("<h2>Servers</h2>\n<table><tr><th>Id</th><th>Protocol</th><th>Host</th></tr>")
        for server_id, server in servers.items():
            parts.append(
                f"<tr><td>{escape(server_id)}</td><td>{escape(server['protocol'])}</td>"
                f"<td><code>{escape(server['host'] + server.get('pathname', ''))}</code></td></tr>"
            )
        parts.append("</table>")
    return _page(system.title, "\n".join(parts), root="")


def _channel_link(channel: str, root: str = "") -> str:
    return f'<a href="{escape(root + channel_path(channel))}"><code>{escape(channel)}</code></a>'


def _contract_label(chan: ChannelDoc) -> str:
    if chan.contract is None:
        return "untyped"
    return f"{chan.contract.__contract_name__} v{chan.contract.__version__}"


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def channel_page(system: System, chan: ChannelDoc, document: dict[str, Any]) -> str:
    """One channel: its description, who sends and consumes it, payload, reply, examples."""
    parts = [f"<h2>Channel <code>{escape(chan.name)}</code></h2>"]
    parts.append(_paragraphs(chan.description))
    facts = [
        ("Contract", escape(_contract_label(chan))),
        ("Kind", "request/reply" if chan.is_request else "event"),
        ("Producers", _list([escape(p) for p in chan.producers], "none declared")),
        ("Consumers", _list([escape(c) for c in chan.consumers])),
        ("Handlers", _list([f"<code>{escape(h)}</code>" for h in chan.handlers])),
    ]
    if chan.reply is not None:
        facts.append(("Reply", escape(f"{chan.reply.__contract_name__} v{chan.reply.__version__}")))
    durable = durable_extension(chan.contract)
    if durable is not None:
        facts.append(("Durable", escape(durable_summary(durable))))
    if chan.routes:
        routes = [
            f"{escape(r.kind)} <code>{escape(r.path)}</code> {escape(r.detail)}".strip()
            for r in chan.routes
        ]
        facts.append(("Edge routes", ", ".join(routes)))
    parts.append(
        "<table>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts) + "</table>"
    )

    schemas = document.get("components", {}).get("schemas", {})
    message = channel_message(document, chan.name)
    if message is None:
        parts.append('<p class="muted">Untyped channel: any JSON value.</p>')
    else:
        parts.append("<h2>Payload</h2>")
        parts.append(_table(rows(message.get("payload", {}), schemas)))
        parts.append(_examples(message))
    reply = channel_message(document, chan.name + REPLY_SUFFIX)
    if reply is not None:
        parts.append("<h2>Reply payload</h2>")
        parts.append('<p class="muted">What consumers of this channel return to the requester.</p>')
        parts.append(_table(rows(reply.get("payload", {}), schemas)))
        parts.append(_examples(reply))
    parts.append(
        '<p class="muted">Every message travels in the svcbus JSON envelope '
        "(id, contract name and version, reply channel, trace context); "
        "the payload above is its <code>b</code> field.</p>"
    )
    parts.append('<p><a href="../index.html">All channels</a></p>')
    return _page(f"{chan.name} · {system.title}", "\n".join(parts), root="../")


def _table(field_rows: list[FieldRow]) -> str:
    if not field_rows:
        return '<p class="muted">No fields.</p>'
    out = [
        "<table><tr><th>Field</th><th>Type</th><th>Required</th><th>Description</th>"
        "<th>Constraints</th></tr>"
    ]
    for row in field_rows:
        out.append(
            "<tr>"
            f"<td><code>{escape(row.path)}</code></td>"
            f"<td><code>{escape(row.type)}</code></td>"
            f"<td>{'yes' if row.required else 'no'}</td>"
            f"<td>{escape(row.description)}</td>"
            f"<td>{'<br>'.join(escape(c) for c in row.constraints)}</td>"
            "</tr>"
        )
    out.append("</table>")
    return "\n".join(out)


def _examples(message: dict[str, Any]) -> str:
    examples = message.get("examples") or []
    if not examples:
        return ""
    out = ["<h3>Examples</h3>"]
    for example in examples:
        text = json.dumps(example.get("payload"), indent=2, sort_keys=True, ensure_ascii=False)
        out.append(f"<pre>{escape(text)}</pre>")
    return "\n".join(out)
