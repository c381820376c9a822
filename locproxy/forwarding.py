"""One HTTP message forwarded by the sidecar proxy: target, header fields and
framing of the request, status line and header fields of the response.

RFC 9110/9112 rules applied here: hop-by-hop fields are dropped in both
directions (section 7.6.1), the request target keeps the escapes the client
sent, ``X-Forwarded-For`` is appended to, and bodies stream in both
directions (uploads with a ``Content-Length`` or chunked). Pure functions of
the WSGI environ or the upstream response: no I/O of their own.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Any, Dict, Iterator, List, Tuple
from urllib.parse import quote, unquote_to_bytes

import urllib3
from urllib3.util import SKIP_HEADER

Environ = Dict[str, Any]
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
NO_BODY_STATUSES = frozenset({204, 304})

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
