"""An installed locproxy needs no checkout: ``pip install .`` into a fresh
virtualenv, then, from ``/``, ``locproxy demo --check`` passes, the paste ini
that ``locproxy config`` prints runs under ``gunicorn --paste``, and
``locproxy serve`` runs the same sidecar.

Marked integration: it builds a virtualenv (seconds with pip's cache, about
half a minute without)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from locproxy.demo import DemoImageAPI, demo_bytes, location, serve_wsgi
from locproxy.sidecar import stop_process

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with locproxy installed from this checkout (not editable)."""
    venv = tmp_path_factory.mktemp("installed") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    result = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(REPO_ROOT)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return venv / "bin"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str, timeout: float = 30.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return json.load(response)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The demo image API with one image on disk: (its URL, the image id)."""
    store = tmp_path_factory.mktemp("store")
    (store / "image").write_bytes(demo_bytes("install", 100_000))
    api = DemoImageAPI(file_roots=(str(store),))
    image_id = api.add_image(data=demo_bytes("install", 100_000),
                             locations=[location(f"file://{store}/image", "disk")])
    with serve_wsgi(api) as server:
        yield server.url, image_id


def test_demo_check_passes_from_another_directory(installed: Path) -> None:
    result = subprocess.run([str(installed / "locproxy"), "demo", "--check", "--port", str(free_port())],
                            cwd="/", capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "demo check: OK" in result.stdout


@pytest.mark.parametrize("how", ["printed config under gunicorn --paste", "locproxy serve"])
def test_the_packaged_sidecar_runs(installed: Path, upstream: tuple[str, str], tmp_path: Path, how: str) -> None:
    upstream_url, image_id = upstream
    port = free_port()
    if how == "locproxy serve":
        command = [str(installed / "locproxy"), "serve", "--upstream", upstream_url,
                   "--", "--bind", f"127.0.0.1:{port}", "--workers", "1", "--threads", "4"]
    else:
        config = subprocess.run([str(installed / "locproxy"), "config"], cwd="/", capture_output=True, text=True,
                                check=True, timeout=60).stdout
        ini = tmp_path / "sidecar.ini"
        ini.write_text(config)
        command = [str(installed / "gunicorn"), "--paste", str(ini), "--bind", f"127.0.0.1:{port}",
                   "--paste-global", f"upstream={upstream_url}", "--workers", "1", "--threads", "4"]
    with open(tmp_path / "gunicorn.log", "wb") as log:
        process = subprocess.Popen(command, cwd="/", stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        image = get_json(f"http://127.0.0.1:{port}/v2/images/{image_id}")
        health = get_json(f"http://127.0.0.1:{port}/healthcheck")
    finally:
        stop_process(process, group=True)
    assert isinstance(image, dict) and image["id"] == image_id, (tmp_path / "gunicorn.log").read_text()
    assert isinstance(health, dict) and health["status"] == "ok", health
