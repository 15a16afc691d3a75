"""`svc docs` output: AsyncAPI 3.0.0 (validated against the official schema), HTML, Markdown."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import pytest
import sample_services
import yaml
from jsonschema import Draft7Validator
from jsonschema_specifications import REGISTRY as META_SCHEMAS
from typer.testing import CliRunner

from svcbus import Contract, Service, consumes
from svcbus.cli.app import app
from svcbus.docs import collect
from svcbus.docs.asyncapi import build_document, to_json, to_yaml
from svcbus.docs.compat import compare
from svcbus.docs.html import render_site
from svcbus.docs.markdown import render_markdown
from svcbus.undeclared import UndeclaredSendWarning, set_enabled, warn_if_undeclared

DATA = Path(__file__).resolve().parent.parent / "data"
SERVERS = ["nats://user:secret@nats.example:4222", "redis://cache.example:6379/0", "memory://"]


@pytest.fixture(scope="module")
def system() -> Any:
    return collect(sample_services.SERVICES, routes=sample_services.routes, servers=SERVERS)


@pytest.fixture(scope="module")
def document(system: Any) -> dict[str, Any]:
    return build_document(system)


@pytest.fixture(scope="module")
def validator() -> Draft7Validator:
    schema = json.loads((DATA / "asyncapi-3.0.0.json").read_text())
    # The meta-schemas the AsyncAPI schema may name by $id come from the
    # jsonschema-specifications package: nothing is fetched from the network.
    return Draft7Validator(schema, registry=META_SCHEMAS)


def errors_of(validator: Draft7Validator, document: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}"
        for e in validator.iter_errors(document)
    ]


# -- AsyncAPI ------------------------------------------------------------------


def test_asyncapi_validates_against_the_official_schema(validator, document) -> None:
    assert errors_of(validator, document) == []
    # and so do its JSON and YAML serialisations
    assert errors_of(validator, json.loads(to_json(document))) == []
    assert errors_of(validator, yaml.safe_load(to_yaml(document))) == []


def test_the_validator_does_catch_a_broken_document(validator, document) -> None:
    broken = json.loads(to_json(document))
    broken["operations"]["stats.receive.docsample.stats"]["action"] = "listen"
    del broken["info"]["version"]
    assert len(errors_of(validator, broken)) >= 2


def test_channels_operations_and_reply(document) -> None:
    channels, operations = document["channels"], document["operations"]
    assert set(channels) == {
        "docsample.audit",
        "docsample.posted",
        "docsample.receive",
        "docsample.stats",
        "docsample.stats.Reply",
    }
    assert channels["docsample.posted"]["address"] == "docsample.posted"
    assert channels["docsample.stats.Reply"]["address"] is None

    receive = operations["stats.receive.docsample.stats"]
    assert receive["action"] == "receive"
    assert receive["reply"]["channel"] == {"$ref": "#/channels/docsample.stats.Reply"}
    assert receive["reply"]["messages"] == [
        {"$ref": "#/channels/docsample.stats.Reply/messages/StatsReply"}
    ]
    assert receive["reply"]["address"]["location"] == "$message.header#/rc"
    # declared producers: produces= on @consumes, service.produces(), the edge's routes
    assert operations["chat.send.docsample.posted"]["action"] == "send"
    assert operations["chat.send.docsample.audit"]["action"] == "send"
    assert operations["edge.send.docsample.stats"]["reply"] == receive["reply"]
    assert "messages" not in channels["docsample.audit"]  # untyped


def test_schemas_are_lifted_into_components_and_refs_resolve(document) -> None:
    text = to_json(document)
    assert '"$defs"' not in text
    schemas = document["components"]["schemas"]
    assert {"Author", "Mood", "Posted", "StatsQuery", "StatsReply", "SvcbusEnvelope"} <= set(
        schemas
    )
    for ref in set(re.findall(r'"\$ref": "([^"]+)"', text)):
        node: Any = document
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
        assert node, ref
    posted = schemas["Posted"]
    assert posted["properties"]["author"] == {"$ref": "#/components/schemas/Author"}
    assert posted["properties"]["attachment"]["anyOf"][0]["format"] == "base64url"  # bytes
    assert schemas["Mood"]["enum"] == ["happy", "sad"]
    assert "b" not in schemas["SvcbusEnvelope"]["properties"]


def test_examples_from_the_model_and_from_field_examples(document) -> None:
    messages = document["components"]["messages"]
    assert messages["Posted"]["examples"][0]["payload"]["author"] == {"name": "ada", "id": 7}
    # StatsQuery has no model examples: one is assembled from Field(examples=...)
    assert messages["StatsQuery"]["examples"] == [
        {"name": "example-1", "payload": {"room": "lobby", "window": "day"}}
    ]
    assert messages["Posted"]["x-svcbus-version"] == 2


def test_servers_have_no_credentials_and_channels_name_their_transport(document) -> None:
    servers = document["servers"]
    assert {s["protocol"] for s in servers.values()} == {"nats", "redis", "memory"}
    assert "secret" not in to_json(document)
    assert servers["nats"]["host"] == "nats.example:4222"
    posted = document["channels"]["docsample.posted"]
    assert posted["x-svcbus-nats"]["subject"] == "svcbus.ch.docsample.posted"
    assert posted["x-svcbus-redis"] == {"list": "svcbus:c:docsample.posted"}


def test_edge_routes_are_documented(document) -> None:
    assert document["channels"]["docsample.receive"]["x-svcbus-routes"] == [
        {"detail": "receive", "kind": "websocket", "path": "/ws/chat"}
    ]
    assert document["channels"]["docsample.stats"]["x-svcbus-routes"] == [
        {"detail": "GET", "kind": "http", "path": "/stats/{room}"}
    ]


def test_real_edge_routes_table() -> None:
    edge = pytest.importorskip("svcbus.edge")
    table = edge.Routes(
        edge.WebSocketRoute("/chat/{room}", "docsample.ws"),
        edge.HttpRoute("/api/stats/{room}", "docsample.stats", methods=["GET", "POST"]),
    )
    system = collect([sample_services.stats], routes=table)
    ws = system.channels["docsample.ws.receive"]
    assert ws.producers == ["edge"] and ws.routes[0].kind == "websocket"
    assert {"docsample.ws.connect", "docsample.ws.disconnect"} <= set(system.channels)
    assert system.channels["docsample.stats"].routes[0].detail == "GET, POST"


def test_output_is_deterministic(system, document) -> None:
    again = build_document(
        collect(
            list(reversed(sample_services.SERVICES)),
            routes=sample_services.routes,
            servers=SERVERS,
        )
    )
    assert to_json(again) == to_json(document)
    assert to_yaml(again) == to_yaml(document)
    assert render_markdown(system, document) == render_markdown(system, again)


# -- HTML ----------------------------------------------------------------------


def test_html_site_pages_and_escaping(system, document) -> None:
    site = render_site(system, document)
    assert set(site) == {
        "index.html",
        "channels/docsample.audit.html",
        "channels/docsample.posted.html",
        "channels/docsample.receive.html",
        "channels/docsample.stats.html",
    }
    for page in site.values():
        assert "<script" not in page  # descriptions are text, never markup
        assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert "https://" not in page
    posted = site["channels/docsample.posted.html"]
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in posted
    assert "The post &lt;b&gt;text&lt;/b&gt;." in posted
    # the schema as a table, nested fields expanded
    for cell in ("<code>author.name</code>", "<code>bytes | null</code>", "max length 32"):
        assert cell in posted
    assert "one of: &quot;happy&quot;, &quot;sad&quot;" in posted
    assert "&quot;lobby&quot;" in posted  # the example
    stats = site["channels/docsample.stats.html"]
    assert "Reply payload" in stats and "<code>top[].name</code>" in stats


def test_html_index_has_the_svg_diagram(system, document) -> None:
    index = render_site(system, document)["index.html"]
    svg = index[index.index("<svg") : index.index("</svg>") + 6]
    assert svg.count('class="service"') == 3  # chat, edge, stats
    assert svg.count('class="channel"') == 4
    assert svg.count('class="edge edge-produce"') == 4  # chat x2, edge x2
    assert svg.count('class="edge edge-consume"') == 3
    assert svg.count('class="edge edge-reply"') == 1
    assert 'href="channels/docsample.posted.html"' in svg
    assert "Chat rooms &lt;em&gt;and&lt;/em&gt; posts." in index


# -- Markdown ------------------------------------------------------------------


def test_markdown(system, document) -> None:
    md = render_markdown(system, document)
    assert md.startswith("# chat, stats\n")
    assert "```mermaid\nflowchart LR" in md
    assert "s0 -->|sends| c1" in md  # chat sends docsample.posted
    assert "s2 -.->|replies| c3" in md  # stats answers docsample.stats
    assert '<a id="channel-docsample.posted"></a>' in md
    assert "[`docsample.posted`](#channel-docsample.posted)" in md
    assert "<script>" not in md and "\\<script\\>" in md
    assert "| `author.id` | `integer` | yes | User id. | \\>= 1 |" in md
    assert "| `attachment` | `bytes \\| null` | no |" in md


# -- the CLI -------------------------------------------------------------------


def test_svc_docs_writes_all_formats_and_check_detects_drift(tmp_path: Path) -> None:
    runner = CliRunner()
    args = [
        "docs",
        "sample_services:chat",
        "sample_services:stats",
        "--routes",
        "sample_services:routes",
        "--out",
        str(tmp_path),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == [
        "README.md",
        "asyncapi.json",
        "asyncapi.yaml",
        "html/channels/docsample.audit.html",
        "html/channels/docsample.posted.html",
        "html/channels/docsample.receive.html",
        "html/channels/docsample.stats.html",
        "html/index.html",
    ]
    assert runner.invoke(app, [*args, "--check"]).exit_code == 0
    (tmp_path / "README.md").write_text("edited by hand\n")
    (tmp_path / "html/channels/docsample.gone.html").write_text("old channel\n")
    result = runner.invoke(app, [*args, "--check"])
    assert result.exit_code == 1
    assert "README.md" in result.output and "docsample.gone.html" in result.output
    assert runner.invoke(app, args).exit_code == 0
    assert not (tmp_path / "html/channels/docsample.gone.html").exists()


def test_svc_docs_single_format_and_bad_input(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        app, ["docs", "sample_services:stats", "-f", "markdown", "-o", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert [p.name for p in tmp_path.iterdir()] == ["README.md"]
    bad = runner.invoke(app, ["docs", "sample_services:stats", "-f", "pdf", "-o", str(tmp_path)])
    assert bad.exit_code == 2 and "unknown --format pdf" in bad.output
    missing = runner.invoke(app, ["docs", "no_such_module_here", "-o", str(tmp_path)])
    assert missing.exit_code == 2 and "no_such_module_here" in missing.output
    server = runner.invoke(
        app, ["docs", "sample_services:stats", "--server", "amqp://x", "-o", str(tmp_path)]
    )
    assert server.exit_code == 2 and "unknown scheme" in server.output


# -- undeclared sends ------------------------------------------------------------


def test_warn_if_undeclared() -> None:
    service = Service("warner")

    @consumes("docsample.warn.in", produces=["docsample.warn.declared"])
    def handler(msg: dict) -> None: ...

    service.add(handler)
    service.produces("docsample.warn.also")
    set_enabled(False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert not warn_if_undeclared(service, "docsample.warn.other")  # off: silent
        set_enabled(True)
        assert not warn_if_undeclared(service, "docsample.warn.declared")
        assert not warn_if_undeclared(service, "docsample.warn.also")
        assert not warn_if_undeclared(service, "edge.abc!def")  # reply channels
        assert not warn_if_undeclared(None, "docsample.warn.other")
        with pytest.warns(UndeclaredSendWarning, match=r"produces=\['docsample.warn.other'\]"):
            assert warn_if_undeclared(service, "docsample.warn.other")
        assert not warn_if_undeclared(service, "docsample.warn.other")  # once only
    finally:
        set_enabled(None)


class Node(Contract):
    """A tree node: a recursive model."""

    name: str
    children: list[Node] = []


class Tree(Contract, channel="docsample.tree"):
    root: Node
    pair: tuple[int, str] | None = None


def test_recursive_models_and_tuples(validator) -> None:
    service = Service("trees")

    @service.consumes("docsample.tree")
    def on_tree(msg: Tree) -> None: ...

    system = collect([service])
    document = build_document(system)
    assert errors_of(validator, document) == []
    page = render_site(system, document)["channels/docsample.tree.html"]
    assert "<code>root.children</code>" in page and "<code>list[Node]</code>" in page
    assert "<code>tuple[integer, string] | null</code>" in page
    assert compare(document, document).changes == []
