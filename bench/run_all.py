"""Every benchmark in one command: ``python bench/run_all.py [--quick] [--only NAME ...]``.

Runs the scripts below one after another (never side by side: on a small
machine two benchmarks would measure each other), each in its own process with
its own servers, and prints each script's table as it finishes. Each script
already compares svcbus with its peers in the same run (interleaved rounds,
medians); this only saves typing them and keeps their output together. With
``--out FILE`` the whole output is also written to FILE.

Together they measure every path a user takes: the Runtime, the plain
``await bus.receive()`` loop and ``bus.messages()`` on each layer, sender and
consumer in one process and in two (bench_paths), fan-out and request/reply
(bench_nats, bench_redis), the edge (bench_edge), tracing (bench_tracing),
durable channels (bench_durable) and the sync runtime (bench_sync).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent

# Scripts that can also run svcbus's rows on another revision in the same rounds.
TAKE_BEFORE = {"paths", "edge", "durable"}

# (name, arguments, arguments added with --quick)
SCRIPTS: list[tuple[str, list[str], list[str]]] = [
    ("paths", [], ["--quick"]),
    ("nats", [], ["--quick"]),
    ("redis", [], ["--quick"]),
    ("edge", ["--compare"], ["--quick"]),
    ("edge", [], ["--quick"]),
    ("tracing", [], ["--quick"]),
    ("durable", [], ["--quick"]),
    ("memory", [], []),
    ("sync", [], ["--quick"]),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="each script's quick sizes")
    names = sorted({name for name, _, _ in SCRIPTS})
    parser.add_argument("--only", nargs="+", choices=names, help="run only these scripts")
    parser.add_argument(
        "--before", metavar="REV", help="scripts that can: also measure svcbus at git REV"
    )
    parser.add_argument("--out", type=Path, help="also write the whole output to this file")
    args = parser.parse_args()

    out = args.out.open("w") if args.out else None
    failed: list[str] = []
    for name, arguments, quick in SCRIPTS:
        if args.only and name not in args.only:
            continue
        command = [sys.executable, str(HERE / f"bench_{name}.py"), *arguments]
        if args.quick:
            command += quick
        if args.before and name in TAKE_BEFORE:
            command += ["--before", args.before]
        header = f"\n## bench_{name}.py {' '.join(command[2:])}\n"
        print(header, flush=True)
        started = time.monotonic()
        # Output streams through (progress lines included); a copy goes to --out.
        with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as child:
            assert child.stdout is not None
            lines = []
            for line in child.stdout:
                sys.stdout.write(line)
                lines.append(line)
        took = time.monotonic() - started
        status = "ok" if child.returncode == 0 else f"exit {child.returncode}"
        print(f"[bench_{name}.py: {status}, {took:.0f} s]", flush=True)
        if child.returncode:
            failed.append(name)
        if out is not None:
            out.write(header + "".join(lines) + f"\n[{status}, {took:.0f} s]\n")
            out.flush()
    if out is not None:
        out.close()
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
