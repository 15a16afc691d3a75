"""The ``svc`` command line: run services and poke the bus."""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from typing import Annotated, Any, NoReturn

import anyio
import typer
from rich.console import Console

from svcbus import __version__
from svcbus.errors import InvalidChannelName, SvcbusError
from svcbus.redact import RedactingFilter, redact_text, redact_url

DEFAULT_LAYER = "memory://"

err = Console(stderr=True, soft_wrap=True)
out = Console()

app = typer.Typer(
    name="svc",
    help="svcbus: typed service-to-service messaging. Run services, poke the bus, generate docs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

LayerOption = Annotated[
    str | None,
    typer.Option(
        "--layer",
        "-l",
        help="Layer URL: memory://, nats://host:4222, redis://host:6379/0. "
        "Default: $SVCBUS_LAYER, else memory://.",
        show_default=False,
    ),
]

LogLevelOption = Annotated[str, typer.Option(help="debug, info, warning, error.")]

TraceOption = Annotated[
    str,
    typer.Option(
        "--trace",
        envvar="SVCBUS_TRACE",
        metavar="[off|console|otlp]",
        help="Trace spans: print them to stderr (console) or export them over OTLP/HTTP "
        "(OTEL_EXPORTER_OTLP_* variables). Needs the tracing extra.",
    ),
]


def layer_url(given: str | None, *, across_processes: bool = False) -> str:
    """The layer URL from the option, else ``SVCBUS_LAYER``, else the embedded default."""
    url = given or os.environ.get("SVCBUS_LAYER") or DEFAULT_LAYER
    if across_processes and url.startswith("memory:"):
        err.print(
            "[yellow]note:[/] memory:// reaches only this process; pass --layer nats://... or "
            "redis://... (or set SVCBUS_LAYER) to reach a running service",
            highlight=False,
        )
    return url


def fail(message: str) -> NoReturn:
    """Print a one-line error and exit with status 2 (usage error).

    Any URL in ``message`` is shown without its credentials: errors often
    quote the layer URL, and a wrong one still holds a real password.
    """
    err.print(f"[bold red]error:[/] {redact_text(message)}", highlight=False)
    raise typer.Exit(2)


def parse_json(text: str, what: str = "message") -> Any:
    """Parse a JSON argument or fail with a hint."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"{what} is not valid JSON ({exc.msg} at column {exc.colno}): {text!r}")


def check_channel(channel: str) -> None:
    """Fail early, in one line, on a bad channel name."""
    from svcbus.names import validate_channel

    try:
        validate_channel(channel)
    except InvalidChannelName as exc:
        fail(str(exc))


def setup_logging(level: str) -> None:
    """Log to stderr in a compact, greppable format, with credentials in URLs redacted."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())


def version_callback(value: bool) -> None:
    if value:
        out.print(f"svcbus {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=version_callback, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """svcbus command line."""


@app.command()
def run(
    service: Annotated[
        str, typer.Argument(help="MODULE or MODULE:SERVICE, e.g. services.example_stats")
    ],
    layer: LayerOption = None,
    concurrency: Annotated[
        int, typer.Option(min=1, help="Messages each consumer handles at once.")
    ] = 10,
    dead_letter: Annotated[
        str | None, typer.Option(help="Channel that receives messages no consumer could take.")
    ] = None,
    log_level: LogLevelOption = "info",
    trace: TraceOption = "off",
) -> None:
    """Run a service's consumers until SIGINT/SIGTERM (in-flight messages finish)."""
    from svcbus import Runtime, load_service, open_layer

    setup_logging(log_level)
    url = layer_url(layer)
    try:
        svc = load_service(service)
        if trace != "off":
            from svcbus.telemetry import setup_tracing

            setup_tracing(trace, svc.name)
        runtime = Runtime(svc, open_layer(url), concurrency=concurrency, dead_letter=dead_letter)
    except SvcbusError as exc:
        fail(str(exc))
    err.print(
        f"[green]svc run[/] {svc.name}: consuming {', '.join(svc.channels) or '(nothing)'} "
        f"on {redact_url(url)}",
        highlight=False,
    )
    try:
        anyio.run(runtime.run)
    except SvcbusError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        pass


# Commands that live in modules of their own; each module has `register(app)`
# and imports its heavy dependencies inside the command, so `svc --help` stays fast.
COMMAND_MODULES: tuple[str, ...] = ("messages", "edge", "docs", "demo")

for _name in COMMAND_MODULES:
    importlib.import_module(f"svcbus.cli.{_name}").register(app)


def main() -> None:
    """Entry point of the ``svc`` console script."""
    try:
        app()
    except SvcbusError as exc:  # anything not caught by a command: still one line
        err.print(f"[bold red]error:[/] {redact_text(str(exc))}", highlight=False)
        sys.exit(2)
