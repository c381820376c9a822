"""The lab's Keystone process: ``keystone-manage`` to set it up, then
gunicorn from the Keystone venv on 127.0.0.1, in its own session, stopped by
process group; restartable with other ``keystone.conf`` options (the
database and keys stay, so tokens issued before stay valid).

Set-up (about 5 s): ``db_sync`` (its result cached in the venv as a
template), ``fernet_setup`` and ``credential_setup`` run at once (they are
independent), then ``bootstrap`` (admin, roles ``admin``, ``manager``,
``member``, ``reader``, ``service``, the identity endpoints).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from tests.support.glance.venv import clean_env, run, venv_python
from tests.support.keystone.config import render_gunicorn_conf, render_keystone_conf
from tests.support.keystone.venv import KeystoneEnvError
from tests.support.processes import spawn, stop, wait_serving

START_TIMEOUT = 60
STOP_TIMEOUT = 10
ADMIN_PASSWORD = "lab-admin-secret"  # loopback test server only


@dataclass
class KeystoneServer:
    """A Keystone (gunicorn) with its config dir, sqlite database and keys."""

    venv: Path
    workdir: Path
    port: int
    overrides: dict[str, dict[str, str]] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    start_seconds: float = 0.0

    @property
    def url(self) -> str:
        """The identity API's root (``auth_url`` for keystoneauth)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_dir(self) -> Path:
        return self.workdir / "etc"

    @property
    def log_path(self) -> Path:
        return self.workdir / "logs" / "keystone.log"

    @property
    def access_log_path(self) -> Path:
        return self.workdir / "logs" / "access.log"

    @property
    def gunicorn_log_path(self) -> Path:
        return self.workdir / "logs" / "gunicorn.log"

    def env(self) -> dict[str, str]:
        return clean_env(OS_KEYSTONE_CONFIG_DIR=str(self.config_dir), PYTHONUNBUFFERED="1")

    def log_tail(self, lines: int = 40) -> str:
        chunks = []
        for path in (self.gunicorn_log_path, self.log_path):
            if path.exists():
                chunks.append(f"--- {path} ---\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(chunks)

    def write_config(self) -> None:
        (self.config_dir / "keystone.conf").write_text(render_keystone_conf(workdir=self.workdir,
                                                                             overrides=self.overrides))
        (self.config_dir / "gunicorn.conf.py").write_text(render_gunicorn_conf(workdir=self.workdir, port=self.port))

    def _manage(self, *args: str) -> list[str]:
        return [str(venv_python(self.venv)), str(self.venv / "bin" / "keystone-manage"),
                "--config-file", str(self.config_dir / "keystone.conf"), *args]

    def set_up(self) -> None:
        """Config, database, keys and bootstrap (see the module docstring)."""
        for path in (self.config_dir, self.workdir / "logs", self.workdir / "fernet-keys",
                     self.workdir / "credential-keys"):
            path.mkdir(parents=True, exist_ok=True)
        self.write_config()
        owner = ["--keystone-user", "root", "--keystone-group", "root"]
        jobs = [subprocess.Popen(self._manage(step, *owner), env=self.env(), cwd=self.workdir,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                for step in ("fernet_setup", "credential_setup")]
        try:
            self._db_sync()
            for job in jobs:
                out, _ = job.communicate(timeout=120)
                if job.returncode:
                    raise KeystoneEnvError(f"keystone-manage {job.args[4]} failed: {out.decode(errors='replace')[-2000:]}")
        finally:
            for job in jobs:
                if job.poll() is None:
                    job.kill()
                    job.wait()
        run(self._manage("bootstrap", "--bootstrap-password", ADMIN_PASSWORD, "--bootstrap-username", "admin",
                         "--bootstrap-project-name", "admin", "--bootstrap-role-name", "admin",
                         "--bootstrap-service-name", "keystone", "--bootstrap-region-id", "RegionOne",
                         *(arg for iface in ("admin", "public", "internal")
                           for arg in (f"--bootstrap-{iface}-url", f"{self.url}/v3"))),
            timeout=120, what="keystone-manage bootstrap", env=self.env(), cwd=self.workdir)

    def _db_sync(self) -> None:
        template = self.venv / ".keystone-db-template.sqlite"
        target = self.workdir / "keystone.sqlite"
        if template.exists():
            shutil.copyfile(template, target)
            return
        run(self._manage("db_sync"), timeout=300, what="keystone-manage db_sync", env=self.env(), cwd=self.workdir)
        tmp = template.with_suffix(f".tmp{os.getpid()}")
        shutil.copyfile(target, tmp)
        os.replace(tmp, template)

    def start(self, timeout: float = START_TIMEOUT) -> float:
        if self.proc is not None:
            raise KeystoneEnvError("Keystone is already running")
        started = time.monotonic()
        # No arguments at all: see tests.support.keystone.config.render_gunicorn_conf.
        self.proc = spawn([venv_python(self.venv), self.venv / "bin" / "gunicorn"], self.gunicorn_log_path,
                          env=self.env(), cwd=self.config_dir)

        wait_serving(self.proc, self.url + "/v3", timeout=timeout, failed=KeystoneEnvError,
                     log_tail=self.log_tail, stop_it=self.stop)
        self.start_seconds = time.monotonic() - started
        return self.start_seconds

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop(proc, timeout=STOP_TIMEOUT)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def restart(self, overrides: Mapping[str, Mapping[str, str]] | None = None) -> float:
        """Stop; with ``overrides``, replace the keystone.conf overrides; start (same port, DB and keys)."""
        self.stop()
        if overrides is not None:
            self.overrides = {section: dict(options) for section, options in overrides.items()}
            self.write_config()
        return self.start()

    def token_requests(self) -> int:
        """How many ``POST /v3/auth/tokens`` Keystone's access log holds."""
        if not self.access_log_path.exists():
            return 0
        return self.access_log_path.read_text(errors="replace").count('"POST /v3/auth/tokens')
