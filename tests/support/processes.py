"""Process control for tests: start a server in its own session, wait for
it, stop it by pid and process group.

* ``free_port()``: a TCP port on 127.0.0.1 that was free a moment ago.
* ``accepts(port)``: whether something accepts connections there now.
* ``spawn(command, log_path)``: ``subprocess.Popen`` in a new session (its
  pid is its process group: master and workers), stdin closed, stdout and
  stderr appended to ``log_path``.
* ``wait_until(predicate, timeout=..., what=...)``: poll until the predicate
  returns something true (returned), or raise ``TimeoutError`` naming
  ``what``; every wait is bounded.
* ``children(pid)``: the pids of a process's children (e.g. gunicorn's
  workers), from ``/proc``.
* ``stop(process)``: ``locproxy.sidecar.stop_process`` on the whole process
  group (SIGTERM, bounded wait, SIGKILL), so no worker outlives its master.

Everything here binds or connects to 127.0.0.1 only.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from locproxy.sidecar import stop_process
from tests.support.client import http_request

#: Seconds a stopping process group gets before it is killed.
STOP_TIMEOUT = 10.0


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listened on when this returned."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def accepts(port: int, timeout: float = 0.5) -> bool:
    """Whether a connection to 127.0.0.1:port succeeds now."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def spawn(command: Sequence[str | os.PathLike[str]], log_path: Path, *, env: Mapping[str, str] | None = None,
          cwd: str | os.PathLike[str] | None = None) -> subprocess.Popen:
    """Start ``command`` in a session of its own (see the module docstring).

    ``env`` is the whole environment (None: this process's)."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [os.fspath(part) for part in command],
            cwd=None if cwd is None else os.fspath(cwd),
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # one process group: master and workers
        )


def wait_until(predicate: Callable[[], Any], *, timeout: float, interval: float = 0.05, what: str) -> Any:
    """Call ``predicate`` until it returns a true value (returned) or
    ``timeout`` seconds have passed (``TimeoutError`` naming ``what``).
    Exceptions of ``predicate`` propagate: it can fail fast, e.g. when the
    process it waits for has exited."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def wait_serving(process: subprocess.Popen, url: str, *, timeout: float, failed: Callable[[str], Exception],
                 log_tail: Callable[[], str], stop_it: Callable[[], None]) -> None:
    """Wait until ``url`` answers 200 from the server ``process`` started.
    ``failed(message)`` is raised, with its log's tail, if the process exits
    or the wait times out; ``stop_it`` then stops it (also on any other error)."""
    def ready() -> bool:
        if process.poll() is not None:
            raise failed(f"{what} exited with {process.returncode} while starting\n{log_tail()}")
        try:
            return http_request(url, timeout=2).status == 200
        except OSError:
            return False

    what = f"the server on {url}"
    try:
        wait_until(ready, timeout=timeout, interval=0.1, what=what)
    except TimeoutError as exc:
        stop_it()
        raise failed(f"{exc}\n{log_tail()}") from None
    except BaseException:
        stop_it()
        raise


def children(pid: int) -> list[int]:
    """The pids of ``pid``'s child processes (Linux ``/proc``), in order."""
    return sorted(int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())


def stop(process: subprocess.Popen, timeout: float = STOP_TIMEOUT) -> None:
    """Stop a process started by ``spawn`` and everything in its group."""
    stop_process(process, group=True, timeout=timeout)
