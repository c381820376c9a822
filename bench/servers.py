"""Servers the benchmark starts on 127.0.0.1: gunicorn (the locproxy sidecar,
the stand-in upstream, the latency apps) and nginx (sendfile and proxy_pass
peers).

Every process runs in its own session (process group) and is registered in
``STARTED``; ``stop_all()`` (called on exit, errors and Ctrl-C) stops exactly
those groups with ``locproxy.sidecar.stop_process``: SIGTERM, a bounded wait,
then SIGKILL to the group.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

from locproxy.sidecar import gunicorn_args, sidecar_command, stop_process

REPO_ROOT = Path(os.environ.get("LOCPROXY_BENCH_REPO") or Path(__file__).resolve().parent.parent).resolve()
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


def _spawn(command: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            list(command), cwd=str(REPO_ROOT), env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    STARTED.append(process)
    return process


def stop(process: subprocess.Popen) -> None:
    # A process that outlives even SIGKILL's bounded wait must not keep the
    # others running: stop_all goes on.
    with contextlib.suppress(subprocess.TimeoutExpired):
        stop_process(process, group=True, timeout=STOP_TIMEOUT)
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

@dataclass
class Gunicorn:
    name: str
    port: int
    process: subprocess.Popen
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def workers(self) -> list[int]:
        return children(self.process.pid)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _options(port: int, workers: int, threads: int, worker_class: str) -> list[str]:
    """The same gunicorn settings for every server here (the sidecar's paste
    settings come on top)."""
    return ["--bind", f"127.0.0.1:{port}", "--workers", str(workers), "--threads", str(threads),
            "--worker-class", worker_class, "--timeout", "120", "--graceful-timeout", "3",
            "--backlog", "2048", "--log-level", "warning", "--error-logfile", "-"]


@contextlib.contextmanager
def gunicorn(name: str, app: str, workdir: Path, *, workers: int = 1, threads: int = 16,
             env: Mapping[str, str] | None = None) -> Iterator[Gunicorn]:
    """gunicorn gthread serving ``app``, a ``module:callable()`` spec
    importable from the repository root, on a free loopback port."""
    config = workdir / "gunicorn.conf.py"
    config.write_text("")  # no gunicorn.conf.py from the cwd

    def command(port: int) -> list[str]:
        return [sys.executable, "-m", "gunicorn", "--config", str(config), *gunicorn_args(),
                *_options(port, workers, threads, "gthread"), app]

    with _running(name, workdir, command, workers, env) as server:
        yield server


@contextlib.contextmanager
def sidecar(name: str, workdir: Path, paste_globals: Mapping[str, str], *, workers: int, threads: int,
            worker_class: str, env: Mapping[str, str] | None = None) -> Iterator[Gunicorn]:
    """The locproxy sidecar as ``locproxy serve`` runs it (the packaged
    gunicorn.conf.py and paste.ini), with ``paste_globals`` and our gunicorn settings.

    Each start has a fresh state directory of its own (``$STATE_DIRECTORY``, for
    ``metrics_file = auto``): a new node, never ``/var/lib/locproxy``."""
    state = Path(tempfile.mkdtemp(prefix=f"state-{name}-", dir=workdir))

    def command(port: int) -> list[str]:
        return sidecar_command(paste_globals, _options(port, workers, threads, worker_class))

    with _running(name, workdir, command, workers, {"STATE_DIRECTORY": str(state), **(env or {})}) as server:
        yield server


@contextlib.contextmanager
def _running(name: str, workdir: Path, command: Callable[[int], list[str]], workers: int,
             env: Mapping[str, str] | None = None) -> Iterator[Gunicorn]:
    port = free_port()
    log_path = workdir / f"gunicorn-{name}-{port}.log"
    process = _spawn(command(port), log_path, env=env)
    server = Gunicorn(name, port, process, log_path)
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
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    def bytes_sent(self, name: str) -> int:
        """Body bytes the sendfile server sent for ``/name`` so far (its access log)."""
        log = self.prefix / "static.log"
        if not log.exists():
            return 0
        return sum(int(fields[2]) for fields in (line.split() for line in log.read_text().splitlines())
                   if len(fields) == 3 and fields[0] == f"/{name}" and fields[2].isdigit())

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
            log_format sent '$uri $status $body_bytes_sent';
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
                access_log {prefix}/static.log sent;  # what the http backend sent (the cache row counts it)
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
