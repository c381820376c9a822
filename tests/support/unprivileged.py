"""Run a function as a user who may read but not write the test's files.

Root ignores file modes, so "a read-only metrics file" needs another user:
as root, a forked child drops to ``nobody`` and calls the function (every
module it needs must already be imported: the interpreter's own files may
not be readable by ``nobody``); as anyone else, the test's ``chmod`` is
enough and the function runs in a child all the same.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

NOBODY = 65534


@contextmanager
def shared_dir() -> Iterator[Path]:
    """A fresh directory any user may traverse and read (pytest's are
    private), removed afterwards whatever modes the test gave it."""
    path = Path(tempfile.mkdtemp(prefix="locproxy-ro-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for item in [path, *path.rglob("*")]:
            item.chmod(0o755 if item.is_dir() else 0o644)
        shutil.rmtree(path)


def make_read_only(*paths: Path) -> None:
    """Files 0444, directories 0555: read-only for anyone but root."""
    for path in paths:
        path.chmod(0o555 if path.is_dir() else 0o444)


def run_unprivileged(function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)`` in a child process (as ``nobody`` when we are
    root); returns its result or raises what it raised."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns to pytest
        os.close(reader)
        try:
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            outcome: tuple[bool, Any] = (True, function(*args))
        except BaseException as error:  # noqa: BLE001 - reported to the parent
            outcome = (False, error)
        try:
            data = pickle.dumps(outcome)
        except Exception as error:  # noqa: BLE001
            data = pickle.dumps((False, RuntimeError(f"unpicklable outcome: {error!r}")))
        with os.fdopen(writer, "wb") as stream:
            stream.write(data)
        os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as stream:
        data = stream.read()
    os.waitpid(pid, 0)
    ok, value = pickle.loads(data)
    if not ok:
        raise value
    return value
