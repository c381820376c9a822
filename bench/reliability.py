#!/usr/bin/env python3
"""locproxy reliability report: the fault table, the bad-input battery, the
property-based example counts and (with ``--load``) the load figures.

It runs the very scenarios the test suite asserts (``tests/test_faults.py``,
``tests/test_security.py``, ``tests/test_properties.py``,
``tests/test_load.py``; the shared code is in ``tests/support/``) outside
pytest, on loopback, and prints markdown.
A scenario whose promise is broken is printed as FAILED instead of stopping
the report.

    .venv/bin/python bench/reliability.py                 # table, counts (about 40 s)
    .venv/bin/python bench/reliability.py --load          # + 60 s load: 200 downloads, 1,000 req/s
    .venv/bin/python bench/reliability.py --only load --seconds 10 --downloads 50 --rate 500
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
os.chdir(REPO_ROOT)  # run_gunicorn and the test helpers expect the checkout

SECTIONS = ("faults", "bad-input", "properties", "load")


def fault_table(workdir: Path) -> None:
    from tests.support.faults.table import KNOWN_BUGS, SCENARIOS, markdown_table, run_table

    print("## Fault table\n")
    print("Each row: what breaks, what the client gets, and the sha512 of the bytes it received "
          "compared with the image's. Backends time out after 1 s, the upstream after 1.5 s.\n")
    started = time.monotonic()
    rows = run_table(workdir)
    print(markdown_table(rows))
    failed = [row for row in rows if row.outcome.startswith("**FAILED**")]
    known = {case.fault for case in SCENARIOS if case.id in KNOWN_BUGS}
    print(f"\n{len(rows)} scenarios in {time.monotonic() - started:.0f} s: {len(rows) - len(failed)} as promised, "
          f"{len(failed)} FAILED ({sum(1 for row in failed if row.fault in known)} of them known bugs, "
          f"see KNOWN_BUGS in tests/support/faults/table.py).\n")


def bad_inputs(workdir: Path) -> None:
    from tests.support.bad_inputs import run_bad_inputs

    print("## Bad input\n")
    counts = run_bad_inputs(workdir)
    broken = counts.pop("broken promises")
    escapes = counts.pop("location escapes")
    print("Malformed requests (paths, ids, Range, prefer, headers, methods, JSON-patch):\n")
    print(" | ".join(f"{name}: {value}" for name, value in counts.items()))
    for name, status, known in broken:
        print(f"- HTTP {status} for {name!r}" + (" (known bug, xfail in tests/test_security.py)" if known else ""))
    print("\nHostile location URLs (file roots, allowed hosts, schemes), each downloaded whole and ranged:\n")
    print(" | ".join(f"{name}: {value}" for name, value in escapes.items()))
    print()


def properties() -> None:
    from tests.support.properties import run_properties

    print("## Property-based tests\n")
    try:
        counts = run_properties()
    except Exception:  # a property failed: show hypothesis' falsifying example
        traceback.print_exc(file=sys.stdout)
        from tests.support.properties import EXAMPLES as counts
    for name, value in sorted(counts.items()):
        print(f"- {name}: {value}")
    print(f"\nproperty-based examples run: {sum(counts.values())}\n")


def load(workdir: Path, args: argparse.Namespace) -> None:
    from tests.support.load import check, run_load

    print("## Load\n")
    print(f"{os.cpu_count()} CPU cores; client, sidecar ({args.workers} workers), upstream (2 workers) all on "
          "this machine, loopback only.\n")
    report = run_load(workdir, seconds=args.seconds, downloads=args.downloads, rate=args.rate,
                      workers=args.workers, threads=args.threads, connections=args.connections,
                      image_size=args.image_size, warmup=min(5.0, args.seconds / 4))
    for line in report.lines():
        print(f"- {line}")
    try:
        check(report)
        print("\nchecks: zero errors, zero corrupt bodies, no fd or pooled-connection growth: OK\n")
    except AssertionError:
        print("\nchecks: FAILED (see the figures above)\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--load", action="store_true", help="also run the load test")
    parser.add_argument("--only", choices=SECTIONS, action="append", help="run only these sections")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--downloads", type=int, default=200, help="concurrent download loops")
    parser.add_argument("--rate", type=float, default=1000.0, help="target metadata requests per second")
    parser.add_argument("--connections", type=int, default=500, help="keep-alive connections for metadata")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=1 << 20)
    args = parser.parse_args(argv)
    sections = args.only or [name for name in SECTIONS if name != "load" or args.load]
    print("# locproxy reliability report\n")
    with tempfile.TemporaryDirectory(prefix="locproxy-reliability-") as tmp:
        for name in sections:
            workdir = Path(tmp) / name
            workdir.mkdir()
            if name == "faults":
                fault_table(workdir)
            elif name == "bad-input":
                bad_inputs(workdir)
            elif name == "properties":
                properties()
            else:
                load(workdir, args)
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
