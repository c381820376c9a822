"""Running locproxy as a sidecar: the packaged configuration and the gunicorn
command line.

The sidecar is ``gunicorn --paste paste.ini``: the ``locproxy`` filter in
front of the ``proxy`` app. Both files ship inside the package
(``locproxy/conf/``), so an installed locproxy needs no checkout:
``locproxy config`` prints the ini to copy and edit, ``locproxy serve`` runs
it, and ``locproxy demo`` runs it in front of the demo image API.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Sequence

CONF_DIR = Path(__file__).resolve().parent / "conf"
PASTE_INI = CONF_DIR / "paste.ini"
GUNICORN_CONF = CONF_DIR / "gunicorn.conf.py"

#: Seconds a stopping server gets before it is killed.
STOP_TIMEOUT = 10.0


def gunicorn_args() -> list[str]:
    """Options every gunicorn we start needs: gunicorn >= 25 opens a control
    socket under ~/.gunicorn by default, a path shared by every server of the
    user; locproxy needs none."""
    from gunicorn.config import KNOWN_SETTINGS

    known = any("--no-control-socket" in (setting.cli or ()) for setting in KNOWN_SETTINGS)
    return ["--no-control-socket"] if known else []


def sidecar_command(paste_globals: Mapping[str, str], extra_args: Sequence[str] = (),
                    paste_ini: Path = PASTE_INI) -> list[str]:
    """``python -m gunicorn`` for the sidecar: the packaged gunicorn settings,
    ``paste_ini`` with its ``[DEFAULT]`` values overridden by
    ``paste_globals``, then ``extra_args`` (later options win)."""
    command = [sys.executable, "-m", "gunicorn", "--config", str(GUNICORN_CONF), *gunicorn_args()]
    for name, value in paste_globals.items():
        command += ["--paste-global", f"{name}={value}"]
    return [*command, *extra_args, "--paste", str(paste_ini)]


def stop_process(process: subprocess.Popen, *, group: bool = False, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM (graceful), then SIGKILL; with ``group`` (a process started
    with ``start_new_session``) to its whole process group, so workers that
    outlived their master go too. Every wait is bounded."""

    def send(signum: int) -> None:
        try:
            if group:
                os.killpg(process.pid, signum)
            else:
                process.send_signal(signum)
        except (ProcessLookupError, PermissionError):
            pass

    if process.poll() is None:
        send(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    if group or process.poll() is None:
        send(signal.SIGKILL)
    process.wait(timeout=timeout)
