"""Real file systems for the fault rows (as root; every other caller is
skipped with the reason): an ext4 loop image mounted ``errors=remount-ro``
(``ext4``), that file system forced read-only the way ext4 does it on an
error (``read_only``), a small tmpfs filled to the last byte (``tmpfs`` and
``fill_up``), ext4 with 1-second timestamps (``ext4(..., inode_size=128)``:
128-byte inodes have no room for nanoseconds), and bytes changed under a
mounted ext4 file by writing the loop device's blocks (``rot``): the inode,
its size and all three times stay exactly as they were.

Every mount is bounded in time (commands ``TIMEOUT`` s) and undone on exit
(unmounted, lazily if busy, loop device detached, image deleted).
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import struct
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

TIMEOUT = 30.0
FIBMAP = 1  # ioctl: a file's logical block -> the device's block


@dataclass
class Mounted:
    path: Path
    device: str  # /dev/loopN, or "tmpfs"
    kind: str


def require(*tools: str) -> None:
    """Skip unless root with ``tools`` (mount and loop devices need both)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: mounting file systems and writing a loop device")
    missing = [tool for tool in ("mount", "umount", *tools) if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (not installed)")


def _run(*command: str) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)
    if done.returncode != 0:
        raise OSError(f"{' '.join(command)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def _unmount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True, timeout=TIMEOUT).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=TIMEOUT)


@contextmanager
def ext4(base: Path, size_mib: int = 64, *, inode_size: int | None = None,
         options: str = "errors=remount-ro") -> Iterator[Mounted]:
    """A fresh ext4 on a loop image under ``base``, mounted with ``options``."""
    require("mkfs.ext4", "losetup")
    name = f"ext4-{os.urandom(3).hex()}"
    image, path = base / f"{name}.img", base / name
    path.mkdir()
    with open(image, "wb") as stream:
        stream.truncate(size_mib << 20)
    extra = ["-I", str(inode_size)] if inode_size else []
    device = ""
    try:
        _run("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", *extra, str(image))
        try:
            device = _run("losetup", "--find", "--show", str(image)).strip()
        except OSError as error:
            pytest.skip(f"no loop device to be had here: {error}")
        _run("mount", "-t", "ext4", "-o", options, device, str(path))
        try:
            yield Mounted(path, device, "ext4")
        finally:
            _unmount(path)
    finally:
        if device:
            subprocess.run(["losetup", "-d", device], capture_output=True, timeout=TIMEOUT)
        image.unlink(missing_ok=True)
        path.rmdir()


def read_only(mounted: Mounted) -> str:
    """Make a mounted ext4 read-only as ``errors=remount-ro`` does: an ext4
    error raised through the kernel's own ``trigger_fs_error`` (Linux 6.x
    then marks it ``emergency_ro``); ``mount -o remount,ro`` where that knob
    is missing. Returns which of the two."""
    knob = Path("/sys/fs/ext4") / os.path.basename(mounted.device) / "trigger_fs_error"
    how = "an ext4 error (errors=remount-ro)"
    if knob.exists():
        knob.write_text("locproxy fault row: the cache's disk fails\n")
    else:  # refused ("busy") while files are open for writing, as the cache's index is
        try:
            _run("mount", "-o", "remount,ro", str(mounted.path))
        except OSError as error:
            pytest.skip(f"no /sys/fs/ext4/*/trigger_fs_error here, and {error}")
        how = "mount -o remount,ro"
    deadline = time.monotonic() + TIMEOUT
    while writable(mounted.path):
        if time.monotonic() > deadline:
            raise AssertionError(f"{mounted.path} did not become read-only")
        time.sleep(0.05)
    return how


def writable(path: Path) -> bool:
    """Whether ``path`` can be written. Not ``statvfs``: since Linux 6.x an
    ext4 error leaves the mount "rw,emergency_ro", ST_RDONLY unset."""
    try:
        os.utime(path)
    except OSError as error:
        if error.errno == errno.EROFS:
            return False
        raise
    return True


@contextmanager
def tmpfs(base: Path, size: str = "16m") -> Iterator[Mounted]:
    """A small tmpfs under ``base`` (``fill_up`` makes it full)."""
    require()
    path = base / f"tmpfs-{os.urandom(3).hex()}"
    path.mkdir()
    try:
        _run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path))
        try:
            yield Mounted(path, "tmpfs", "tmpfs")
        finally:
            _unmount(path)
    finally:
        path.rmdir()


def fill_up(directory: Path) -> int:
    """Write a file in ``directory`` until its file system is full (ENOSPC); its bytes."""
    fd = os.open(directory / f"filler-{os.urandom(3).hex()}", os.O_WRONLY | os.O_CREAT, 0o600)
    written, block = 0, b"\0" * (1 << 16)
    try:
        while True:
            try:
                written += os.write(fd, block)
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise
                if len(block) == 1:
                    return written
                block = block[: len(block) // 16 or 1]  # the last few pages too
    finally:
        os.close(fd)


def one_second_timestamps(mounted: Mounted) -> bool:
    """Whether the file system keeps whole seconds only (a probe file's mtime)."""
    probe = mounted.path / f"probe-{os.urandom(3).hex()}"
    try:
        for _ in range(5):
            probe.write_bytes(b"x")
            if probe.stat().st_mtime_ns % 1_000_000_000:
                return False
            time.sleep(0.013)
        return True
    finally:
        probe.unlink()


def rot(mounted: Mounted, path: Path, offset: int, data: bytes) -> os.stat_result:
    """Change ``data`` at ``offset`` of ``path`` under the file system: the
    bytes are written to the loop device at the file's own block, so the
    inode, size and times are exactly as they were (checked; returned).
    The file's cached pages are dropped, so every reader sees the new bytes."""
    before = os.stat(path)
    block_size = os.statvfs(mounted.path).f_bsize
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # the file's blocks allocated and written: nothing dirty to overwrite ours later
        position = offset
        while position < offset + len(data):
            logical, within = divmod(position, block_size)
            physical = struct.unpack("i", fcntl.ioctl(fd, FIBMAP, struct.pack("i", logical)))[0]
            assert physical > 0, f"{path}: block {logical} has no place on the device"
            piece = data[position - offset: position - offset + block_size - within]
            _write_device(mounted.device, physical * block_size + within, piece)
            position += len(piece)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    if _read(path, offset, len(data)) != data:  # pages still cached somewhere: drop them all
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
    assert _read(path, offset, len(data)) == data, "the new bytes are what the file reads"
    after = os.stat(path)
    same = ("st_ino", "st_size", "st_mtime_ns", "st_ctime_ns")
    assert [getattr(after, name) for name in same] == [getattr(before, name) for name in same], \
        "inode, size, mtime and ctime untouched"
    return after


def _write_device(device: str, position: int, data: bytes) -> None:
    fd = os.open(device, os.O_WRONLY)
    try:
        assert os.pwrite(fd, data, position) == len(data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _read(path: Path, offset: int, length: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)
