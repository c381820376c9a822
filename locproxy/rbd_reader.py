"""Prototype backend reader for ``rbd://`` locations (Ceph RBD, through librbd).

``RbdReader.open(url, start, length, total_size)`` follows the contract of
``locproxy.backends.Backends.open``: it raises ``BackendError`` before the
first byte, or returns a ``BackendStream`` that yields exactly ``length``
bytes in blocks of ``block_size`` (4 MiB by default, one RADOS object), or
raises ``BackendError`` mid-stream.

URL forms (as Glance's rbd store writes and parses them):

* ``rbd://<fsid>/<pool>/<image>/<snapshot>`` (each part percent-decoded):
  what Glance has written since Icehouse; the snapshot is ``snap``;
* ``rbd://<image>`` (legacy, taken literally): the image head in the
  ``default_pool`` of the ``default_cluster``, if both are configured.

How it reads:

* Clusters come from a mapping ``fsid -> RbdCluster(conf, user, keyring)``
  (``parse_rbd_clusters`` reads it from an ini option). A URL whose fsid is
  not listed is refused before librados is touched: no mon is ever contacted
  for it. After connecting, the cluster's own fsid must equal the URL's, so a
  wrong ``conf`` path cannot serve another cluster's image under this name.
* One ``rados.Rados`` handle per fsid per process, created on first use
  after fork (a handle must not cross a fork: its threads do not) and reused
  by every request; each request opens its own ioctx and image.
* The snapshot is opened read-only. ``open`` reads the first block itself,
  so an unreachable or hung OSD is a failure *before the first byte* (the
  download falls back to the next location without a resume).
* Read-ahead: one small thread per stream reads the next blocks (at most
  ``readahead`` of them) while the current one is yielded; librbd releases
  the GIL during a read. The thread owns the image and ioctx and closes them
  when it stops, so a close() racing a read never frees them under librbd.
* Nothing waits forever: ``rados_osd_op_timeout`` / ``rados_mon_op_timeout``
  make a hung cluster fail an operation, ``client_mount_timeout`` bounds
  connecting, and the stream waits for a block at most ``op_timeout`` plus a
  margin.

Trust caveats
-------------
Pool, image and snapshot names come from a location URL: hostile input. They
are only *names* to librados (no paths), but any image the configured Ceph
user can read is readable through a crafted URL: give locproxy a read-only
user limited to the image pools (``ceph auth get-or-create client.locproxy
mon 'profile rbd' osd 'profile rbd-read-only pool=images'``). The legacy
form reads the image *head*, which its owner may still be writing (Glance
reads it the same way). Labels are ``rbd://<fsid>`` (``backend_label``):
never an image name, a path or a key.

Needs the ``rados`` and ``rbd`` Python bindings (Debian's python3-rados and
python3-rbd; see tests/support_ceph.py for using them from another CPython
with the same ABI). They are imported when an ``RbdReader`` is built, so
parsing works without them.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import queue
import threading
import time
import uuid
import weakref
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Iterator, Mapping
from urllib.parse import unquote

from locproxy.backends import BackendError, BackendStream
from locproxy.options import ConfigError, MiB, parse_list
from locproxy.urls import backend_label

LOG = logging.getLogger(__name__)

DEFAULT_BLOCK_SIZE = 4 * MiB  # one RADOS object of a default (order 22) image
DEFAULT_READAHEAD = 2
DEFAULT_OP_TIMEOUT = 30.0
DEFAULT_CONNECT_TIMEOUT = 10.0
# Extra wait for a block beyond op_timeout: librados reports a timed-out op
# itself; this margin only matters if it does not.
_WAIT_MARGIN = 5.0


@dataclass(frozen=True)
class RbdCluster:
    """How to reach one Ceph cluster: its ceph.conf, user (without ``client.``) and keyring."""

    conf: str
    user: str = "admin"
    keyring: str | None = None


@dataclass(frozen=True)
class RbdLocation:
    fsid: str | None  # None: legacy rbd://<image>
    pool: str | None
    image: str
    snapshot: str | None


def parse_rbd_url(url: str) -> RbdLocation:
    """Split an ``rbd://`` URL as Glance's ``StoreLocation.parse_uri`` does; ValueError if invalid."""
    if not isinstance(url, str) or url[:6].lower() != "rbd://":
        raise ValueError("not an rbd:// URL")
    pieces = url[6:].split("/")
    if any(piece == "" for piece in pieces) or "\x00" in url:
        raise ValueError("empty component")
    if len(pieces) == 1:
        return RbdLocation(None, None, pieces[0], None)
    if len(pieces) != 4:
        raise ValueError("expected rbd://fsid/pool/image/snapshot or rbd://image")
    fsid, pool, image, snapshot = (unquote(piece) for piece in pieces)
    try:
        fsid = str(uuid.UUID(fsid))
    except ValueError:
        raise ValueError("fsid is not a UUID") from None
    if not all((pool, image, snapshot)) or "\x00" in pool + image + snapshot:
        raise ValueError("empty component")
    return RbdLocation(fsid, pool, image, snapshot)


def parse_rbd_clusters(option: str, value: str | Mapping[str, Any] | None) -> dict[str, RbdCluster]:
    """``"<fsid>:<ceph.conf>[:<user>[:<keyring>]], ..."`` (commas or newlines) -> {fsid: RbdCluster}.

    Paths may not contain ``:`` or ``,``. A mapping of fsid to RbdCluster (or
    to a (conf, user, keyring) tuple) is accepted too.
    """
    if value is None:
        return {}
    if isinstance(value, Mapping):
        pairs = list(value.items())
    else:
        pairs = []
        for position, item in enumerate(parse_list(option, value.replace("\n", ",")), 1):
            fields = [part.strip() for part in item.split(":")]
            if not 2 <= len(fields) <= 4 or not all(fields):
                raise ConfigError(
                    f"{option}: item {position} ({item!r}) is not fsid:ceph.conf[:user[:keyring]] "
                    f"(e.g. '6f1c…:/etc/ceph/ceph.conf:glance:/etc/ceph/ceph.client.glance.keyring')"
                )
            pairs.append((fields[0], tuple(fields[1:])))
    clusters: dict[str, RbdCluster] = {}
    for fsid, spec in pairs:
        try:
            key = str(uuid.UUID(str(fsid)))
        except ValueError:
            raise ConfigError(f"{option}: {fsid!r} is not a cluster fsid (a UUID)") from None
        if key in clusters:
            raise ConfigError(f"{option}: fsid {key} listed twice")
        cluster = spec if isinstance(spec, RbdCluster) else RbdCluster(*spec)
        if not os.path.isabs(cluster.conf) or (cluster.keyring is not None and not os.path.isabs(cluster.keyring)):
            raise ConfigError(f"{option}: paths for {key} must be absolute, got {cluster.conf!r}")
        if cluster.user.startswith("client."):
            cluster = RbdCluster(cluster.conf, cluster.user[len("client."):], cluster.keyring)
        clusters[key] = cluster
    return clusters


def import_bindings() -> tuple[ModuleType, ModuleType]:
    """(rados, rbd), or ImportError with the reason."""
    import rados  # noqa: PLC0415 - optional, system-packaged bindings
    import rbd  # noqa: PLC0415

    return rados, rbd


def _reason(error: BaseException, position: int | None = None) -> str:
    """Short, path-free text for a rados/rbd error."""
    at = "" if position is None else f" at byte {position}"
    code = getattr(error, "errno", None)
    code = abs(code) if isinstance(code, int) else None
    if code in (errno.ETIMEDOUT, errno.EINTR) or "TimedOut" in type(error).__name__ or type(error).__name__ == "Timeout":
        return f"timeout{at}"
    if code == errno.ENOENT or "NotFound" in type(error).__name__:
        return f"not found{at}"
    if code in (errno.EACCES, errno.EPERM) or "Permission" in type(error).__name__:
        return f"permission denied{at}"
    if code == errno.ESHUTDOWN or type(error).__name__ == "ConnectionShutdown":
        return f"cluster connection shut down{at}"
    return f"error ({type(error).__name__}{'' if code is None else ' ' + errno.errorcode.get(code, str(code))}){at}"


class _Failure:
    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


_DONE = object()


class _RbdStream(BackendStream):
    """Blocks from a reader thread; the thread owns (and closes) the image and ioctx."""

    def __init__(
        self, label: str, image: Any, ioctx: Any, start: int, length: int, block_size: int,
        readahead: int, wait: float, fadvise: int,
    ) -> None:
        super().__init__(label, start, length, block_size)
        self._image = image
        self._ioctx = ioctx
        self._wait = wait
        self._fadvise = fadvise
        self._queue: queue.Queue = queue.Queue(maxsize=readahead)
        self._stop = threading.Event()
        self._first: bytes | None = None
        self._thread = threading.Thread(target=self._read_blocks, name=f"rbd-read {label}", daemon=True)

    def begin(self) -> None:
        """Read the first block (errors raise here: before the first byte), then read ahead."""
        try:
            self._first = self._read(self.start, min(self._chunk_size, self.length))
        except BaseException:
            self._release()
            raise
        self._thread.start()

    def _read(self, offset: int, size: int) -> bytes:
        try:
            data = self._image.read(offset, size, self._fadvise)
        except Exception as error:  # rados.Error, rbd.Error: no common base
            raise BackendError(self.label, _reason(error, offset if offset != self.start else None)) from None
        if len(data) != size:
            raise BackendError(self.label, f"short read at byte {offset + len(data)}")
        return data

    def _release(self) -> None:
        image, ioctx, self._image, self._ioctx = self._image, self._ioctx, None, None
        for handle in (image, ioctx):
            if handle is not None:
                try:
                    handle.close()
                except Exception as error:  # closing a broken handle must not mask the real error
                    LOG.debug("%s: closing %s: %s", self.label, type(handle).__name__, _reason(error))

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _read_blocks(self) -> None:
        try:
            offset = self.start + len(self._first or b"")
            end = self.start + self.length
            while offset < end and not self._stop.is_set():
                size = min(self._chunk_size, end - offset)
                try:
                    data = self._read(offset, size)
                except BackendError as error:
                    self._put(_Failure(error.reason))
                    return
                if not self._put(data):
                    return
                offset += size
            self._put(_DONE)
        finally:
            self._release()

    def _chunks(self) -> Iterator[bytes]:
        first, self._first = self._first, None
        if first is not None:
            self._sent += len(first)
            yield first
        while self._sent < self.length:
            if self._closed:
                raise BackendError(self.label, "stream closed")
            try:
                item = self._queue.get(timeout=self._wait)
            except queue.Empty:
                raise BackendError(self.label, f"read timeout at byte {self.position}") from None
            if isinstance(item, _Failure):
                LOG.debug("%s: %s", self.label, item.reason)
                raise BackendError(self.label, item.reason)
            if item is _DONE or not isinstance(item, bytes):
                raise BackendError(self.label, f"ended early at byte {self.position}")
            self._sent += len(item)
            yield item

    def close(self) -> None:
        if self._closed:
            return
        super().close()
        self._first = None
        self._stop.set()
        # Unblock a put() waiting for room; the thread then stops and closes the image.
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if not self._thread.is_alive() and self._thread.ident is None:
            self._release()  # never started

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the reader thread (tests, shutdown); True if it has finished."""
        if self._thread.ident is not None:
            self._thread.join(timeout)
        return not self._thread.is_alive()


class RbdReader:
    """Reads rbd:// locations of the configured clusters (see the module docstring)."""

    def __init__(
        self,
        clusters: Mapping[str, RbdCluster],
        *,
        default_cluster: str | None = None,
        default_pool: str | None = None,
        block_size: int = DEFAULT_BLOCK_SIZE,
        readahead: int = DEFAULT_READAHEAD,
        op_timeout: float = DEFAULT_OP_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        if block_size < 1 or readahead < 1 or op_timeout <= 0 or connect_timeout <= 0:
            raise ValueError("block_size, readahead, op_timeout and connect_timeout must be positive")
        self.clusters = parse_rbd_clusters("rbd_clusters", dict(clusters))
        if default_cluster is not None:
            default_cluster = str(uuid.UUID(default_cluster))
            if default_cluster not in self.clusters:
                raise ConfigError(f"rbd_default_cluster: {default_cluster} is not in rbd_clusters")
        self.default_cluster = default_cluster
        self.default_pool = default_pool
        self.block_size = block_size
        self.readahead = readahead
        self.op_timeout = op_timeout
        self.connect_timeout = connect_timeout
        try:
            self._rados, self._rbd = import_bindings()
        except ImportError as error:
            raise ConfigError(f"rbd_clusters: the rados/rbd Python bindings are not importable ({error})") from None
        self._fadvise = getattr(self._rados, "LIBRADOS_OP_FLAG_FADVISE_SEQUENTIAL", 0)
        self._lock = threading.Lock()
        self._pid = 0
        self._handles: dict[str, Any] = {}
        # Open streams, so close() can wait for their reader threads: shutting
        # a handle down under an open ioctx/image is a use-after-free in librados.
        self._streams: weakref.WeakSet[_RbdStream] = weakref.WeakSet()

    # -- connections -------------------------------------------------------------

    def connected(self) -> tuple[str, ...]:
        """The fsids this process holds a cluster handle for."""
        return tuple(self._handles) if self._pid == os.getpid() else ()

    def _handle(self, fsid: str, label: str) -> Any:
        with self._lock:
            if self._pid != os.getpid():
                # After fork: the parent's handles (and their threads) are not ours.
                self._handles, self._pid = {}, os.getpid()
            handle = self._handles.get(fsid)
            if handle is not None:
                return handle
            cluster = self.clusters[fsid]
            # Bounds: a hung mon or OSD fails an op instead of hanging a worker.
            # Whole seconds: librados refuses "5.0" for these (EINVAL).
            conf = {
                "rados_osd_op_timeout": str(math.ceil(self.op_timeout)),
                "rados_mon_op_timeout": str(math.ceil(self.op_timeout)),
                "client_mount_timeout": str(math.ceil(self.connect_timeout)),
            }
            if cluster.keyring:
                conf["keyring"] = cluster.keyring
            started = time.monotonic()
            try:
                handle = self._rados.Rados(conffile=cluster.conf, rados_id=cluster.user, conf=conf)
            except Exception as error:
                raise BackendError(label, f"bad cluster configuration ({type(error).__name__})") from None
            try:
                handle.connect(timeout=math.ceil(self.connect_timeout))
                actual = handle.get_fsid()
            except Exception as error:
                handle.shutdown()
                raise BackendError(label, f"connect failed: {_reason(error)}") from None
            if str(actual).lower() != fsid:
                handle.shutdown()
                raise BackendError(label, "connected cluster has another fsid")
            LOG.debug("connected to %s in %.3f s", label, time.monotonic() - started)
            self._handles[fsid] = handle
            return handle

    def close(self) -> None:
        """Close open streams, wait for their reader threads, shut down the cluster handles.

        A thread stuck in librados past ``op_timeout`` keeps its handle alive
        (leaked, with a WARNING) rather than have it freed under it.
        """
        streams = list(self._streams)
        for stream in streams:
            stream.close()
        stuck = [stream for stream in streams if not stream.join(self.op_timeout + _WAIT_MARGIN)]
        with self._lock:
            handles, self._handles = (self._handles if self._pid == os.getpid() else {}), {}
        if stuck:
            LOG.warning("%s rbd reader thread(s) still running; not shutting down cluster handles", len(stuck))
            return
        for handle in handles.values():
            handle.shutdown()

    # -- opening -------------------------------------------------------------------

    def label_for(self, url: str) -> str:
        """``rbd://<fsid>`` (legacy URLs: the default cluster's), ``rbd`` if unknown."""
        try:
            location = parse_rbd_url(url)
        except ValueError:
            return "rbd"
        fsid = location.fsid or self.default_cluster
        return backend_label(f"rbd://{fsid}") if fsid else "rbd"

    def open(self, url: str, start: int, length: int, total_size: int | None) -> BackendStream:
        """Open ``length`` bytes at ``start``; BackendError before the first byte (see module doc)."""
        if start < 0 or length < 1 or (total_size is not None and start + length > total_size):
            raise ValueError(f"bad range: start={start} length={length} total_size={total_size}")
        label = self.label_for(url)
        try:
            return self._open(url, label, start, length, total_size)
        except BackendError as error:
            LOG.debug("not reading from %s: %s", label, error.reason)
            raise

    def _open(self, url: str, label: str, start: int, length: int, total_size: int | None) -> BackendStream:
        try:
            location = parse_rbd_url(url)
        except ValueError as error:
            raise BackendError(label, f"invalid rbd URL ({error})") from None
        fsid, pool, snapshot = location.fsid, location.pool, location.snapshot
        if fsid is None:
            if self.default_cluster is None or not self.default_pool:
                raise BackendError(label, "legacy rbd URL and no default cluster and pool")
            fsid, pool = self.default_cluster, self.default_pool
        if fsid not in self.clusters:
            raise BackendError(label, "cluster not configured")
        handle = self._handle(fsid, label)
        try:
            ioctx = handle.open_ioctx(pool)
        except Exception as error:
            raise BackendError(label, f"pool: {_reason(error)}") from None
        try:
            image = self._rbd.Image(ioctx, location.image, snapshot=snapshot, read_only=True)
        except Exception as error:
            ioctx.close()
            raise BackendError(label, f"image or snapshot: {_reason(error)}") from None
        stream = _RbdStream(
            label, image, ioctx, start, length, self.block_size, self.readahead,
            self.op_timeout + _WAIT_MARGIN, self._fadvise,
        )
        try:
            size = image.size()
            if total_size is not None and size != total_size:
                raise BackendError(label, f"size mismatch (image has {size} bytes, expected {total_size})")
            if start + length > size:
                raise BackendError(label, f"range beyond end of image ({size} bytes)")
        except BackendError:
            stream._release()
            raise
        except Exception as error:
            stream._release()
            raise BackendError(label, f"image size: {_reason(error)}") from None
        LOG.debug("reading %s bytes %s+%s", label, start, length)
        stream.begin()
        self._streams.add(stream)
        return stream
