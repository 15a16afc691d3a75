"""@consumes and Service: message types resolved and checked at import time."""

from __future__ import annotations

import types
from typing import Any

import pytest

from svcbus import Contract, ContractError, Service, consumes
from svcbus.consumer import consumers_of
from svcbus.errors import ConfigurationError
from svcbus.service import load_service


class Answer(Contract):
    value: int


class Question(Contract, channel="ktest.ask", reply=Answer):
    text: str


class Other(Contract, channel="ktest.other"):
    x: int


class Unbound(Contract):
    y: int


def test_type_comes_from_the_annotation():
    @consumes("ktest.ask")
    async def ask(q: Question) -> Answer:
        return Answer(value=1)

    (consumer,) = consumers_of(ask)
    assert consumer.message_type is Question
    assert consumer.reply_type is Answer
    assert consumer.is_async and not consumer.takes_context


def test_type_comes_from_the_registry_without_annotation():
    @consumes("ktest.ask")
    async def ask(q, ctx):
        return None

    (consumer,) = consumers_of(ask)
    assert consumer.message_type is Question
    assert consumer.reply_type is Answer  # from Question's reply=
    assert consumer.takes_context


def test_untyped_channel_takes_any_json():
    @consumes("ktest.free")
    async def free(message: dict[str, Any]) -> None: ...

    assert consumers_of(free)[0].message_type is Any


def test_unbound_contract_fits_any_channel():
    @consumes("ktest.unbound")
    async def f(message: Unbound) -> None: ...

    assert consumers_of(f)[0].message_type is Unbound


def test_mismatch_between_registry_and_annotation_is_an_import_time_error():
    with pytest.raises(ContractError, match=r"ktest\.ask.*Question.*Unbound"):

        @consumes("ktest.ask")
        async def wrong(q: Unbound) -> None: ...

    with pytest.raises(ContractError, match=r"contract of 'ktest\.other'"):

        @consumes("ktest.ask")
        async def wrong_channel(q: Other) -> None: ...

    with pytest.raises(ContractError, match="annotates its message as"):

        @consumes("ktest.ask")
        async def wrong_type(q: int) -> None: ...


def test_bad_signatures_and_channels():
    with pytest.raises(ContractError, match="takes 3 parameters"):

        @consumes("ktest.free")
        async def three(a, b, c): ...

    with pytest.raises(ContractError, match="process-specific"):

        @consumes("edge.ab!cd")
        async def specific(m): ...

    with pytest.raises(Exception, match="wildcard"):

        @consumes("ktest.*")
        async def wild(m): ...


def test_plain_def_is_accepted_for_the_sync_runtime():
    @consumes("ktest.free")
    def sync(message):
        return None

    assert consumers_of(sync)[0].is_async is False


def test_the_decorated_function_stays_callable():
    @consumes("ktest.free")
    def double(message):
        return message * 2

    assert double(2) == 4


def test_service_collects_consumers_and_hooks():
    service = Service("svc-test")

    @service.consumes("ktest.ask", concurrency=3, produces=["ktest.other"])
    async def ask(q: Question) -> Answer:
        return Answer(value=len(q.text))

    @service.on_startup
    async def boot() -> None: ...

    service.produces("ktest.free")
    assert service.channels == ["ktest.ask"]
    assert service.consumers[0].concurrency == 3
    assert service.consumers[0].produces == ("ktest.other",)
    assert service.startup_hooks == [boot]
    assert "ktest.free" in service.produced


def _module(name: str, **attrs: Any) -> types.ModuleType:
    import sys

    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


def test_load_service_finds_module_level_consumers():
    @consumes("ktest.free")
    async def handler(m): ...

    _module("ktest_mod_a", handler=handler)
    service = load_service("ktest_mod_a")
    assert service.name == "ktest_mod_a" and service.channels == ["ktest.free"]


def test_load_service_picks_the_single_service_or_the_named_one():
    one, two = Service("one"), Service("two")
    _module("ktest_mod_b", one=one)
    assert load_service("ktest_mod_b") is one
    _module("ktest_mod_c", one=one, two=two)
    with pytest.raises(ConfigurationError, match="several services"):
        load_service("ktest_mod_c")
    assert load_service("ktest_mod_c:two") is two
    with pytest.raises(ConfigurationError, match="no attribute 'three'"):
        load_service("ktest_mod_c:three")


def test_load_service_errors_say_what_to_do():
    with pytest.raises(ConfigurationError, match="no module named 'ktest_missing'"):
        load_service("ktest_missing")
    _module("ktest_mod_empty")
    with pytest.raises(ConfigurationError, match="nothing to run"):
        load_service("ktest_mod_empty")
