"""Debian's nginx serving a directory on 127.0.0.1 (``static_nginx``), as
an http copy's server: its ``ETag`` is the file's mtime (whole seconds) and
size, ``Last-Modified`` the mtime. Skipped with the reason where nginx is
not installed: the project's ``.ci/run`` installs no Debian package, and
these tests do not either (``apt-get install nginx-light`` brings it)."""

from __future__ import annotations

import os
import shutil
import textwrap
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.processes import accepts, free_port, spawn, stop, wait_until


def nginx_binary() -> str:
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if binary is None:
        pytest.skip("nginx is not installed (.ci/run installs no Debian packages; apt-get install nginx-light)")
    return binary


@contextmanager
def static_nginx(root: Path, prefix: Path) -> Iterator[int]:
    """nginx (one worker, sendfile) serving ``root``; yields its port."""
    binary = nginx_binary()
    prefix.mkdir(parents=True, exist_ok=True)
    port = free_port()
    user = "user root;\n" if os.geteuid() == 0 else ""  # the test's files are owner-only
    (prefix / "nginx.conf").write_text(user + textwrap.dedent(f"""\
        worker_processes 1;
        pid {prefix}/nginx.pid;
        error_log {prefix}/error.log warn;
        events {{ worker_connections 64; }}
        http {{
            access_log off;
            default_type application/octet-stream;
            sendfile on;
            client_body_temp_path {prefix}/body;
            proxy_temp_path {prefix}/proxy;
            fastcgi_temp_path {prefix}/fastcgi;
            uwsgi_temp_path {prefix}/uwsgi;
            scgi_temp_path {prefix}/scgi;
            server {{ listen 127.0.0.1:{port}; root {root}; }}
        }}
        """))
    process = spawn([binary, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(prefix / "nginx.conf"),
                     "-g", "daemon off;"], prefix / "console.log")
    try:
        wait_until(lambda: accepts(port) or process.poll() is not None, timeout=10, what="nginx")
        if process.poll() is not None:
            raise RuntimeError(f"nginx exited: {(prefix / 'console.log').read_text()[-2000:]}")
        yield port
    finally:
        stop(process)
