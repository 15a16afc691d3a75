"""``module`` and ``module:attribute`` references to user code (services, routes, contracts).

``svc run``, ``svc edge``, ``svc docs`` and ``svc send --import`` all name user
code this way; these helpers import it as ``python -m`` would (the current
directory is importable) and turn a missing module or attribute into a
one-line :class:`~svcbus.errors.ConfigurationError` that says what to do.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

from .errors import ConfigurationError


def import_user_module(name: str) -> types.ModuleType:
    """Import module ``name`` from the current directory or the installed packages."""
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # like `python -m`: the current directory is importable
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            raise ConfigurationError(
                f"cannot import {name!r}: no module named {exc.name!r} "
                "(run from the directory that contains it, or install it)"
            ) from None
        raise


def resolve(ref: str, *, example: str) -> Any:
    """The object ``module:attribute`` names; ``example`` shows the expected form in errors."""
    module_name, sep, attribute = ref.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigurationError(f"{ref!r} must be module:attribute, e.g. {example}")
    module = import_user_module(module_name)
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ConfigurationError(f"module {module_name!r} has no attribute {attribute!r}") from None
