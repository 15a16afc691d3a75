"""Logging for the ``svc`` commands: one format for svcbus's and uvicorn's lines.

``text`` is a compact line for people; ``json`` is one object per line for log
collectors, with the message's context (channel, message id, trace id,
attempt) as fields when the log call passed them in ``extra``. uvicorn's own
loggers are routed through the same handler (``svc edge``/``svc demo`` pass
``log_config=None`` to uvicorn), so a process never mixes two formats.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from svcbus.redact import RedactingFilter

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
CONTEXT_FIELDS = ("channel", "message_id", "trace_id", "attempt", "service", "worker")
"""``extra=`` keys copied into a JSON line when a log call sets them."""


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, context, exception."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in CONTEXT_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure(level: str, log_format: str = "text") -> None:
    """Send every log record (svcbus's and uvicorn's) to stderr in ``log_format``."""
    if log_format not in FORMATS:
        raise ValueError(f"unknown --log-format {log_format!r}; use text or json")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    # Errors quote layer URLs; a wrong one still holds a real password.
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    try:
        root.setLevel(level.upper())
    except ValueError:
        raise ValueError(
            f"unknown --log-level {level!r}; use debug, info, warning or error"
        ) from None
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        # uvicorn configures these itself unless told not to; make them propagate here.
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
