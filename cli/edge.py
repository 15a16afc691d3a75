"""``svc edge``: serve WebSocket and HTTP routes onto the bus with uvicorn."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from svcbus.errors import SvcbusError
from svcbus.redact import redact_url

from .app import LayerOption, LogLevelOption, TraceOption, err, fail, layer_url


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
    log_level: LogLevelOption = "info",
    trace: TraceOption = "off",
) -> None:
    """Serve ROUTES as an edge: WebSockets and HTTP in, channel messages out.

    Browsers connect to the edge; consumers anywhere on the layer answer them.
    Use a shared layer (nats://, redis://) so services in other processes are
    reached; memory:// only reaches consumers in this process.
    """
    try:
        import uvicorn
    except ImportError:
        fail("svc edge needs uvicorn: pip install 'svcbus[edge]'")
    from svcbus.edge import load_edge, uvicorn_options
    from svcbus.edge.server import EDGE_SERVICE_NAME, LAYER_ENV, ROUTES_ENV, TRACE_ENV

    host, sep, port_text = bind.rpartition(":")
    if not sep or not port_text.isdigit():
        fail(f"--bind {bind!r} must be HOST:PORT, e.g. 127.0.0.1:8000")
    host = host.strip("[]") or "127.0.0.1"
    url = layer_url(layer)
    if url.startswith("memory:") and workers > 1:
        err.print(
            "[yellow]note:[/] with memory:// each worker has its own bus; use nats:// or "
            "redis:// so all workers reach the same consumers and groups",
            highlight=False,
        )
    try:
        if trace != "off" and workers == 1:
            from svcbus.telemetry import setup_tracing

            setup_tracing(trace, EDGE_SERVICE_NAME)
        app = load_edge(routes, url)
    except SvcbusError as exc:
        fail(str(exc))
    err.print(
        f"[green]svc edge[/] {routes} on http://{host}:{port_text} (layer {redact_url(url)}, "
        f"{workers} worker{'s' if workers > 1 else ''})",
        highlight=False,
    )
    options = uvicorn_options(app)
    common = {"host": host, "port": int(port_text), "log_level": log_level.lower(), **options}
    if workers == 1:
        uvicorn.run(app, **common)
        return
    # Worker processes re-create the app from the environment (uvicorn imports it
    # by name in each process, so it cannot be passed as an object).
    os.environ[ROUTES_ENV] = routes
    os.environ[LAYER_ENV] = url
    os.environ[TRACE_ENV] = trace  # each worker sets up its own tracer provider
    uvicorn.run("svcbus.edge.server:app_from_env", factory=True, workers=workers, **common)


def register(app: typer.Typer) -> None:
    """Add ``svc edge`` to the ``svc`` command line."""
    app.command(name="edge")(edge)
