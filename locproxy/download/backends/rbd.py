"""``rbd://`` locations: Ceph RBD snapshots read with librbd.

URL forms (``locproxy.urls.parse_rbd_url``, as Glance's rbd store writes
them): ``rbd://<fsid>/<pool>/<image>/<snapshot>`` (what Glance has written
since Icehouse; the snapshot is ``snap``) and the legacy ``rbd://<image>``,
the image head in ``rbd_default_pool`` of ``rbd_default_cluster``.

How it reads:

* Only clusters listed in ``rbd_clusters`` (``locproxy.guards.RbdClusters``)
  are read: ``check`` refuses any other fsid without I/O, so no monitor is
  contacted for it. After connecting, the cluster's own fsid must be the
  listed one, so a wrong ceph.conf cannot serve another cluster's images
  under this name.
* One ``rados.Rados`` handle per cluster per process (``_HANDLES``), made on
  first use after fork (its threads do not cross a fork) and shared by every
  request and every settings reload that keeps the same cluster settings;
  each download opens its own ioctx and image.
* The snapshot is opened read-only. ``open`` reads the first block itself,
  so an unreachable or hung OSD fails *before the first byte* (the download
  falls back to the next location without a resume). Like every copy, a
  snapshot is checked block by block on every read (``locproxy.download.verify``):
  what is read is trusted, never what the copy is called.
* Read-ahead: up to ``rbd_readahead`` asynchronous reads (``aio_read``) of
  ``rbd_block_size`` (4M: one RADOS object of a default image) are in flight
  while the WSGI thread sends the block before them, so the cluster works on
  several objects at once (on the lab, 4 in flight read 1.8 x faster than
  one synchronous 4M read at a time). Memory per download: about
  ``(rbd_readahead + 1) x rbd_block_size``. A stream closed with reads in
  flight (a client gone, a cluster that hangs) closes its image on a short
  thread once they end, never under a running read.
* Nothing waits forever: ``rados_osd_op_timeout``/``rados_mon_op_timeout``
  (``rbd_op_timeout``) fail an operation of a hung cluster,
  ``client_mount_timeout`` (``backend_connect_timeout``) bounds connecting,
  and the WSGI thread waits for a block at most ``rbd_op_timeout`` plus a
  margin. A mid-stream failure resumes from the next location at the
  failure offset, as for the other backends.

Trust caveats
-------------
Pool, image and snapshot names come from a location URL: hostile input.
They are only *names* to librados (no paths), but any image the configured
Ceph user can read is readable through a crafted URL: give locproxy a
read-only user limited to the image pools (``ceph auth get-or-create
client.locproxy mon 'profile rbd' osd 'profile rbd-read-only pool=images'``).
Labels are ``rbd://<fsid>`` and reasons fixed texts: never a pool, image
name or key.

Needs the ``rados`` and ``rbd`` Python bindings from the distribution
(python3-rados, python3-rbd); ``rbd_clusters`` is refused at load without
them, and this module imports them only when a cluster is configured.
"""

from __future__ import annotations

import collections
import errno
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator, Mapping
from urllib.parse import SplitResult

from locproxy.download.backends.base import BackendError, BackendStream, Reader
from locproxy.failures import Failure
from locproxy.guards import RbdCluster, RbdClusters
from locproxy.options import ConfigError, MiB, parse_count, parse_fsid, parse_name, parse_seconds, parse_size
from locproxy.urls import RbdURL, parse_rbd_url

LOG = logging.getLogger(__package__)  # one logger for all the backends

# Extra wait for a block beyond the op timeout: librados reports a timed-out
# op itself; this margin only matters if it does not.
WAIT_MARGIN = 5.0


def _kind_and_text(error: BaseException) -> tuple[Failure, str]:
    """A rados/rbd error as a failure kind and short, name-free text."""
    name = type(error).__name__
    code = getattr(error, "errno", None)
    code = abs(code) if isinstance(code, int) else None
    if code in (errno.ETIMEDOUT, errno.EINTR) or "TimedOut" in name or name == "Timeout":
        return Failure.TIMEOUT, "timeout"
    if code == errno.ENOENT or "NotFound" in name:
        return Failure.MISSING, "not found"
    if code in (errno.EACCES, errno.EPERM) or "Permission" in name:
        return Failure.NOT_ALLOWED, "permission denied"
    if code == errno.ESHUTDOWN or name == "ConnectionShutdown":
        return Failure.CLOSED, "cluster connection shut down"
    detail = "" if code is None else " " + errno.errorcode.get(code, str(code))
    return Failure.OTHER, f"error ({name}{detail})"


def _error(label: str, error: BaseException, what: str = "", position: int | None = None) -> BackendError:
    kind, text = _kind_and_text(error)
    at = "" if position is None else f" at byte {position}"
    return BackendError(label, f"{what}{text}{at}", kind)


class _Handles:
    """The process's cluster handles, by everything they were made with."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = 0
        self._handles: dict[tuple, Any] = {}

    def get(self, rados: Any, fsid: str, cluster: RbdCluster, op_timeout: float, connect_timeout: float,
            label: str) -> Any:
        key = (fsid, cluster, math.ceil(op_timeout), math.ceil(connect_timeout))
        with self._lock:
            if self._pid != os.getpid():
                # After fork: the parent's handles (and their threads) are not ours.
                self._handles, self._pid = {}, os.getpid()
            handle = self._handles.get(key)
            if handle is None:
                handle = self._handles[key] = self._connect(rados, fsid, cluster, op_timeout, connect_timeout, label)
            return handle

    def connected(self) -> tuple[str, ...]:
        """The fsids this process holds a handle for."""
        with self._lock:
            return tuple(key[0] for key in self._handles) if self._pid == os.getpid() else ()

    def shutdown(self) -> None:
        """Shut every handle down (tests; a process about to exit). Streams
        still reading must be closed and joined first."""
        with self._lock:
            handles = list(self._handles.values()) if self._pid == os.getpid() else []
            self._handles = {}
        for handle in handles:
            handle.shutdown()

    @staticmethod
    def _connect(rados: Any, fsid: str, cluster: RbdCluster, op_timeout: float, connect_timeout: float,
                 label: str) -> Any:
        # Whole seconds: librados refuses "5.0" for these (EINVAL).
        conf = {
            "rados_osd_op_timeout": str(math.ceil(op_timeout)),
            "rados_mon_op_timeout": str(math.ceil(op_timeout)),
            "client_mount_timeout": str(math.ceil(connect_timeout)),
        }
        if cluster.keyring:
            conf["keyring"] = cluster.keyring
        started = time.monotonic()
        try:
            handle = rados.Rados(conffile=cluster.conf, rados_id=cluster.user, conf=conf)
        except Exception as error:  # rados.Error and friends: no useful common base
            raise BackendError(label, f"bad cluster configuration ({type(error).__name__})",
                               Failure.OTHER) from None
        try:
            handle.connect(timeout=math.ceil(connect_timeout))
            actual = str(handle.get_fsid()).lower()
        except Exception as error:
            handle.shutdown()
            kind, text = _kind_and_text(error)
            raise BackendError(label, f"connect failed: {text}",
                               Failure.CONNECT_TIMEOUT if kind is Failure.TIMEOUT else Failure.UNREACHABLE) from None
        if actual != fsid:
            handle.shutdown()
            raise BackendError(label, "connected cluster has another fsid", Failure.NOT_ALLOWED)
        LOG.debug("connected to %s in %.3f s", label, time.monotonic() - started)
        return handle


_HANDLES = _Handles()

class _Read:
    """One asynchronous read: its span, then its data or its error code."""

    __slots__ = ("offset", "size", "done", "data", "code")

    def __init__(self, offset: int, size: int) -> None:
        self.offset = offset
        self.size = size
        self.done = threading.Event()
        self.data: bytes | None = None
        self.code = 0

    def complete(self, completion: Any, data: bytes | None) -> None:
        # On a librbd thread: record and wake the WSGI thread, nothing more.
        self.code = completion.get_return_value()
        self.data = data
        self.done.set()


class RbdStream(BackendStream):
    """Blocks of ``block_size`` read with up to ``inflight`` asynchronous
    reads ahead of the one being sent (librbd reads several RADOS objects at
    once: measured 1.8 x one synchronous read at a time on the lab)."""

    def __init__(self, label: str, image: Any, ioctx: Any, start: int, length: int, block_size: int,
                 inflight: int, wait: float, fadvise: int) -> None:
        super().__init__(label, start, length, block_size)
        self._image = image
        self._ioctx = ioctx
        self._inflight = inflight
        self._wait = wait
        self._fadvise = fadvise
        self._pending: collections.deque[_Read] = collections.deque()
        self._next = start  # offset of the next read to ask for
        self._first: bytes | None = None

    def begin(self) -> None:
        """Ask for the first blocks and wait for the first (errors raise here:
        before the first byte)."""
        try:
            self._first = self._take(first=True)
        except BaseException:
            self.close()
            raise

    def _fill(self) -> None:
        end = self.start + self.length
        while len(self._pending) < self._inflight and self._next < end:
            read = _Read(self._next, min(self._chunk_size, end - self._next))
            try:
                self._image.aio_read(read.offset, read.size, read.complete, self._fadvise)
            except Exception as error:  # rbd.Error: the image is unusable
                raise _error(self.label, error, position=read.offset) from None
            self._pending.append(read)
            self._next += read.size

    def _take(self, first: bool = False) -> bytes:
        """The next block, in order, once it has arrived; then ask for more."""
        self._fill()
        read = self._pending.popleft()
        position = None if first else read.offset
        if not read.done.wait(self._wait):
            raise BackendError(self.label, "timeout" + ("" if first else f" at byte {read.offset}"), Failure.TIMEOUT)
        if read.code < 0:
            raise _error(self.label, OSError(-read.code, os.strerror(-read.code)), position=position)
        data = read.data or b""
        if len(data) != read.size:
            raise BackendError(self.label, f"ended early at byte {read.offset + len(data)}", Failure.TRUNCATED)
        self._fill()  # keep reading ahead while this block is sent
        return data

    def _chunks(self) -> Iterator[bytes]:
        first, self._first = self._first, None
        if first is not None:
            self._sent += len(first)
            yield first
        while self._sent < self.length:
            if self._closed:
                raise BackendError(self.label, "stream closed")
            data = self._take()
            self._sent += len(data)
            yield data

    def close(self) -> None:
        if self._closed and self._image is None:
            return
        super().close()
        self._first = None
        pending, self._pending = list(self._pending), collections.deque()
        image, ioctx, self._image, self._ioctx = self._image, self._ioctx, None, None
        if all(read.done.is_set() for read in pending):
            _release(self.label, image, ioctx)
            return
        # Reads still in flight (a client gone mid-stream, a cluster that
        # hangs): the image is closed once they end (librados times them out),
        # on a thread of its own, so this thread does not wait for them.
        def release_later() -> None:
            for read in pending:
                read.done.wait(self._wait)
            _release(self.label, image, ioctx)

        threading.Thread(target=release_later, name="locproxy-rbd-close", daemon=True).start()


def _release(label: str, image: Any, ioctx: Any) -> None:
    for handle in (image, ioctx):
        if handle is not None:
            try:
                handle.close()
            except Exception as error:  # closing a broken handle must not mask the real error
                LOG.debug("%s: closing %s: %s", label, type(handle).__name__, _kind_and_text(error)[1])


@dataclass(frozen=True)
class RbdOptions:
    clusters: RbdClusters = RbdClusters()
    default_cluster: str = ""  # fsid of the legacy rbd://<image> form
    default_pool: str = ""
    block_size: int = 4 * MiB
    readahead: int = 4
    op_timeout: float = 30.0

    def __post_init__(self) -> None:
        """The legacy rbd://<image> form needs both defaults, naming a listed cluster."""
        if bool(self.default_cluster) != bool(self.default_pool):
            raise ConfigError("rbd_default_cluster and rbd_default_pool: set both (for rbd://<image>) or neither")
        if self.default_cluster and self.default_cluster not in self.clusters.fsids:
            raise ConfigError(f"rbd_default_cluster: {self.default_cluster} is not in rbd_clusters")


class RbdBackend:
    """Opens ``rbd://`` locations of the configured clusters (see the module docstring)."""

    def __init__(self, options: RbdOptions, common: Any, built: Mapping[str, Any] = {}) -> None:
        self.clusters = options.clusters
        self.default_cluster = options.default_cluster
        self.default_pool = options.default_pool
        self.block_size = options.block_size
        self.readahead = options.readahead
        self.op_timeout = options.op_timeout
        self.connect_timeout = common.connect_timeout
        clusters = self.clusters
        self._bindings: tuple[Any, Any] | None = None
        if clusters:
            import rados  # noqa: PLC0415 - optional, from the distribution (checked at load)
            import rbd  # noqa: PLC0415

            self._bindings = (rados, rbd)
            self._fadvise = getattr(rados, "LIBRADOS_OP_FLAG_FADVISE_SEQUENTIAL", 0)

    def check(self, url: str, parts: SplitResult, label: str) -> None:
        """Refuse, without I/O, what may never be read: any cluster not listed."""
        self._target(parts.geturl(), label)  # as open() will

    def _target(self, url: str, label: str) -> tuple[str, RbdCluster, str, RbdURL]:
        if not self.clusters:
            raise BackendError(label, "rbd locations not enabled (no rbd_clusters)", Failure.NOT_ALLOWED)
        try:
            location = parse_rbd_url(url)
        except ValueError as error:
            raise BackendError(label, f"invalid rbd URL ({error})", Failure.INVALID_URL) from None
        fsid, pool = location.fsid, location.pool
        if fsid is None:
            if not self.default_cluster or not self.default_pool:
                raise BackendError(label, "legacy rbd URL and no rbd_default_cluster and rbd_default_pool",
                                   Failure.NOT_ALLOWED)
            fsid, pool = self.default_cluster, self.default_pool
        cluster = self.clusters.get(fsid)
        if cluster is None:
            raise BackendError(label, "cluster not configured", Failure.NOT_ALLOWED)
        assert pool is not None
        return fsid, cluster, pool, location

    def open(self, parts: SplitResult, label: str, start: int, length: int, total_size: int | None) -> RbdStream:
        fsid, cluster, pool, location = self._target(parts.geturl(), label)
        assert self._bindings is not None
        rados, rbd = self._bindings
        handle = _HANDLES.get(rados, fsid, cluster, self.op_timeout, self.connect_timeout, label)
        try:
            ioctx = handle.open_ioctx(pool)
        except Exception as error:
            raise _error(label, error, "pool: ") from None
        try:
            image = rbd.Image(ioctx, location.image, snapshot=location.snapshot, read_only=True)
        except Exception as error:
            ioctx.close()
            raise _error(label, error, "image or snapshot: ") from None
        stream = RbdStream(label, image, ioctx, start, length, self.block_size, self.readahead,
                           self.op_timeout + WAIT_MARGIN, self._fadvise)
        try:
            size = image.size()
            if total_size is not None and size != total_size:
                raise BackendError(label, f"size mismatch (image has {size} bytes, expected {total_size})",
                                   Failure.SIZE_MISMATCH)
            if start + length > size:
                raise BackendError(label, f"range beyond end of image ({size} bytes)", Failure.SIZE_MISMATCH)
        except BackendError:
            stream.close()
            raise
        except Exception as error:
            stream.close()
            raise _error(label, error, "image: ") from None
        LOG.debug("reading %s bytes %s+%s", label, start, length)
        stream.begin()
        return stream


def connected_clusters() -> tuple[str, ...]:
    """The fsids this process holds a cluster handle for (tests: proof that
    an unlisted fsid was never contacted)."""
    return _HANDLES.connected()


def shutdown_clusters() -> None:
    """Shut every cluster handle of this process down (tests)."""
    _HANDLES.shutdown()


READER = Reader("rbd", frozenset({"rbd"}), RbdOptions, {
    "rbd_clusters": ("clusters", RbdClusters.parse),
    "rbd_default_cluster": ("default_cluster", parse_fsid),
    "rbd_default_pool": ("default_pool", parse_name),
    "rbd_block_size": ("block_size", parse_size),
    "rbd_readahead": ("readahead", parse_count),
    "rbd_op_timeout": ("op_timeout", parse_seconds),
}, RbdBackend)
