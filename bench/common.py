"""Shared pieces of the benchmarks: the payload, timing, and the table."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from svcbus import Contract


class BenchChat(Contract, channel="bench.chat"):
    """The ~150-byte chat message every benchmark sends."""

    room: str
    nick: str
    text: str
    seq: int


def chat(seq: int) -> BenchChat:
    return BenchChat(
        room="lobby",
        nick="ada",
        text="The quick brown fox jumps over the lazy dog, twice over, for good measure.",
        seq=seq,
    )


def chat_dict(seq: int) -> dict:
    return chat(seq).model_dump()


def percentiles(samples: Sequence[float]) -> tuple[float, float]:
    """p50 and p99 of samples (seconds), in milliseconds."""
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered) * 1000, p99 * 1000


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print a rich table and the same as Markdown (for bench/README.md)."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="right" if column != columns[0] else "left")
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    console = Console()
    console.print(table)
    console.print("| " + " | ".join(columns) + " |", highlight=False, soft_wrap=True)
    console.print("|" + "---|" * len(columns), highlight=False, soft_wrap=True)
    for row in rows:
        console.print(
            "| " + " | ".join(str(c) for c in row) + " |", highlight=False, soft_wrap=True
        )
