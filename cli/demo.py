"""``svc demo``: the example system (edge, chat and stats services) in one process.

The services come from the source checkout (``services/`` and ``contracts/``
next to ``cli/``), so ``svc demo`` works from a clone with an editable install.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from svcbus.errors import ConfigurationError, SvcbusError
from svcbus.redact import redact_url

from .app import (
    LayerOption,
    LogFormatOption,
    LogLevelOption,
    LoopOption,
    ReloadOption,
    TraceOption,
    err,
    event_loop,
    fail,
    layer_url,
    say,
    setup_logging,
)

if TYPE_CHECKING:
    import uvicorn

    from svcbus.edge import EdgeApp

CHECKOUT = Path(__file__).resolve().parents[1]
"""The repository root of an editable install: it holds ``services/`` and ``contracts/``."""


def demo(
    bind: Annotated[
        str, typer.Option("--bind", "-b", help="HOST:PORT to listen on.")
    ] = "127.0.0.1:8000",
    port: Annotated[
        int | None,
        typer.Option(
            min=0, max=65535, help="Port to listen on, overriding --bind's; 0 picks a free one."
        ),
    ] = None,
    layer: LayerOption = None,
    reload: ReloadOption = False,
    log_level: LogLevelOption = "warning",
    log_format: LogFormatOption = "text",
    trace: TraceOption = "off",
    loop: LoopOption = "auto",
) -> None:
    """Run the example chat: the edge, the chat and the stats services in one process.

    Open the URL it prints, pick a room and a nickname, and chat (open a second
    tab to talk to yourself). The default layer is the embedded memory://;
    --layer runs the same on NATS or Redis. Ctrl-C (or SIGTERM) stops it.
    """
    host, bind_port = parse_bind(bind)
    port = bind_port if port is None else port
    url = layer_url(layer)
    # Process-wide setup (logging, tracing) comes
    # before the app is built, so the services start with it in place.
    setup_logging(log_level, log_format)
    loop = event_loop(loop)
    if reload:
        from .supervisor import reload_command

        raise typer.Exit(reload_command("demo"))
    try:
        if trace != "off":
            from svcbus.telemetry import setup_tracing

            # One provider for the process; spans carry svcbus.service (edge, chat, stats).
            setup_tracing(trace, "svcbus-demo")
        app = demo_app(url)
    except SvcbusError as exc:
        fail(str(exc))
    try:
        sock = listen(host, port)
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}; try --port 0")
    address = f"{host if ':' not in host else f'[{host}]'}:{sock.getsockname()[1]}"

    def ready() -> None:
        say(
            "[green]svc demo[/]",
            f"edge + chat + stats services on {redact_url(url)} (event loop: {loop})",
        )
        # stdout, unstyled and flushed: scripts (and tests) read the URL from it.
        print(f"open http://{address}/  (Ctrl-C stops)", flush=True)

    if not serve(app, sock, log_level, on_ready=ready, loop=loop):
        err.print("[bold red]error:[/] the demo did not start (see the log above)")
        raise typer.Exit(1)


def parse_bind(bind: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8000`` for IPv6) as (host, port); fails in one line."""
    host, sep, port_text = bind.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        fail(f"--bind {bind!r} must be HOST:PORT, e.g. 127.0.0.1:8000")
    return host.strip("[]") or "127.0.0.1", int(port_text)


def demo_app(layer: str) -> EdgeApp:
    """The edge serving the example routes, with both example services in its process."""
    try:
        from svcbus.edge import EdgeApp
    except ImportError:
        raise ConfigurationError("svc demo needs the edge: pip install 'svcbus[edge]'") from None
    _add_checkout_to_path()
    try:
        from services import example_chat, example_stats
    except ImportError as exc:
        raise ConfigurationError(
            f"svc demo runs the example services of a svcbus source checkout ({exc}); "
            "clone the repository and `pip install -e '.[dev]'` in it"
        ) from None
    return EdgeApp(
        example_chat.routes, layer=layer, services=[example_chat.service, example_stats.service]
    )


def _add_checkout_to_path() -> None:
    # `services` is a folder of the repository, not an installed package: put the
    # checkout first so its examples are found. An editable install knows where it
    # is; a regular one (`pip install .`) looks in the working directory and its
    # parents, so `svc demo` works from inside a clone either way.
    for root in (CHECKOUT, Path.cwd(), *Path.cwd().parents):
        if (root / "services" / "example_chat").is_dir():
            if str(root) not in sys.path:
                sys.path.insert(0, str(root))
            return


def listen(host: str, port: int) -> socket.socket:
    """A bound socket for uvicorn: bound here so that port 0 gives a real port to print."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def serve(
    app: EdgeApp,
    sock: socket.socket,
    log_level: str,
    on_ready: Callable[[], None],
    loop: str = "asyncio",
) -> bool:
    """Serve until SIGINT/SIGTERM on ``loop`` (``asyncio`` or ``uvloop``); calls ``on_ready``
    once serving. False if startup failed."""
    from svcbus.edge import config

    server = _server_class()(
        config(app, log_level=log_level.lower(), timeout_graceful_shutdown=5, log_config=None)
    )
    if loop == "uvloop":
        import uvloop

        return uvloop.run(_serve(server, sock, on_ready))
    return asyncio.run(_serve(server, sock, on_ready))


async def _serve(server: uvicorn.Server, sock: socket.socket, on_ready: Callable[[], None]) -> bool:
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.02)
    if server.started:
        on_ready()
    await task
    return server.started


def _server_class() -> type[uvicorn.Server]:
    import uvicorn

    class DemoServer(uvicorn.Server):
        """uvicorn's server, minus re-raising the stop signal after a graceful shutdown.

        uvicorn re-raises SIGTERM once it has shut down, which kills the process
        with -15; the demo stopped cleanly and exits 0 instead. Once started it
        tunes the process's garbage collector for serving.
        """

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                # The app, its bus and services are up: what exists now lives as long
                # as the process (svcbus.startup_gc).
                from svcbus.startup_gc import tune_for_serving

                tune_for_serving()

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            handled = (signal.SIGINT, signal.SIGTERM)
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return DemoServer


def register(app: typer.Typer) -> None:
    """Add ``svc demo`` to the ``svc`` command line."""
    app.command(name="demo")(demo)
