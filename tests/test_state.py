"""The fast path by default: the shipped configuration shares what workers
verify through ``metrics_file = auto``, in an owner-only state directory
(``locproxy.state``), and ``locproxy serve`` with two real gunicorn workers
sends from one worker what the other verified."""

from __future__ import annotations

import http.client
import os
import re
import stat
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
from paste.deploy import loadapp

from locproxy import state
from locproxy.config import load_filter_settings
from locproxy.demo import DemoImageAPI, demo_bytes, location, serve_wsgi
from locproxy.options import ConfigError
from tests.support.processes import accepts, free_port, spawn, stop, wait_until
from tests.support.servers import REPO_ROOT

PASTE_INI = REPO_ROOT / "etc" / "paste.ini"
DATA = demo_bytes("state-tests", 2 * 1024 * 1024 + 7)


# -- where ---------------------------------------------------------------------------

def test_the_state_directory_is_systemds_then_var_lib_for_root_then_xdg() -> None:
    home = Path.home()
    assert state.state_directory({"STATE_DIRECTORY": "/srv/a:/srv/b"}, euid=0) == Path("/srv/a")
    assert state.state_directory({"XDG_STATE_HOME": "/x"}, euid=0) == Path("/var/lib/locproxy")
    assert state.state_directory({"XDG_STATE_HOME": "/x"}, euid=1000) == Path("/x/locproxy")
    assert state.state_directory({"XDG_STATE_HOME": "relative"}, euid=1000) == home / ".local/state/locproxy"
    assert state.state_directory({}, euid=1000) == home / ".local/state/locproxy"


# -- made owner-only, validated at load -------------------------------------------------

def test_auto_makes_the_directory_and_file_owner_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = tmp_path / "parent" / "locproxy"
    monkeypatch.setenv("STATE_DIRECTORY", str(directory))
    settings = load_filter_settings({}, {"metrics_file": "auto"})
    assert settings.health.metrics_file == str(directory / "metrics.sqlite")
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(directory.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "metrics.sqlite").stat().st_mode) == 0o600
    assert load_filter_settings({}, {"metrics_file": "AUTO"}) == settings, "a second load uses what is there"


def test_an_explicit_empty_value_keeps_per_worker_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "never"))
    assert load_filter_settings({"metrics_file": "auto"}, {"metrics_file": ""}).health.metrics_file == ""
    assert not (tmp_path / "never").exists()


def refused(message: str) -> pytest.RaisesContext:
    return pytest.raises(ConfigError, match=rf"^metrics_file: auto: .*{message}")


def test_a_state_directory_others_may_write_is_refused_naming_the_option(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = tmp_path / "locproxy"
    directory.mkdir()
    directory.chmod(0o777)
    monkeypatch.setenv("STATE_DIRECTORY", str(directory))
    with refused("may be written by others"):
        load_filter_settings({}, {"metrics_file": "auto"})
    directory.chmod(0o755)  # readable by others is the operator's choice
    load_filter_settings({}, {"metrics_file": "auto"})
    (directory / "metrics.sqlite").chmod(0o666)
    with refused("metrics.sqlite' may be written by others"):
        load_filter_settings({}, {"metrics_file": "auto"})


def test_a_linked_state_directory_or_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    (tmp_path / "linked").symlink_to(tmp_path / "elsewhere")
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "linked"))
    with refused("is not a directory"):
        load_filter_settings({}, {"metrics_file": "auto"})
    (tmp_path / "elsewhere" / "target").write_bytes(b"")
    (tmp_path / "elsewhere" / "metrics.sqlite").symlink_to(tmp_path / "elsewhere" / "target")
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "elsewhere"))
    with refused("is not a file"):
        load_filter_settings({}, {"metrics_file": "auto"})


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
def test_a_state_directory_of_another_user_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = tmp_path / "theirs"
    directory.mkdir(mode=0o700)
    os.chown(directory, 65534, 65534)
    monkeypatch.setenv("STATE_DIRECTORY", str(directory))
    with refused("belongs to uid 65534"):
        load_filter_settings({}, {"metrics_file": "auto"})


def test_the_shipped_ini_shares_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path))
    app = loadapp(f"config:{PASTE_INI}", global_conf={"upstream": "http://127.0.0.1:9"})
    assert app.settings.health.metrics_file == str(tmp_path / "metrics.sqlite")
    empty = loadapp(f"config:{PASTE_INI}", global_conf={"upstream": "http://127.0.0.1:9", "metrics_file": ""})
    assert empty.settings.health.metrics_file == ""


# -- locproxy serve: two workers, one memory ------------------------------------------------

@contextmanager
def locproxy_serve(tmp_path: Path, upstream: str, root: Path, *sets: str) -> Iterator[tuple[int, Path]]:
    """``locproxy serve`` with the packaged ini, two workers; the access log
    names the worker (pid) of each request."""
    port, log = free_port(), tmp_path / f"serve-{os.urandom(3).hex()}.log"
    command = [sys.executable, "-m", "locproxy.cli", "serve", "--upstream", upstream, "--set", f"file_roots={root}",
               *(arg for item in sets for arg in ("--set", item)), "--",
               "--bind", f"127.0.0.1:{port}", "--workers", "2", "--threads", "4", "--graceful-timeout", "2",
               "--access-logfile", "-", "--access-logformat", "worker=%(p)s %(U)s"]
    process = spawn(command, log, cwd=tmp_path)
    try:
        def booted() -> bool:
            assert process.poll() is None, log.read_text()
            return log.read_text().count("Booting worker") >= 2 and accepts(port)

        wait_until(booted, timeout=20, what="locproxy serve")
        yield port, log
    finally:
        stop(process)


def download(port: int, image_id: str) -> bytes:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", f"/v2/images/{image_id}/file")
        response = connection.getresponse()
        assert response.status == 200
        return response.read()
    finally:
        connection.close()


def served(log: Path, image_id: str, count: int) -> list[tuple[str, str]]:
    """(worker pid, how it was sent) of the first ``count`` downloads, in order."""
    def both() -> tuple[list[str], list[str]] | None:
        text = log.read_text()
        workers = re.findall(rf"worker=<(\d+)> /v2/images/{image_id}/file", text)
        ways = re.findall(rf"image {image_id}: bytes \d+-\d+ sent from \S+ \(([^)]*)\)", text)
        return (workers, ways) if len(workers) >= count and len(ways) >= count else None

    workers, ways = wait_until(both, timeout=10, what="the log lines of each download")
    return list(zip(workers, ways))[:count]


def test_locproxy_serve_shares_what_one_worker_verified_with_the_other(tmp_path: Path, state_directory: str) -> None:
    root = tmp_path / "images"
    root.mkdir()
    (root / "copy").write_bytes(DATA)
    api = DemoImageAPI()
    image_id = api.add_image(data=DATA, locations=[location(f"file://{root / 'copy'}", "disk")])
    with serve_wsgi(api) as upstream, locproxy_serve(tmp_path, upstream.url, root) as (port, log):
        first = download(port, image_id)
        count = 1
        while count < 40 and len({worker for worker, _ in served(log, image_id, count)}) < 2:
            assert download(port, image_id) == DATA
            count += 1
        lines = served(log, image_id, count)
    assert first == DATA
    assert lines[0][1] == "sha512 verified", lines
    assert len({worker for worker, _ in lines}) == 2, f"one worker served all {count} downloads: {lines}"
    assert all(way == "every block checked against the image's fingerprint" for _, way in lines[1:]), lines
    assert (Path(state_directory) / "metrics.sqlite").stat().st_size > 0


def test_locproxy_serve_with_an_empty_metrics_file_verifies_in_each_worker(tmp_path: Path) -> None:
    root = tmp_path / "images"
    root.mkdir()
    (root / "copy").write_bytes(DATA)
    api = DemoImageAPI()
    image_id = api.add_image(data=DATA, locations=[location(f"file://{root / 'copy'}", "disk")])
    with serve_wsgi(api) as upstream, locproxy_serve(tmp_path, upstream.url, root, "metrics_file=") as (port, log):
        count = 0
        while count < 40 and len({worker for worker, _ in served(log, image_id, count)}) < 2:
            assert download(port, image_id) == DATA
            count += 1
        lines = served(log, image_id, count)
    firsts = {}
    for worker, way in lines:
        firsts.setdefault(worker, way)
    assert list(firsts.values()) == ["sha512 verified"] * 2, lines
