"""A reproducible, real OpenStack Glance for locproxy's integration tests.

What it builds:

* a separate virtualenv with ``glance``, ``python-glanceclient`` and
  ``gunicorn`` pinned by ``glance-constraints.txt`` beside this file, plus
  locproxy itself installed editable (so Glance's paste pipeline can say
  ``use = egg:locproxy#locproxy``). It is cached in
  ``${LOCPROXY_GLANCE_VENV:-~/.cache/locproxy/glance-venv-<hash>}`` where the
  hash covers the constraints file and the Python version; it is built in a
  temporary sibling directory and renamed into place, so an interrupted install
  never leaves a half venv behind;
* per server, a temporary directory with ``glance-api.conf``,
  ``glance-api-paste.ini`` and ``policy.yaml`` (exactly the files Glance reads
  from ``OS_GLANCE_CONFIG_DIR``), a sqlite database, and the stores
  ``fs1``/``fs2`` (file) and ``web`` (http, served by a loopback
  ``StaticHTTPServer``);
* Glance's API under gunicorn (``glance.wsgi.api:application``) on
  127.0.0.1:<free port>, without keystone: the pipeline trusts the identity
  headers that keystonemiddleware would set (``X-Identity-Status: Confirmed``,
  ``X-User-Id``, ``X-Project-Id``, ``X-Roles``); a test-only ``tokenauth``
  filter derives them from ``X-Auth-Token: user:project:role,role`` for the
  glance CLI, which cannot send other headers.

Use ``glance_server()`` (a context manager; ``conftest.py`` wraps it as the
session fixture ``glance_server``) or run this file::

    python tests/integration/glance_env.py --selfcheck   # build/reuse, start, exercise, time
    python tests/integration/glance_env.py --freeze      # rebuild unpinned, rewrite the pins

Trust: everything here is for tests on loopback only. The Glance it starts
believes whatever identity a client claims.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
CONSTRAINTS_FILE = HERE / "glance-constraints.txt"
# What the venv is for; versions come from CONSTRAINTS_FILE.
# setuptools and wheel: to install locproxy editable without build isolation
# (offline, so a changed setup.cfg re-installs in seconds).
REQUIREMENTS = ("glance", "python-glanceclient", "gunicorn", "setuptools", "wheel")

ENV_VENV = "LOCPROXY_GLANCE_VENV"
ENV_SKIP = "LOCPROXY_SKIP_INTEGRATION"
ENV_KEEP = "LOCPROXY_KEEP_GLANCE_TMP"

READY_MARKER = ".locproxy-glance-ready"
LOCPROXY_STAMP = ".locproxy-install-stamp"

PIP_INSTALL_TIMEOUT = 1800  # seconds, a cold install takes well under a minute
START_TIMEOUT = 90
STOP_TIMEOUT = 15
REQUEST_TIMEOUT = 60

DEFAULT_PROJECT = "locproxy-project"
DEFAULT_USER = "locproxy-user"
DEFAULT_ROLES = ("admin", "member", "reader")

# Base pipeline: what the brief calls "cors http_proxy_to_wsgi versionnegotiation
# context rootapp", with the test-only tokenauth filter before context.
DEFAULT_PIPELINE = ("cors", "http_proxy_to_wsgi", "versionnegotiation", "tokenauth", "context", "rootapp")

# Location operations (and the others a test may need) opened to the image's
# project members as well as admins; Glance's defaults make several admin-only
# (delete_image_location, copy_image, publicize_image) or service-only
# (fetch_image_location).
POLICY_RULES = {
    "admin_or_member": "role:admin or (role:member and project_id:%(project_id)s)",
    "get_image_location": "rule:admin_or_member",
    "set_image_location": "rule:admin_or_member",
    "delete_image_location": "rule:admin_or_member",
    "add_image_location": "rule:admin_or_member",
    "fetch_image_location": "rule:admin_or_member",
    "copy_image": "rule:admin_or_member",
    "deactivate": "rule:admin_or_member",
    "reactivate": "rule:admin_or_member",
    "publicize_image": "role:admin or role:member",
    "communitize_image": "role:admin or role:member",
}


class GlanceEnvError(RuntimeError):
    """The Glance environment could not be built or started (message says why)."""


def _log(message: str) -> None:
    print(f"glance_env: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the venv ---


def base_python() -> str:
    """The interpreter to build the Glance venv with (not a venv's own python)."""
    return os.environ.get("LOCPROXY_GLANCE_PYTHON") or getattr(sys, "_base_executable", None) or sys.executable


def _python_tag(python: str) -> str:
    out = subprocess.run(
        [python, "-c", "import sys,platform; print(platform.python_implementation(), *sys.version_info[:2])"],
        check=True, capture_output=True, text=True, timeout=60,
    )
    return out.stdout.strip()


def venv_key(constraints: Path = CONSTRAINTS_FILE, python: str | None = None) -> str:
    digest = hashlib.sha256()
    digest.update(constraints.read_bytes() if constraints.exists() else b"unpinned")
    digest.update(_python_tag(python or base_python()).encode())
    return digest.hexdigest()[:16]


def venv_dir(constraints: Path = CONSTRAINTS_FILE) -> Path:
    configured = os.environ.get(ENV_VENV, "").strip()
    if configured:
        return Path(configured).expanduser().resolve()
    cache = Path(os.environ.get("XDG_CACHE_HOME", "") or Path.home() / ".cache")
    return cache / "locproxy" / f"glance-venv-{venv_key(constraints)}"


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _run(
    cmd: Sequence[str | os.PathLike[str]], *, timeout: float, what: str, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            [str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kwargs
        )
    except subprocess.TimeoutExpired as exc:
        raise GlanceEnvError(f"{what}: timed out after {timeout:.0f}s: {' '.join(map(str, cmd))}") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-40:])
        raise GlanceEnvError(f"{what} failed (exit {proc.returncode}): {' '.join(map(str, cmd))}\n{tail}")
    return proc


def _pip(venv: Path, *args: str | os.PathLike[str], what: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)
    return _run([venv_python(venv), "-m", "pip", *args], timeout=PIP_INSTALL_TIMEOUT, what=what, env=env)


def _relocate_scripts(venv: Path, old: Path, new: Path) -> None:
    """Point console-script shebangs and activate scripts at the final path.

    The helpers here never rely on shebangs (they run ``venv/bin/python
    venv/bin/<script>``), but a person debugging wants ``bin/glance`` to work.
    """
    old_b, new_b = str(old).encode(), str(new).encode()
    for script in (venv / "bin").iterdir():
        if script.is_symlink() or not script.is_file():
            continue
        data = script.read_bytes()
        if old_b in data[:4096] or (script.name.startswith("activate") and old_b in data):
            script.write_bytes(data.replace(old_b, new_b))


def _locproxy_stamp() -> str:
    # Only the packaging metadata: the code itself is imported from REPO_ROOT
    # (first on Glance's PYTHONPATH), so checkouts elsewhere share the venv.
    digest = hashlib.sha256()
    for name in ("setup.cfg", "pyproject.toml", "setup.py"):
        path = REPO_ROOT / name
        if path.exists():
            digest.update(name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _install_locproxy(venv: Path) -> None:
    """``pip install -e REPO_ROOT`` into the Glance venv, offline.

    No build isolation (setuptools from the venv; nothing downloaded) and no
    dependency resolution (WebOb, PasteDeploy and urllib3 come with Glance and
    are checked with ``pip check``).
    """
    _pip(venv, "install", "--quiet", "--no-deps", "--no-build-isolation", "-e", REPO_ROOT,
         what="installing locproxy (editable) into the Glance venv")
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)
    check = subprocess.run([venv_python(venv), "-m", "pip", "check"], capture_output=True, text=True,
                           timeout=300, env=env)
    missing = [line for line in check.stdout.splitlines() if line.lower().startswith("locproxy ")]
    if missing:
        raise GlanceEnvError("locproxy's requirements are not met in the Glance venv (add them to "
                             "REQUIREMENTS and re-freeze the pins):\n" + "\n".join(missing))
    (venv / LOCPROXY_STAMP).write_text(_locproxy_stamp())


def _ensure_locproxy(venv: Path) -> None:
    stamp = venv / LOCPROXY_STAMP
    if not stamp.exists() or stamp.read_text() != _locproxy_stamp():
        _log(f"installing locproxy from {REPO_ROOT} into {venv} (editable)")
        _install_locproxy(venv)


def build_venv(target: Path, *, constraints: Path | None = CONSTRAINTS_FILE, python: str | None = None) -> float:
    """Build the venv into a temporary sibling of ``target`` and rename it there.

    Returns the seconds it took. ``constraints=None`` installs the newest
    versions (used by ``--freeze``).
    """
    started = time.monotonic()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
    try:
        _run([python or base_python(), "-m", "venv", tmp], timeout=300, what="creating the Glance venv")
        args: list[str | os.PathLike[str]] = ["install", "--quiet"]
        if constraints is not None and constraints.exists():
            args += ["-c", constraints]
        _pip(tmp, *args, *REQUIREMENTS, what="installing Glance (needs PyPI)")
        _install_locproxy(tmp)
        _relocate_scripts(tmp, tmp, target)
        tmp.chmod(0o755)  # mkdtemp made it 0700
        (tmp / READY_MARKER).write_text(json.dumps({"built": time.time(), "constraints": str(constraints)}))
        try:
            os.rename(tmp, target)  # atomic; fails if another process won the race
        except OSError:
            if not (target / READY_MARKER).exists():
                raise
            _log(f"{target} appeared while building; using it")
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return time.monotonic() - started


@dataclass
class VenvInfo:
    path: Path
    built: bool
    seconds: float

    @property
    def python(self) -> Path:
        return venv_python(self.path)


@contextlib.contextmanager
def _locked(path: Path, timeout: float = PIP_INSTALL_TIMEOUT) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise GlanceEnvError(f"timed out waiting for the lock {path}") from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_venv() -> VenvInfo:
    """The ready Glance venv: reused if cached, else built (cold)."""
    started = time.monotonic()
    target = venv_dir()
    with _locked(target.parent / f".{target.name}.lock"):
        built = False
        if target.exists() and not (target / READY_MARKER).exists():
            # A venv dir without the marker was not made by build_venv's rename
            # (e.g. a hand-made LOCPROXY_GLANCE_VENV); refuse rather than guess.
            raise GlanceEnvError(
                f"{target} exists but is not a finished Glance venv ({READY_MARKER} missing); remove it"
            )
        # Under the lock nobody else is building: leftovers of a killed build go.
        for stale in target.parent.glob(f".{target.name}.building-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if not target.exists():
            _log(f"building the Glance venv in {target} (cold install, needs PyPI)")
            build_venv(target)
            built = True
        _ensure_locproxy(target)
    return VenvInfo(target, built, time.monotonic() - started)


def freeze_constraints(constraints: Path = CONSTRAINTS_FILE) -> Path:
    """Build an unpinned venv, check it starts, write its ``pip freeze`` as the pins."""
    scratch = Path(tempfile.mkdtemp(prefix="locproxy-glance-freeze-"))
    try:
        venv = scratch / "venv"
        seconds = build_venv(venv, constraints=None)
        _log(f"unpinned venv built in {seconds:.1f}s; checking that Glance starts")
        with glance_server(venv=VenvInfo(venv, True, seconds)) as server:
            server.get_json("/versions")
        frozen = _pip(venv, "freeze", "--all", "--exclude-editable", what="pip freeze").stdout
        pins = [line for line in frozen.splitlines()
                if line and not line.lower().startswith(("locproxy", "pip=="))]
        header = textwrap.dedent(f"""\
            # Pins for the Glance venv of tests/integration/glance_env.py ({_python_tag(base_python())}).
            # Regenerate: python tests/integration/glance_env.py --freeze
            # Changing this file changes the cached venv's name, so the next run rebuilds it.
            """)
        constraints.write_text(header + "\n".join(pins) + "\n")
        return constraints
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def glance_versions(venv: Path) -> dict[str, str]:
    out = _run(
        [venv_python(venv), "-c",
         "import importlib.metadata as m, json; print(json.dumps({n: m.version(n) for n in "
         "('glance','glance_store','python-glanceclient','gunicorn','oslo.config','oslo.policy','SQLAlchemy','WebOb','locproxy')}))"],
        timeout=60, what="reading versions",
    )
    return json.loads(out.stdout)


# ------------------------------------------------------------ HTTP helpers ---


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name, default)


def http_request(
    url: str,
    method: str = "GET",
    *,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = REQUEST_TIMEOUT,
) -> Response:
    """One request on its own connection, always closed (no leaked sockets)."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"loopback only: {url}")
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, resp.headers, data)
    finally:
        conn.close()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(predicate: Callable[[], Any], *, timeout: float, interval: float = 0.2, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------- the Glance config ---


def apply_overrides(conf: str, overrides: Mapping[str, Mapping[str, str]] | None) -> str:
    """Set ``{section: {option: value}}`` in an ini text (replacing, or adding the section)."""
    lines = conf.splitlines()
    for section, options in (overrides or {}).items():
        header = f"[{section}]"
        if header not in lines:
            lines += ["", header]
        start = lines.index(header) + 1
        end = next((i for i in range(start, len(lines)) if lines[i].startswith("[")), len(lines))
        body = [line for line in lines[start:end]
                if line.split("=", 1)[0].strip() not in options or line.lstrip().startswith("#")]
        while body and not body[-1].strip():
            body.pop()
        body += [f"{name} = {value}" for name, value in options.items()] + [""]
        lines[start:end] = body
    return "\n".join(lines).rstrip("\n") + "\n"


def render_api_conf(*, workdir: Path, port: int, web_port: int, store_dirs: Mapping[str, Path],
                    overrides: Mapping[str, Mapping[str, str]] | None = None) -> str:
    """glance-api.conf; ``overrides`` e.g. ``{"fs2": {"weight": "100"}}``."""
    return apply_overrides(textwrap.dedent(f"""\
        # Written by tests/integration/glance_env.py; loopback test server only.
        [DEFAULT]
        debug = False
        log_file = {workdir / 'logs' / 'glance-api.log'}
        enabled_backends = fs1:file, fs2:file, web:http
        show_multiple_locations = True
        show_image_direct_url = True
        enabled_import_methods = [glance-direct, web-download, copy-image]
        # Imports are redirected to the worker that staged the data.
        worker_self_reference_url = http://127.0.0.1:{port}
        # Deprecated twin of [os_glance_staging_store] (single-store era).
        node_staging_uri = file://{store_dirs['staging']}
        image_location_quota = 20

        [database]
        # timeout: seconds a connection waits for a lock (sqlite3's default is 5).
        connection = sqlite:///{workdir / 'glance.sqlite'}?timeout=30

        [glance_store]
        default_backend = fs1

        [fs1]
        store_description = first file store
        filesystem_store_datadir = {store_dirs['fs1']}

        [fs2]
        store_description = second file store
        filesystem_store_datadir = {store_dirs['fs2']}

        [web]
        store_description = loopback http store (read-only)

        [os_glance_staging_store]
        filesystem_store_datadir = {store_dirs['staging']}

        [os_glance_tasks_store]
        filesystem_store_datadir = {store_dirs['tasks']}

        [import_filtering_opts]
        # Glance refuses loopback http locations unless the host is allowed
        # (bounded list options need the brackets).
        allowed_hosts = [127.0.0.1]
        allowed_ports = [{web_port}]

        [paste_deploy]
        flavor =

        [oslo_policy]
        policy_file = policy.yaml

        [oslo_concurrency]
        lock_path = {workdir / 'locks'}
        """), overrides)


def render_paste_ini(pipeline: Sequence[str] = DEFAULT_PIPELINE, extra: str = "") -> str:
    """Glance's paste file with one flavor-less pipeline, ``glance-api``.

    ``extra`` is appended verbatim (e.g. a ``[filter:locproxy]`` section).
    """
    return textwrap.dedent(f"""\
        # Written by tests/integration/glance_env.py (no keystone; flavor-less).
        [pipeline:glance-api]
        pipeline = {' '.join(pipeline)}

        [composite:rootapp]
        paste.composite_factory = glance.api:root_app_factory
        /: apiversions
        /v2: apiv2app

        [app:apiversions]
        paste.app_factory = glance.api.versions:create_resource

        [app:apiv2app]
        paste.app_factory = glance.api.v2.router:API.factory

        [filter:versionnegotiation]
        paste.filter_factory = glance.api.middleware.version_negotiation:VersionNegotiationFilter.factory

        [filter:context]
        paste.filter_factory = glance.api.middleware.context:ContextMiddleware.factory

        [filter:tokenauth]
        paste.filter_factory = glance_tokenauth:filter_factory

        [filter:cors]
        paste.filter_factory = oslo_middleware.cors:filter_factory
        oslo_config_project = glance
        oslo_config_program = glance-api

        [filter:http_proxy_to_wsgi]
        paste.filter_factory = oslo_middleware:HTTPProxyToWSGI.factory
        """) + (("\n" + textwrap.dedent(extra).strip() + "\n") if extra.strip() else "")


def locproxy_paste_ini(*, use: str = "egg:locproxy#locproxy", **options: str) -> str:
    """A paste file with locproxy in Glance's own pipeline, right before rootapp."""
    pipeline = [*DEFAULT_PIPELINE[:-1], "locproxy", DEFAULT_PIPELINE[-1]]
    key = "use" if use.startswith(("egg:", "config:", "call:")) else "paste.filter_factory"
    lines = ["[filter:locproxy]", f"{key} = {use}", *(f"{k} = {v}" for k, v in options.items())]
    return render_paste_ini(pipeline, "\n".join(lines))


def render_policy() -> str:
    return "".join(f'"{name}": "{rule}"\n' for name, rule in POLICY_RULES.items())


# ------------------------------------------------------------- the server ---


@dataclass
class GlanceServer:
    """A running Glance API (gunicorn) with its config dir, stores and web server."""

    venv: Path
    workdir: Path
    port: int
    web: Any  # static_http.StaticHTTPServer
    store_dirs: dict[str, Path] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    start_seconds: float = 0.0

    @property
    def url(self) -> str:
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
    def glance_log_path(self) -> Path:
        return self.workdir / "logs" / "glance-api.log"

    # -- lifecycle --

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "PYTHON", "VIRTUAL_ENV"))}
        env.update(
            OS_GLANCE_CONFIG_DIR=str(self.config_dir),
            # REPO_ROOT first: locproxy's code always comes from this checkout
            # (the venv's editable install supplies the entry points for
            # "egg:locproxy#..."); HERE: the test-only glance_tokenauth filter.
            PYTHONPATH=os.pathsep.join([str(REPO_ROOT), str(HERE)]),
            PYTHONNOUSERSITE="1",
            PYTHONUNBUFFERED="1",
        )
        return env

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
            str(venv_python(self.venv)), str(self.venv / "bin" / "gunicorn"),
            "--bind", f"127.0.0.1:{self.port}",
            "--workers", "1", "--worker-class", "gthread", "--threads", "8",
            "--timeout", "120", "--graceful-timeout", "5",
            "--chdir", str(self.workdir),
            "--log-level", "warning",
            "glance.wsgi.api:application",
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=self.env(), cwd=self.workdir, start_new_session=True,
            )

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise GlanceEnvError(
                    f"Glance (gunicorn) exited with {self.proc.returncode} while starting\n{self.log_tail()}"
                )
            try:
                return http_request(self.url + "/versions", timeout=5).status == 200
            except OSError:
                return False

        try:
            _wait_for(ready, timeout=timeout, interval=0.1, what=f"Glance on {self.url}")
        except TimeoutError as exc:
            self.stop()
            raise GlanceEnvError(f"{exc}\n{self.log_tail()}") from None
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - started
        return self.start_seconds

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            # gunicorn master: SIGTERM = graceful stop of master and workers.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=STOP_TIMEOUT)
        # Workers are in the same (new) session/process group: make sure none
        # outlives the master.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

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

    # -- identity --

    def headers(
        self,
        project: str = DEFAULT_PROJECT,
        roles: Sequence[str] | str = DEFAULT_ROLES,
        user: str = DEFAULT_USER,
    ) -> dict[str, str]:
        """The identity headers keystonemiddleware would set; Glance trusts them here."""
        roles_value = roles if isinstance(roles, str) else ",".join(roles)
        return {
            "X-Identity-Status": "Confirmed",
            "X-User-Id": user,
            "X-Project-Id": project,
            "X-Tenant-Id": project,
            "X-Roles": roles_value,
        }

    def token(self, project: str = DEFAULT_PROJECT, roles: Sequence[str] | str = DEFAULT_ROLES,
              user: str = DEFAULT_USER) -> str:
        """An ``X-Auth-Token`` the test-only tokenauth filter turns into those headers."""
        roles_value = roles if isinstance(roles, str) else ",".join(roles)
        return f"{user}:{project}:{roles_value}"

    # -- API helpers --

    def request(self, method: str, path: str, *, body: bytes | None = None, json_body: Any = None,
                headers: Mapping[str, str] | None = None, identity: Mapping[str, str] | None = None,
                timeout: float = REQUEST_TIMEOUT) -> Response:
        all_headers = dict(self.headers() if identity is None else identity)
        if json_body is not None:
            body = json.dumps(json_body).encode()
            all_headers.setdefault("Content-Type", "application/json")
        all_headers.update(headers or {})
        return http_request(self.url + path, method, body=body, headers=all_headers, timeout=timeout)

    def glance_errors(self, limit: int = 80) -> str:
        """The last ERROR lines of Glance's log (tracebacks), for failure messages."""
        if not self.glance_log_path.exists():
            return ""
        lines = [line for line in self.glance_log_path.read_text(errors="replace").splitlines()
                 if " ERROR " in line and "os_brick" not in line]
        return "\n".join(lines[-limit:])

    def _expect(self, resp: Response, *statuses: int, what: str) -> Response:
        if resp.status not in statuses:
            detail = f"\nGlance log errors:\n{self.glance_errors()}" if resp.status >= 500 else ""
            raise AssertionError(f"{what}: HTTP {resp.status} (wanted {statuses}): {resp.body[:2000]!r}{detail}")
        return resp

    def get_json(self, path: str, **kwargs: Any) -> Any:
        return self._expect(self.request("GET", path, **kwargs), 200, what=f"GET {path}").json()

    def get_image(self, image_id: str, **kwargs: Any) -> dict[str, Any]:
        return self.get_json(f"/v2/images/{image_id}", **kwargs)

    def create_image(self, data: bytes, *, store: str | None = None, identity: Mapping[str, str] | None = None,
                     **props: Any) -> str:
        """Create an image and upload ``data`` (to ``store``, default fs1); returns its id."""
        props.setdefault("name", "locproxy-test")
        props.setdefault("disk_format", "raw")
        props.setdefault("container_format", "bare")
        resp = self._expect(self.request("POST", "/v2/images", json_body=props, identity=identity), 201,
                            what="create image")
        image_id = resp.json()["id"]
        upload_headers = {"Content-Type": "application/octet-stream"}
        if store:
            upload_headers["X-Image-Meta-Store"] = store
        self._expect(
            self.request("PUT", f"/v2/images/{image_id}/file", body=data, headers=upload_headers, identity=identity),
            204, what=f"upload image {image_id}",
        )
        return image_id

    def patch_image(self, image_id: str, ops: list[dict[str, Any]], *,
                    identity: Mapping[str, str] | None = None) -> Response:
        return self.request(
            "PATCH", f"/v2/images/{image_id}", body=json.dumps(ops).encode(), identity=identity,
            headers={"Content-Type": "application/openstack-images-v2.1-json-patch"},
        )

    def add_location(self, image_id: str, url: str, metadata: Mapping[str, Any] | None = None, *,
                     validation_data: Mapping[str, Any] | None = None, position: str = "-",
                     identity: Mapping[str, str] | None = None) -> dict[str, Any]:
        """JSON-patch ``add /locations/<position>``; returns the updated image.

        This works for active images (Glance HEADs an http URL to learn the
        size and checks it against the image). The newer
        ``POST /v2/images/{id}/locations`` (``add_location_api``) only accepts
        *queued* images.
        """
        value: dict[str, Any] = {"url": url, "metadata": dict(metadata or {})}
        if validation_data:
            value["validation_data"] = dict(validation_data)
        resp = self.patch_image(image_id, [{"op": "add", "path": f"/locations/{position}", "value": value}],
                                identity=identity)
        return self._expect(resp, 200, what=f"add location {url} to {image_id}").json()

    def add_location_api(self, image_id: str, url: str, *, validation_data: Mapping[str, Any] | None = None,
                         identity: Mapping[str, str] | None = None, timeout: float = 60) -> dict[str, Any]:
        """``POST /v2/images/{id}/locations`` (queued images only; runs as a task), wait for active."""
        body: dict[str, Any] = {"url": url}
        if validation_data:
            body["validation_data"] = dict(validation_data)
        self._expect(self.request("POST", f"/v2/images/{image_id}/locations", json_body=body, identity=identity),
                     202, what=f"POST locations {url} to {image_id}")
        self._raise_failed_tasks(image_id, self.wait_tasks(image_id, timeout=timeout), "POST locations")
        return self.get_image(image_id, identity=identity)

    def remove_location(self, image_id: str, index: int, *, identity: Mapping[str, str] | None = None) -> Response:
        return self.patch_image(image_id, [{"op": "remove", "path": f"/locations/{index}"}], identity=identity)

    def wait_image(self, image_id: str, predicate: Callable[[dict[str, Any]], bool], *, timeout: float = 60,
                   what: str = "image state") -> dict[str, Any]:
        return _wait_for(
            lambda: (lambda img: img if predicate(img) else None)(self.get_image(image_id)),
            timeout=timeout, interval=0.2, what=f"{what} of {image_id}",
        )

    def wait_tasks(self, image_id: str, *, timeout: float = 60) -> list[dict[str, Any]]:
        """Wait until the image's import lock is released; return its tasks.

        Glance reports an import's result (``stores``, ``status``) before its
        task has finished writing; a test's next write racing those background
        writes can fail on sqlite ("database is locked"). The lock
        (``os_glance_import_task``) is set before the API answers 202 and
        dropped last. Only the image is polled: ``GET /v2/images/{id}/tasks``
        writes (it soft-deletes expired tasks first), and polling it made
        running tasks fail with "database is locked".
        """
        _wait_for(
            lambda: "os_glance_import_task" not in self.get_image(image_id, identity=self.headers()),
            timeout=timeout, interval=0.1, what=f"the import lock of image {image_id} to be released",
        )
        tasks: list[dict[str, Any]] = self.get_json(f"/v2/images/{image_id}/tasks", identity=self.headers())["tasks"]
        return tasks

    def _raise_failed_tasks(self, image_id: str, tasks: list[dict[str, Any]], what: str) -> None:
        failed = [t for t in tasks if t.get("status") == "failure"]
        if failed:
            messages = "; ".join(f"{t['type']}: {t.get('message')}" for t in failed)
            raise GlanceEnvError(f"{what} of image {image_id} failed: {messages}\n{self.glance_errors()}")

    def copy_to_store(self, image_id: str, store: str, *, timeout: float = 60,
                      identity: Mapping[str, str] | None = None) -> dict[str, Any]:
        """``copy-image`` import into ``store``; waits until the image lists it."""
        body = {"method": {"name": "copy-image"}, "stores": [store], "all_stores_must_succeed": True}
        self._expect(self.request("POST", f"/v2/images/{image_id}/import", json_body=body, identity=identity),
                     202, what=f"copy {image_id} to {store}")

        self._raise_failed_tasks(image_id, self.wait_tasks(image_id, timeout=timeout), f"copy-image to {store}")
        image = self.get_image(image_id, identity=identity)
        if store not in image.get("stores", "").split(","):
            raise GlanceEnvError(
                f"copy-image of {image_id} to {store} finished without it: stores={image.get('stores')!r} "
                f"os_glance_failed_import={image.get('os_glance_failed_import')!r}\n{self.glance_errors()}"
            )
        return image

    def deactivate(self, image_id: str, *, identity: Mapping[str, str] | None = None) -> None:
        self._expect(self.request("POST", f"/v2/images/{image_id}/actions/deactivate", identity=identity), 204,
                     what=f"deactivate {image_id}")

    def reactivate(self, image_id: str, *, identity: Mapping[str, str] | None = None) -> None:
        self._expect(self.request("POST", f"/v2/images/{image_id}/actions/reactivate", identity=identity), 204,
                     what=f"reactivate {image_id}")

    def delete_image(self, image_id: str, *, identity: Mapping[str, str] | None = None) -> None:
        self._expect(self.request("DELETE", f"/v2/images/{image_id}", identity=identity), 204, 404,
                     what=f"delete {image_id}")

    # -- python-glanceclient (from the Glance venv) --

    def glance_cli(self, *args: str, token: str | None = None, url: str | None = None,
                   timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run the ``glance`` CLI of the venv against this server (or ``url``), no keystone."""
        cmd = [str(venv_python(self.venv)), str(self.venv / "bin" / "glance"),
               "--os-image-url", url or self.url, "--os-auth-token", token or self.token(), *args]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "PYTHON", "VIRTUAL_ENV"))}
        env["PYTHONNOUSERSITE"] = "1"
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)

    def venv_python_run(self, code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run Python ``code`` in the Glance venv (e.g. the glanceclient library)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "PYTHON", "VIRTUAL_ENV"))}
        env["PYTHONNOUSERSITE"] = "1"
        return subprocess.run([str(venv_python(self.venv)), "-c", code, *args], capture_output=True, text=True,
                              timeout=timeout, env=env, stdin=subprocess.DEVNULL)


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
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "PYTHON", "VIRTUAL_ENV"))}
    env["PYTHONNOUSERSITE"] = "1"
    _run([venv_python(venv), venv / "bin" / "glance-manage", "--config-file", config_dir / "glance-api.conf",
          "db_sync"], timeout=300, what="glance-manage db_sync", env=env, cwd=workdir)
    with contextlib.closing(sqlite3.connect(target)) as db:
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode != "wal":
        raise GlanceEnvError(f"could not switch {target} to WAL (journal_mode={mode})")
    tmp = template.with_suffix(f".tmp{os.getpid()}")
    shutil.copyfile(target, tmp)
    os.replace(tmp, template)


@contextlib.contextmanager
def glance_server(*, venv: VenvInfo | None = None, workdir: Path | None = None) -> Iterator[GlanceServer]:
    """Build/reuse the venv, configure and start Glance (+ the web store server); stop all on exit."""
    from static_http import StaticHTTPServer  # noqa: PLC0415 - sibling module, see conftest

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
        server = GlanceServer(venv=venv.path, workdir=workdir, port=free_port(), web=web, store_dirs=store_dirs)
        server.api_conf_path.write_text(server.render_api_conf())
        server.paste_ini_path.write_text(render_paste_ini())
        server.policy_path.write_text(render_policy())
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


# -------------------------------------------------------------- self-check ---


def selfcheck() -> int:
    """Build or reuse, start, exercise the main operations, print timings and versions."""
    sys.path.insert(0, str(HERE))
    t0 = time.monotonic()
    info = ensure_venv()
    print(f"venv: {info.path} ({'built cold' if info.built else 'reused warm'} in {info.seconds:.1f}s)")
    print("versions:", json.dumps(glance_versions(info.path)))
    t1 = time.monotonic()
    with glance_server(venv=info) as server:
        t2 = time.monotonic()
        print(f"glance: {server.url} up in {server.start_seconds:.1f}s (fixture setup {t2 - t1:.1f}s); "
              f"config {server.config_dir}")
        data = os.urandom(300_000)
        image_id = server.create_image(data, name="selfcheck")
        image = server.get_image(image_id)
        print(f"image {image_id}: status={image['status']} stores={image.get('stores')} "
              f"direct_url={image.get('direct_url')}")
        image = server.copy_to_store(image_id, "fs2")
        print("after copy-image:", [loc["url"] for loc in image["locations"]], image["stores"])
        web_url = server.web.put(f"{image_id}.raw", data)
        image = server.add_location(image_id, web_url, {})
        print("after http location:", [(loc["url"], loc["metadata"].get("store")) for loc in image["locations"]])
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "download"
            proc = server.glance_cli("image-download", "--file", str(out), image_id)
            ok = proc.returncode == 0 and out.read_bytes() == data
            print(f"glance CLI image-download: {'ok' if ok else 'FAILED'} {proc.stderr.strip()[-500:]}")
        print(f"total {time.monotonic() - t0:.1f}s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--selfcheck", action="store_true", help="build or reuse the venv, start Glance, exercise it")
    group.add_argument("--freeze", action="store_true", help="build unpinned, verify, rewrite glance-constraints.txt")
    group.add_argument("--venv-path", action="store_true", help="print the venv path for the current pins")
    args = parser.parse_args(argv)
    if args.venv_path:
        print(venv_dir())
        return 0
    if args.freeze:
        sys.path.insert(0, str(HERE))
        print(freeze_constraints())
        return 0
    return selfcheck()


if __name__ == "__main__":
    sys.exit(main())
