"""Fault table rows: an http copy replaced by other bytes of the same size
behind real servers whose validators cannot see it: Debian's nginx (ETag
is mtime-size, whole seconds) and a plain server sending only
Last-Modified (Python's http.server, ``locproxy.demo.serve_static``).

Three replacements each, every one keeping the server's ETag,
Last-Modified and Content-Length as they were (checked): new bytes written
over the file and its times put back with ``touch -r``; a new file with the
old times (``touch -r``) renamed over it; 4 KiB rewritten in place within
the second of the file's mtime. The promise: the next download is never a
complete wrong body; the changed block is refused before it is sent (an
ERROR naming the copy) and the body completes, exact, from the next copy.
"""

from __future__ import annotations

import os
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, ContextManager, Iterator

from locproxy.demo import location, serve_static
from tests.support.client import fetch
from tests.support.faults.lab import DATA, FaultLab, Scenarios, check_download
from tests.support.nginx import static_nginx

ROWS = Scenarios()
scenario = ROWS.row

AT = 4096
OTHER = DATA[:AT] + bytes(4096) + DATA[AT + 4096:]  # other bytes, the same size
HOW = ("touch -r", "rename", "in place within the second")


def validators(port: int, name: str) -> tuple[str | None, ...]:
    head = fetch(port, f"/{name}", method="HEAD")
    assert head.status == 200, head.describe()
    return tuple(head.header(header) for header in ("etag", "last-modified", "content-length"))


def _touch_r(path: Path) -> None:
    times = path.with_name(path.name + ".times")
    subprocess.run(["touch", "-r", str(path), str(times)], check=True, timeout=10)
    with open(path, "r+b") as stream:  # the same inode, new bytes
        stream.write(OTHER)
    subprocess.run(["touch", "-r", str(times), str(path)], check=True, timeout=10)
    times.unlink()


def _rename(path: Path) -> None:
    new = path.with_name(path.name + ".new")
    new.write_bytes(OTHER)
    subprocess.run(["touch", "-r", str(path), str(new)], check=True, timeout=10)
    os.rename(new, path)


def _in_place(path: Path) -> None:
    with open(path, "r+b") as stream:
        stream.seek(AT)
        stream.write(OTHER[AT:AT + 4096])


REPLACE: dict[str, Callable[[Path], None]] = dict(zip(HOW, (_touch_r, _rename, _in_place)))


def _replaced_unseen(lab: FaultLab, port: int, path: Path, image_id: str, how: str) -> None:
    """The copy downloaded whole (correct), then replaced ``how``, keeping
    the server's validators (in place: retried until it fell within the second)."""
    for _attempt in range(3):
        if how == HOW[2]:
            time.sleep(1.02 - time.time() % 1)  # the start of a second
            path.write_bytes(DATA)
        check_download(lab, image_id, "served")
        before = validators(port, path.name)
        REPLACE[how](path)
        if validators(port, path.name) == before:
            return
    raise AssertionError(f"{how}: the server's validators changed {before} (a loaded machine?)")


def replacements(lab: FaultLab, serving: Callable[[Path], ContextManager[int]], server: str,
                 etag: bool) -> tuple[str, str]:
    root = lab.base / f"www-{os.urandom(3).hex()}"
    root.mkdir()
    caught = []
    with serving(root) as port:
        for how in HOW:
            path = root / f"copy-{os.urandom(4).hex()}"
            path.write_bytes(DATA)
            assert (validators(port, path.name)[0] is not None) == etag, "nginx sends an ETag, http.server none"
            image_id = lab.image(location(f"http://127.0.0.1:{port}/{path.name}", "web"), lab.file_copy())
            _replaced_unseen(lab, port, path, image_id, how)
            caught.append(check_download(lab, image_id, "caught", via="backend"))
            again = check_download(lab, image_id, "served", via="backend")
    assert all(verified.startswith("sha512 ✓") for _outcome, verified in caught + [again])
    kept = "ETag (mtime-size), Last-Modified" if etag else "Last-Modified (no ETag)"
    return (f"{server}'s {kept} and length unchanged each time; 200, correct body, 3/3: the "
            "changed block refused before it was sent (ERROR naming the copy), the rest from the next copy",
            "sha512 ✓ (3 + 3 after)")


@contextmanager
def _plain(root: Path) -> Iterator[int]:
    with serve_static(str(root)) as server:
        yield int(server.url.rsplit(":", 1)[1])


@scenario("trust content", "http copy behind nginx replaced, same size: touch -r, rename, in place")
def _behind_nginx(lab: FaultLab) -> tuple[str, str]:
    return replacements(lab, lambda root: static_nginx(root, lab.base / f"nginx-{os.urandom(3).hex()}"), "nginx",
                        etag=True)


@scenario("trust content", "http copy behind a Last-Modified-only server replaced, same size: touch -r, rename, "
          "in place")
def _behind_plain_server(lab: FaultLab) -> tuple[str, str]:
    return replacements(lab, _plain, "http.server", etag=False)
