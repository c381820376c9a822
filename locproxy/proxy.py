"""The sidecar's streaming reverse proxy: a WSGI app that forwards every
request to one configured upstream (the image API) and streams both bodies.

Run it with a real WSGI server (``gunicorn --paste etc/paste.ini``), usually
with the ``locproxy`` filter in front of it. What it guarantees:

* The upstream address comes from configuration only; the client's ``Host``
  never chooses where a request goes (no open proxy, no SSRF).
* Bodies stream in both directions in bounded memory: uploads with a
  ``Content-Length`` or chunked, downloads in ``chunk_size`` pieces, byte-exact
  (no content decoding, so gzip passes through with its ``Content-Encoding``).
* Hop-by-hop headers are dropped in both directions (RFC 9110 §7.6.1).
* A response body that breaks off upstream aborts the client connection
  instead of ending as if it were complete; a client that goes away closes the
  upstream connection instead of draining it.
* Faults before the response starts become small JSON errors: 502 (refused,
  unreachable, broken), 504 (timeouts), 503 (no free pooled connection).

Trust caveats:

* ``X-Forwarded-For`` is *appended to*: the entries the client sent are
  whatever the client chose to write; only the last one (ours) is a fact.
  ``X-Forwarded-Proto`` and ``X-Forwarded-Host`` describe this hop only.
* Credentials (``X-Auth-Token``, ``Authorization``, cookies) pass through
  unchanged: the upstream authorises every request itself. They are never
  logged, and error bodies name only the configured upstream ``host:port``.
* ``read_timeout`` bounds each wait for upstream bytes, not a whole response.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from http.client import HTTPException
from typing import Any, Callable, Iterable, Iterator, Mapping
from urllib.parse import urlsplit

import urllib3
from urllib3.exceptions import HTTPError

from locproxy.failures import Failure
from locproxy.forwarding import (
    NO_BODY_STATUSES,
    ClientBodyError,
    Environ,
    forward_headers,
    request_body,
    request_target,
    response_headers,
    status_line,
)
from locproxy.options import ConfigError, MiB, parse_count, parse_http_url, parse_seconds, parse_size, reject_unknown
from locproxy.responses import json_error
from locproxy.transport import LazyPoolManager, classify, urlopen_retrying
from locproxy.urls import netloc_label

LOG = logging.getLogger(__name__)

StartResponse = Callable[..., Any]


@dataclass(frozen=True)
class ProxySettings:
    """Settings of the ``proxy`` app (the sidecar's upstream connection)."""

    upstream: str
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    pool_maxsize: int = 32
    chunk_size: int = 1 * MiB


_PROXY_OPTIONS = {
    "upstream": parse_http_url,
    "connect_timeout": parse_seconds,
    "read_timeout": parse_seconds,
    "pool_maxsize": parse_count,
    "chunk_size": parse_size,
}


def load_proxy_settings(global_conf: Mapping[str, Any], local_conf: Mapping[str, Any]) -> ProxySettings:
    """Validate a paste app section once, at load (``ConfigError`` names the option)."""
    reject_unknown(local_conf, set(_PROXY_OPTIONS))
    conf = {**global_conf, **local_conf}
    if not str(conf.get("upstream") or "").strip():
        raise ConfigError("upstream: required, e.g. upstream = http://127.0.0.1:9292")
    values = {
        option: parse(option, conf[option])
        for option, parse in _PROXY_OPTIONS.items()
        if option in conf and str(conf[option]).strip() != ""
    }
    return ProxySettings(**values)


class UpstreamBodyError(Exception):
    """The upstream response body broke off after the response had started.

    Raised from the WSGI iterable so that the server aborts the client
    connection instead of finishing the response as if it were complete.
    """


# Safe methods without a body (RFC 9110 section 9.2.1) may be sent again.

# Safe methods without a body (RFC 9110 section 9.2.1) may be sent again.
_RETRYABLE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Proxy:
    """WSGI app forwarding every request to ``settings.upstream``."""

    def __init__(self, settings: ProxySettings) -> None:
        self.settings = settings
        parts = urlsplit(settings.upstream)
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._prefix = parts.path.rstrip("/")
        # Host goes out exactly as configured (RFC 9110 §7.2); the label is
        # what logs and error bodies call the upstream.
        self._host = parts.netloc
        self._label = upstream_label(settings.upstream)
        # One upstream, so one pool. block=True makes threads wait for a free
        # connection instead of opening unbounded extra ones; pool_timeout in
        # _open() keeps that wait bounded. urllib3's retries are off: a
        # request whose body was streamed cannot be replayed; _open() itself
        # sends a bodiless safe request once more only when a pooled
        # connection closed before answering.
        self._pools = LazyPoolManager(
            num_pools=1,
            maxsize=settings.pool_maxsize,
            block=True,
            timeout=urllib3.Timeout(connect=settings.connect_timeout, read=settings.read_timeout),
            retries=False,
            # Upload pieces: urllib3's 16 KiB default costs throughput.
            blocksize=settings.chunk_size,
        )

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        try:
            body, framing, chunked = request_body(environ, self.settings.chunk_size)
        except ClientBodyError as error:
            LOG.warning("%s %s: %s", method, _log_path(environ.get("PATH_INFO", "")), error)
            return json_error(error.status, str(error))(environ, start_response)
        headers = forward_headers(environ, self._host)
        headers.update(framing)
        target = self._prefix + request_target(environ)
        try:
            upstream = self._open(method, target, body, headers, chunked)
        except ClientBodyError as error:
            LOG.warning("%s %s: client request body failed: %s", method, _log_path(target), error)
            return json_error(error.status, str(error))(environ, start_response)
        except HTTPError as error:
            status, message = describe_upstream_error(error, self._label, self.settings)
            LOG.warning("%s %s: %s (%s)", method, _log_path(target), message, error)
            return json_error(status, message)(environ, start_response)
        return self._respond(upstream, method, target, start_response)

    def close(self) -> None:
        """Close pooled upstream connections (tests, orderly shutdown)."""
        self._pools.clear()

    def _open(
        self,
        method: str,
        target: str,
        body: Any,
        headers: dict[str, str],
        chunked: bool,
    ) -> urllib3.BaseHTTPResponse:
        # The pool's own urlopen with an origin-form target: PoolManager.urlopen
        # would re-parse the URL and remove dot segments, changing the path.
        pool = self._pools.get().connection_from_url(self._origin)
        return urlopen_retrying(
            pool, method, target, body=body, headers=headers, chunked=chunked,
            pool_timeout=self.settings.connect_timeout, label=_log_path(target),
            replayable=lambda: body is None and method in _RETRYABLE_METHODS,
        )

    def _respond(
        self,
        upstream: urllib3.BaseHTTPResponse,
        method: str,
        target: str,
        start_response: StartResponse,
    ) -> Iterable[bytes]:
        has_body = method != "HEAD" and upstream.status not in NO_BODY_STATUSES
        body = UpstreamResponseBody(upstream, self.settings.chunk_size, has_body, self._label, method, target)
        try:
            start_response(status_line(upstream), response_headers(upstream))
        except BaseException:
            body.close()
            raise
        return body


def app_factory(global_conf: dict[str, Any], **local_conf: Any) -> Proxy:
    """``paste.app_factory``: ``use = egg:locproxy#proxy`` with ``upstream = ...``."""
    return Proxy(load_proxy_settings(global_conf, local_conf))


class UpstreamResponseBody:
    """WSGI response iterable streaming an upstream response.

    ``close()`` (always called by the server) decides the connection's fate:
    a fully read body leaves it reusable in the pool; anything else (client
    gone, upstream broke off) closes the socket, because draining an unknown
    remainder could take forever, and still returns the pool slot, without
    which a ``block=True`` pool would run dry.
    """

    def __init__(
        self,
        upstream: urllib3.BaseHTTPResponse,
        chunk_size: int,
        has_body: bool,
        label: str,
        method: str,
        target: str,
    ) -> None:
        self._upstream = upstream
        self._chunk_size = chunk_size
        self._has_body = has_body
        self._label = label
        self._method = method
        self._target = target
        self._chunks: Iterator[bytes] | None = None
        self._sent = 0
        self._complete = False
        self._closed = False

    def __iter__(self) -> UpstreamResponseBody:
        return self

    def __next__(self) -> bytes:
        if self._complete or self._closed:
            raise StopIteration
        try:
            if not self._has_body:
                # Nothing to send, but the (empty) response must be read to
                # its end for the connection to be reusable.
                self._upstream.read(decode_content=False)
                self._complete = True
                raise StopIteration
            if self._chunks is None:
                self._chunks = self._upstream.stream(self._chunk_size, decode_content=False)
            chunk = next(self._chunks)
        except StopIteration:
            self._complete = True
            raise
        except (HTTPError, HTTPException, OSError) as error:
            expected = self._upstream.headers.get("Content-Length", "unknown")
            LOG.warning(
                "%s %s: upstream %s response body broke off after %s of %s bytes; aborting the client connection: %s",
                self._method, _log_path(self._target), self._label, self._sent, expected, error,
            )
            raise UpstreamBodyError(
                f"upstream {self._label} response body broke off after {self._sent} bytes"
            ) from error
        self._sent += len(chunk)
        return chunk

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._chunks is not None and hasattr(self._chunks, "close"):
                self._chunks.close()
            if not self._complete:
                LOG.debug("%s %s: closing the upstream connection after %s bytes (body not finished)",
                          self._method, _log_path(self._target), self._sent)
                self._upstream.close()
        finally:
            self._upstream.release_conn()


# -- errors -------------------------------------------------------------------

def upstream_label(url: str) -> str:
    """``host:port`` of the upstream, for logs and client-visible errors."""
    parts = urlsplit(url)
    return netloc_label(parts.hostname or "upstream", parts.port or (443 if parts.scheme == "https" else 80))


# Failure kind -> (status, message template): what a client is told when the
# upstream fails before a response.
_UPSTREAM_ERRORS = {
    Failure.NAME_RESOLUTION: (502, "upstream {label} could not be resolved"),
    Failure.REFUSED: (502, "upstream {label} refused the connection"),
    Failure.UNREACHABLE: (502, "upstream {label} could not be reached"),
    Failure.CONNECT_TIMEOUT: (504, "upstream {label} did not accept the connection within {connect:g}s"),
    Failure.TIMEOUT: (504, "upstream {label} did not answer within {read:g}s"),
    Failure.POOL_EXHAUSTED: (503, "no free connection to upstream {label} within {connect:g}s (pool_maxsize={pool})"),
    Failure.TLS: (502, "TLS with upstream {label} failed"),
    Failure.SEND_TIMEOUT: (504, "upstream {label} stopped reading the request"),
    Failure.CLOSED: (502, "upstream {label} closed the connection without a valid response"),
    Failure.RESET: (502, "upstream {label} closed the connection without a valid response"),
}


def describe_upstream_error(error: BaseException, label: str, settings: ProxySettings) -> tuple[int, str]:
    """``(status, client-safe message)`` for a failure before the response."""
    status, template = _UPSTREAM_ERRORS.get(classify(error), (502, "request to upstream {label} failed"))
    return status, template.format(label=label, connect=settings.connect_timeout, read=settings.read_timeout,
                                   pool=settings.pool_maxsize)


def _log_path(target: str) -> str:
    # Queries can carry anything (signatures, tokens): keep them out of logs.
    return target.split("?", 1)[0]
