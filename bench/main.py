"""``bench/run``: locproxy measured side by side with its peers, in one run.

Starts everything on 127.0.0.1 (nginx as a child with its own prefix, the
stand-in upstream and locproxy under gunicorn, optionally a real Glance from
``tests/support/glance``), measures each row, prints one markdown
table and stops every process it started (also on errors and Ctrl-C).

Rows (``--rows``, declared in ``bench/rows/``): file, http, concurrent, relay,
fallback, show_sidecar, show_filter, rewrite, rss, failover, ceph. ``--sweep`` adds
a table of locproxy settings (chunk size, gunicorn workers/threads) instead of
the main rows.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from bench import context, glance, measure, servers, sweep
from bench.progress import log, wait_quiet
from bench.report import Run, report
from bench.results import Result, failed
from bench.row import Row
from bench.rows import NAMES, ROWS
from bench.settings import SidecarConfig, Sizes
from locproxy.options import parse_size

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SWEEP_RESULTS = Path(__file__).resolve().parent / "RESULTS-sweep.md"
ROW_ERRORS = (measure.BenchError, RuntimeError, subprocess.SubprocessError, OSError)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="rows:\n" + "\n".join(f"  {row.name:<13} peer: {row.peer}; target {row.target}" for row in ROWS))
    parser.add_argument("--quick", action="store_true", help="small sizes, few repetitions (smoke run)")
    parser.add_argument("--rows", default=",".join(NAMES), help=f"comma-separated subset of {','.join(NAMES)}")
    peer = parser.add_mutually_exclusive_group()
    peer.add_argument("--with-glance", dest="with_glance", action="store_true", default=True,
                      help="use a real Glance as the /file peer when its venv is cached (default)")
    peer.add_argument("--no-glance", dest="with_glance", action="store_false")
    parser.add_argument("--workers", type=int, default=2, help="locproxy gunicorn workers (default 2: one per core here)")
    parser.add_argument("--threads", type=int, default=16, help="locproxy gunicorn threads (default 16)")
    parser.add_argument("--worker-class", default="gthread")
    parser.add_argument("--chunk-size", default="1M", help="locproxy chunk_size (default 1M)")
    parser.add_argument("--relay-size", type=_size, metavar="SIZE",
                        help="relay row: the size of each download, e.g. 64M (default 64M, quick 16M)")
    parser.add_argument("--relay-count", type=int, metavar="N", help="relay row: downloads at once (default 16)")
    parser.add_argument("--quiet-wait", type=float, default=0, metavar="SECONDS",
                        help="before each row, wait up to SECONDS for the 1-minute load average to drop below "
                             "half the CPU count (other work on the machine adds noise)")
    parser.add_argument("--sweep", action="store_true", help="compare locproxy settings instead of the main rows")
    parser.add_argument("--out", type=Path, help="also write the report here (a full run of every row "
                                                 "writes bench/RESULTS.md, a full --sweep bench/RESULTS-sweep.md)")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.rows.split(",") if name.strip()]
    unknown = [name for name in names if name not in NAMES]
    if unknown:
        parser.error(f"unknown row {unknown[0]!r}; valid: {', '.join(NAMES)}")
    args.row_list = names
    return args


def _size(value: str) -> int:
    try:
        size = parse_size("--relay-size", value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if size % (1 << 20):
        raise argparse.ArgumentTypeError(f"--relay-size: {value!r} is not a whole number of MiB")
    return size


def measure_rows(ctx: context.Context, rows: Sequence[Row], quiet_wait: float) -> list[Result]:
    """Each row in turn; a row that fails gives an error line, the others still run."""
    results: list[Result] = []
    for row in rows:
        wait_quiet(quiet_wait)
        log(f"row {row.name} (load {os.getloadavg()[0]:.2f})")
        try:
            measured = row.measure(ctx)
        except ROW_ERRORS as error:
            measured = [failed(row.name, error)]
            log(f"row {row.name} failed: {error}")
        for result in measured:
            result.row = row.name
        results += measured
    return results


def run(args: argparse.Namespace, work: Path, started: float, load_before: str) -> str:
    """Start what the selected rows (or the sweep) need, measure, and the report."""
    rows = [row for name in args.row_list for row in ROWS if row.name == name]
    sizes = Sizes.quick() if args.quick else Sizes.full()
    sizes = dataclasses.replace(sizes, relay_size=args.relay_size or sizes.relay_size,
                                relay_count=args.relay_count or sizes.relay_count)
    config = SidecarConfig(args.workers, args.threads, args.worker_class, args.chunk_size)
    specs = sweep.image_specs(sizes) if args.sweep else [spec for row in rows for spec in row.images(sizes)]
    results: list[Result] = []
    sweep_table = None
    with contextlib.ExitStack() as stack:
        ctx = context.start(work, stack, sizes, config, specs)
        if args.sweep:
            sweep_table = sweep.sweep(ctx)
        else:
            if args.with_glance and any(row.glance for row in rows):
                ctx.glance = glance.start(stack)
            results = measure_rows(ctx, rows, args.quiet_wait)
        kind = "settings sweep" if args.sweep else ("quick run" if args.quick else "full run")
        return report(Run(kind, time.monotonic() - started, load_before, config, ctx.glance), results, sweep_table)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    load_before = f"{os.getloadavg()[0]:.2f}"

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    work = Path(tempfile.mkdtemp(prefix="locproxy-bench-"))
    try:
        text = run(args, work, started, load_before)
    except KeyboardInterrupt:
        log("interrupted; stopping everything")
        return 130
    finally:
        servers.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    print(text)
    full = not args.quick and args.row_list == list(NAMES)
    targets = [args.out] if args.out else []
    if full and not args.out:
        targets.append(SWEEP_RESULTS if args.sweep else RESULTS)
    for target in targets:
        target.write_text(text)
        log(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
