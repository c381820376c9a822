"""Debian's nginx serving a directory on 127.0.0.1 (``static_nginx``), as
an http copy's server: its ``ETag`` is the file's mtime (whole seconds) and
size, ``Last-Modified`` the mtime. As root, Debian's ``nginx-light`` is
installed with apt-get when missing (as ``tests/support/ceph.py`` installs
Ceph), about 10 s once; elsewhere, or with ``LOCPROXY_NO_INSTALL=1``, the
tests that need it skip with the reason."""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.processes import accepts, free_port, spawn, stop, wait_until

INSTALL_TIMEOUT = 600


def _installed() -> str | None:
    return shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)


def nginx_binary() -> str:
    binary = _installed()
    if binary is None and os.geteuid() == 0 and shutil.which("apt-get") and not os.environ.get("LOCPROXY_NO_INSTALL"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "--no-install-recommends", "nginx-light"]
        if subprocess.run(install, env=env, capture_output=True, timeout=INSTALL_TIMEOUT).returncode != 0:
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=INSTALL_TIMEOUT)
            subprocess.run(install, env=env, capture_output=True, timeout=INSTALL_TIMEOUT)
        binary = _installed()
    if binary is None:
        pytest.skip("nginx is not installed and could not be (apt-get install nginx-light, as root)")
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
