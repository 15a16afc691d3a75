"""Tracing overhead: memory-layer send -> typed consume, before tracing, tracing off and on.

    python bench/bench_tracing.py [--quick] [--count 100000] [--rounds 5]

Rows (every one measured the same way, in a fresh child process, rounds
interleaved so drift on a shared machine hits all rows alike; best of N):

* before tracing: the commit before the tracing hooks (10dcfae^), checked out
  into a temporary git worktree and imported through a shim directory
  (``svcbus`` -> its sdk/, ``svcbus/layers`` -> its layers/); removed afterwards.
* tracing off: this checkout, no OpenTelemetry SDK provider (the default).
* tracing on, no-op processor: an SDK provider whose only processor does
  nothing, so spans are created, filled and dropped (the instrumentation cost).
* tracing on, batch processor: the SDK's BatchSpanProcessor feeding an exporter
  that drops the batches (what ``--trace otlp`` costs, minus the network).
* sampled 10 % / 1 %: the same, with the sampler a user would set,
  ``OTEL_TRACES_SAMPLER=parentbased_traceidratio`` and
  ``OTEL_TRACES_SAMPLER_ARG=0.1`` / ``0.01``: a message's ``send`` span is a
  root, sampled by trace id; its ``process`` span follows its parent's decision.

Each message makes two spans when traced (``send`` and ``process``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# In a child for the "before" row, PYTHONPATH makes this the old svcbus.
from checkout import checkout, remove  # noqa: E402
from common import print_table, typed_throughput  # noqa: E402

ROOT = HERE.parent
BEFORE = "10dcfae^"
"""The parent of "Tracing in the core...": the hot path before any tracing hook."""
WORKTREE = Path(tempfile.gettempdir()) / "svcbus-before"

VARIANTS = {
    "before": "before tracing (10dcfae^)",
    "off": "tracing off (no SDK provider)",
    "noop": "tracing on, no-op span processor",
    "batch": "tracing on, BatchSpanProcessor, dropping exporter",
    "ratio10": "sampled 10 % (parentbased_traceidratio 0.1), BatchSpanProcessor",
    "ratio1": "sampled 1 % (parentbased_traceidratio 0.01), BatchSpanProcessor",
}

SAMPLED = {"ratio10": "0.1", "ratio1": "0.01"}
"""Variants configured the way a user would: OTEL_TRACES_SAMPLER(_ARG), read by the SDK."""


# child: one measurement ------------------------------------------------------------------


def child(variant: str, count: int) -> None:
    """Measure one run in this process and print msg/s (the parent parses stdout)."""
    if variant in ("noop", "batch", *SAMPLED):
        from opentelemetry import trace
        from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )

        class Drop(SpanExporter):
            def export(self, spans: object) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        # The sampled variants get their sampler from OTEL_TRACES_SAMPLER(_ARG) (see
        # measure()): TracerProvider() reads them, as it does under `svc run --trace`.
        provider = TracerProvider()
        # The base SpanProcessor's hooks do nothing: spans are made, then dropped.
        provider.add_span_processor(
            SpanProcessor() if variant == "noop" else BatchSpanProcessor(Drop())
        )
        if variant in SAMPLED:  # the environment's sampler was taken, not the default
            assert "ParentBased" in type(provider.sampler).__name__, provider.sampler
        trace.set_tracer_provider(provider)
    import anyio

    import svcbus
    from svcbus import LayerOptions
    from svcbus.layers.memory import MemoryHub, MemoryLayer

    expected = str(WORKTREE if variant == "before" else ROOT)
    where = str(Path(svcbus.__file__).resolve())
    assert where.startswith(expected), f"{variant}: imported svcbus from {where}"

    async def run() -> float:
        # The same code as bench_memory.py's typed row, concurrency 1.
        options = LayerOptions(capacity=count + 1)
        hub = MemoryHub()
        return await typed_throughput(lambda: MemoryLayer(options, hub=hub), count, 1)

    print(f"{anyio.run(run):.1f}")


# parent: worktree, shim, rounds, table ------------------------------------------------------


def measure(variant: str, count: int, shim: Path | None) -> float:
    env = dict(os.environ)
    for name in (
        "SVCBUS_TRACE",
        "OTEL_TRACES_EXPORTER",
        "OTEL_PYTHON_TRACER_PROVIDER",
        "OTEL_TRACES_SAMPLER",
        "OTEL_TRACES_SAMPLER_ARG",
    ):
        env.pop(name, None)
    if variant in SAMPLED:
        env["OTEL_TRACES_SAMPLER"] = "parentbased_traceidratio"
        env["OTEL_TRACES_SAMPLER_ARG"] = SAMPLED[variant]
    if shim is not None:
        env["PYTHONPATH"] = str(shim)  # ahead of the editable install's finder
    result = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", variant, "--count", str(count)],
        env=env,
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),
    )
    if result.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{result.stderr}")
    return float(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5, help="best of N rounds")
    parser.add_argument("--quick", action="store_true", help="20,000 messages, 3 rounds")
    parser.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.count, args.rounds = 20_000, 3
    if args.child:
        child(args.child, args.count)
        return
    best = dict.fromkeys(VARIANTS, 0.0)
    worktree, shim = checkout(BEFORE, WORKTREE.name)
    try:
        for _ in range(args.rounds):
            for variant in VARIANTS:
                rate = measure(variant, args.count, shim if variant == "before" else None)
                best[variant] = max(best[variant], rate)
    finally:
        remove(worktree, shim)
    base = best["before"]
    rows = [
        (label, f"{best[key]:,.0f}", f"{best[key] / base:.2f}x", f"{1e6 / best[key]:.1f}")
        for key, label in VARIANTS.items()
    ]
    print_table(
        f"memory layer, send -> typed consumer, {args.count:,} messages, best of {args.rounds}",
        ["path", "msg/s", "vs before", "µs/msg"],
        rows,
    )


if __name__ == "__main__":
    main()
