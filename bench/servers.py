"""Servers the benchmark starts on 127.0.0.1: gunicorn (locproxy, the stand-in
upstream, the latency apps) and nginx (sendfile and proxy_pass peers).

Every process runs in its own session (process group) and is registered in
``STARTED``; ``stop_all()`` (called on exit, errors and Ctrl-C) stops exactly
those groups: SIGTERM, a bounded wait, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

REPO_ROOT = Path(os.environ.get("LOCPROXY_BENCH_REPO") or Path(__file__).resolve().parent.parent).resolve()
PASTE_INI = REPO_ROOT / "etc" / "paste.ini"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0

STARTED: list[subprocess.Popen] = []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def refused_port() -> int:
    """A loopback port nothing listens on (connecting is refused at once)."""
    for _ in range(50):
        port = free_port()
        if not accepts(port):
            return port
    raise RuntimeError("no refused port found")


def _spawn(command: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None,
           cwd: Path | None = None) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            list(command), cwd=str(cwd or REPO_ROOT), env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    STARTED.append(process)
    return process


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
    # Children that outlived their parent (gunicorn workers, nginx workers).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=STOP_TIMEOUT)
    if process in STARTED:
        STARTED.remove(process)


def stop_all() -> None:
    for process in list(reversed(STARTED)):
        stop(process)


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


# -- gunicorn -------------------------------------------------------------------

def _no_control_socket() -> list[str]:
    from gunicorn.config import KNOWN_SETTINGS

    known = any("--no-control-socket" in (setting.cli or ()) for setting in KNOWN_SETTINGS)
    return ["--no-control-socket"] if known else []


@dataclass
class Gunicorn:
    name: str
    port: int
    process: subprocess.Popen
    log_path: Path
    settings: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def workers(self) -> list[int]:
        return children(self.process.pid)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def gunicorn(name: str, app: str, workdir: Path, *, workers: int = 1, threads: int = 16,
             worker_class: str = "gthread", paste_globals: Mapping[str, str] | None = None,
             env: Mapping[str, str] | None = None, extra: Sequence[str] = ()) -> Iterator[Gunicorn]:
    """gunicorn on a free loopback port: ``app`` is a paste ini (``*.ini``) or
    a ``module:callable()`` spec importable from the repository root."""
    port = free_port()
    log_path = workdir / f"gunicorn-{name}-{port}.log"
    config = workdir / "gunicorn.conf.py"
    config.write_text("")  # no gunicorn.conf.py from the cwd
    target = ["--paste", app] if app.endswith(".ini") else [app]
    pg = [arg for key, value in (paste_globals or {}).items() for arg in ("--paste-global", f"{key}={value}")]
    command = [
        sys.executable, "-m", "gunicorn", "--config", str(config),
        "--bind", f"127.0.0.1:{port}", "--workers", str(workers), "--threads", str(threads),
        "--worker-class", worker_class, "--timeout", "120", "--graceful-timeout", "3",
        "--backlog", "2048", "--log-level", "warning", "--error-logfile", "-",
        *_no_control_socket(), *pg, *extra, *target,
    ]
    process = _spawn(command, log_path, env=env)
    server = Gunicorn(name, port, process, log_path,
                      {"workers": workers, "threads": threads, "worker_class": worker_class, **(paste_globals or {})})
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not (accepts(port) and len(server.workers) >= workers):
            if process.poll() is not None:
                raise RuntimeError(f"gunicorn {name} exited ({process.returncode}):\n{server.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn {name} did not start:\n{server.log()[-3000:]}")
            time.sleep(0.05)
        time.sleep(0.3)  # workers import the app after forking
        yield server
    finally:
        stop(process)


# -- nginx ----------------------------------------------------------------------

NGINX_PROXY_SETTINGS = textwrap.dedent("""\
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_buffering on;
    proxy_buffer_size 256k;
    proxy_buffers 8 256k;
    proxy_busy_buffers_size 512k;
    proxy_max_temp_file_size 0;""")


@dataclass
class Nginx:
    static_port: int  # sendfile from the image directory: peer and http backend
    proxy_port: int  # proxy_pass to static_port
    api_port: int | None  # proxy_pass to the image API (a latency peer for the sidecar)
    process: subprocess.Popen
    prefix: Path

    @property
    def static_url(self) -> str:
        return f"http://127.0.0.1:{self.static_port}"

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    @staticmethod
    def version() -> str:
        out = subprocess.run(["nginx", "-v"], capture_output=True, text=True)
        return (out.stderr or out.stdout).strip().split("/")[-1]


def nginx_config(prefix: Path, root: Path, static_port: int, proxy_port: int, worker_processes: int,
                 api_port: int | None = None, api_upstream_port: int | None = None) -> str:
    api = ""
    if api_port and api_upstream_port:
        api = f"""
            upstream api {{ server 127.0.0.1:{api_upstream_port}; keepalive 32; }}
            server {{
                listen 127.0.0.1:{api_port};
                location / {{
                    proxy_pass http://api;
        {textwrap.indent(NGINX_PROXY_SETTINGS, ' ' * 20)}
                }}
            }}"""
    return textwrap.dedent(f"""\
        # locproxy bench: loopback only, written per run.
        worker_processes {worker_processes};
        pid {prefix}/nginx.pid;
        error_log {prefix}/error.log warn;
        events {{ worker_connections 1024; }}
        http {{
            access_log off;
            default_type application/octet-stream;
            sendfile on;
            tcp_nopush on;
            keepalive_requests 100000;
            client_body_temp_path {prefix}/tmp/body;
            proxy_temp_path {prefix}/tmp/proxy;
            fastcgi_temp_path {prefix}/tmp/fastcgi;
            uwsgi_temp_path {prefix}/tmp/uwsgi;
            scgi_temp_path {prefix}/tmp/scgi;
            upstream backend {{ server 127.0.0.1:{static_port}; keepalive 32; }}
            server {{
                listen 127.0.0.1:{static_port};
                root {root};
            }}
            server {{
                listen 127.0.0.1:{proxy_port};
                location / {{
                    proxy_pass http://backend;
        {textwrap.indent(NGINX_PROXY_SETTINGS, ' ' * 12)}
                }}
            }}{api}
        }}
        """)


@contextlib.contextmanager
def nginx(root: Path, workdir: Path, worker_processes: int = 2, static_port: int | None = None,
          api_upstream_port: int | None = None) -> Iterator[Nginx]:
    """``nginx -p DIR -c nginx.conf -g 'daemon off;'`` as our child."""
    prefix = Path(tempfile.mkdtemp(prefix="nginx-", dir=workdir))
    (prefix / "tmp").mkdir()
    # Run as root, nginx's workers become "nobody": let them into the prefix.
    for path in (workdir, prefix, prefix / "tmp"):
        path.chmod(0o755)
    static_port = static_port or free_port()
    proxy_port = free_port()
    api_port = free_port() if api_upstream_port else None
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_config(prefix, root, static_port, proxy_port, worker_processes, api_port, api_upstream_port))
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    process = _spawn([binary, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"], prefix / "stdout.log")
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not (accepts(static_port) and accepts(proxy_port)):
            if process.poll() is not None or time.monotonic() > deadline:
                error_log = (prefix / "error.log").read_text(errors="replace") if (prefix / "error.log").exists() else ""
                raise RuntimeError(f"nginx did not start: {error_log[-2000:]}")
            time.sleep(0.05)
        yield Nginx(static_port, proxy_port, api_port, process, prefix)
    finally:
        stop(process)
