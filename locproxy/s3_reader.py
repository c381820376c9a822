"""Prototype backend reader for ``s3://`` locations (S3 and Ceph RGW): signed ranged GETs.

``S3Reader.open(url, start, length, total_size)`` follows the contract of
``locproxy.backends.Backends.open``: ``BackendError`` before the first byte,
or a ``BackendStream`` yielding exactly ``length`` bytes in ``chunk_size``
chunks (``BackendError`` mid-stream if the body breaks off).

URL forms (as Glance's s3 store writes and parses them):

* ``s3://<access>:<secret>@<host[:port]>[/prefix]/<bucket>/<key>`` - legacy
  single-store Glance: the credentials are in the URL (percent-encoded);
* ``s3://<host[:port]>[/prefix]/<bucket>/<key>`` - Glance multi-store (33):
  the credentials live in the store's config, so they come from the
  ``credentials`` mapping here: ``host[:port][/bucket] -> (access, secret)``,
  most specific entry first (``parse_s3_credentials`` reads it from ini).

``s3+http://`` and ``s3+https://`` say the transport; plain ``s3://`` uses
``plain_scheme`` (Glance takes it from its configured ``s3_store_host``).
Path-style requests only (``/bucket/key``), as RGW and Glance's
``s3_store_bucket_url_format = path`` use.

Why botocore signs and urllib3 transfers
----------------------------------------
botocore's ``S3SigV4Auth`` gets AWS Signature V4 right (canonical request,
URI encoding, header canonicalisation, payload hash): the part that is easy
to get subtly wrong. Its transfer path is the wrong tool here: a boto3 client
resolves the endpoint itself (virtual-host addressing and region redirects
may send the request to another host than the one ``allowed_hosts``
approved), retries on its own schedule, keeps its own connection pool per
client, and wraps the body in ``StreamingBody``. With urllib3 we connect to
exactly the host and port that were checked, with explicit connect/read
timeouts, no retries, no redirects, one shared ``block=True`` pool, the same
Range/Content-Range checks and close/release rules as the http backend
(``locproxy.backends``), and a socket closed (not drained) on early close.

Trust caveats
-------------
Location URLs are hostile input: only hosts in ``allowed_hosts`` (``host``,
``host:port``, ``[ipv6]:port``; the format of the http backend's option) are
contacted, and only the signed request built here is sent. Credentials from
the URL or the mapping are used only to sign; they never appear in logs,
error reasons or labels: the label is ``backend_label`` of a URL rebuilt
from the host and port alone (a secret holding an unencoded ``/`` would
otherwise be mistaken for a host by a URL parser). A credentials mapping
entry applies to every bucket on that host (unless it names a bucket): an
image owner who can set location URLs can make locproxy read, with those
credentials, any object they can name on an allowed host.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import quote, unquote, urlsplit

from urllib3.exceptions import HTTPError

# Shared with the http backend on purpose: one stream class, one set of
# response checks and error texts (private names: this prototype moves with
# backends.py).
from locproxy.backends import (
    USER_AGENT,
    Backends,
    BackendError,
    BackendStream,
    _error_reason,
    _HTTPStream,
    _normalize_host,
    _parse_allowed,
)
from locproxy.options import ConfigError, MiB, parse_list
from locproxy.pools import LazyPoolManager
from locproxy.urls import backend_label

LOG = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 1 * MiB
_SCHEMES = {"s3": None, "s3+http": "http", "s3+https": "https"}
_DEFAULT_PORTS = {"http": 80, "https": 443}
_ERROR_BODY_LIMIT = 4096
_ERROR_CODE = re.compile(rb"<Code>([A-Za-z.]{1,64})</Code>")


@dataclass(frozen=True)
class S3Credentials:
    access_key: str
    secret_key: str = field(repr=False)


@dataclass(frozen=True)
class S3Location:
    scheme: str | None  # "http" / "https"; None: plain s3:// (plain_scheme)
    host: str  # normalised (lowercase, canonical IP literal)
    port: int | None  # explicit port, if any
    prefix: str  # service URL path before the bucket ("" usually)
    bucket: str
    key: str
    credentials: S3Credentials | None = field(default=None, repr=False)


def parse_s3_url(url: str) -> S3Location:
    """Split an s3 URL as Glance's s3 ``StoreLocation.parse_uri`` does; ValueError if invalid.

    The error text never quotes the URL (it may hold a secret).
    """
    if not isinstance(url, str) or url.count("://") != 1:
        raise ValueError("not a single-scheme URL")
    scheme_text, _, rest = url.partition("://")
    scheme_text = scheme_text.lower()
    if scheme_text not in _SCHEMES:
        raise ValueError("not an s3, s3+http or s3+https URL")
    if "?" in rest or "#" in rest or "\x00" in rest:
        raise ValueError("query, fragment or NUL in URL")
    # Glance joins netloc and path before splitting at "@", so a secret with
    # an unencoded "/" still parses; require exactly one "@" as it does.
    entire = rest.strip("/")
    credentials = None
    if "@" in entire:
        if entire.count("@") != 1:
            raise ValueError("more than one '@'")
        userinfo, _, entire = entire.partition("@")
        access, sep, secret = userinfo.partition(":")
        if not sep or not access or not secret:
            raise ValueError("credentials not of the form access:secret")
        credentials = S3Credentials(unquote(access), unquote(secret))
    parts = entire.split("/")
    if len(parts) < 3 or not all(parts):
        raise ValueError("expected host/bucket/key")
    key, bucket, hostport, prefix = parts[-1], parts[-2], parts[0], "/".join(parts[1:-2])
    try:
        split = urlsplit("//" + hostport)
        host, port = split.hostname, split.port
    except ValueError:
        raise ValueError("invalid host or port") from None
    if not host or split.username is not None or split.password is not None:
        raise ValueError("invalid host")
    return S3Location(_SCHEMES[scheme_text], _normalize_host(host), port, prefix, bucket, key, credentials)


def _parse_credentials_key(option: str, position: int, text: str) -> tuple[str, int | None, str | None]:
    hostport, _, bucket = text.strip().partition("/")
    try:
        split = urlsplit("//" + hostport)
        host, port = split.hostname, split.port
    except ValueError:
        host, port = None, None
    if not host or "/" in bucket or (split.username or split.password):
        # Not quoted back: a misplaced "=" can put part of a secret here.
        raise ConfigError(f"{option}: item {position}: the part before '=' is not host[:port][/bucket]")
    return _normalize_host(host), port, bucket or None


def parse_s3_credentials(
    option: str, value: str | Mapping[str, Any] | None
) -> dict[tuple[str, int | None, str | None], S3Credentials]:
    """``"host[:port][/bucket]=access:secret, ..."`` (commas or newlines) -> {(host, port, bucket): creds}.

    Secrets may hold ``/``, ``+``, ``=`` and ``:`` but not ``,`` or
    whitespace. A mapping ``{"host:port/bucket": (access, secret)}`` is
    accepted too. Errors name the option and the item's position, never a
    secret.
    """
    if value is None:
        return {}
    if isinstance(value, Mapping):
        items = list(value.items())
    else:
        items = []
        for position, item in enumerate(parse_list(option, value.replace("\n", ",")), 1):
            where, sep, creds = item.partition("=")
            access, colon, secret = creds.strip().partition(":")
            if not sep or not colon or not access or not secret:
                raise ConfigError(f"{option}: item {position} is not host[:port][/bucket]=access:secret")
            items.append((where, (access, secret)))
    result: dict[tuple[str, int | None, str | None], S3Credentials] = {}
    for position, (where, creds) in enumerate(items, 1):
        key = _parse_credentials_key(option, position, str(where))
        if key in result:
            raise ConfigError(f"{option}: item {position}: host[:port][/bucket] listed twice")
        if isinstance(creds, S3Credentials):
            result[key] = creds
        else:
            try:
                access, secret = creds
            except (TypeError, ValueError):
                raise ConfigError(f"{option}: item {position}: expected (access, secret)") from None
            if not access or not secret:
                raise ConfigError(f"{option}: item {position}: empty access or secret key")
            result[key] = S3Credentials(str(access), str(secret))
    return result


class _NoSignatureLog(logging.Filter):
    """Drops botocore.auth's DEBUG records: they print each request's
    signature, which anyone reading the log could replay for 15 minutes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG


logging.getLogger("botocore.auth").addFilter(_NoSignatureLog())


def _import_botocore() -> Any:
    from botocore.auth import S3SigV4Auth  # noqa: PLC0415 - optional dependency
    from botocore.awsrequest import AWSRequest  # noqa: PLC0415
    from botocore.credentials import Credentials  # noqa: PLC0415

    return S3SigV4Auth, AWSRequest, Credentials


class S3Reader:
    """Reads s3:// locations on allowed hosts with signed ranged GETs (see the module docstring)."""

    def __init__(
        self,
        *,
        allowed_hosts: frozenset[str] | set[str] | tuple[str, ...],
        credentials: Mapping[Any, Any] | None = None,
        plain_scheme: str = "https",
        region: str = "us-east-1",
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        connect_timeout: float = 10.0,
        read_timeout: float = 30.0,
        pool_maxsize: int = 10,
        ca_file: str | None = None,
    ) -> None:
        if chunk_size < 1 or pool_maxsize < 1:
            raise ValueError("chunk_size and pool_maxsize must be >= 1")
        if plain_scheme not in _DEFAULT_PORTS:
            raise ConfigError(f"s3_plain_scheme: expected http or https, got {plain_scheme!r}")
        try:
            self._allowed = _parse_allowed(frozenset(allowed_hosts))
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if credentials and all(isinstance(key, tuple) for key in credentials):
            self._credentials = dict(credentials)
        else:
            self._credentials = parse_s3_credentials("s3_credentials", credentials)
        try:
            self._signer, self._request_class, self._credentials_class = _import_botocore()
        except ImportError as error:
            raise ConfigError(f"s3: botocore is needed to sign requests ({error})") from None
        self.plain_scheme = plain_scheme
        self.region = region
        self.chunk_size = chunk_size
        import urllib3  # noqa: PLC0415 - only backend modules import urllib3

        self._timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
        self._pool_timeout = connect_timeout
        tls = {"ca_certs": ca_file} if ca_file else {}
        self._pools = LazyPoolManager(maxsize=pool_maxsize, block=True, timeout=self._timeout, retries=False, **tls)

    def clear(self) -> None:
        """Close pooled connections."""
        self._pools.clear()

    # -- decisions (no I/O) -------------------------------------------------------

    def _resolve(self, location: S3Location) -> tuple[str, int]:
        scheme = location.scheme or self.plain_scheme
        return scheme, location.port or _DEFAULT_PORTS[scheme]

    def label_for(self, url: str) -> str:
        """``s3://host:port`` for any URL form, never with credentials; ``s3`` if unparsable."""
        try:
            location = parse_s3_url(url)
        except ValueError:
            return "s3"
        host = f"[{location.host}]" if ":" in location.host else location.host
        return backend_label(f"s3://{host}:{location.port}" if location.port else f"s3://{host}")

    def _find_credentials(self, location: S3Location, port: int) -> S3Credentials | None:
        if location.credentials is not None:
            return location.credentials
        for key in (
            (location.host, port, location.bucket),
            (location.host, None, location.bucket),
            (location.host, port, None),
            (location.host, None, None),
        ):
            found = self._credentials.get(key)
            if found is not None:
                return found
        return None

    # -- opening ---------------------------------------------------------------------

    def open(self, url: str, start: int, length: int, total_size: int | None) -> BackendStream:
        """Open ``length`` bytes at ``start``; BackendError before the first byte."""
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
            location = parse_s3_url(url)
        except ValueError as error:
            raise BackendError(label, f"invalid s3 URL ({error})") from None
        scheme, port = self._resolve(location)
        if (location.host, None) not in self._allowed and (location.host, port) not in self._allowed:
            raise BackendError(label, "host not allowed")
        credentials = self._find_credentials(location, port)
        if credentials is None:
            raise BackendError(label, "no credentials for this host or bucket")
        # Path-style target; bucket and key as Glance has them (literal),
        # encoded the way botocore encodes keys, so the signature matches.
        segments = [*filter(None, location.prefix.split("/")), location.bucket, location.key]
        target = "/" + "/".join(quote(segment, safe="-_.~") for segment in segments)
        headers = {"Accept-Encoding": "identity"}
        whole = start == 0 and total_size is not None and length == total_size
        if not whole:
            headers["Range"] = f"bytes={start}-{start + length - 1}"
        host = f"[{location.host}]" if ":" in location.host else location.host
        netloc = host if port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
        request = self._request_class(method="GET", url=f"{scheme}://{netloc}{target}", headers=headers)
        self._signer(
            self._credentials_class(credentials.access_key, credentials.secret_key), "s3", self.region
        ).add_auth(request)
        signed = {name: value for name, value in request.headers.items()}
        signed["User-Agent"] = USER_AGENT  # not signed (botocore leaves User-Agent out)
        LOG.debug("GET %s bytes %s+%s%s (signed)", label, start, length, "" if whole else " (ranged)")
        try:
            pool = self._pools.get().connection_from_host(location.host, port=port, scheme=scheme)
            response = pool.urlopen(
                "GET", target, headers=signed, retries=False, redirect=False, assert_same_host=False,
                timeout=self._timeout, pool_timeout=self._pool_timeout, preload_content=False,
                decode_content=False, release_conn=False,
            )
        except (HTTPError, OSError, ValueError) as error:
            raise BackendError(label, _error_reason(error)) from None
        try:
            if response.status not in (200, 206):
                raise BackendError(label, f"HTTP {response.status}{self._error_code(response)}")
            Backends._check_response(response, label, start, length, total_size)
        except BaseException:
            response.close()
            response.release_conn()
            raise
        return _HTTPStream(label, response, start, length, self.chunk_size)

    @staticmethod
    def _error_code(response: Any) -> str:
        """`` (<S3 error Code>)`` from a small error body; the code is a bare word, safe to show."""
        try:
            body = response.read(_ERROR_BODY_LIMIT, decode_content=False)
        except (HTTPError, OSError):
            return ""
        match = _ERROR_CODE.search(body or b"")
        return f" ({match.group(1).decode()})" if match else ""
