"""``http(s)://`` locations, fetched from allowed hosts only.

Backends get only the headers built here (no client header is forwarded);
credentials in a location URL (``http://user:pass@host/``) are sent as HTTP
Basic auth, as Glance's http store does, and never appear in logs, error
reasons or labels. Redirects are never followed; bodies are taken exactly as
sent (``Accept-Encoding: identity``, a coded body is refused). A backend that
drips is cut off by the watchdog (``locproxy.watchdog``): its response
headers must come within ``first_byte_timeout``, and each read of the body
within the time ``MinimumRate`` allows.
"""

from __future__ import annotations

import base64
import logging
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping
from urllib.parse import SplitResult, unquote

import urllib3
from urllib3.exceptions import HTTPError

from locproxy.download.backends.base import BackendError, BackendStream, Reader
from locproxy.failures import Failure
from locproxy.guards import DEFAULT_PORTS, AllowedHosts
from locproxy.options import parse_readable_file
from locproxy.transport import LazyPoolManager, describe, urlopen_retrying
from locproxy.watchdog import WATCHDOG, Watch, attach_current

LOG = logging.getLogger(__package__)  # one logger for all the backends

USER_AGENT = "locproxy"

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


class HTTPStream(BackendStream):
    def __init__(self, label: str, response: urllib3.BaseHTTPResponse, start: int, length: int, chunk_size: int,
                 watch: Watch, rate: MinimumRate | None) -> None:
        super().__init__(label, start, length, chunk_size)
        self._response: urllib3.BaseHTTPResponse | None = response
        self.headers = response.headers  # the backend's answer, e.g. a swift segment's ETag
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
                raise self._error(*describe(error, self.position)) from None
            finally:
                watch.disarm()
            if not chunk or watch.expired:
                # Close-delimited or chunked body that ended before `length`
                # (a Content-Length body raises IncompleteRead above instead),
                # or cut by the watchdog just as the read returned.
                self._failed = True
                raise self._error(Failure.TRUNCATED, f"ended early at byte {self.position}")
            self._sent += len(chunk)
            yield chunk

    def _error(self, kind: Failure, reason: str) -> BackendError:
        if self._watch.expired:
            kind, reason = Failure.TOO_SLOW, self._watch.reason
        LOG.debug("%s: %s", self.label, reason)
        return BackendError(self.label, reason, kind)

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


@dataclass(frozen=True)
class HTTPOptions:
    allowed_hosts: AllowedHosts = AllowedHosts()
    ca_file: str = ""  # https backends are verified against it, else the system CAs


class HTTPBackend:
    """Opens ``http(s)://`` locations on allowed hosts, with pooled connections."""

    def __init__(self, options: HTTPOptions, common: Any, built: Mapping[str, Any] = {}) -> None:
        self.allowed = options.allowed_hosts
        self.chunk_size = common.chunk_size
        self._timeout = urllib3.Timeout(connect=common.connect_timeout, read=common.read_timeout)
        # Waiting for a free pool slot is bounded too: if every slot is busy
        # (or leaked), fail this location instead of hanging the worker.
        self._pool_timeout = common.connect_timeout
        self._first_byte_timeout = common.first_byte_timeout
        self._rate = MinimumRate(common.min_rate, common.rate_window) if common.min_rate else None
        tls = {"ca_certs": options.ca_file} if options.ca_file else {}
        self._pools = LazyPoolManager({"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool},
                                      maxsize=common.pool_maxsize, block=True, timeout=self._timeout, retries=False,
                                      **tls)

    def clear(self) -> None:
        """Close pooled connections (idle ones; in-flight ones when released)."""
        self._pools.clear()

    def check(self, url: str, parts: SplitResult, label: str) -> None:
        """Refuse, without I/O, what may never be fetched."""
        try:
            host, port = parts.hostname, parts.port
        except ValueError:
            raise BackendError(label, "invalid URL", Failure.INVALID_URL) from None
        if not host:
            raise BackendError(label, "invalid URL", Failure.INVALID_URL)
        if not self.allowed.allows(host, port or DEFAULT_PORTS[parts.scheme.lower()]):
            raise BackendError(label, "host not allowed", Failure.NOT_ALLOWED)

    def open(self, parts: SplitResult, label: str, start: int, length: int, total_size: int | None) -> HTTPStream:
        scheme = parts.scheme.lower()
        host, port = parts.hostname, parts.port or DEFAULT_PORTS[scheme]
        assert host is not None  # check() refused URLs without a host
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        whole = start == 0 and total_size is not None and length == total_size
        return self.fetch(scheme, host, port, target, _request_headers(parts, start, length, whole), label,
                          start, length, total_size)

    def fetch(self, scheme: str, host: str, port: int, target: str, headers: dict[str, str], label: str,
              start: int, length: int, total_size: int | None, *,
              error_detail: Callable[[urllib3.BaseHTTPResponse], str] | None = None) -> HTTPStream:
        """GET ``target`` from exactly ``host:port`` (already allowed by the
        caller) with only ``headers``; the stream of ``length`` bytes at
        ``start``, or BackendError before the first byte. The s3 reader
        sends its signed requests through here too. ``error_detail`` adds
        to the reason of an error status (e.g. the S3 error code)."""
        whole = "Range" not in headers
        LOG.debug("GET %s bytes %s+%s%s", label, start, length, "" if whole else " (ranged)")
        watch = WATCHDOG.watch()
        response = self._send(self._pool(scheme, host, port, label), target, headers, label, watch)
        try:
            if watch.expired:
                raise BackendError(label, watch.reason, Failure.TOO_SLOW)
            try:
                check_response(response, label, start, length, total_size)
            except BackendError as error:
                if error_detail is None or response.status < 400:
                    raise
                raise BackendError(label, error.reason + self._detail(response, error_detail, watch),
                                   error.kind) from None
        except BaseException:
            # Never drain an unwanted body (it may be a whole image): close
            # the socket, and hand the slot back to the block=True pool.
            response.close()
            response.release_conn()
            raise
        return HTTPStream(label, response, start, length, self.chunk_size, watch, self._rate)

    def _pool(self, scheme: str, host: str, port: int, label: str) -> urllib3.HTTPConnectionPool:
        """The pool of exactly the host and port that were allowed: the URL
        is not handed to urllib3 to be parsed a second time."""
        try:
            return self._pools.get().connection_from_host(host, port=port, scheme=scheme)
        except (HTTPError, ValueError) as error:
            kind, reason = describe(error)
            raise BackendError(label, reason, kind) from None

    def _detail(self, response: urllib3.BaseHTTPResponse, error_detail: Callable[[urllib3.BaseHTTPResponse], str],
                watch: Watch) -> str:
        """What ``error_detail`` reads from an error body, within the first-byte bound."""
        watch.arm(self._first_byte_timeout, "error body too slow")
        try:
            return error_detail(response)
        except (HTTPError, OSError):
            return ""
        finally:
            watch.disarm()

    def small(self, method: str, scheme: str, host: str, port: int, target: str, headers: dict[str, str],
              label: str, limit: int) -> tuple[int, Mapping[str, str], bytes]:
        """(status, headers, body) of a small answer (a HEAD, a listing) from
        exactly ``host:port`` (allowed by the caller), all within
        ``first_byte_timeout``; BackendError if it fails or the body passes ``limit``."""
        watch = WATCHDOG.watch()
        response = self._send(self._pool(scheme, host, port, label), target, headers, label, watch, method)
        watch.arm(self._first_byte_timeout, f"no whole answer within {self._first_byte_timeout:g} s")
        try:
            body = b"" if method == "HEAD" else response.read(limit + 1, decode_content=False)
        except (HTTPError, OSError) as error:
            kind, reason = describe(error)
            raise BackendError(label, watch.reason if watch.expired else reason,
                               Failure.TOO_SLOW if watch.expired else kind) from None
        finally:
            watch.disarm()
            if watch.expired or response.length_remaining != 0:
                response.close()  # never drain: only a body read to its end keeps the connection
            response.release_conn()
        if len(body) > limit:
            raise BackendError(label, f"answer larger than {limit} bytes", Failure.BAD_RESPONSE)
        return response.status, response.headers, body

    def _send(self, pool: urllib3.HTTPConnectionPool, target: str, headers: dict[str, str], label: str,
              watch: Watch, method: str = "GET") -> urllib3.BaseHTTPResponse:
        # The bound covers waiting for a pool slot, connecting and the
        # response headers, retry included: a backend that drips its headers
        # is cut off.
        watch.arm(self._first_byte_timeout, f"no response within {self._first_byte_timeout:g} s")
        try:
            with watch.on_this_thread():
                return urlopen_retrying(pool, method, target, headers=headers, timeout=self._timeout,
                                        pool_timeout=self._pool_timeout, label=label,
                                        replayable=lambda: not watch.expired)
        except (HTTPError, OSError, ValueError) as error:
            kind, reason = describe(error)
            if watch.expired:
                kind, reason = Failure.TOO_SLOW, watch.reason
            raise BackendError(label, reason, kind) from None
        finally:
            watch.disarm()


def _request_headers(parts: SplitResult, start: int, length: int, whole: bool) -> dict[str, str]:
    """Only headers built here: nothing from the client's request (its token,
    cookies, Range) reaches a backend."""
    headers = {"Accept-Encoding": "identity", "User-Agent": USER_AGENT}
    if not whole:
        headers["Range"] = f"bytes={start}-{start + length - 1}"
    if parts.username or parts.password:
        # Like requests' get_auth_from_url (used by Glance's http store):
        # percent-decode, then RFC 7617 Basic with UTF-8.
        userpass = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(userpass.encode("utf-8")).decode("ascii")
    return headers


def check_response(response: urllib3.BaseHTTPResponse, label: str, start: int, length: int,
                    total_size: int | None) -> None:
    status = response.status
    if 300 <= status < 400:
        raise BackendError(label, f"redirect not followed (HTTP {status})", Failure.HTTP_STATUS)
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        # Asked for identity; a coded body is not the image's bytes, and a
        # coded range is not a range of the image (RFC 9110 section 8.4).
        raise BackendError(label, f"content-coded body ({encoding[:20]}) not accepted", Failure.BAD_RESPONSE)
    content_length = response.headers.get("Content-Length")
    if status == 206:
        match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        if not match:
            raise BackendError(label, "Content-Range mismatch (missing or invalid)", Failure.BAD_RESPONSE)
        first, last, complete = match.groups()
        if (
            int(first) != start
            or int(last) != start + length - 1
            or (complete != "*" and total_size is not None and int(complete) != total_size)
        ):
            raise BackendError(label, "Content-Range mismatch", Failure.SIZE_MISMATCH)
    elif status == 200:
        # A 200 is the whole representation: usable only if the whole image is
        # what we asked for (RFC 9110 section 14.2: a server may ignore Range).
        expected = total_size
        if expected is None and content_length is not None:
            expected = _parse_length(content_length)
        if start != 0 or expected is None or length != expected:
            raise BackendError(label, "ignored Range", Failure.BAD_RESPONSE)
    else:
        raise BackendError(label, f"HTTP {status}", Failure.HTTP_STATUS)
    if content_length is not None and _parse_length(content_length) != length:
        raise BackendError(label, "Content-Length mismatch", Failure.SIZE_MISMATCH)


def _parse_length(value: str) -> int | None:
    """Content-Length (repeated identical values allowed, RFC 9110 section 8.6)."""
    values = {item.strip() for item in value.split(",")}
    if len(values) != 1:
        return None
    (item,) = values
    return int(item) if item.isdigit() else None


READER = Reader("http", frozenset({"http", "https"}), HTTPOptions, {
    "allowed_hosts": ("allowed_hosts", AllowedHosts.parse),
    "backend_ca_file": ("ca_file", parse_readable_file),
}, HTTPBackend)
