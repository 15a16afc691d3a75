"""Readable ``--help``: ``SERVICE``, ``URL``, ``INTEGER`` instead of ``{service}``, ``<str>``.

Recent typer versions print a parameter's Python type (``<str>``, ``<bool>``)
and wrap required arguments in braces (``{service}``). This walks the built
click command tree once and gives every parameter a conventional metavar:
arguments their upper-case name, options a word for their type, flags none.
Each patch is per instance and guarded, so a typer that renders differently
just keeps its own text.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

OPTION_WORDS: dict[str, str] = {
    "layer": "URL",
    "bind": "HOST:PORT",
    "routes": "MODULE:ATTR",
    "server": "URL",
    "out_dir": "DIR",
    "imports": "MODULE",
    "dead_letter": "CHANNEL",
    "log_level": "LEVEL",
    "log_format": "FORMAT",
    "health_host": "HOST",
}
"""Option name -> metavar, where the type alone says too little."""

TYPE_WORDS: dict[str, str] = {"int": "INTEGER", "float": "SECONDS", "Path": "PATH"}


def make_readable(command: Any) -> Any:
    """Give every parameter of ``command`` (and its subcommands) a readable metavar."""
    for param in getattr(command, "params", ()):
        _readable(param)
    original: Callable[..., Any] | None = getattr(command, "get_help_option", None)
    if original is not None:

        def get_help_option(ctx: Any) -> Any:
            option = original(ctx)
            if option is not None:
                _no_type(option)
            return option

        command.get_help_option = get_help_option
    for sub in getattr(command, "commands", {}).values():
        make_readable(sub)
    return command


def _readable(param: Any) -> None:
    if getattr(param, "param_type_name", "") == "argument":
        name = (param.metavar or param.name or "value").upper()
        param.metavar = name
        _no_type(param)
        usage = name if param.required else f"[{name}]"
        if param.nargs != 1:
            usage += "..."
        param._usage_display_name = lambda: usage
        return
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        _no_type(param)
        return
    if param.metavar is None:
        param.metavar = OPTION_WORDS.get(param.name or "") or _type_word(param)


def _type_word(param: Any) -> str:
    try:
        bare = param.bare_type()
    except Exception:  # typer internals differ: fall back to the name
        return (param.name or "value").upper()
    bare = bare.removeprefix("list[").removesuffix("]")
    return TYPE_WORDS.get(bare, "TEXT")


def _no_type(param: Any) -> None:
    # The type column: nothing for flags and arguments (their name says it).
    param.display_type_rich = lambda ctx: None
