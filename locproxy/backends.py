"""Backends: open one image location (file://, http(s)://) for reading a byte range.

``Backends.open(url, start, length, total_size)`` either raises
``BackendError`` before the first byte, or returns a ``BackendStream`` that
yields exactly ``length`` bytes (or raises ``BackendError`` mid-stream). The
download handler tries locations in order and falls back on ``BackendError``
raised by ``open``; a mid-stream error must abort the client response, never
end it as if complete.

Trust caveats
-------------
Location URLs come from the image API, and image owners can often set them:
treat every URL as hostile. Two guards decide what may be read, and nothing
else here should be relied on:

* ``file://`` is read only below the configured ``file_roots``, judged on the
  *resolved* path (``..`` and symlinks pointing out of a root are refused). The
  path is taken literally, never percent-decoded, as Glance's filesystem store
  does. A hard link inside a root to a file outside it cannot be told apart
  from an ordinary file: roots must not be writable by untrusted users.
* ``http(s)://`` is fetched only from hosts in ``allowed_hosts``. We connect to
  exactly the host and port we checked (never re-parsing the URL with another
  parser, so ``http://allowed@evil/`` and ``http://allowed\\@evil/`` both go to
  ``evil`` and are refused), and never follow redirects. Names are resolved by
  DNS, so an allowed *name* is only as trustworthy as its DNS.

Backends get only the headers built here (no client header is forwarded);
credentials in a location URL (``http://user:pass@host/``) are sent as HTTP
Basic auth, as Glance's http store does, and never appear in logs, error
reasons or labels (``backend_label`` is the only name used for a backend).

Only this module and the proxy import urllib3.
"""

from __future__ import annotations

import base64
import errno
import ipaddress
import logging
import os
import re
import stat
from typing import Any, BinaryIO, Iterator
from urllib.parse import SplitResult, unquote, urlsplit

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    EmptyPoolError,
    HTTPError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from locproxy.pools import LazyPoolManager, caused_by
from locproxy.urls import backend_label
from locproxy.watchdog import WATCHDOG, Watch, attach_current

LOG = logging.getLogger(__name__)

USER_AGENT = "locproxy"
_DEFAULT_PORTS = {"http": 80, "https": 443}

# O_NONBLOCK: opening a FIFO for reading blocks until a writer appears, so a
# hostile location pointing at a FIFO under a root would hang a worker. With
# O_NONBLOCK the open returns at once and the regular-file check refuses it.
# O_NOFOLLOW: the final component must not have become a symlink since
# realpath() (intermediate components are covered by the dev/inode check).
_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)

# RFC 9110 section 14.4: Content-Range = range-unit SP first-last/complete-length.
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


class _WatchedHTTPConnection(urllib3.connection.HTTPConnection):
    """Hands the socket it reads a response from to the active ``Watch``."""

    def getresponse(self) -> urllib3.response.HTTPResponse:  # type: ignore[override]
        attach_current(self.sock)
        return super().getresponse()


class _WatchedHTTPSConnection(urllib3.connection.HTTPSConnection):
    def getresponse(self) -> urllib3.response.HTTPResponse:  # type: ignore[override]
        attach_current(self.sock)
        return super().getresponse()


class _WatchedHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_WATCHED_POOLS = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class BackendError(Exception):
    """A location could not be read.

    ``label`` is a credential-free backend label (``backend_label``);
    ``reason`` is short text safe for logs and clients: no paths, no URLs, no
    credentials.
    """

    def __init__(self, label: str, reason: str):
        # Both in args so the exception pickles and copies.
        super().__init__(label, reason)
        self.label = label
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.label}: {self.reason}"


class BackendStream:
    """An opened location: iterate once for exactly ``length`` bytes, then close().

    ``fileobj`` is the open file (file:// only), positioned at ``start``: a
    caller may hand it to ``wsgi.file_wrapper`` (sendfile) instead of
    iterating, and must then not iterate.
    """

    label: str
    fileobj: BinaryIO | None = None

    def __init__(self, label: str, start: int, length: int, chunk_size: int) -> None:
        self.label = label
        self.start = start
        self.length = length
        self._chunk_size = chunk_size
        self._sent = 0
        self._closed = False

    @property
    def position(self) -> int:
        """Absolute offset (in the image) of the next byte to yield."""
        return self.start + self._sent

    def __iter__(self) -> Iterator[bytes]:
        if self._closed:
            raise BackendError(self.label, "stream closed")
        return self._chunks()

    def _chunks(self) -> Iterator[bytes]:  # pragma: no cover - overridden
        raise NotImplementedError

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> BackendStream:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label} bytes {self.start}+{self.length}>"


class _FileStream(BackendStream):
    def __init__(self, label: str, fileobj: BinaryIO, start: int, length: int, chunk_size: int) -> None:
        super().__init__(label, start, length, chunk_size)
        self.fileobj = fileobj

    def _chunks(self) -> Iterator[bytes]:
        fileobj = self.fileobj
        assert fileobj is not None
        while self._sent < self.length and not self._closed:
            want = min(self._chunk_size, self.length - self._sent)
            try:
                # Unbuffered FileIO: one read(2) into a fresh bytes object,
                # no intermediate copy (measured faster than readinto + bytes()).
                chunk = fileobj.read(want)
            except OSError as error:
                raise BackendError(self.label, f"read error ({_errno_name(error)}) at byte {self.position}") from None
            if not chunk:
                # The size was checked at open, so the file shrank under us.
                raise BackendError(self.label, f"ended early at byte {self.position}")
            self._sent += len(chunk)
            yield chunk
        if self._closed and self._sent < self.length:
            raise BackendError(self.label, "stream closed")

    def close(self) -> None:
        if self._closed:
            return
        super().close()
        if self.fileobj is not None:
            self.fileobj.close()


class _HTTPStream(BackendStream):
    def __init__(
        self, label: str, response: urllib3.BaseHTTPResponse, start: int, length: int, chunk_size: int,
        watch: Watch, rate: MinimumRate | None,
    ) -> None:
        super().__init__(label, start, length, chunk_size)
        self._response: urllib3.BaseHTTPResponse | None = response
        self._failed = False
        self._watch = watch
        self._rate = rate

    def _chunks(self) -> Iterator[bytes]:
        watch, rate = self._watch, self._rate
        while self._sent < self.length:
            response = self._response
            if response is None:
                raise BackendError(self.label, "stream closed")
            want = min(self._chunk_size, self.length - self._sent)
            if rate is not None:
                watch.arm(rate.seconds_for(want), f"slower than {rate} at byte {self.position}")
            try:
                # read(amt) blocks until `want` bytes or the end of the body:
                # measured as fast as stream() and it never hands us more than
                # we ask for, so nothing beyond `length` is ever yielded.
                chunk = response.read(want, decode_content=False)
            except (HTTPError, OSError) as error:
                self._failed = True
                reason = watch.reason if watch.expired else _error_reason(error, self.position)
                LOG.debug("%s: %s", self.label, reason)
                raise BackendError(self.label, reason) from None
            finally:
                watch.disarm()
            if not chunk or watch.expired:
                # Close-delimited or chunked body that ended before `length`
                # (a Content-Length body raises IncompleteRead above instead),
                # or cut by the watchdog just as the read returned.
                self._failed = True
                raise BackendError(self.label, watch.reason if watch.expired else f"ended early at byte {self.position}")
            self._sent += len(chunk)
            yield chunk

    def close(self) -> None:
        if self._closed:
            return
        super().close()
        response, self._response = self._response, None
        if response is None:
            return
        # Reuse the connection only if the body ended exactly where the
        # headers said it would. Otherwise (partial read, error, or a body
        # with no Content-Length that may hold more than we took) close the
        # socket instead of draining it: draining a multi-GiB image after a
        # client disconnect would waste the backend's bandwidth and block.
        complete = (not self._failed and not self._watch.expired and self._sent == self.length
                    and response.length_remaining == 0)
        if not complete:
            response.close()
        # Either way give the (maybe closed) connection back: with
        # block=True a connection never returned is a pool slot lost forever.
        response.release_conn()


def _errno_name(error: OSError) -> str:
    return errno.errorcode.get(error.errno or 0, "error")


def _error_reason(error: BaseException, position: int | None = None) -> str:
    """Short, credential-free text for a urllib3/socket error.

    ``position`` is the absolute offset reached when the error happened
    mid-stream (None before the first byte).
    """
    at = "" if position is None else f" at byte {position}"
    # Order matters: NewConnectionError subclasses ConnectTimeoutError.
    if isinstance(error, EmptyPoolError):
        return "connection pool exhausted"
    if isinstance(error, NameResolutionError):
        return "name resolution failed"
    if isinstance(error, NewConnectionError):
        if caused_by(error, ConnectionRefusedError):
            return "connection refused"
        return "connection failed"
    if isinstance(error, ConnectTimeoutError):
        return "connect timeout"
    if isinstance(error, (ReadTimeoutError, TimeoutError)) or caused_by(error, (ReadTimeoutError, TimeoutError)):
        return f"read timeout{at}"
    if isinstance(error, SSLError):
        return "TLS error"
    if caused_by(error, ConnectionResetError):
        return f"connection reset{at}"
    if isinstance(error, ProtocolError) or caused_by(error, ProtocolError):
        if position is not None:
            # IncompleteRead, or the peer closed the socket mid-body.
            return f"ended early{at}"
        return "connection closed"
    if isinstance(error, ValueError):
        # http.client.InvalidURL and urllib3.LocationValueError.
        return "invalid URL"
    if isinstance(error, HTTPError):
        return f"bad response ({type(error).__name__}){at}"
    if isinstance(error, OSError):
        return f"connection failed ({_errno_name(error)}){at}"
    return f"error ({type(error).__name__}){at}"


def _normalize_host(host: str) -> str:
    """Lowercase; IP literals in one canonical form (``0:0::1`` == ``::1``)."""
    host = host.lower()
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return host


def _parse_allowed(items: frozenset[str] | set[str] | tuple[str, ...]) -> frozenset[tuple[str, int | None]]:
    """``host``, ``host:port``, ``[ipv6]`` or ``[ipv6]:port`` -> (host, port or None)."""
    allowed: set[tuple[str, int | None]] = set()
    for item in items:
        item = item.strip().lower()
        port: str | None = None
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            if rest.startswith(":"):
                port = rest[1:]
            elif rest:
                raise ValueError(f"allowed_hosts: {item!r} is not host, host:port or [ipv6]:port")
        elif item.count(":") == 1:
            host, _, port = item.partition(":")
        else:
            host = item  # a name, IPv4, or a bare IPv6 literal (any port)
        if not host or (port is not None and not port.isdigit()):
            raise ValueError(f"allowed_hosts: {item!r} is not host, host:port or [ipv6]:port")
        allowed.add((_normalize_host(host), int(port) if port is not None else None))
    return frozenset(allowed)


class MinimumRate:
    """What a backend must keep up once its body flows: each read of ``n``
    bytes may take ``max(window, n / bytes_per_second)`` seconds at most."""

    def __init__(self, bytes_per_second: int, window: float) -> None:
        self.bytes_per_second = bytes_per_second
        self.window = window

    def seconds_for(self, nbytes: int) -> float:
        return max(self.window, nbytes / self.bytes_per_second)

    def __str__(self) -> str:
        return f"{self.bytes_per_second} B/s over {self.window:g} s"


class Backends:
    """Opens locations under the configured file roots and allowed hosts."""

    def __init__(
        self,
        *,
        file_roots: tuple[str, ...],
        allowed_hosts: frozenset[str],
        chunk_size: int,
        connect_timeout: float,
        read_timeout: float,
        pool_maxsize: int,
        ca_file: str | None = None,
        first_byte_timeout: float = 10.0,
        min_rate: int = 0,
        rate_window: float = 10.0,
    ) -> None:
        if chunk_size < 1 or pool_maxsize < 1:
            raise ValueError("chunk_size and pool_maxsize must be >= 1")
        # config already resolves roots; doing it again keeps direct callers
        # (tests, other tools) from comparing against an unresolved root.
        self.file_roots = tuple(os.path.realpath(root) for root in file_roots)
        self.allowed_hosts = frozenset(allowed_hosts)
        self._allowed = _parse_allowed(self.allowed_hosts)
        self.chunk_size = chunk_size
        self._timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
        # A read timeout bounds each wait for one byte; these bound a backend
        # that drips (locproxy.watchdog).
        self._first_byte_timeout = first_byte_timeout
        self._rate = MinimumRate(min_rate, rate_window) if min_rate else None
        # Waiting for a free pool slot is bounded too: if every slot is busy
        # (or leaked), fail this location instead of hanging the worker.
        self._pool_timeout = connect_timeout
        # https backends are verified: against ca_file, else the system CAs.
        tls = {"ca_certs": ca_file} if ca_file else {}
        self._pools = LazyPoolManager(
            _WATCHED_POOLS,
            maxsize=pool_maxsize,
            block=True,
            timeout=self._timeout,
            retries=False,
            **tls,
        )

    @classmethod
    def from_settings(cls, settings: Any) -> Backends:
        """From a ``config.FilterSettings``."""
        return cls(
            file_roots=settings.file_roots,
            allowed_hosts=settings.allowed_hosts,
            chunk_size=settings.chunk_size,
            connect_timeout=settings.backend_connect_timeout,
            read_timeout=settings.backend_read_timeout,
            pool_maxsize=settings.backend_pool_maxsize,
            ca_file=settings.backend_ca_file or None,
            first_byte_timeout=settings.backend_first_byte_timeout,
            min_rate=settings.backend_min_rate,
            rate_window=settings.backend_rate_window,
        )

    def clear(self) -> None:
        """Close pooled connections (idle ones; in-flight ones when released)."""
        self._pools.clear()

    # -- decisions (no I/O) ----------------------------------------------------

    def readable(self, url: str) -> bool:
        """Whether ``open`` may try ``url``: no I/O, so the file may still be missing."""
        try:
            self._check(url, "")
        except BackendError:
            return False
        return True

    def _check(self, url: str, label: str) -> tuple[str, SplitResult]:
        """Refuse what may never be read; returns (scheme, parts)."""
        try:
            parts = urlsplit(url)
            scheme = parts.scheme.lower()
        except (ValueError, AttributeError):
            raise BackendError(label, "invalid URL") from None
        if scheme == "file":
            if not self.file_roots:
                raise BackendError(label, "file locations not enabled (no file_roots)")
            # file://host/path names a file on another machine; Glance would
            # even read it as the *relative* path "host/path". Only the local
            # forms file:///path and file://localhost/path are accepted.
            if parts.netloc.lower() not in ("", "localhost"):
                raise BackendError(label, "file URL with a host")
            if "?" in url or "#" in url:
                raise BackendError(label, "file URL with a query or fragment")
            if not parts.path.startswith("/") or "\x00" in parts.path:
                raise BackendError(label, "invalid file path")
            return scheme, parts
        if scheme in _DEFAULT_PORTS:
            try:
                host, port = parts.hostname, parts.port
            except ValueError:
                raise BackendError(label, "invalid URL") from None
            if not host:
                raise BackendError(label, "invalid URL")
            if port is None:
                port = _DEFAULT_PORTS[scheme]
            host = _normalize_host(host)
            if (host, None) not in self._allowed and (host, port) not in self._allowed:
                raise BackendError(label, "host not allowed")
            return scheme, parts
        raise BackendError(label, "unsupported scheme")

    def _inside_roots(self, real: str) -> bool:
        # commonpath compares whole components, so /data/root2/x is not
        # inside /data/root (a plain startswith() would say it is).
        for root in self.file_roots:
            try:
                if os.path.commonpath([root, real]) == root:
                    return True
            except ValueError:
                continue
        return False

    # -- opening -----------------------------------------------------------------

    def open(self, url: str, start: int, length: int, total_size: int | None) -> BackendStream:
        """Open ``length`` bytes at ``start``; raise ``BackendError`` before the first byte.

        ``total_size`` is the image size when known (checked against the
        file size or the backend's Content-Range). ``start >= 0``,
        ``length >= 1`` and ``start + length <= total_size`` are the caller's
        job (an empty or unsatisfiable range needs no backend): ValueError.
        """
        if start < 0 or length < 1 or (total_size is not None and start + length > total_size):
            raise ValueError(f"bad range: start={start} length={length} total_size={total_size}")
        label = backend_label(url)
        try:
            scheme, parts = self._check(url, label)
            if scheme == "file":
                return self._open_file(parts, label, start, length, total_size)
            return self._open_http(scheme, parts, label, start, length, total_size)
        except BackendError as error:
            LOG.debug("not reading from %s: %s", label, error.reason)
            raise

    def _open_file(
        self, parts: SplitResult, label: str, start: int, length: int, total_size: int | None
    ) -> BackendStream:
        # Literal path: "%2e%2e" is a directory named "%2e%2e", not "..".
        path = parts.path
        try:
            real = os.path.realpath(path)
        except (OSError, ValueError):
            raise BackendError(label, "invalid file path") from None
        if not self._inside_roots(real):
            raise BackendError(label, "outside file roots")
        try:
            fd = os.open(real, _OPEN_FLAGS)
        except FileNotFoundError:
            raise BackendError(label, "file not found") from None
        except PermissionError:
            raise BackendError(label, "permission denied") from None
        except OSError as error:
            if error.errno == errno.ELOOP:
                # O_NOFOLLOW: the last component became a symlink after realpath().
                raise BackendError(label, "file changed while opening") from None
            raise BackendError(label, f"cannot open file ({_errno_name(error)})") from None
        try:
            fileobj = self._check_fd(fd, real, label, start, length, total_size)
        except BaseException:
            os.close(fd)
            raise
        LOG.debug("reading %s bytes %s+%s", label, start, length)
        return _FileStream(label, fileobj, start, length, self.chunk_size)

    def _check_fd(
        self, fd: int, real: str, label: str, start: int, length: int, total_size: int | None
    ) -> BinaryIO:
        """Check the opened file, then wrap it; the caller closes ``fd`` on error."""
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            raise BackendError(label, "not a regular file")
        # The realpath check and the open are two steps: if a directory on
        # the way was swapped for a symlink in between, the fd names another
        # file than the checked path does now. Narrows the race; it cannot
        # close it, which is why roots must not be writable by untrusted users.
        try:
            checked = os.stat(real)
        except OSError:
            raise BackendError(label, "file changed while opening") from None
        if (opened.st_dev, opened.st_ino) != (checked.st_dev, checked.st_ino):
            raise BackendError(label, "file changed while opening")
        if total_size is not None and opened.st_size != total_size:
            raise BackendError(label, f"size mismatch (file has {opened.st_size} bytes, image {total_size})")
        if start + length > opened.st_size:
            raise BackendError(label, f"range beyond end of file ({opened.st_size} bytes)")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)  # O_NONBLOCK was only for the open()
        # Unbuffered: reads go straight to read(2), and the fd offset is the
        # file offset, which is what sendfile-based file_wrappers use.
        fileobj = os.fdopen(fd, "rb", buffering=0)
        try:
            fileobj.seek(start)
        except BaseException:
            fileobj.close()
            raise
        return fileobj

    def _open_http(
        self, scheme: str, parts: SplitResult, label: str, start: int, length: int, total_size: int | None
    ) -> BackendStream:
        host = parts.hostname
        port = parts.port or _DEFAULT_PORTS[scheme]
        assert host is not None  # _check() refused URLs without a host
        target = parts.path or "/"
        if parts.query:
            target = f"{target}?{parts.query}"
        # Only headers built here: nothing from the client's request (its
        # token, cookies, Range) reaches a backend.
        headers = {"Accept-Encoding": "identity", "User-Agent": USER_AGENT}
        whole = start == 0 and total_size is not None and length == total_size
        if not whole:
            headers["Range"] = f"bytes={start}-{start + length - 1}"
        if parts.username or parts.password:
            # Like requests' get_auth_from_url (used by Glance's http store):
            # percent-decode, then RFC 7617 Basic with UTF-8.
            userpass = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
            headers["Authorization"] = "Basic " + base64.b64encode(userpass.encode("utf-8")).decode("ascii")
        LOG.debug("GET %s bytes %s+%s%s", label, start, length, "" if whole else " (ranged)")
        try:
            # Connect to exactly the host/port _check() allowed: the URL is not
            # handed to urllib3 to be parsed a second time.
            pool = self._pools.get().connection_from_host(host, port=port, scheme=scheme)
        except (HTTPError, ValueError) as error:
            raise BackendError(label, _error_reason(error)) from None
        watch = WATCHDOG.watch()
        # The bound covers waiting for a pool slot, connecting and the
        # response headers, retry included: a backend that drips its headers
        # is cut off.
        watch.arm(self._first_byte_timeout, f"no response within {self._first_byte_timeout:g} s")
        try:
            response = self._send(pool, target, headers, label, watch)
        finally:
            watch.disarm()
        try:
            if watch.expired:
                raise BackendError(label, watch.reason)
            self._check_response(response, label, start, length, total_size)
        except BaseException:
            # Never drain an unwanted body (it may be a whole image): close
            # the socket, and hand the slot back to the block=True pool.
            response.close()
            response.release_conn()
            raise
        return _HTTPStream(label, response, start, length, self.chunk_size, watch, self._rate)

    def _send(self, pool: urllib3.HTTPConnectionPool, target: str, headers: dict[str, str], label: str,
              watch: Watch) -> urllib3.BaseHTTPResponse:
        for attempt in (1, 2):
            try:
                with watch.on_this_thread():
                    return pool.urlopen(
                        "GET",
                        target,
                        headers=headers,
                        retries=False,
                        redirect=False,
                        assert_same_host=False,
                        timeout=self._timeout,
                        pool_timeout=self._pool_timeout,
                        preload_content=False,
                        decode_content=False,
                        release_conn=False,
                    )
            except ProtocolError as error:
                # The connection broke before any status line: typically a
                # pooled keep-alive connection the backend closed (or left
                # stray bytes on) just as we reused it. urllib3 discarded it;
                # a GET to a read-only backend is safe to send once more, and
                # then goes out on a new connection. Timeouts are not retried.
                if attempt == 2 or watch.expired:
                    raise BackendError(label, watch.reason if watch.expired else _error_reason(error)) from None
                LOG.debug("%s: %s; retrying once", label, _error_reason(error))
            except (HTTPError, OSError, ValueError) as error:
                raise BackendError(label, watch.reason if watch.expired else _error_reason(error)) from None
        raise AssertionError("unreachable")

    @staticmethod
    def _check_response(
        response: urllib3.BaseHTTPResponse, label: str, start: int, length: int, total_size: int | None
    ) -> None:
        status = response.status
        if 300 <= status < 400:
            raise BackendError(label, f"redirect not followed (HTTP {status})")
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            # Asked for identity; a coded body is not the image's bytes, and
            # a coded range is not a range of the image (RFC 9110 section 8.4).
            raise BackendError(label, f"content-coded body ({encoding[:20]}) not accepted")
        content_length = response.headers.get("Content-Length")
        if status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if not match:
                raise BackendError(label, "Content-Range mismatch (missing or invalid)")
            first, last, complete = match.groups()
            if (
                int(first) != start
                or int(last) != start + length - 1
                or (complete != "*" and total_size is not None and int(complete) != total_size)
            ):
                raise BackendError(label, "Content-Range mismatch")
        elif status == 200:
            # A 200 is the whole representation: usable only if the whole
            # image is what we asked for (RFC 9110 section 14.2: a server may
            # ignore Range).
            expected = total_size
            if expected is None and content_length is not None:
                expected = _parse_length(content_length)
            if start != 0 or expected is None or length != expected:
                raise BackendError(label, "ignored Range")
        else:
            raise BackendError(label, f"HTTP {status}")
        if content_length is not None and _parse_length(content_length) != length:
            raise BackendError(label, "Content-Length mismatch")


def _parse_length(value: str) -> int | None:
    """Content-Length (repeated identical values allowed, RFC 9110 section 8.6)."""
    values = {item.strip() for item in value.split(",")}
    if len(values) != 1:
        return None
    (item,) = values
    return int(item) if item.isdigit() else None

