"""The fault table: every way a backend, the upstream or the operator's
config file can break, and what the client gets.

The rule for every row: the client receives a correct body (sha512 equal to
the image's), or a clear error (an HTTP error, or a transfer that is aborted
before its Content-Length, with an ERROR logged); never a corrupt body that
looks complete.

One ``FaultLab`` (``tests.support.faults.lab``) serves every row; the rows
are ``tests.support.faults.table.SCENARIOS``. ``bench/reliability.py`` runs
the same table outside pytest and prints it; here each row is a test.
"""

from __future__ import annotations

import re
from typing import Any, Iterator

import pytest

from tests.support.faults.lab import CREDENTIALS, SHA512, FaultLab, Scenario, fault_lab, sha512
from tests.support.faults.table import KNOWN_BUGS, SCENARIOS

# -- pytest -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultLab]:
    with fault_lab(tmp_path_factory.mktemp("faults")) as the_lab:
        yield the_lab


def _case_param(case: Scenario) -> Any:
    reason = KNOWN_BUGS.get(case.id)
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
    return pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("case", [_case_param(case) for case in SCENARIOS])
def test_fault(lab: FaultLab, case: Scenario) -> None:
    row = case.run(lab)
    assert row.outcome and row.verified


def test_known_bugs_name_real_scenarios() -> None:
    assert set(KNOWN_BUGS) <= {case.id for case in SCENARIOS}


def test_every_scenario_has_a_unique_id() -> None:
    ids = [case.id for case in SCENARIOS]
    assert len(ids) == len(set(ids))


def test_sidecar_survived_every_fault(lab: FaultLab) -> None:
    """Runs after the table: the same worker still serves correct bytes,
    no worker was restarted, and every traceback logged is a deliberate
    abort (a digest mismatch or a download no source could finish)."""
    image_id = lab.image(lab.file_copy())
    result = lab.download(image_id)
    assert (result.status, result.complete) == (200, True) and sha512(result.body) == SHA512
    log = lab.sidecar.log()
    assert log.count("Booting worker") == 1, "no worker was restarted"
    final_lines = re.findall(r"^([A-Za-z_][\w.]*(?:Error|Exception|Mismatch))\b", log, re.MULTILINE)
    unexpected = set(final_lines) - DELIBERATE_ABORTS - KNOWN_BUG_EXCEPTIONS
    assert not unexpected, f"unexpected exceptions in the sidecar log: {unexpected}"
    assert CREDENTIALS.split(":")[1] not in log


# Raised on purpose to abort a transfer that cannot be completed correctly.
DELIBERATE_ABORTS = {"locproxy.download.verify.ChecksumMismatch", "locproxy.download.backends.base.BackendError"}
# Chained causes printed with the tracebacks of KNOWN_BUGS (remove with the fix).
KNOWN_BUG_EXCEPTIONS: set[str] = set()
