"""``locproxy cache``: the operators' commands refuse what is not theirs to
touch, and ``prefetch`` says when a download failed or came short.

``prefetch`` only GETs ``/v2/images/{id}/file`` from the URL it is given, so
a ``FaultServer`` (a real loopback HTTP server) stands in for locproxy here:
it records the headers it was sent and can cut a body short. The cache
commands against a cache a real sidecar filled are in ``test_cache.py``.
"""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.faultserver import FaultServer

DATA = os.urandom(3 << 20)
CACHE = [sys.executable, "-m", "locproxy.cli", "cache"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CACHE, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "OS_AUTH_TOKEN": "", **(env or {})})


@pytest.mark.parametrize("action", [["list"], ["clear"], ["evict", "--", "IMAGE"]])
def test_a_path_that_is_not_a_cache_is_refused_and_left_alone(tmp_path: Path, action: list[str]) -> None:
    (tmp_path / "keep.txt").write_text("an operator's file")
    (tmp_path / "entries").write_text("not a directory of a cache")
    command = [action[0], str(tmp_path), *action[2:]]
    result = run(*command)
    assert result.returncode == 2 and "not a site cache" in result.stderr, result
    assert sorted(os.listdir(tmp_path)) == ["entries", "keep.txt"], "nothing created, nothing removed"
    missing = run(action[0], str(tmp_path / "typo"), *action[2:])
    assert missing.returncode == 2 and not (tmp_path / "typo").exists()


def test_prefetch_reads_the_token_from_a_file_or_the_environment(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("token-from-file\n")
    with FaultServer(DATA) as server:
        from_file = run("prefetch", server.url(""), "image-1", "--token-file", str(token_file))
        sent_from_file = server.requests[-1].headers.get("x-auth-token")
        from_env = run("prefetch", server.url(""), "image-2", env={"OS_AUTH_TOKEN": "token-from-env"})
        sent_from_env = server.requests[-1].headers.get("x-auth-token")
    assert from_file.returncode == 0 and f"image-1: {len(DATA):,} bytes" in from_file.stdout, from_file
    assert from_env.returncode == 0, from_env
    assert (sent_from_file, sent_from_env) == ("token-from-file", "token-from-env")


def test_prefetch_refuses_a_token_on_the_command_line() -> None:
    for header in ("X-Auth-Token:s3kr1t-value", "authorization: Bearer s3kr1t-value"):
        result = run("prefetch", "http://127.0.0.1:1", "image", "--header", header)
        assert result.returncode == 2 and "--token-file" in result.stderr, result
        assert "s3kr1t" not in result.stderr


@pytest.mark.parametrize("mode", ["truncate_after:1000000", "bad_content_length", "status:503"])
def test_prefetch_exits_non_zero_on_a_short_or_failed_download(mode: str) -> None:
    with FaultServer(DATA, mode=mode) as server:
        result = run("prefetch", server.url(""), "good-looking-image")
    assert result.returncode == 1, result
    assert "good-looking-image" in result.stderr and "bytes" not in result.stdout


def test_prefetch_shows_progress_on_a_terminal() -> None:
    controller, terminal = pty.openpty()
    try:
        with FaultServer(DATA) as server:
            result = subprocess.run([*CACHE, "prefetch", server.url(""), "image-1"], stdout=subprocess.PIPE,
                                    stderr=terminal, text=True, timeout=60)
        os.close(terminal)
        terminal = -1
        shown = b""
        while True:
            try:
                piece = os.read(controller, 4096)
            except OSError:  # EIO: the terminal's other end is closed
                break
            if not piece:
                break
            shown += piece
    finally:
        if terminal >= 0:
            os.close(terminal)
        os.close(controller)
    assert result.returncode == 0
    assert b"image-1: " in shown and b"of 3 MiB" in shown, shown
