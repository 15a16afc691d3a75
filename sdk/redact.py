"""Redaction of credentials in layer URLs, for every log line and error that shows one.

A layer URL may carry a password (``redis://:pw@host``), a user and password
(``nats://user:pw@host``), a token (``nats://token@host``) or secrets in its
query (``?sentinel_password=…``, ``?token=…``, ``?creds=…``). Anything svcbus
prints shows the URL through :func:`redact_url` (or, for free text that may
contain URLs, :func:`redact_text`), so a secret never reaches a terminal or a
log collector, even when the URL is wrong.
"""

from __future__ import annotations

import logging
import re

MASK = "***"

# Query parameters whose values are secrets (or name a secret file): matched on
# the end of the key, so sentinel_password and access_token are covered too.
_SECRET_KEYS = ("password", "passwd", "pass", "pwd", "token", "secret", "creds", "credentials")
_QUERY_PARAM = re.compile(r"([?&;])([^=&;#]*)=([^&;#]*)")
# A URL inside free text: scheme://, then anything up to whitespace or a quote.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")


def redact_url(url: str) -> str:
    """``url`` with its credentials replaced by ``***``; everything else is kept.

    ``user:password@`` becomes ``user:***@``, ``token@`` becomes ``***@`` (in
    every comma-separated seed of a multi-server URL), and the values of secret
    query parameters become ``***``. A string that is not a URL at all is
    treated the same way (a mistyped scheme must not leak its password).
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    # The authority ends at the first '/', '?' or '#'.
    end = len(rest)
    for mark in "/?#":
        found = rest.find(mark)
        if found != -1:
            end = min(end, found)
    authority, tail = rest[:end], rest[end:]
    if "@" in authority:
        authority = ",".join(_redact_seed(seed) for seed in authority.split(","))
    if "=" in tail:
        tail = _QUERY_PARAM.sub(_redact_param, tail)
    return f"{scheme}{sep}{authority}{tail}"


def redact_text(text: str) -> str:
    """``text`` with every ``scheme://…`` URL in it passed through :func:`redact_url`."""
    if "://" not in text:
        return text
    return _URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), text)


def _redact_seed(seed: str) -> str:
    userinfo, at, host = seed.rpartition("@")
    if not at:
        return seed
    user, colon, _secret = userinfo.partition(":")
    # user:password@ keeps the user (useful when debugging); a lone token is all secret.
    return f"{user}:{MASK}@{host}" if colon else f"{MASK}@{host}"


def _redact_param(match: re.Match[str]) -> str:
    lead, key, value = match.groups()
    if value and key.lower().endswith(_SECRET_KEYS):
        return f"{lead}{key}={MASK}"
    return match.group(0)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts credentials in any URL a record's message or traceback shows.

    Add it to a handler (``svc`` adds it to the root handlers it sets up), so
    log lines from every library (layers, clients, uvicorn) pass through it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record in place; never drops it."""
        message = record.getMessage()
        if "://" in message:
            record.msg, record.args = redact_text(message), None
        if record.exc_info and not record.exc_text:
            # Formatted here (the formatter would do it later) so the text can be redacted.
            record.exc_text = redact_text(_FORMATTER.formatException(record.exc_info))
        return True


_FORMATTER = logging.Formatter()
