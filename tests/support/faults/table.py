"""The fault table: every way a backend, the upstream or the operator's
config file can break, and what the client gets (``SCENARIOS``, in the
order the report prints them), run by ``tests/test_faults.py`` (one test a
row) and by ``bench/reliability.py`` (``run_table``, ``markdown_table``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import pytest

from tests.support.faults import (
    backend_rows,
    content_rows,
    disk_rows,
    http_rows,
    operation_rows,
    upstream_rows,
)
from tests.support.faults.lab import Row, Scenario, fault_lab

SCENARIOS: list[Scenario] = [*backend_rows.ROWS, *upstream_rows.ROWS, *operation_rows.ROWS,
                             *disk_rows.ROWS, *content_rows.ROWS, *http_rows.ROWS]


# Rows whose promise locproxy breaks today (scenario id -> reason). Each is
# strict: when the bug is fixed the row passes and pytest says so.
KNOWN_BUGS: dict[str, str] = {}  # scenario id -> "BUG: ..." while a fault row fails


def markdown_table(rows: Sequence[Row]) -> str:
    lines = ["| group | fault | path | outcome | bytes verified | s |", "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row.group} | {row.fault} | {row.path} | {row.outcome} | {row.verified} | {row.seconds:.1f} |")
    return "\n".join(lines)


def run_table(base: Path) -> list[Row]:
    """Every scenario, in order; a failed promise becomes a FAILED row."""
    rows = []
    with fault_lab(base) as the_lab:
        for case in SCENARIOS:
            started = time.monotonic()
            try:
                rows.append(case.run(the_lab))
            except AssertionError as error:
                message = " ".join(str(error).split())[:160]
                rows.append(Row(case.group, case.fault, case.path, f"**FAILED**: {message}", "?",
                                time.monotonic() - started))
            except pytest.skip.Exception as skipped:
                rows.append(Row(case.group, case.fault, case.path, f"skipped: {skipped.msg}", "-",
                                time.monotonic() - started))
    return rows
