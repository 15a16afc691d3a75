"""``svc edge``: serve WebSocket and HTTP routes onto the bus with uvicorn."""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer

from svcbus.errors import SvcbusError
from svcbus.redact import redact_url

from .app import (
    HealthHostOption,
    HealthPortOption,
    LayerOption,
    LogFormatOption,
    LogLevelOption,
    LoopOption,
    ReloadOption,
    TraceOption,
    event_loop,
    fail,
    layer_url,
    say,
    setup_logging,
)


def edge(
    routes: Annotated[
        str,
        typer.Argument(
            help="module:attribute naming a svcbus.edge.Routes table (or an EdgeApp), "
            "e.g. services.example_chat.routing:routes"
        ),
    ],
    bind: Annotated[
        str, typer.Option("--bind", "-b", help="HOST:PORT to listen on.")
    ] = "127.0.0.1:8000",
    layer: LayerOption = None,
    workers: Annotated[
        int, typer.Option(min=1, help="Worker processes (each holds its own connections).")
    ] = 1,
    reload: ReloadOption = False,
    health_port: HealthPortOption = None,
    health_host: HealthHostOption = "127.0.0.1",
    log_level: LogLevelOption = "info",
    log_format: LogFormatOption = "text",
    trace: TraceOption = "off",
    loop: LoopOption = "auto",
    http: Annotated[
        str,
        typer.Option(
            "--http",
            envvar="SVCBUS_HTTP",
            metavar="[auto|h11|httptools]",
            help="HTTP parser: httptools (in the edge extra) costs about half of h11's CPU "
            "per request; auto takes it when it is installed, as uvicorn does, else h11.",
        ),
    ] = "auto",
) -> None:
    """Serve ROUTES as an edge: WebSockets and HTTP in, channel messages out.

    Browsers connect to the edge; consumers anywhere on the layer answer them.
    Use a shared layer (nats://, redis://) so services in other processes are
    reached; memory:// only reaches consumers in this process.
    """
    setup_logging(log_level, log_format)
    if reload:
        from .supervisor import reload_command

        raise typer.Exit(reload_command("edge"))
    try:
        import uvicorn
    except ImportError:
        fail("svc edge needs uvicorn: pip install 'svcbus[edge]'")
    from svcbus.edge import load_edge, uvicorn_options
    from svcbus.edge.server import (
        EDGE_SERVICE_NAME,
        LAYER_ENV,
        ROUTES_ENV,
        TRACE_ENV,
        http_parser,
    )

    host, sep, port_text = bind.rpartition(":")
    if not sep or not port_text.isdigit():
        fail(f"--bind {bind!r} must be HOST:PORT, e.g. 127.0.0.1:8000")
    host = host.strip("[]") or "127.0.0.1"
    port = int(port_text)
    url = layer_url(layer)
    loop = event_loop(loop)
    try:
        http = http_parser(http)
    except SvcbusError as exc:
        fail(f"--http: {exc}")
    if url.startswith("memory:") and workers > 1:
        say(
            "[yellow]note:[/]",
            "with memory:// each worker has its own bus; use nats:// or "
            "redis:// so all workers reach the same consumers and groups",
        )
    if health_port is not None and workers > 1:
        fail(
            "--health-port serves one process: run one `svc edge --workers 1` per "
            "container (or process) and probe each, or drop --health-port"
        )
    _check_port(host, port)
    try:
        if trace != "off" and workers == 1:
            from svcbus.telemetry import setup_tracing

            setup_tracing(trace, EDGE_SERVICE_NAME)
        app = load_edge(routes, url)
    except SvcbusError as exc:
        fail(str(exc))
    say(
        "[green]svc edge[/]",
        f"{routes} on http://{host}:{port_text} (layer {redact_url(url)}, "
        f"{workers} worker{'s' if workers > 1 else ''}, event loop: {loop}, HTTP: {http})",
    )
    options = uvicorn_options(app, http)
    # log_config=None: uvicorn's lines go through svcbus's handler, in one format.
    common = {
        "host": host,
        "port": port,
        "log_level": log_level.lower(),
        "log_config": None,
        "loop": loop,
        **options,
    }
    if workers == 1:
        from .demo import _server_class  # exits 0 after a graceful SIGTERM, like svc demo

        served = with_operations(app, health_host, health_port)
        _server_class()(uvicorn.Config(served, **common)).run()
        return
    # Worker processes re-create the app from the environment (uvicorn imports it
    # by name in each process, so it cannot be passed as an object).
    os.environ[ROUTES_ENV] = routes
    os.environ[LAYER_ENV] = url
    os.environ[TRACE_ENV] = trace  # each worker sets up its own tracer provider
    uvicorn.run("svcbus.edge.server:app_from_env", factory=True, workers=workers, **common)


def with_operations(app: Any, host: str, port: int | None) -> Any:
    """``app`` with metrics counting and a health server on ``port`` (when given)."""
    if port is None:
        return app
    from svcbus import metrics as metrics_module
    from svcbus.health import EdgeHealth

    served: Any = app
    render = None
    if metrics_module.available():
        metrics = metrics_module.Metrics()
        served = metrics_module.EdgeMetrics(app, metrics)
        render = metrics.render

    def listening(bound: int) -> None:
        # stdout, flushed: scripts (and tests) read the port from it.
        print(f"health on http://{host}:{bound}/healthz", flush=True)

    return EdgeHealth(served, app, host, port, metrics=render, on_listening=listening)


def _check_port(host: str, port: int) -> None:
    """Fail in one line when the edge's port is taken (uvicorn would print a traceback-ish log)."""
    from .demo import listen

    try:
        listen(host, port).close()
    except OSError as exc:
        fail(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; "
            "try another port with --bind HOST:PORT"
        )


def register(app: typer.Typer) -> None:
    """Add ``svc edge`` to the ``svc`` command line."""
    app.command(name="edge")(edge)
