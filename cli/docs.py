"""``svc docs`` and ``svc contracts check``: contract docs and breaking-change checks.

The console helpers come from ``.app`` inside each function: ``app`` imports
this module while it is being built, so a top-level import would be circular.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from svcbus.errors import ConfigurationError
from svcbus.references import resolve

FORMATS = ("asyncapi", "html", "markdown")


def register(app: typer.Typer) -> None:
    """Add ``docs`` and the ``contracts`` sub-app to the ``svc`` app."""
    app.command("docs")(docs)
    contracts = typer.Typer(
        name="contracts",
        help="Check contract changes (for CI): compare two `svc docs` AsyncAPI files.",
        no_args_is_help=True,
    )
    contracts.command("check")(check)
    app.add_typer(contracts, name="contracts")


def docs(
    modules: Annotated[
        list[str],
        typer.Argument(
            help="Services to document: MODULE or MODULE:SERVICE, e.g. services.example_chat",
            show_default=False,
        ),
    ],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Directory to write into.")] = Path(
        "docs/contracts"
    ),
    formats: Annotated[
        list[str] | None,
        typer.Option(
            "--format",
            "-f",
            help="asyncapi (asyncapi.json + asyncapi.yaml), html (html/), markdown "
            "(README.md). Repeat for several; default: all three.",
            show_default=False,
        ),
    ] = None,
    servers: Annotated[
        list[str] | None,
        typer.Option(
            "--server",
            help="Layer URL to list as a server (nats://..., redis://..., memory://); "
            "repeatable. Credentials are left out.",
            show_default=False,
        ),
    ] = None,
    routes: Annotated[
        str | None,
        typer.Option(
            "--routes",
            help="MODULE:ATTR of the edge routing table, to document HTTP/WebSocket routes.",
            show_default=False,
        ),
    ] = None,
    title: Annotated[
        str | None, typer.Option(help="Title of the docs (default: the service names).")
    ] = None,
    api_version: Annotated[str, typer.Option(help="Version in the AsyncAPI info.")] = "1.0.0",
    check_only: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Write nothing; exit 1 if the files in --out are not what would be generated.",
        ),
    ] = False,
) -> None:
    """Generate contract docs (AsyncAPI 3.0.0, static HTML with a diagram, Markdown)."""
    from svcbus.docs import collect
    from svcbus.docs.asyncapi import build_document, to_json, to_yaml
    from svcbus.docs.html import render_site
    from svcbus.docs.markdown import render_markdown
    from svcbus.errors import SvcbusError
    from svcbus.service import load_service

    from .app import fail, say

    chosen = _formats(formats)
    if "asyncapi" in chosen:
        try:
            import yaml  # noqa: F401 - asyncapi.yaml needs it; fail before any work
        except ImportError:
            fail(
                "svc docs writes asyncapi.yaml with PyYAML, which is not installed: "
                "pip install 'svcbus[docs]' (or --format html --format markdown to skip AsyncAPI)"
            )
    try:
        services = [load_service(ref) for ref in modules]
        table = _load_object(routes) if routes else None
        system = collect(
            services, routes=table, servers=servers or (), title=title, version=api_version
        )
        document = build_document(system)
    except (SvcbusError, ValueError, TypeError) as exc:
        fail(str(exc))

    files: dict[Path, str] = {}
    if "asyncapi" in chosen:
        files[out_dir / "asyncapi.json"] = to_json(document)
        files[out_dir / "asyncapi.yaml"] = to_yaml(document)
    if "html" in chosen:
        for page, text in render_site(system, document).items():
            files[out_dir / "html" / page] = text
    if "markdown" in chosen:
        files[out_dir / "README.md"] = render_markdown(system, document)

    stale_pages = _stale_pages(out_dir, files) if "html" in chosen else []
    if check_only:
        _check_up_to_date(out_dir, files, stale_pages)
        return
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    for path in stale_pages:  # channels that no longer exist
        path.unlink()
    say(
        "[green]svc docs[/]",
        f"wrote {len(files)} files to {out_dir} "
        f"({len(system.channels)} channels, {len(system.services)} services)",
    )


def _check_up_to_date(out_dir: Path, files: dict[Path, str], stale_pages: list[Path]) -> None:
    """``--check``: exit 1 naming every file that differs from what would be generated."""
    from .app import say

    stale = [p for p, t in files.items() if not p.exists() or p.read_text("utf-8") != t]
    stale += stale_pages
    if stale:
        for path in sorted(stale):
            say("[yellow]out of date:[/]", str(path))
        say("", "run `svc docs` with the same arguments, without --check, to regenerate")
        raise typer.Exit(1)
    say("[green]up to date:[/]", f"{len(files)} files in {out_dir}")


def _formats(given: list[str] | None) -> list[str]:
    from .app import fail

    chosen = [f.strip().lower() for f in given or FORMATS]
    unknown = [f for f in chosen if f not in FORMATS]
    if unknown:
        fail(f"unknown --format {', '.join(unknown)}; use {', '.join(FORMATS)}")
    return chosen


def _stale_pages(out_dir: Path, files: dict[Path, str]) -> list[Path]:
    pages = out_dir / "html" / "channels"
    if not pages.is_dir():
        return []
    return sorted(p for p in pages.glob("*.html") if p not in files)


def _load_object(ref: str) -> Any:
    """Import ``module:attr`` (calling it if it is a factory without ``routes``)."""
    from .app import fail

    try:
        found = resolve(ref, example="services.example_chat.routing:routes")
    except ConfigurationError as exc:
        fail(f"--routes {ref!r}: {exc}")
    if callable(found) and not hasattr(found, "routes") and not isinstance(found, type):
        found = found()
    return found


def check(
    old: Annotated[str, typer.Argument(help="The old AsyncAPI file (JSON/YAML), or git:REF:path.")],
    new: Annotated[str, typer.Argument(help="The new AsyncAPI file (JSON/YAML), or git:REF:path.")],
    strict: Annotated[
        bool,
        typer.Option(help="Fail on warnings too (changes that need consumers deployed first)."),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the changes as JSON instead of a table.")
    ] = False,
) -> None:
    """Compare two contract versions; exit 1 on breaking changes, 2 on bad input.

    Each change is judged for consumers (old code receiving new messages) and
    producers (old code sending to new consumers). See docs/contracts.md.
    """
    from svcbus.docs.compat import DocumentError, compare, iter_rows, load_document

    from .app import fail, out

    try:
        report = compare(load_document(old), load_document(new))
    except DocumentError as exc:
        fail(str(exc))
    except ImportError:  # a YAML input without PyYAML
        fail("reading YAML needs PyYAML: pip install 'svcbus[docs]' (or compare the .json files)")

    failing = report.breaking + (report.warnings if strict else [])
    if as_json:
        out.print_json(
            json.dumps(
                {
                    "old": old,
                    "new": new,
                    "breaking": len(report.breaking),
                    "warnings": len(report.warnings),
                    "changes": [c.as_dict() for c in report.changes],
                }
            )
        )
    else:
        _print_table(old, new, list(iter_rows(report)))
        summary = (
            f"{len(report.breaking)} breaking, {len(report.warnings)} warning(s), "
            f"{len(report.changes)} change(s) in all"
        )
        style = "bold red" if failing else "green"
        out.print(f"[{style}]{summary}[/]", highlight=False)
    if failing:
        raise typer.Exit(1)


_STYLES = {"breaking": "bold red", "warning": "yellow", "compatible": "green"}


def _print_table(old: str, new: str, rows: list[tuple[str, str, str, str, str, str]]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from .app import out, say

    if not rows:
        say("", f"no contract changes between {old} and {new}", console=out)
        return
    table = Table(title=f"Contract changes: {escape(old)} -> {escape(new)}", title_justify="left")
    for column in ("Channel", "Change", "Where", "Consumers", "Producers", "Detail"):
        table.add_column(column, overflow="fold", no_wrap=column != "Detail")
    for channel, kind, where, consumers, producers, detail in rows:
        table.add_row(
            escape(channel),
            escape(kind),
            escape(where),
            f"[{_STYLES[consumers]}]{consumers}[/]",
            f"[{_STYLES[producers]}]{producers}[/]",
            escape(detail),
        )
    # CI logs are not terminals: rich would squeeze the table into 80 columns.
    console = out if out.is_terminal else Console(width=max(out.width, 160))
    console.print(table)
