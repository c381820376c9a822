"""The default state directory: where a node keeps what it learns when the
operator names no file.

``metrics_file = auto`` (the shipped paste ini's default) is
``<state directory>/metrics.sqlite``, so every worker of a node, and the
node after a restart, shares the images' verified fingerprints, what was
learnt about each backend and the orders shown, without the operator
setting anything. The directory is the first of:

1. ``$STATE_DIRECTORY`` (systemd's ``StateDirectory=locproxy``; its first
   entry), as systemd made it;
2. ``/var/lib/locproxy`` when running as root;
3. ``$XDG_STATE_HOME/locproxy`` (an absolute ``XDG_STATE_HOME``), else
   ``~/.local/state/locproxy`` (the XDG base directory rule).

Missing parts are created owner-only (0700) and the file too (0600). An
existing directory or file is used only if it is this user's own, not a
symbolic link, and no one else may write it: whoever could write there
could make a worker trust bytes it never verified. Anything else is a
``ConfigError`` naming the option, at load.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Callable, Mapping

from locproxy.options import ConfigError

#: The value of ``metrics_file`` that means "in the state directory".
AUTO = "auto"
METRICS_NAME = "metrics.sqlite"


def state_directory(environ: Mapping[str, str] = os.environ, euid: int | None = None) -> Path:
    """The default state directory (not created)."""
    systemd = environ.get("STATE_DIRECTORY", "").split(":")[0]
    if systemd:
        return Path(systemd)
    if (os.geteuid() if euid is None else euid) == 0:
        return Path("/var/lib/locproxy")
    xdg = environ.get("XDG_STATE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".local" / "state"
    return base / "locproxy"


def default_metrics_file(option: str = "metrics_file") -> str:
    """``metrics.sqlite`` in the state directory, both made owner-only if missing."""
    directory = state_directory()
    if not directory.is_absolute():
        raise ConfigError(f"{option}: {AUTO}: the state directory {str(directory)!r} is not an absolute path")
    try:
        _private_directory(directory, option)
        path = directory / METRICS_NAME
        _private_file(path, option)
    except OSError as error:
        raise ConfigError(f"{option}: {AUTO}: cannot use the state directory {str(directory)!r}: {error}") from None
    return str(path)


def _private_directory(directory: Path, option: str) -> None:
    directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        directory.mkdir(mode=0o700)
    except FileExistsError:
        pass
    _check_own(directory, os.lstat(directory), stat.S_ISDIR, "directory", option)


def _private_file(path: Path, option: str) -> None:
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o600))
    except FileExistsError:
        pass
    _check_own(path, os.lstat(path), stat.S_ISREG, "file", option)


def _check_own(path: Path, info: os.stat_result, is_kind: Callable[[int], bool], kind: str, option: str) -> None:
    """Refuse what is not ours alone to write: a link, another's, group or other writable."""
    why = ""
    if not is_kind(info.st_mode):
        why = f"is not a {kind} (a symbolic link or something else)"
    elif info.st_uid != os.geteuid():
        why = f"belongs to uid {info.st_uid}, not to this user ({os.geteuid()})"
    elif info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        why = f"may be written by others (mode {stat.S_IMODE(info.st_mode):04o}); make it 0700 (a file 0600)"
    if why:
        raise ConfigError(f"{option}: {AUTO}: {str(path)!r} {why}")
