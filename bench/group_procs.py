"""Group fan-out across processes, for any layer URL (bench_nats.py and bench_redis.py).

``group_send`` to M member channels spread over P processes, one receiving task
per member channel (as an edge has one per connection); time from the send until
every member has received it. Each process validates a message once (an edge
forwards the same bytes to every connection) and reports when its last member
had it; the sender takes the latest report.

Run on its own it is a diagnostic: it starts its own server and can report the
garbage collector's work in each member process (``--gc``: collections of each
generation and the pause of every full one, timed with ``gc.callbacks``, and the
objects tracked with every member waiting) and alternate runs of this checkout
with the code at a git ref (``--before REF``)::

    python bench/group_procs.py redis --members 10000 --rounds 20 --runs 3 --gc --before main
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from common import BenchChat, chat, percentiles


class GcWatch:
    """Counts collections per generation and times every full (generation-2) one."""

    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        self.full_pauses: list[float] = []
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation = info["generation"]
        self.collections[generation] += 1
        if generation == 2:
            self.full_pauses.append(time.perf_counter() - self._started)


def group_member(
    url: str, members: int, rounds: int, ready: Any, reports: Any, gc_reports: Any = None
) -> None:
    asyncio.run(_group_member(url, members, rounds, ready, reports, gc_reports))


async def _group_member(
    url: str, members: int, rounds: int, ready: Any, reports: Any, gc_reports: Any
) -> None:
    from svcbus import open_layer
    from svcbus.envelope import envelope_type

    decode = envelope_type(BenchChat).model_validate_json
    layer = open_layer(url)
    await layer.connect()
    channels = [await layer.new_channel("member") for _ in range(members)]
    for channel in channels:
        await layer.group_add("bench.room", channel)
    counts = [0] * rounds
    finished = asyncio.Event()

    async def member(channel: str) -> None:
        for _ in range(rounds):
            data = await layer.receive(channel)
            # Validated once per process (an edge forwards the same bytes to every
            # connection); the sequence number says which send it belongs to.
            seq = decode(data).b.seq if counts_by_bytes.get(data) is None else counts_by_bytes[data]
            counts_by_bytes[data] = seq
            counts[seq] += 1
            if counts[seq] == members:
                del counts_by_bytes[data]
                reports.put((seq, time.monotonic()))
                if seq == rounds - 1:
                    finished.set()

    counts_by_bytes: dict[bytes, int] = {}
    tasks = [asyncio.ensure_future(member(channel)) for channel in channels]
    watch = GcWatch()
    tracked = 0
    if gc_reports is not None:
        await asyncio.sleep(0.1)  # every member waiting in its first receive
        tracked = len(gc.get_objects())
        gc.callbacks.append(watch)
    ready.release()
    await finished.wait()
    if gc_reports is not None:
        gc.callbacks.remove(watch)
        gc_reports.put((tracked, watch.collections, watch.full_pauses))
    for task in tasks:
        task.cancel()
    await layer.close()


def group_fanout(
    url: str,
    total_members: int,
    rounds: int,
    processes: int = 4,
    gc_stats: list[dict[str, Any]] | None = None,
    samples_out: list[float] | None = None,
) -> tuple[float, float]:
    """p50/p99 of group_send -> the last of ``total_members`` members has the message.

    With ``gc_stats`` (a list) each member process watches its garbage collector
    during the sends and one dict per process is appended to it; ``samples_out``
    receives every send's time (seconds).
    """
    ctx = mp.get_context("spawn")
    ready, reports = ctx.Semaphore(0), ctx.Queue()
    per_process = total_members // processes
    gc_reports = ctx.Queue() if gc_stats is not None else None
    workers = [
        ctx.Process(
            target=group_member, args=(url, per_process, rounds, ready, reports, gc_reports)
        )
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    try:
        for _ in workers:
            if not ready.acquire(timeout=120):
                raise RuntimeError("group member processes did not start")
        samples = asyncio.run(_group_rounds(url, rounds, processes, reports))
        if samples_out is not None:
            samples_out.extend(samples)
        if gc_reports is not None and gc_stats is not None:
            for _ in workers:
                tracked, collections, pauses = gc_reports.get(True, 60)
                gc_stats.append({"tracked": tracked, "collections": collections, "full": pauses})
    finally:
        for worker in workers:
            worker.join(10)
            if worker.is_alive():
                worker.terminate()
                worker.join()
    return percentiles(samples)


async def _group_rounds(url: str, rounds: int, processes: int, reports: Any) -> list[float]:
    from svcbus import Bus

    samples = []
    async with Bus(url) as bus:
        for seq in range(rounds):
            started = time.monotonic()
            await bus.group_send("bench.room", chat(seq))
            last = 0.0
            for _ in range(processes):
                got_seq, at = await asyncio.to_thread(reports.get, True, 60)
                assert got_seq == seq, (got_seq, seq)
                last = max(last, at)
            samples.append(last - started)
            await asyncio.sleep(0.02)
    return samples


# the diagnostic: python bench/group_procs.py LAYER ... ------------------------------------


def _one_run(url: str, members: int, rounds: int, watch_gc: bool) -> dict[str, Any]:
    """``--child``: one fan-out with this interpreter's svcbus; a JSON line on stdout."""
    stats: list[dict[str, Any]] | None = [] if watch_gc else None
    samples: list[float] = []
    p50, p99 = group_fanout(url, members, rounds, gc_stats=stats, samples_out=samples)
    return {"p50": p50, "p99": p99, "gc": stats or [], "samples": samples}


def _run_child(args: argparse.Namespace, url: str, shim: str | None) -> dict[str, Any]:
    env = dict(os.environ)
    if shim:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [shim, env.get("PYTHONPATH")]))
    command = [sys.executable, os.path.abspath(__file__), args.layer, "--child", url]
    command += ["--members", str(args.members), "--rounds", str(args.rounds)]
    if args.gc:
        command.append("--gc")
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def _describe(label: str, result: dict[str, Any]) -> str:
    line = f"{label}: p50 {result['p50']:.1f} ms, p99 {result['p99']:.1f} ms"
    slowest = sorted(result["samples"], reverse=True)[:3]
    line += f" (slowest sends {', '.join(f'{s * 1000:.0f}' for s in slowest)} ms)"
    for stats in result["gc"]:
        pauses = stats["full"]
        worst = max(pauses, default=0.0) * 1000
        line += (
            f"\n    tracked {stats['tracked']:,}, collections gen0/1/2 "
            f"{'/'.join(map(str, stats['collections']))}, full pauses "
            f"{', '.join(f'{p * 1000:.0f}' for p in pauses) or '-'} ms (max {worst:.0f})"
        )
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description="Group fan-out over processes, with gc figures")
    parser.add_argument("layer", choices=("redis", "nats"))
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=20, help="sends per run")
    parser.add_argument("--runs", type=int, default=1, help="runs (alternating with --before)")
    parser.add_argument("--gc", action="store_true", help="report each member process's gc")
    parser.add_argument("--before", metavar="REF", help="alternate with the code at git REF")
    parser.add_argument("--child", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_one_run(args.child, args.members, args.rounds, args.gc)))
        return
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tests"))
    from servers import NatsServer, RedisServer

    with contextlib.ExitStack() as stack:
        server = stack.enter_context(NatsServer() if args.layer == "nats" else RedisServer())
        url = server.url + ("?prefix=bgroup" if args.layer == "nats" else "")
        shim = None
        if args.before:
            from bench_durable import before_shim

            tmp = stack.enter_context(tempfile.TemporaryDirectory())
            shim = before_shim(args.before, tmp)
        variants = [(f"before ({args.before})", shim)] if shim else []
        variants.append(("this checkout", None))
        results: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in variants}
        for run in range(args.runs):
            for label, path in variants:
                result = _run_child(args, url, path)
                results[label].append(result)
                print(_describe(f"run {run + 1} {label}", result), flush=True)
        for label, runs in results.items():
            p50s = ", ".join(f"{r['p50']:.1f}" for r in runs)
            p99s = ", ".join(f"{r['p99']:.1f}" for r in runs)
            print(f"{label}: p50 {p50s}; p99 {p99s}")
            if args.gc:
                fulls = [len(s["full"]) for r in runs for s in r["gc"]]
                tracked = [s["tracked"] for r in runs for s in r["gc"]]
                pauses = [p * 1000 for r in runs for s in r["gc"] for p in s["full"]]
                print(
                    f"    per process: tracked {statistics.median(tracked):,.0f} (median), "
                    f"full collections {statistics.median(fulls):g} (median), full pause "
                    f"median {statistics.median(pauses) if pauses else 0:.0f} ms"
                )


if __name__ == "__main__":
    main()
