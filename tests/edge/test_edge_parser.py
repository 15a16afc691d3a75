"""Which HTTP parser the edge's uvicorn protocol uses: httptools when installed, else h11."""

from __future__ import annotations

import importlib.util

import pytest

from svcbus.edge import config, uvicorn_options
from svcbus.edge.server import HTTP_PROTOCOLS, http_parser
from svcbus.errors import ConfigurationError


def test_auto_takes_httptools_when_it_is_installed() -> None:
    assert importlib.util.find_spec("httptools") is not None  # the edge extra installs it
    assert http_parser() == "httptools"
    assert uvicorn_options()["http"] == HTTP_PROTOCOLS["httptools"]
    assert config(None, parser="h11").http == HTTP_PROTOCOLS["h11"]  # type: ignore[arg-type]


def test_auto_falls_back_to_h11_without_httptools(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "httptools" else real(name)
    )
    assert http_parser("auto") == "h11"
    with pytest.raises(ConfigurationError, match=r"pip install 'svcbus\[edge\]'"):
        http_parser("httptools")


def test_an_unknown_parser_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="use one of auto, h11, httptools"):
        uvicorn_options(http="picohttp")
