"""The Glance lab as one context manager: ``glance_server()`` builds or
reuses the cached venv, writes a temporary config dir (``glance-api.conf``,
``glance-api-paste.ini``, ``policy.yaml``), a sqlite database and the stores
``fs1``/``fs2`` (file) and ``web`` (http, a loopback ``StaticHTTPServer``),
starts Glance's API under gunicorn on 127.0.0.1:<free port> without
keystone, and stops and removes everything on exit.

``LOCPROXY_KEEP_GLANCE_TMP=1`` keeps the temporary directory (config, DB,
stores, logs); ``LOCPROXY_SKIP_INTEGRATION=1`` is read by the integration
tests' conftest. Trust: loopback only; the Glance it starts believes
whatever identity a client claims.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from tests.support.glance.config import render_paste_ini, render_policy
from tests.support.glance.server import GlanceServer
from tests.support.glance.venv import GlanceEnvError, VenvInfo, clean_env, ensure_venv, run, venv_python
from tests.support.glance.web import StaticHTTPServer
from tests.support.processes import free_port

ENV_SKIP = "LOCPROXY_SKIP_INTEGRATION"
ENV_KEEP = "LOCPROXY_KEEP_GLANCE_TMP"


def _db_sync(venv: Path, config_dir: Path, workdir: Path) -> None:
    """``glance-manage db_sync``; the result is cached in the venv as a template DB.

    The DB is switched to WAL journaling (persistent in the file): in the
    default rollback mode, Glance's import/location tasks, which write from
    several connections at once, fail at random with "database is locked"
    while the API is also being read.
    """
    template = venv / ".glance-db-template-wal.sqlite"
    target = workdir / "glance.sqlite"
    if template.exists():
        shutil.copyfile(template, target)
        return
    run([venv_python(venv), venv / "bin" / "glance-manage", "--config-file", config_dir / "glance-api.conf",
         "db_sync"], timeout=300, what="glance-manage db_sync", env=clean_env(), cwd=workdir)
    with contextlib.closing(sqlite3.connect(target)) as db:
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode != "wal":
        raise GlanceEnvError(f"could not switch {target} to WAL (journal_mode={mode})")
    tmp = template.with_suffix(f".tmp{os.getpid()}")
    shutil.copyfile(target, tmp)
    os.replace(tmp, template)


@contextlib.contextmanager
def glance_server(*, venv: VenvInfo | None = None, workdir: Path | None = None,
                  server_class: Callable[..., GlanceServer] = GlanceServer,
                  api_overrides: Mapping[str, Mapping[str, str]] | None = None,
                  paste_ini: Callable[[Path], str] | None = None, policy: str | None = None,
                  **server_fields: Any) -> Iterator[GlanceServer]:
    """Build/reuse the venv, configure and start Glance (+ the web store server); stop all on exit.

    The Keystone lab (``tests.support.keystone.lab``) passes its own
    ``server_class``, glance-api.conf ``api_overrides``, a ``paste_ini(venv)``
    and ``policy`` text; ``server_fields`` go to the server class."""
    venv = venv or ensure_venv()
    own_workdir = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="locproxy-glance-")) if workdir is None else workdir
    server: GlanceServer | None = None
    web = None
    try:
        store_dirs = {name: workdir / "stores" / name for name in ("fs1", "fs2", "staging", "tasks")}
        for path in [*store_dirs.values(), workdir / "etc", workdir / "logs", workdir / "locks"]:
            path.mkdir(parents=True, exist_ok=True)
        web = StaticHTTPServer(workdir / "web")
        store_dirs["web"] = web.root
        server = server_class(venv=venv.path, workdir=workdir, port=free_port(), web=web, store_dirs=store_dirs,
                              **server_fields)
        server.api_conf_path.write_text(server.render_api_conf(api_overrides))
        server.paste_ini_path.write_text(render_paste_ini() if paste_ini is None else paste_ini(venv.path))
        server.policy_path.write_text(render_policy() if policy is None else policy)
        _db_sync(venv.path, server.config_dir, workdir)
        server.start()
        yield server
    finally:
        if server is not None:
            server.stop()
        if web is not None:
            web.close()
        if own_workdir and not os.environ.get(ENV_KEEP):
            shutil.rmtree(workdir, ignore_errors=True)
