"""Static files: serve a directory safely (no traversal), with content types and ETags."""

from __future__ import annotations

import mimetypes
import os
import stat
from pathlib import Path
from typing import Any

import anyio

from .http import Send, send_response
from .routing import StaticRoute

CHUNK_SIZE = 64 * 1024


def resolve(route: StaticRoute, subpath: str) -> Path | None:
    """The file ``subpath`` names under the route's directory, or None.

    The ASGI path is already percent-decoded, so ``%2e%2e`` arrives as ``..``;
    any ``.``/``..`` segment, backslash or NUL is refused outright, and the
    resolved path (symlinks followed) must still be inside the directory.
    """
    root = Path(route.directory)
    parts = [p for p in subpath.split("/") if p]
    if any(p in (".", "..") or "\\" in p or "\x00" in p for p in parts):
        return None
    target = root.joinpath(*parts)
    try:
        target = target.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if target != root and root not in target.parents:
        return None
    if target.is_dir():
        target = target / route.index
        if not target.is_file():
            return None
    return target


def content_type(path: Path) -> str:
    """The Content-Type for ``path``; text types are UTF-8."""
    guessed, _ = mimetypes.guess_type(path.name)
    if guessed is None:
        return "application/octet-stream"
    if guessed.startswith("text/") or guessed in ("application/javascript", "image/svg+xml"):
        return f"{guessed}; charset=utf-8"
    return guessed


async def serve_static(route: StaticRoute, subpath: str, scope: dict[str, Any], send: Send) -> None:
    """Answer a GET or HEAD for ``subpath`` of ``route``: 200, 304 or 404."""
    path = resolve(route, subpath)
    info = None
    if path is not None:
        try:
            info = await anyio.to_thread.run_sync(os.stat, path)
        except OSError:
            info = None
    if path is None or info is None or not stat.S_ISREG(info.st_mode):
        await send_response(send, 404, b"not found\n")
        return
    etag = f'"{info.st_mtime_ns:x}-{info.st_size:x}"'
    headers = [
        (b"content-type", content_type(path).encode()),
        (b"etag", etag.encode()),
        (b"cache-control", b"no-cache"),
        (b"x-content-type-options", b"nosniff"),
    ]
    if_none_match = _header(scope, b"if-none-match")
    if if_none_match is not None and etag in [t.strip() for t in if_none_match.split(",")]:
        await send({"type": "http.response.start", "status": 304, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return
    headers.append((b"content-length", str(info.st_size).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    if scope["method"] == "HEAD":
        await send({"type": "http.response.body", "body": b""})
        return
    async with await anyio.open_file(path, "rb") as file:
        while True:
            chunk = await file.read(CHUNK_SIZE)
            more = len(chunk) == CHUNK_SIZE
            await send({"type": "http.response.body", "body": chunk, "more_body": more})
            if not more:
                break


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            text: str = value.decode("latin-1")
            return text
    return None
