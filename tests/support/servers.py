"""Real servers on loopback for tests.

* ``run_gunicorn(app)``: gunicorn in a subprocess (``--paste x.ini`` or a
  ``module:callable`` spec), yields a ``GunicornServer`` (``.url``, ``.port``,
  ``.pid``, ``.log()``).
* WSGI apps in this process: ``locproxy.demo.serve_wsgi`` (chunked request
  bodies and ``RAW_URI``, like gunicorn).
* ``serve_raw_http_in_thread(respond)``: for responses no WSGI server will
  send (hop-by-hop headers, truncated bodies, interim responses, keep-alive
  accounting): ``respond(head, sock)`` gets each request's header block and
  writes whatever bytes it likes.

Everything binds 127.0.0.1 only, every wait is bounded, and each context
manager stops what it started (processes, threads, sockets) on exit.
"""

from __future__ import annotations

import os
import re
import socket
import socketserver
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from locproxy.demo.serving import LocalServer, TrackedThreads
from locproxy.sidecar import gunicorn_args
from tests.support.processes import STOP_TIMEOUT, accepts, free_port, spawn, stop, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]

# Seconds: how long to wait for a server to start.
START_TIMEOUT = 15.0


# -- gunicorn in a subprocess ------------------------------------------------

# Paste ini logging sections: every record at LEVEL to stderr (gunicorn's
# log), one "LEVEL logger: message" line each, for tests that read the log.
LOGGING = """
[loggers]
keys = root
[handlers]
keys = stderr
[formatters]
keys = plain
[logger_root]
level = {level}
handlers = stderr
[handler_stderr]
class = StreamHandler
args = (sys.stderr,)
formatter = plain
[formatter_plain]
format = %(levelname)s %(name)s: %(message)s
"""


def sidecar_ini(path: Path, upstream: str, filter_options: Mapping[str, Any],
                proxy_options: Mapping[str, Any] = {}, log_level: str = "DEBUG") -> Path:  # noqa: B006 - read only
    """Write a sidecar paste ini (locproxy filter + proxy app) with these
    options, logging at ``log_level``; returns ``path``."""
    lines = ["[pipeline:main]", "pipeline = locproxy proxy", "", "[filter:locproxy]", "use = egg:locproxy#locproxy"]
    lines += [f"{name} = {value}" for name, value in filter_options.items()]
    lines += ["", "[app:proxy]", "use = egg:locproxy#proxy", f"upstream = {upstream}"]
    lines += [f"{name} = {value}" for name, value in proxy_options.items()]
    path.write_text("\n".join(lines) + "\n" + LOGGING.replace("{level}", log_level))
    return path


@dataclass
class GunicornServer:
    """A running gunicorn: its base URL, port, master pid and captured log."""

    url: str
    port: int
    process: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        """Everything gunicorn wrote to stdout/stderr so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_after(self, pattern: str, count: int = 1, timeout: float = 10) -> str:
        """The log once ``pattern`` (a regex) matched ``count`` times; a worker
        logs some lines just after its client has the last byte. Returns the
        log as it is at the deadline otherwise, for the caller's assertion."""
        deadline = time.monotonic() + timeout
        while len(re.findall(pattern, log := self.log())) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return log


@contextmanager
def run_gunicorn(
    app: str | os.PathLike,
    *,
    threads: int = 4,
    workers: int = 1,
    env: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
    start_timeout: float = START_TIMEOUT,
) -> Iterator[GunicornServer]:
    """Run ``sys.executable -m gunicorn`` on 127.0.0.1 and a free port.

    ``app`` is a paste ini path (``*.ini`` or an existing file, run with
    ``--paste``) or a ``module:callable`` spec (imported from the repository
    root). Returns once the port accepts connections and every worker has
    booted; fails with gunicorn's log if that takes longer than
    ``start_timeout`` or gunicorn exits. On exit: SIGTERM (graceful timeout
    2 s), then SIGKILL to the whole process group.

    ``extra_args`` come after the defaults, so they can override them
    (gunicorn keeps the last value of an option).
    """
    port = free_port()
    spec = os.fspath(app)
    target = ["--paste", spec] if spec.endswith(".ini") or os.path.isfile(spec) else [spec]
    with tempfile.TemporaryDirectory(prefix="locproxy-gunicorn-") as workdir:
        log_path = Path(workdir) / "gunicorn.log"
        # An empty config file, so a gunicorn.conf.py in the working directory
        # cannot change what the tests run.
        config = Path(workdir) / "gunicorn.conf.py"
        config.write_text("")
        command = [
            sys.executable, "-m", "gunicorn",
            "--config", str(config),
            "--bind", f"127.0.0.1:{port}",
            "--workers", str(workers),
            "--threads", str(threads),
            "--graceful-timeout", "2",
            "--timeout", "30",
            "--log-level", "info",
            "--error-logfile", "-",
            *gunicorn_args(),
            *extra_args,
            *target,
        ]
        process = spawn(command, log_path, env={**os.environ, **(env or {})}, cwd=REPO_ROOT)
        server = GunicornServer(f"http://127.0.0.1:{port}", port, process, log_path)
        try:
            _wait_for_gunicorn(server, workers, start_timeout)
            yield server
        finally:
            stop(process)


def _wait_for_gunicorn(server: GunicornServer, workers: int, timeout: float) -> None:
    def booted() -> bool:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"gunicorn exited with status {server.process.returncode} before serving:\n{server.log()}"
            )
        return server.log().count("Booting worker") >= workers and accepts(server.port)

    try:
        wait_until(booted, timeout=timeout, what="gunicorn")
    except TimeoutError:
        raise RuntimeError(f"gunicorn did not start within {timeout:g}s:\n{server.log()}") from None


# -- raw HTTP servers in this process ---------------------------------------------

class _RawServer(TrackedThreads, socketserver.TCPServer):
    def __init__(self, respond: Callable[[bytes, socket.socket], bool | None]) -> None:
        self.respond = respond
        super().__init__(("127.0.0.1", 0), _RawHandler)


class _RawHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(STOP_TIMEOUT)
        buffered = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffered:
                    data = sock.recv(65536)
                    if not data or len(buffered) > 1 << 20:
                        return
                    buffered += data
                head, buffered = buffered.split(b"\r\n\r\n", 1)
                if not self.server.respond(head + b"\r\n\r\n", sock):  # type: ignore[attr-defined]
                    return
        except OSError:
            pass  # the peer went away: that is often what the test is about


@contextmanager
def serve_raw_http_in_thread(respond: Callable[[bytes, socket.socket], bool | None]) -> Iterator[str]:
    """Accept connections on 127.0.0.1; for each request, read its head (up to
    and including the blank line) and call ``respond(head, sock)``, which
    writes raw bytes (and reads a request body itself, if there is one). The
    connection is closed when ``respond`` returns a false value, or kept for
    the next request when it returns True. Yields ``http://127.0.0.1:PORT``."""
    with LocalServer(_RawServer(respond)) as server:
        yield server.url
