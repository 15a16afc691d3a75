"""Durability in the docs: the AsyncAPI extension, HTML, Markdown, and `svc contracts check`."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from jsonschema import Draft7Validator
from jsonschema_specifications import REGISTRY as META_SCHEMAS

from svcbus import Contract, Durability, Service
from svcbus.docs import collect
from svcbus.docs.asyncapi import build_document
from svcbus.docs.compat import BREAK, OK, compare
from svcbus.docs.html import render_site
from svcbus.docs.markdown import render_markdown

DATA = Path(__file__).parent.parent / "data"


class PlaceOrder(Contract, channel="docs.orders.place", durable=Durability(replicas=3)):
    """An order to place."""

    sku: str


class PlainNote(Contract, channel="docs.notes"):
    """A channel at most once."""

    text: str


def document_of(contract: type[Contract]) -> tuple[Any, dict[str, Any]]:
    service = Service("orders")
    service.consumes(contract.__channel__)(lambda order: None)  # type: ignore[attr-defined]
    system = collect([service])
    return system, build_document(system)


def test_durable_channel_carries_its_settings_and_validates() -> None:
    system, document = document_of(PlaceOrder)
    durable = document["channels"]["docs.orders.place"]["x-svcbus-durable"]
    assert durable["delivery"] == "at-least-once"
    assert (durable["replicas"], durable["max_attempts"]) == (3, 5)
    assert durable["dead_letter"] == "docs.orders.place.dlq"
    schema = json.loads((DATA / "asyncapi-3.0.0.json").read_text())
    errors = list(Draft7Validator(schema, registry=META_SCHEMAS).iter_errors(document))
    assert errors == []
    markdown = render_markdown(system, document)
    assert "**Durable:** at least once: 5 attempts" in markdown
    assert "3 replica(s)" in markdown
    pages = render_site(system, document)
    assert any(
        "<th>Durable</th>" in page and "docs.orders.place.dlq" in page for page in pages.values()
    )


def test_a_plain_channel_has_no_durable_extension() -> None:
    _, document = document_of(PlainNote)
    assert "x-svcbus-durable" not in document["channels"]["docs.notes"]


def test_turning_durability_off_is_breaking_and_on_is_not() -> None:
    _, durable = document_of(PlaceOrder)
    # The same contract with durable= removed: only the extension goes.
    plain = copy.deepcopy(durable)
    del plain["channels"]["docs.orders.place"]["x-svcbus-durable"]
    off = [c for c in compare(durable, plain).changes if c.kind == "durability-removed"]
    assert [(c.consumers, c.producers) for c in off] == [(BREAK, BREAK)]
    assert compare(durable, plain).breaking
    on = [c for c in compare(plain, durable).changes if c.kind.startswith("durability")]
    assert [(c.kind, c.consumers, c.producers) for c in on] == [("durability-added", OK, OK)]
    assert not compare(plain, durable).breaking
