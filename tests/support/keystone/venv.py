"""The Keystone lab's virtualenv: Keystone 30 and gunicorn from PyPI, built
once and cached beside the Glance lab's venv.

``${LOCPROXY_KEYSTONE_VENV:-~/.cache/locproxy/keystone-venv-<hash>}``: the
hash covers the pins (the Glance lab's ``glance-constraints.txt``: Keystone 30
needs the versions those hold), the requirements below and the Python
version. Built in a temporary sibling and renamed into place under a lock,
as the Glance venv is (``tests.support.glance.venv``), so an interrupted
install leaves nothing half-made.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from tests.support.glance.venv import (
    CONSTRAINTS_FILE,
    GlanceEnvError,
    VenvInfo,
    _locked,
    _relocate_scripts,
    base_python,
    log,
    pip,
    python_tag,
    run,
)

REQUIREMENTS = ("keystone==30.0.0", "gunicorn")
ENV_VENV = "LOCPROXY_KEYSTONE_VENV"
READY_MARKER = ".locproxy-keystone-ready"


class KeystoneEnvError(GlanceEnvError):
    """The Keystone environment could not be built or started (message says why)."""


def venv_dir() -> Path:
    configured = os.environ.get(ENV_VENV, "").strip()
    if configured:
        return Path(configured).expanduser().resolve()
    digest = hashlib.sha256(CONSTRAINTS_FILE.read_bytes() if CONSTRAINTS_FILE.exists() else b"unpinned")
    digest.update("\0".join(REQUIREMENTS).encode())
    digest.update(python_tag(base_python()).encode())
    cache = Path(os.environ.get("XDG_CACHE_HOME", "") or Path.home() / ".cache")
    return cache / "locproxy" / f"keystone-venv-{digest.hexdigest()[:16]}"


def _build(target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
    try:
        run([base_python(), "-m", "venv", tmp], timeout=300, what="creating the Keystone venv")
        pip(tmp, "install", "--quiet", "-c", CONSTRAINTS_FILE, *REQUIREMENTS, what="installing Keystone (needs PyPI)")
        _relocate_scripts(tmp, tmp, target)
        tmp.chmod(0o755)
        (tmp / READY_MARKER).write_text(json.dumps({"built": time.time(), "requirements": REQUIREMENTS}))
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / READY_MARKER).exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def ensure_venv() -> VenvInfo:
    """The ready Keystone venv: reused if cached, else built (about 20 s, needs PyPI)."""
    started = time.monotonic()
    target = venv_dir()
    with _locked(target.parent / f".{target.name}.lock"):
        if target.exists() and not (target / READY_MARKER).exists():
            raise KeystoneEnvError(f"{target} exists but is not a finished Keystone venv ({READY_MARKER} missing)")
        for stale in target.parent.glob(f".{target.name}.building-*"):
            shutil.rmtree(stale, ignore_errors=True)
        built = not target.exists()
        if built:
            log(f"building the Keystone venv in {target} (cold install, needs PyPI)")
            _build(target)
    return VenvInfo(target, built, time.monotonic() - started)
