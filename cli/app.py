"""The ``svc`` command line: run services and poke the bus."""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
from typing import Annotated, Any, NoReturn

import anyio
import typer
from rich.console import Console
from rich.markup import escape

from svcbus import __version__
from svcbus.errors import InvalidChannelName, SvcbusError
from svcbus.redact import redact_text, redact_url

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


def say(label: str, text: str, *, console: Console | None = None) -> None:
    """Print ``label`` (rich markup) then ``text`` verbatim.

    ``text`` carries user input, patterns and install hints (``^[a-z]``,
    ``svcbus[nats]``): rich would take their square brackets for markup and
    drop them, so it is always escaped.
    """
    (console or err).print(f"{label} {escape(text)}" if label else escape(text), highlight=False)


def fail(message: str) -> NoReturn:
    """Print a one-line error and exit with status 2 (usage error).

    Any URL in ``message`` is shown without its credentials: errors often
    quote the layer URL, and a wrong one still holds a real password.
    """
    say("[bold red]error:[/]", redact_text(message))
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


def setup_logging(level: str, log_format: str = "text") -> None:
    """Log to stderr: a compact, greppable line (text) or one JSON object per line (json)."""
    from .logs import configure

    try:
        configure(level, log_format)
    except ValueError as exc:
        fail(str(exc))


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


HealthPortOption = Annotated[
    int | None,
    typer.Option(
        "--health-port",
        min=0,
        max=65535,
        help="Serve /healthz, /readyz and /metrics on this port (0: any free port). "
        "With --workers N, worker k listens on PORT+k.",
        show_default=False,
    ),
]
HealthHostOption = Annotated[
    str,
    typer.Option("--health-host", help="Address for --health-port (0.0.0.0 in a container)."),
]
LogFormatOption = Annotated[
    str,
    typer.Option(
        "--log-format",
        envvar="SVCBUS_LOG_FORMAT",
        metavar="[text|json]",
        help="text (for people) or json (one object per line, for log collectors).",
    ),
]
LoopOption = Annotated[
    str,
    typer.Option(
        "--loop",
        envvar="SVCBUS_LOOP",
        metavar="[auto|asyncio|uvloop]",
        help="Event loop: uvloop (the uvloop extra) is faster; auto takes it when it is "
        "installed, as uvicorn does, else asyncio.",
    ),
]

LOOPS = ("auto", "asyncio", "uvloop")


def event_loop(choice: str) -> str:
    """The event loop ``--loop`` asks for, ``asyncio`` or ``uvloop``; fails clearly if missing."""
    if choice not in LOOPS:
        fail(f"--loop {choice!r}: use one of {', '.join(LOOPS)}")
    if choice == "asyncio":
        return choice
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if choice == "uvloop":
            fail("--loop uvloop needs uvloop: pip install 'svcbus[uvloop]' (or --loop asyncio)")
        return "asyncio"
    return "uvloop"


ReloadOption = Annotated[
    bool,
    typer.Option(
        "--reload",
        help="Development: restart when a .py file under the current directory changes "
        "(needs the reload extra).",
    ),
]


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
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Worker processes: a supervisor restarts any that dies and stops all on SIGTERM.",
        ),
    ] = 1,
    reload: ReloadOption = False,
    health_port: HealthPortOption = None,
    health_host: HealthHostOption = "127.0.0.1",
    shutdown_timeout: Annotated[
        float, typer.Option(min=0, help="Seconds in-flight messages get to finish on SIGTERM.")
    ] = 10.0,
    log_level: LogLevelOption = "info",
    log_format: LogFormatOption = "text",
    trace: TraceOption = "off",
    loop: LoopOption = "auto",
) -> None:
    """Run a service's consumers until SIGINT/SIGTERM (in-flight messages finish)."""
    from svcbus import Runtime, open_layer
    from svcbus.service import load_service

    setup_logging(log_level, log_format)
    url = layer_url(layer)
    check_service_ref(service)
    loop = event_loop(loop)
    if workers > 1 or reload:
        supervise_run(
            service,
            url,
            workers=workers,
            reload=reload,
            health_port=health_port,
            grace=shutdown_timeout + 5,
            args=[
                f"--concurrency={concurrency}",
                f"--shutdown-timeout={shutdown_timeout}",
                f"--log-level={log_level}",
                f"--log-format={log_format}",
                f"--trace={trace}",
                f"--health-host={health_host}",
                f"--loop={loop}",
                *([f"--dead-letter={dead_letter}"] if dead_letter else []),
            ],
        )
        return
    try:
        svc = load_service(service)
        if trace != "off":
            from svcbus.telemetry import setup_tracing

            setup_tracing(trace, svc.name)
        metrics = None
        if health_port is not None:
            from svcbus import metrics as metrics_module

            if metrics_module.available():
                metrics = metrics_module.Metrics()
                svc = metrics.instrument(svc)
        runtime = Runtime(
            svc,
            open_layer(url),
            concurrency=concurrency,
            dead_letter=dead_letter,
            shutdown_timeout=shutdown_timeout,
        )
        if metrics is not None:
            metrics.watch_runtime(runtime)
    except SvcbusError as exc:
        fail(str(exc))
    worker = os.environ.get("SVCBUS_WORKER")  # set by the --workers supervisor
    banner = (
        f"{svc.name}{f' (worker {worker})' if worker else ''}: "
        f"consuming {', '.join(svc.channels) or '(nothing)'} on {redact_url(url)} "
        f"(event loop: {loop})"
    )
    # Until the runtime watches SIGTERM itself, a stop request (a supervisor
    # draining a worker that is still connecting) ends the process quietly:
    # nothing has been taken from the layer yet.
    signal.signal(signal.SIGTERM, _stop_while_starting)
    try:
        anyio.run(
            _serve_runtime,
            runtime,
            banner,
            health_host,
            health_port,
            metrics,
            backend_options={"use_uvloop": loop == "uvloop"},
        )
    except SvcbusError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(
            f"cannot listen on {health_host}:{health_port}: {exc.strerror or exc}; "
            "try another --health-port (0 picks a free one)"
        )
    except KeyboardInterrupt:
        pass


def _stop_while_starting(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


async def _serve_runtime(
    runtime: Any, banner: str, host: str, port: int | None, metrics: Any
) -> None:
    """Run the runtime (with the health server beside it when a port is given)."""
    from contextlib import AsyncExitStack

    async with AsyncExitStack() as stack:
        if port is not None:
            from svcbus.health import HealthServer, runtime_ready

            server = HealthServer(
                host,
                port,
                ready=runtime_ready(runtime),
                metrics=metrics.render if metrics is not None else None,
            )
            await stack.enter_async_context(server)
            # stdout, flushed: scripts (and tests) read the port from it.
            print(f"health on http://{host}:{server.port}/healthz", flush=True)
        failed: list[SvcbusError] = []

        async def run_runtime() -> None:
            # Its errors (an unreachable layer, a wrong password) leave this task
            # group as themselves, not wrapped in an exception group: one line.
            try:
                await runtime.run()
            except SvcbusError as exc:
                failed.append(exc)
                tg.cancel_scope.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(run_runtime)
            await runtime.started.wait()
            # Everything made so far (modules, contracts, connections) lives as long
            # as the process: keep it out of every later full gc scan.
            from svcbus.startup_gc import tune_for_serving

            tune_for_serving()
            say("[green]svc run[/]", banner)
        if failed:
            raise failed[0]


def supervise_run(
    service: str,
    url: str,
    *,
    workers: int,
    reload: bool,
    health_port: int | None,
    grace: float,
    args: list[str],
) -> None:
    """``svc run`` as a supervisor of worker processes (``--workers``, ``--reload``)."""
    from pathlib import Path

    from .supervisor import Supervisor, worker_command

    def command(index: int) -> list[str]:
        port = (
            [] if health_port is None else [f"--health-port={health_port and health_port + index}"]
        )
        return worker_command(["run", service, f"--layer={url}", *args, *port])

    say(
        "[green]svc run[/]",
        f"{service}: {workers} worker{'s' if workers > 1 else ''} on {url}"
        + (" (reloading on changes)" if reload else ""),
    )
    supervisor = Supervisor(command, workers, grace=grace, watch=[Path.cwd()] if reload else ())
    raise typer.Exit(supervisor.run())


def check_service_ref(ref: str) -> None:
    """Fail in one line, with the fix, on a file path where a module name belongs."""
    module, _, attribute = ref.partition(":")
    if module.endswith(".py") or "/" in module or "\\" in module:
        name = module.replace("\\", "/").rsplit("/", 1)[-1].removesuffix(".py")
        suggestion = (
            f"`svc run {name}:{attribute}`"
            if attribute
            else f"`svc run {name}` (or `svc run {name}:service`)"
        )
        fail(
            f"{ref!r} is a file path, and svc imports modules: run {suggestion} "
            "from the directory that contains it (no .py, no path)"
        )


# Commands that live in modules of their own; each module has `register(app)`
# and imports its heavy dependencies inside the command, so `svc --help` stays fast.
COMMAND_MODULES: tuple[str, ...] = ("messages", "edge", "docs", "demo", "status", "dlq")

for _name in COMMAND_MODULES:
    importlib.import_module(f"svcbus.cli.{_name}").register(app)


def main() -> None:
    """Entry point of the ``svc`` console script."""
    from .metavars import make_readable

    try:
        make_readable(typer.main.get_command(app))(prog_name="svc")
    except SvcbusError as exc:  # anything not caught by a command: still one line
        say("[bold red]error:[/]", redact_text(str(exc)))
        sys.exit(2)
