"""The lab's Glance API process: gunicorn from the Glance venv on
127.0.0.1, started in its own session and stopped by process group
(``tests.support.processes``), restartable with other config files.

``GlanceServer`` also speaks to it (``GlanceAPI``: identity, requests,
image operations). ``tests.support.glance.lab.glance_server()`` builds one.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from tests.support.glance.api import GlanceAPI
from tests.support.glance.config import render_api_conf
from tests.support.glance.venv import REPO_ROOT, GlanceEnvError, clean_env, venv_python
from tests.support.processes import spawn, stop, wait_serving

START_TIMEOUT = 90
STOP_TIMEOUT = 15


@dataclass
class GlanceServer(GlanceAPI):
    """A running Glance API (gunicorn) with its config dir, stores and web server."""

    venv: Path
    workdir: Path
    port: int
    web: Any  # tests.support.glance.web.StaticHTTPServer
    store_dirs: dict[str, Path] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    start_seconds: float = 0.0
    #: Directories appended to Glance's PYTHONPATH at the next (re)start,
    #: e.g. the rados/rbd bindings of ``tests.support.ceph.bindings_dir()``.
    extra_pythonpath: list[str] = field(default_factory=list)
    #: Write gunicorn's access log (``access_log_path``): which requests reached Glance.
    access_log: bool = False

    @property
    def url(self) -> str:  # type: ignore[override]
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_dir(self) -> Path:
        return self.workdir / "etc"

    @property
    def api_conf_path(self) -> Path:
        return self.config_dir / "glance-api.conf"

    @property
    def paste_ini_path(self) -> Path:
        return self.config_dir / "glance-api-paste.ini"

    @property
    def policy_path(self) -> Path:
        return self.config_dir / "policy.yaml"

    @property
    def log_path(self) -> Path:
        return self.workdir / "logs" / "gunicorn.log"

    @property
    def access_log_path(self) -> Path:
        return self.workdir / "logs" / "access.log"

    @property
    def glance_log_path(self) -> Path:  # type: ignore[override]
        return self.workdir / "logs" / "glance-api.log"

    # -- lifecycle --

    def env(self) -> dict[str, str]:
        return clean_env(
            OS_GLANCE_CONFIG_DIR=str(self.config_dir),
            # REPO_ROOT first: locproxy's code always comes from this checkout
            # (the venv's editable install supplies the entry points for
            # "egg:locproxy#..."), and so does the test-only tokenauth filter
            # (tests.support.glance.tokenauth).
            PYTHONPATH=os.pathsep.join([str(REPO_ROOT), *self.extra_pythonpath]),
            PYTHONUNBUFFERED="1",
        )

    def log_tail(self, lines: int = 60) -> str:
        chunks = []
        for path in (self.log_path, self.glance_log_path):
            if path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                chunks.append(f"--- {path} ---\n" + "\n".join(text))
        return "\n".join(chunks)

    def start(self, timeout: float = START_TIMEOUT) -> float:
        if self.proc is not None:
            raise GlanceEnvError("already running")
        started = time.monotonic()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            venv_python(self.venv), self.venv / "bin" / "gunicorn",
            "--bind", f"127.0.0.1:{self.port}",
            "--workers", "1", "--worker-class", "gthread", "--threads", "8",
            "--timeout", "120", "--graceful-timeout", "5",
            "--chdir", str(self.workdir),
            "--log-level", "warning",
            "--no-control-socket",  # gunicorn 27 would open ~/.gunicorn/gunicorn.ctl, shared by all
            *(["--access-logfile", str(self.access_log_path)] if self.access_log else []),
            "glance.wsgi.api:application",
        ]
        self.proc = spawn(cmd, self.log_path, env=self.env(), cwd=self.workdir)

        wait_serving(self.proc, self.url + "/versions", timeout=timeout, failed=GlanceEnvError,
                     log_tail=self.log_tail, stop_it=self.stop)
        self.start_seconds = time.monotonic() - started
        return self.start_seconds

    def stop(self) -> None:
        """gunicorn's master and workers share a process group: SIGTERM
        (graceful), then SIGKILL to the group, so no worker outlives it."""
        proc, self.proc = self.proc, None
        if proc is not None:
            stop(proc, timeout=STOP_TIMEOUT)

    def restart(self, paste_ini: str | None = None, *, api_conf: str | None = None) -> float:
        """Stop, optionally replace glance-api-paste.ini / glance-api.conf, start again (same port)."""
        self.stop()
        if paste_ini is not None:
            self.paste_ini_path.write_text(paste_ini)
        if api_conf is not None:
            self.api_conf_path.write_text(api_conf)
        return self.start()

    def render_api_conf(self, overrides: Mapping[str, Mapping[str, str]] | None = None) -> str:
        """This server's glance-api.conf, with ``{section: {option: value}}`` overrides."""
        return render_api_conf(workdir=self.workdir, port=self.port, web_port=self.web.port,
                               store_dirs=self.store_dirs, overrides=overrides)

    @contextlib.contextmanager
    def config_overrides(self, overrides: Mapping[str, Mapping[str, str]]) -> Iterator[GlanceServer]:
        """Run with glance-api.conf overrides for the duration (restart), then restore."""
        original = self.api_conf_path.read_text()
        self.restart(api_conf=self.render_api_conf(overrides))
        try:
            yield self
        finally:
            self.restart(api_conf=original)

    @contextlib.contextmanager
    def paste_pipeline(self, paste_ini: str) -> Iterator[GlanceServer]:
        """Run with another paste file for the duration, then restore the default one."""
        original = self.paste_ini_path.read_text()
        self.restart(paste_ini)
        try:
            yield self
        finally:
            self.restart(original)
