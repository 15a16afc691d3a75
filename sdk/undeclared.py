"""Development-mode warning for sends to channels a service never declared.

The docs and the diagram show what a service sends only if it says so
(``produces=`` on ``@consumes``, or ``service.produces(...)``). A send to any
other named channel makes the docs wrong; in development mode the runtime calls
:func:`warn_if_undeclared` on each send so that the gap shows up while the
service is being written, once per service and channel.

Development mode is on when ``SVCBUS_DEV`` is set to ``1``/``true``/``yes`` or
Python runs with ``-X dev``; :func:`set_enabled` overrides both (tests). When it
is off the check is one global lookup and a return, cheap enough for the send
path.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any


class UndeclaredSendWarning(UserWarning):
    """A service sent on a channel it does not declare that it produces."""


def _from_environment() -> bool:
    value = os.environ.get("SVCBUS_DEV", "").strip().lower()
    return value in ("1", "true", "yes", "on") or bool(sys.flags.dev_mode)


_enabled = _from_environment()
_warned: set[tuple[str, str]] = set()


def set_enabled(enabled: bool | None) -> None:
    """Turn the check on or off; ``None`` re-reads ``SVCBUS_DEV`` and ``-X dev``."""
    global _enabled
    _enabled = _from_environment() if enabled is None else enabled
    _warned.clear()


def is_enabled() -> bool:
    """Whether development mode (and so this check) is on."""
    return _enabled


def declared_channels(service: Any) -> set[str]:
    """Every channel ``service`` declares it sends to."""
    declared = set(getattr(service, "produced", ()))
    for consumer in getattr(service, "consumers", ()):
        declared.update(consumer.produces)
    return declared


def warn_if_undeclared(service: Any, channel: str) -> bool:
    """Warn (once per service and channel) if ``service`` sends on an undeclared channel.

    ``service`` is the :class:`~svcbus.Service` doing the send (``None`` for
    sends outside any service, which are never checked). Process-specific
    channels (replies, ``!`` in the name) are made at run time and need no
    declaration. Returns True when a warning was issued.
    """
    if not _enabled or service is None or "!" in channel:
        return False
    name = getattr(service, "name", "?")
    if (name, channel) in _warned or channel in declared_channels(service):
        return False
    _warned.add((name, channel))
    warnings.warn(
        f"service {name!r} sent on {channel!r}, which it does not declare: add "
        f"produces=[{channel!r}] to the @consumes that sends it, or call "
        f"service.produces({channel!r}), so that `svc docs` shows it",
        UndeclaredSendWarning,
        stacklevel=3,
    )
    return True
