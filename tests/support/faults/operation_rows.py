"""Fault table rows: bookkeeping (the metrics_file fails, downloads do not), the health
rule, and the operator's config_file."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from locproxy.tracker import Tracker
from tests.support.client import fetch
from tests.support.faults.lab import (
    DATA,
    SHA512,
    STRATEGY_CONFIG,
    FaultLab,
    Scenarios,
    sha512,
)
from tests.support.sqlite_files import locked

ROWS = Scenarios()
scenario = ROWS.row


# -- bookkeeping: the metrics_file fails, downloads do not --------------------------------

@scenario("bookkeeping", "metrics_file locked by a stopped worker, then free again", "download")
def _metrics_file_locked(lab: FaultLab) -> tuple[str, str]:
    """Every download is served by the preferred backend, quickly, while the
    file is locked (no 500, no leaked pool slot: 2 slots, 12 downloads), and
    after the lock is gone; /healthcheck says degraded meanwhile."""
    web = lab.backend()
    image_id = lab.image(lab.web(web), lab.file_copy())
    metrics_file = lab.base / f"metrics-{os.urandom(4).hex()}.sqlite"
    with lab.private_sidecar(metrics_file=metrics_file, backend_pool_maxsize=2,
                             healthcheck_path="/healthcheck") as sidecar:
        fetch(sidecar.port, f"/v2/images/{image_id}/file")  # creates the file's rows
        with locked(metrics_file):
            while_locked = [fetch(sidecar.port, f"/v2/images/{image_id}/file") for _ in range(6)]
            health = fetch(sidecar.port, "/healthcheck").json()
        time.sleep(0.5)
        served_before = web.request_count
        after = [fetch(sidecar.port, f"/v2/images/{image_id}/file") for _ in range(6)]
        log = sidecar.log()
    for result in while_locked + after:
        assert (result.status, result.complete) == (200, True) and sha512(result.body) == SHA512, result.describe()
    slowest = max(result.seconds for result in while_locked)
    assert slowest < 2.0, f"a download took {slowest:.1f} s while the file was locked"
    assert health["status"] == "degraded", health
    assert web.request_count - served_before == 6, "served by the preferred backend: no pool slot was lost"
    assert "pool exhausted" not in log and "Traceback" not in log, log[-3000:]
    assert log.count("metrics_file") >= 1 and "carrying on from memory" in log
    return (f"200 from the preferred backend, 12/12 (slowest {slowest:.2f} s while locked); "
            "/healthcheck degraded; no pool slot lost", "sha512 ✓ (12 downloads)")


@scenario("bookkeeping", "metrics_file on a full file system", "download")
def _metrics_file_full(lab: FaultLab) -> tuple[str, str]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = lab.base / f"full-{os.urandom(4).hex()}"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True, timeout=10)
    try:
        web = lab.backend()
        image_id = lab.image(lab.web(web), lab.file_copy())
        with lab.private_sidecar(metrics_file=mount / "metrics.sqlite", healthcheck_path="/healthcheck") as sidecar:
            fetch(sidecar.port, "/healthcheck")  # the worker has loaded (and created the file)
            _fill(mount / "filler")
            results = [fetch(sidecar.port, f"/v2/images/{image_id}/file") for _ in range(5)]
            health = fetch(sidecar.port, "/healthcheck").json()
            log = sidecar.log()
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, timeout=10)
    for result in results:
        assert (result.status, result.complete) == (200, True) and sha512(result.body) == SHA512, result.describe()
    assert health["status"] == "degraded", health
    assert "full" in log and "Traceback" not in log, log[-3000:]
    return "200 from the preferred backend, 5/5; /healthcheck degraded", "sha512 ✓ (5 downloads)"


def _fill(path: Path) -> None:
    """Write until the file system is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass  # ENOSPC: full
    finally:
        os.close(fd)


# -- the health rule ------------------------------------------------------------------------

def _demotion(metrics_file: Path, prefix: str) -> float:
    """Seconds of the current demotion of the tracker record whose key starts with ``prefix``."""
    stats = Tracker(str(metrics_file), read_only=True).stats()
    (record,) = [record for key, record in stats.items() if key.startswith(prefix) and "#" in key]
    return record.demoted_until - record.updated


@scenario("health", "corrupt copy: the next download uses the good copy, demotions escalate", "download")
def _corrupt_copy_escalates(lab: FaultLab) -> tuple[str, str]:
    bad = lab.backend(f"corrupt_byte:{len(DATA) // 2}")
    image_id = lab.image(lab.web(bad), lab.file_copy())
    metrics_file = lab.base / f"metrics-{os.urandom(4).hex()}.sqlite"
    with lab.private_sidecar(metrics_file=metrics_file, cooldown=1, max_cooldown=60) as sidecar:
        first = fetch(sidecar.port, f"/v2/images/{image_id}/file")
        first_demotion = _demotion(metrics_file, f"http://127.0.0.1:{bad.port}")
        second = fetch(sidecar.port, f"/v2/images/{image_id}/file")
        tried = bad.request_count
        time.sleep(1.2)  # the copy's first cool-down is over: tried again, and bad again
        third = fetch(sidecar.port, f"/v2/images/{image_id}/file")
        second_demotion = _demotion(metrics_file, f"http://127.0.0.1:{bad.port}")
        backend = Tracker(str(metrics_file), read_only=True).stats()[f"http://127.0.0.1:{bad.port}"]
    assert first.status == 200 and not first.complete, first.describe()
    assert (second.status, second.complete) == (200, True) and sha512(second.body) == SHA512, second.describe()
    assert tried == 1, "the demoted copy was not tried for the second download"
    # Read whole once (the second download): the third refuses the bad block and goes on from the good copy.
    assert (third.status, third.complete) == (200, True) and sha512(third.body) == SHA512, third.describe()
    assert first_demotion == pytest.approx(1, abs=0.1) and second_demotion == pytest.approx(2, abs=0.1), \
        (first_demotion, second_demotion)
    assert not backend.demoted(time.time()), "one image's bad copy does not demote its backend"
    return (f"aborted (a first read), then 200 from the good copy; then the bad block refused and the body "
            f"completed from the good copy; the bad copy demoted {first_demotion:.0f} s, then "
            f"{second_demotion:.0f} s (backend not demoted)", "never completed / sha512 ✓ / sha512 ✓")


@scenario("health", "one image with a wrong recorded hash, 5 downloads; then other tenants' images", "download")
def _one_tenant_cannot_demote(lab: FaultLab) -> tuple[str, str]:
    shared = lab.backend()
    bogus = lab.image(lab.web(shared), lab.file_copy())
    metrics_file = lab.base / f"metrics-{os.urandom(4).hex()}.sqlite"
    with lab.private_sidecar(metrics_file=metrics_file) as sidecar:
        aborted = [fetch(sidecar.port, f"/wrongdigest/v2/images/{bogus}/file") for _ in range(5)]
        before = shared.request_count
        others = [lab.image(lab.web(shared), lab.file_copy()) for _ in range(5)]
        served = [fetch(sidecar.port, f"/v2/images/{image_id}/file") for image_id in others]
        from_shared = shared.request_count - before
        # Three more distinct images mismatching there: now the backend is suspect.
        for _ in range(3):
            fetch(sidecar.port, f"/wrongdigest/v2/images/{lab.image(lab.web(shared), lab.file_copy())}/file")
        before = shared.request_count
        late = fetch(sidecar.port, f"/v2/images/{others[0]}/file")
        after_demotion = shared.request_count - before
    assert all(result.status == 200 and not result.complete for result in aborted)
    for result in served + [late]:
        assert (result.status, result.complete) == (200, True) and sha512(result.body) == SHA512, result.describe()
    assert from_shared == 5, f"other images used the shared backend {from_shared}/5 times"
    assert after_demotion == 0, "several images mismatching there demote the backend"
    return ("5 aborted; other images: 5/5 from the shared backend; after 3 more distinct images "
            "mismatch there it is demoted"), "never completed / sha512 ✓"


# -- the operator's config file ------------------------------------------------------

GARBAGE = [
    ("binary garbage", b"\xff\xfe\x00\x81 not an ini file \x00\x00"),
    ("no [locproxy] section", b"[other]\nlocation_strategy = store_type\n"),
    ("invalid value", b"[locproxy]\nlocation_strategy = nonsense\n"),
    ("file deleted", None),
]


@scenario("config", "config_file edited twice within one timestamp (same size, same mtime)", "show")
def _config_same_stat(lab: FaultLab) -> tuple[str, str]:
    low, high = lab.file_copy(), lab.web(lab.backend())
    image_id = lab.api.add_image(data=DATA, locations=[{**low, "metadata": {"weight": 1, "store": "disk"}},
                                                       {**high, "metadata": {"weight": 9, "store": "web"}}])
    edits = [("[locproxy]\nlocation_strategy = location_order\n", [low, high]),
             ("[locproxy]\nlocation_strategy = weight\n# pad12\n", [high, low])]
    assert len({len(text) for text, _ in edits}) == 1, "same size"
    before = lab.config_file.stat()
    try:
        for text, expected in edits:
            with open(lab.config_file, "r+") as stream:
                stream.write(text)
                stream.truncate()
            os.utime(lab.config_file, ns=(before.st_atime_ns, before.st_mtime_ns))
            time.sleep(1.2)
            shown = lab.get(f"/v2/images/{image_id}").json()
            assert [item["url"] for item in shown["locations"]] == [item["url"] for item in expected], text
    finally:
        lab.config_file.write_text(STRATEGY_CONFIG)
    return "each edit applied within a second (judged by content, not stat)", "n/a (metadata)"


@scenario("config", "config_file replaced with garbage while serving", "show + download")
def _config_garbage(lab: FaultLab) -> tuple[str, str]:
    low, high = lab.file_copy(), lab.web(lab.backend())
    # Upstream order [low, high]; only the weight strategy (from the config file) puts high first.
    image_id = lab.api.add_image(data=DATA, locations=[{**low, "metadata": {"weight": 1, "store": "disk"}},
                                                       {**high, "metadata": {"weight": 9, "store": "web"}}])
    mark = lab.log_mark()
    results = []
    try:
        for _name, garbage in GARBAGE:
            if garbage is None:
                lab.config_file.unlink()
            else:
                lab.config_file.write_bytes(garbage)
            # The filter looks at the file at most once a second, on a request.
            time.sleep(1.2)
            shown = lab.get(f"/v2/images/{image_id}")
            assert [item["url"] for item in shown.json()["locations"]] == [high["url"], low["url"]], \
                "the previous settings (weight) still apply"
            results.append(lab.download(image_id))
    finally:
        lab.config_file.write_text(STRATEGY_CONFIG)
    log = lab.log_since(mark)
    assert log.count("rejected, keeping the previous settings") == len(GARBAGE), log[-3000:]
    for result in results:
        assert (result.status, result.complete) == (200, True) and sha512(result.body) == SHA512
    return (f"old settings kept through {len(GARBAGE)} bad versions (ERROR logged each time)",
            f"sha512 ✓ ({len(results)} downloads)")
