"""The console exporter's format, and the providers ``--trace`` installs (never globally here)."""

from __future__ import annotations

import io
import re

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

from svcbus import Bus, Context, Runtime, Service
from svcbus.errors import ConfigurationError
from svcbus.telemetry import ReadableSpanProcessor, build_provider

pytestmark = pytest.mark.anyio

LINE = re.compile(
    r"^(?P<trace>[0-9a-f]{8}) (?P<indent> *)(?P<service>\S+)  (?P<name>.+?) \.* +"
    r"(?P<ms>\d+\.\d\d) ms  (?P<status>ok|ERROR .+?)(?:  (?P<attrs>.*))?$"
)


def console(service: str = "svcbus-test") -> tuple[TracerProvider, io.StringIO]:
    out = io.StringIO()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(ReadableSpanProcessor(out))
    return provider, out


def parsed(out: io.StringIO) -> list[dict[str, str]]:
    lines = out.getvalue().splitlines()
    matches = [LINE.match(line) for line in lines]
    assert all(matches), lines
    return [m.groupdict() for m in matches if m]


def test_one_line_per_span_parents_first_indented_by_depth() -> None:
    provider, out = console()
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span(
        "WS receive /chat/{room}",
        kind=SpanKind.SERVER,
        attributes={
            "svcbus.service": "edge",
            "messaging.destination.name": "chat.receive",
            "messaging.message.id": "abc123",
        },
    ):
        with tracer.start_as_current_span("process chat.receive") as process:
            process.set_attribute("svcbus.service", "chat")
            with tracer.start_as_current_span(
                "send chat.posted", attributes={"messaging.destination.name": "chat.posted"}
            ):
                pass
            assert out.getvalue() == ""  # held until the trace is quiet here
        with tracer.start_as_current_span("GET") as failed:
            failed.set_attribute("http.response.status_code", 500)
            failed.set_attribute("error.type", "500")
            failed.set_status(Status(StatusCode.ERROR, "HTTP 500"))
    lines = parsed(out)
    assert [(line["indent"], line["service"], line["name"]) for line in lines] == [
        ("", "edge", "WS receive /chat/{room}"),
        ("  ", "chat", "process chat.receive"),
        ("    ", "chat", "send chat.posted"),  # service inherited from its parent
        ("  ", "edge", "GET"),
    ]
    assert len({line["trace"] for line in lines}) == 1
    assert lines[0]["attrs"] == "id=abc123 to=chat.receive"  # destination not in the name
    assert lines[2]["attrs"] is None  # ... and not repeated when it is
    assert lines[3]["status"] == "ERROR HTTP 500"
    assert lines[3]["attrs"] == "http=500"
    assert all(float(line["ms"]) >= 0 for line in lines)


def test_a_span_without_service_attribute_shows_the_resource_name() -> None:
    provider, out = console("svcbus-edge")
    with provider.get_tracer("test").start_as_current_span("request stats.get"):
        pass
    assert parsed(out)[0]["service"] == "svcbus-edge"


async def test_a_traced_bus_prints_send_and_process_of_one_trace() -> None:
    provider, out = console("svcbus-demo")
    service = Service("greeter")

    @service.consumes("tconsole.greet")
    async def greet(message: dict, ctx: Context) -> dict:
        if message.get("fail"):
            raise ValueError("no greeting today")
        return {"hello": message["name"]}

    tracer = provider.get_tracer("svcbus")
    url = "memory://tconsole"
    async with (
        Bus(url, tracer=tracer) as server,
        Runtime(service, server).running(),
        Bus(url, tracer=tracer) as client,
    ):
        assert await client.request("tconsole.greet", {"name": "ada"}) == {"hello": "ada"}
        with pytest.raises(Exception, match="no greeting"):
            await client.request("tconsole.greet", {"fail": True})
    provider.force_flush()
    lines = parsed(out)
    assert [(line["indent"], line["service"], line["name"]) for line in lines[:2]] == [
        ("", "svcbus-demo", "request tconsole.greet"),
        ("  ", "greeter", "process tconsole.greet"),
    ]
    assert lines[2]["name"] == "request tconsole.greet"
    assert lines[2]["status"].startswith("ERROR RemoteError")
    assert lines[3]["status"] == "ERROR ValueError: no greeting today"
    assert lines[3]["trace"] == lines[2]["trace"] != lines[0]["trace"]
    assert lines[3]["attrs"].startswith("id=")


def test_otlp_mode_batches_to_the_exporter_the_environment_configures(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:9/v1/traces")
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    provider = build_provider("otlp", "chat")
    try:
        assert provider.resource.attributes["service.name"] == "chat"
        processors = provider._active_span_processor._span_processors
        assert len(processors) == 1 and isinstance(processors[0], BatchSpanProcessor)
        exporter = processors[0]._batch_processor._exporter
        assert isinstance(exporter, OTLPSpanExporter)
        assert exporter._endpoint == "http://127.0.0.1:9/v1/traces"
    finally:
        provider.shutdown()


def test_otel_service_name_wins_and_bad_modes_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    provider = build_provider("console", "chat", stream=io.StringIO())
    assert provider.resource.attributes["service.name"] == "from-env"
    for mode in ("off", "jaeger"):
        with pytest.raises(ConfigurationError, match="--trace must be one of off, console, otlp"):
            build_provider(mode, "chat")


@pytest.mark.parametrize("mode", ["console", "otlp"])
def test_the_sampler_comes_from_the_standard_variables(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--trace console|otlp honour OTEL_TRACES_SAMPLER(_ARG), as docs/tracing.md says."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.01")
    sampler = build_provider(mode, "chat", stream=io.StringIO()).sampler
    assert sampler.get_description().startswith("ParentBased{root:TraceIdRatioBased{0.01}")
