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
import re
import socket
from http import HTTPStatus
from http.client import HTTPException
from typing import Any, Callable, Dict, Iterable, Iterator, List, Tuple
from urllib.parse import quote, unquote_to_bytes, urlsplit

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    EmptyPoolError,
    HTTPError,
    MaxRetryError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)
from urllib3.util import SKIP_HEADER

from locproxy.config import ProxySettings, load_proxy_settings
from locproxy.pools import LazyPoolManager, caused_by
from locproxy.responses import json_error

LOG = logging.getLogger(__name__)

Environ = Dict[str, Any]
StartResponse = Callable[..., Any]
Headers = List[Tuple[str, str]]

# RFC 9110 §7.6.1: Connection and the fields it names are meant for the
# immediate connection only and must not be forwarded. The others are the
# hop-by-hop fields in common use: Keep-Alive (RFC 9112 §9.3, historical),
# Proxy-Connection (non-standard, still sent by old clients), TE and Trailer
# (RFC 9110 §10.1.4, §6.6.2), Transfer-Encoding (RFC 9112 §6.1: framing of one
# connection; we frame our own), Upgrade (RFC 9110 §7.8), and the proxy
# authentication pair (RFC 9110 §11.7), which is addressed to this proxy.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    }
)

# Request fields we set ourselves, whatever the client sent: framing is
# decided from the WSGI environ, Host from configuration, and the
# X-Forwarded-* fields describe this hop.
_REPLACED_REQUEST_FIELDS = frozenset(
    {"host", "content-length", "x-forwarded-proto", "x-forwarded-host"}
)

# RFC 9110 §9.3.2, §15.3.5, §15.4.5: no content in HEAD responses, 204, 304.
_NO_BODY_STATUSES = frozenset({204, 304})

# RFC 3986 §3.3: pchar = unreserved / pct-encoded / sub-delims / ":" / "@".
# quote() already leaves the unreserved characters alone.
_PATH_SAFE = "/!$&'()*+,;=:@"

# RFC 9112 §3.2.2: absolute-form request-target ("GET http://host/path").
_ABSOLUTE_FORM = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*")

# RFC 9112 §5.2: a proxy replaces obs-fold (CRLF + whitespace) with a space.
_OBS_FOLD = re.compile(r"\s*\r?\n[ \t]*")


class ClientBodyError(Exception):
    """The client's request body is invalid, ended early or could not be read.

    Deliberately not an ``OSError``: urllib3 would report those as an upstream
    fault ("Connection aborted") and we would answer 502 for the client's own
    failure.
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class UpstreamBodyError(Exception):
    """The upstream response body broke off after the response had started.

    Raised from the WSGI iterable so that the server aborts the client
    connection instead of finishing the response as if it were complete.
    """


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
        for attempt in (1, 2):
            try:
                return pool.urlopen(
                    method,
                    target,
                    body=body,
                    headers=headers,
                    chunked=chunked,
                    redirect=False,
                    assert_same_host=False,
                    preload_content=False,
                    decode_content=False,
                    release_conn=False,
                    pool_timeout=self.settings.connect_timeout,
                )
            except ProtocolError:
                # The connection broke before any status line: typically a
                # pooled keep-alive connection the upstream closed just as it
                # was reused (urllib3 discarded it). A bodiless safe request
                # may go once more, on a new connection (RFC 9110 section 9.2.2).
                # Timeouts are not retried.
                if attempt == 2 or body is not None or method not in _RETRYABLE_METHODS:
                    raise
                LOG.debug("%s %s: upstream connection closed before answering; retrying once",
                          method, _log_path(target))
        raise AssertionError("unreachable")

    def _respond(
        self,
        upstream: urllib3.BaseHTTPResponse,
        method: str,
        target: str,
        start_response: StartResponse,
    ) -> Iterable[bytes]:
        has_body = method != "HEAD" and upstream.status not in _NO_BODY_STATUSES
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


# -- request ------------------------------------------------------------------

def request_target(environ: Environ) -> str:
    """The origin-form target to send upstream: ``/path[?query]``.

    The raw target the server received (gunicorn's ``RAW_URI``, else
    ``REQUEST_URI``) keeps escapes such as ``%2F`` that PATH_INFO has lost, so
    it is preferred, but only while it still names the same path: middleware
    and subrequests change SCRIPT_NAME/PATH_INFO and leave it stale. The query
    always comes from QUERY_STRING (already raw in WSGI), which middleware may
    have edited too.
    """
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    raw_path = _raw_path(environ)
    if raw_path is None or _wsgi_unquote(raw_path) != path:
        raw_path = _quote_wsgi_path(path)
    query = environ.get("QUERY_STRING", "")
    return f"{raw_path}?{query}" if query else raw_path


def _raw_path(environ: Environ) -> str | None:
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if not raw:
        return None
    raw = _ABSOLUTE_FORM.sub("", raw).split("#", 1)[0].split("?", 1)[0]
    # Only origin-form ("/...") is forwarded as is; "*" and the like are rebuilt.
    return raw if raw.startswith("/") else None


def _wsgi_unquote(raw_path: str) -> str:
    # WSGI (PEP 3333) strings carry bytes decoded as latin-1.
    return unquote_to_bytes(raw_path).decode("latin-1")


def _quote_wsgi_path(path: str) -> str:
    try:
        data = path.encode("latin-1")
    except UnicodeEncodeError:  # not a proper WSGI string; UTF-8 is the best guess
        data = path.encode("utf-8")
    quoted = quote(data, safe=_PATH_SAFE)
    return quoted if quoted.startswith("/") else "/" + quoted


def connection_tokens(value: str | None) -> set[str]:
    """Lower-cased field names listed in a Connection header (RFC 9110 §7.6.1)."""
    return {token.strip().lower() for token in (value or "").split(",") if token.strip()}


def forward_headers(environ: Environ, upstream_host: str) -> dict[str, str]:
    """Request headers for the upstream: the client's end-to-end fields plus
    Host, X-Forwarded-For/-Proto/-Host. Framing fields are added by
    ``request_body``."""
    dropped = HOP_BY_HOP | _REPLACED_REQUEST_FIELDS | connection_tokens(environ.get("HTTP_CONNECTION"))
    headers: dict[str, str] = {"Host": upstream_host}
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            if key in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
                continue  # some servers duplicate these; CONTENT_* are authoritative
            name = key[5:].replace("_", "-").title()
        elif key == "CONTENT_TYPE" and value:
            name = "Content-Type"
        else:
            continue
        if name.lower() not in dropped:
            headers[name] = value
    # Don't let urllib3 add headers the client did not send (RFC 9110 §7.6:
    # an intermediary forwards the request, it does not author one).
    headers.setdefault("User-Agent", SKIP_HEADER)
    headers.setdefault("Accept-Encoding", SKIP_HEADER)
    client = environ.get("REMOTE_ADDR")
    if client:
        previous = headers.get("X-Forwarded-For")
        headers["X-Forwarded-For"] = f"{previous}, {client}" if previous else client
    headers["X-Forwarded-Proto"] = environ.get("wsgi.url_scheme", "http")
    headers["X-Forwarded-Host"] = environ.get("HTTP_HOST") or _server_host(environ)
    return headers


def _server_host(environ: Environ) -> str:
    name, port = environ.get("SERVER_NAME", ""), environ.get("SERVER_PORT", "")
    default = "443" if environ.get("wsgi.url_scheme") == "https" else "80"
    return f"{name}:{port}" if port and port != default else name


def request_body(environ: Environ, chunk_size: int) -> tuple[Any, dict[str, str], bool]:
    """``(body, framing headers, chunked)`` for urllib3, streaming.

    With a Content-Length the body is a reader limited to it (WSGI forbids
    reading past it); without one, a chunked upload (RFC 9112 §7.1) that the
    server has already de-chunked (``wsgi.input_terminated``) is re-sent
    chunked. Anything else has no body.
    """
    stream = environ.get("wsgi.input")
    length_text = (environ.get("CONTENT_LENGTH") or "").strip()
    if length_text:
        if not length_text.isdigit():
            raise ClientBodyError(f"invalid Content-Length {length_text[:40]!r}")
        length = int(length_text)
        body = LimitedReader(stream, length) if length and stream is not None else None
        return body, {"Content-Length": str(length)}, False
    codings = connection_tokens(environ.get("HTTP_TRANSFER_ENCODING"))
    if "chunked" in codings and stream is not None:
        if not environ.get("wsgi.input_terminated"):
            # The server hands us the raw stream with no end marker; reading
            # it could swallow the next request or block forever.
            # RFC 9110 §15.5.12: 411 asks for a Content-Length instead.
            raise ClientBodyError("chunked request bodies are not supported by this server", 411)
        return _input_chunks(stream, chunk_size), {}, True
    return None, {}, False


class LimitedReader:
    """File-like view of ``wsgi.input`` that stops at ``length`` bytes and
    raises ``ClientBodyError`` if the client sends fewer."""

    def __init__(self, stream: Any, length: int) -> None:
        self._stream = stream
        self._remaining = length
        self._length = length

    def read(self, size: int = -1) -> bytes:
        if self._remaining <= 0:
            return b""
        wanted = self._remaining if size is None or size < 0 else min(size, self._remaining)
        try:
            data = self._stream.read(wanted)
        except Exception as error:  # a reset client surfaces as OSError or a server error
            raise ClientBodyError(f"reading the request body failed: {error}") from error
        if not data:
            raise ClientBodyError(
                f"request body ended after {self._length - self._remaining} of {self._length} bytes"
            )
        self._remaining -= len(data)
        return data


def _input_chunks(stream: Any, chunk_size: int) -> Iterator[bytes]:
    while True:
        try:
            data = stream.read(chunk_size)
        except Exception as error:
            raise ClientBodyError(f"reading the chunked request body failed: {error}") from error
        if not data:
            return
        yield data


# -- response -----------------------------------------------------------------

def status_line(upstream: urllib3.BaseHTTPResponse) -> str:
    """``"200 OK"``: the upstream's code and reason (a known phrase if empty)."""
    reason = "".join(ch for ch in (upstream.reason or "") if ch == "\t" or " " <= ch != "\x7f").strip()
    if not reason:
        try:
            reason = HTTPStatus(upstream.status).phrase
        except ValueError:
            reason = "Unknown"
    return f"{upstream.status} {reason}"


def response_headers(upstream: urllib3.BaseHTTPResponse) -> Headers:
    """The upstream's header fields minus hop-by-hop ones.

    Repeated fields (several Set-Cookie) stay separate and in their relative
    order, which is the order that matters (RFC 9110 §5.3).
    """
    dropped = HOP_BY_HOP | connection_tokens(upstream.headers.get("Connection"))
    if upstream.headers.get("Transfer-Encoding"):
        # RFC 9112 §6.3: with Transfer-Encoding, Content-Length is ignored and
        # must not be forwarded; the server re-frames the body itself.
        dropped = dropped | {"content-length"}
    elif upstream.status == 204:
        # RFC 9110 §8.6: never a Content-Length on 204; some upstreams send
        # one anyway and not every server strips it.
        dropped = dropped | {"content-length"}
    return [
        (name, _OBS_FOLD.sub(" ", value))
        for name, value in upstream.headers.iteritems()
        if name.lower() not in dropped
    ]


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
    host = parts.hostname or "upstream"
    if ":" in host:
        host = f"[{host}]"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{host}:{port}"


def describe_upstream_error(error: BaseException, label: str, settings: ProxySettings) -> tuple[int, str]:
    """``(status, client-safe message)`` for a failure before the response."""
    if isinstance(error, MaxRetryError) and error.reason is not None:
        error = error.reason
    # Order matters: NewConnectionError subclasses ConnectTimeoutError.
    if isinstance(error, NameResolutionError):
        return 502, f"upstream {label} could not be resolved"
    if isinstance(error, NewConnectionError):
        if caused_by(error, ConnectionRefusedError):
            return 502, f"upstream {label} refused the connection"
        return 502, f"upstream {label} could not be reached"
    if isinstance(error, ConnectTimeoutError):
        return 504, f"upstream {label} did not accept the connection within {settings.connect_timeout:g}s"
    if isinstance(error, ReadTimeoutError):
        return 504, f"upstream {label} did not answer within {settings.read_timeout:g}s"
    if isinstance(error, EmptyPoolError):
        return 503, (
            f"no free connection to upstream {label} within {settings.connect_timeout:g}s "
            f"(pool_maxsize={settings.pool_maxsize})"
        )
    if isinstance(error, SSLError):
        return 502, f"TLS with upstream {label} failed"
    if isinstance(error, ProtocolError):
        if caused_by(error, (TimeoutError, socket.timeout)):
            # Sending the request body stalls under the connect timeout.
            return 504, f"upstream {label} stopped reading the request"
        return 502, f"upstream {label} closed the connection without a valid response"
    return 502, f"request to upstream {label} failed"


def _log_path(target: str) -> str:
    # Queries can carry anything (signatures, tokens): keep them out of logs.
    return target.split("?", 1)[0]
