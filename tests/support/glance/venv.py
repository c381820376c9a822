"""The Glance lab's virtualenv: Glance, python-glanceclient and gunicorn
from PyPI, pinned, plus locproxy installed editable, built once and cached.

The venv lives in ``${LOCPROXY_GLANCE_VENV:-~/.cache/locproxy/glance-venv-<hash>}``
where the hash covers the pins (``tests/integration/glance-constraints.txt``)
and the Python version. It is built in a temporary sibling directory and
renamed into place, so an interrupted install never leaves a half venv
behind; a lock file keeps two test runs from building it at once.

``ensure_venv()`` returns the ready venv (``VenvInfo``), ``clean_env()`` the
environment to run its programs in (no ``OS_*``, ``PYTHON*`` or
``VIRTUAL_ENV`` of ours), ``glance_versions(venv)`` what it holds.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

REPO_ROOT = Path(__file__).resolve().parents[3]
CONSTRAINTS_FILE = REPO_ROOT / "tests" / "integration" / "glance-constraints.txt"
# What the venv is for; versions come from CONSTRAINTS_FILE.
# setuptools and wheel: to install locproxy editable without build isolation
# (offline, so a changed setup.cfg re-installs in seconds). boto3: Glance's
# s3 store (glance_store imports it), for the Ceph integration tests; it
# brings botocore, which locproxy's s3 reader signs with inside Glance.
# python-openstackclient: ``openstack image save`` against the Keystone lab.
# python-swiftclient: Glance's swift store (tests/integration/test_glance_swift.py).
REQUIREMENTS = ("glance", "python-glanceclient", "gunicorn", "setuptools", "wheel", "boto3", "python-openstackclient",
                "xxhash", "python-swiftclient")

ENV_VENV = "LOCPROXY_GLANCE_VENV"

READY_MARKER = ".locproxy-glance-ready"
LOCPROXY_STAMP = ".locproxy-install-stamp"

PIP_INSTALL_TIMEOUT = 1800  # seconds, a cold install takes well under a minute


class GlanceEnvError(RuntimeError):
    """The Glance environment could not be built or started (message says why)."""


def log(message: str) -> None:
    print(f"glance lab: {message}", file=sys.stderr, flush=True)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without what would leak into the venv's
    programs (OpenStack credentials, our Python settings, our venv), plus
    ``PYTHONNOUSERSITE=1`` and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "PYTHON", "VIRTUAL_ENV"))}
    env["PYTHONNOUSERSITE"] = "1"
    env.update(extra)
    return env


# ---------------------------------------------------------------- the venv ---


def base_python() -> str:
    """The interpreter to build the Glance venv with (not a venv's own python)."""
    return os.environ.get("LOCPROXY_GLANCE_PYTHON") or getattr(sys, "_base_executable", None) or sys.executable


def python_tag(python: str) -> str:
    out = subprocess.run(
        [python, "-c", "import sys,platform; print(platform.python_implementation(), *sys.version_info[:2])"],
        check=True, capture_output=True, text=True, timeout=60,
    )
    return out.stdout.strip()


def venv_key(constraints: Path = CONSTRAINTS_FILE, python: str | None = None) -> str:
    digest = hashlib.sha256()
    digest.update(constraints.read_bytes() if constraints.exists() else b"unpinned")
    digest.update(python_tag(python or base_python()).encode())
    return digest.hexdigest()[:16]


def venv_dir(constraints: Path = CONSTRAINTS_FILE) -> Path:
    configured = os.environ.get(ENV_VENV, "").strip()
    if configured:
        return Path(configured).expanduser().resolve()
    cache = Path(os.environ.get("XDG_CACHE_HOME", "") or Path.home() / ".cache")
    return cache / "locproxy" / f"glance-venv-{venv_key(constraints)}"


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def run(
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


def _pip_env() -> dict[str, str]:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)
    return env


def pip(venv: Path, *args: str | os.PathLike[str], what: str) -> subprocess.CompletedProcess[str]:
    return run([venv_python(venv), "-m", "pip", *args], timeout=PIP_INSTALL_TIMEOUT, what=what, env=_pip_env())


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
    pip(venv, "install", "--quiet", "--no-deps", "--no-build-isolation", "-e", REPO_ROOT,
        what="installing locproxy (editable) into the Glance venv")
    check = subprocess.run([venv_python(venv), "-m", "pip", "check"], capture_output=True, text=True,
                           timeout=300, env=_pip_env())
    missing = [line for line in check.stdout.splitlines() if line.lower().startswith("locproxy ")]
    if missing:
        raise GlanceEnvError("locproxy's requirements are not met in the Glance venv (add them to "
                             "REQUIREMENTS and re-freeze the pins):\n" + "\n".join(missing))
    (venv / LOCPROXY_STAMP).write_text(_locproxy_stamp())


def _ensure_locproxy(venv: Path) -> None:
    stamp = venv / LOCPROXY_STAMP
    if not stamp.exists() or stamp.read_text() != _locproxy_stamp():
        log(f"installing locproxy from {REPO_ROOT} into {venv} (editable)")
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
        run([python or base_python(), "-m", "venv", tmp], timeout=300, what="creating the Glance venv")
        args: list[str | os.PathLike[str]] = ["install", "--quiet"]
        if constraints is not None and constraints.exists():
            args += ["-c", constraints]
        pip(tmp, *args, *REQUIREMENTS, what="installing Glance (needs PyPI)")
        _install_locproxy(tmp)
        _relocate_scripts(tmp, tmp, target)
        tmp.chmod(0o755)  # mkdtemp made it 0700
        (tmp / READY_MARKER).write_text(json.dumps({"built": time.time(), "constraints": str(constraints)}))
        try:
            os.rename(tmp, target)  # atomic; fails if another process won the race
        except OSError:
            if not (target / READY_MARKER).exists():
                raise
            log(f"{target} appeared while building; using it")
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
            log(f"building the Glance venv in {target} (cold install, needs PyPI)")
            build_venv(target)
            built = True
        _ensure_locproxy(target)
    return VenvInfo(target, built, time.monotonic() - started)


def glance_versions(venv: Path) -> dict[str, str]:
    out = run(
        [venv_python(venv), "-c",
         "import importlib.metadata as m, json; print(json.dumps({n: m.version(n) for n in "
         "('glance','glance_store','python-glanceclient','gunicorn','oslo.config','oslo.policy','SQLAlchemy','WebOb','locproxy')}))"],
        timeout=60, what="reading versions",
    )
    return json.loads(out.stdout)
