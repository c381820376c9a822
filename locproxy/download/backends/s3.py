"""``s3://``, ``s3+http://`` and ``s3+https://`` locations (S3, Ceph RGW):
signed ranged GETs to allowed hosts.

URL forms (``locproxy.urls.parse_s3_url``, as Glance's s3 store writes them):
``s3://access:secret@host[:port][/prefix]/bucket/key`` (legacy single-store:
the keys in the URL) and ``s3://host[:port][/prefix]/bucket/key`` (Glance
multi-store: the keys come from ``s3_credentials``). ``s3+http``/``s3+https``
say the transport; plain ``s3://`` uses ``s3_default_scheme`` (Glance takes
it from its ``s3_store_host``). Requests are path-style (``/bucket/key``),
as RGW and Glance's ``s3_store_bucket_url_format = path`` use.

Why botocore signs and urllib3 transfers
----------------------------------------
botocore's ``S3SigV4Auth`` gets AWS Signature V4 right (canonical request,
URI encoding, header canonicalisation, payload hash), the part that is easy
to get subtly wrong. Its transfer path is the wrong tool here: a boto3
client resolves the endpoint itself (virtual-host addressing and region
redirects may send the request to another host than the one
``allowed_hosts`` approved), retries on its own schedule, keeps its own
connection pool per client and wraps the body in ``StreamingBody``. Through
the http reader's ``fetch`` (``http.py``), a signed request goes to exactly
the host and port that were checked, with its connect/read timeouts, no
retries, no redirects, the shared ``block=True`` pool, the watchdog against
a backend that drips, the same Range/Content-Range checks and the same
close-never-drain rules. Measured: one stream this way reads RGW at the
speed of a direct ranged GET (``bench/rows/ceph.py``).

Trust caveats
-------------
Location URLs are hostile input: only hosts in ``allowed_hosts`` are
contacted (checked without I/O), and only the request built here is sent.
Keys from the URL or ``s3_credentials`` are used only to sign; labels are
``s3://host:port`` and reasons are fixed texts or S3's bare error code, so
keys never reach logs, metrics or error bodies. botocore's own DEBUG log of
each signature (replayable for 15 minutes) is filtered out.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import SplitResult, quote

import urllib3

from locproxy.credentials import S3Credentials, S3Keys
from locproxy.download.backends.base import BackendError, Reader
from locproxy.download.backends.http import USER_AGENT, HTTPBackend, HTTPStream
from locproxy.failures import Failure
from locproxy.guards import DEFAULT_PORTS
from locproxy.options import one_of, parse_name
from locproxy.urls import S3_SCHEMES, S3URL, netloc_label, parse_s3_url

LOG = logging.getLogger(__package__)  # one logger for all the backends

_ERROR_BODY_LIMIT = 4096
_ERROR_CODE = re.compile(rb"<Code>([A-Za-z.]{1,64})</Code>")


class _NoSignatureLog(logging.Filter):
    """Drops botocore.auth's DEBUG records: they print each request's
    signature and canonical request."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.DEBUG


def import_botocore() -> tuple[Any, Any, Any]:
    """(S3SigV4Auth, AWSRequest, Credentials); ImportError without botocore."""
    from botocore.auth import S3SigV4Auth  # noqa: PLC0415 - optional dependency (extra "s3")
    from botocore.awsrequest import AWSRequest  # noqa: PLC0415
    from botocore.credentials import Credentials  # noqa: PLC0415

    logging.getLogger("botocore.auth").addFilter(_NoSignatureLog())  # a set: once
    return S3SigV4Auth, AWSRequest, Credentials


@dataclass(frozen=True)
class S3Options:
    credentials: S3Credentials = S3Credentials()  # keys for s3:// URLs without any
    default_scheme: str = "https"  # transport of plain s3:// URLs
    region: str = "us-east-1"


class S3Backend:
    """Opens s3 locations on allowed hosts, signed, through the http reader's pools."""

    def __init__(self, options: S3Options, common: Any, built: Mapping[str, Any]) -> None:
        self.http: HTTPBackend = built["http"]
        self.allowed = self.http.allowed
        self.credentials = options.credentials
        self.default_scheme = options.default_scheme
        self.region = options.region
        try:
            self._signing: tuple[Any, Any, Any] | None = import_botocore()
        except ImportError:
            self._signing = None  # s3 locations are then refused (config refuses s3_credentials at load)

    def check(self, url: str, parts: SplitResult, label: str) -> None:
        """Refuse, without I/O, what may never be fetched."""
        if self._signing is None:
            raise BackendError(label, "s3 support not installed (botocore)", Failure.NOT_ALLOWED)
        location = self._parse(parts.geturl(), label)  # as open() will
        scheme, port = self._transport(location)
        if not self.allowed.allows(location.host, port):
            raise BackendError(label, "host not allowed", Failure.NOT_ALLOWED)
        if self._keys(location, port) is None:
            raise BackendError(label, "no credentials for this host or bucket", Failure.NOT_ALLOWED)

    def open(self, parts: SplitResult, label: str, start: int, length: int, total_size: int | None) -> HTTPStream:
        assert self._signing is not None  # check() refused s3 without botocore
        location = self._parse(parts.geturl(), label)
        scheme, port = self._transport(location)
        keys = self._keys(location, port)
        assert keys is not None  # check() refused URLs without credentials
        # Path-style target: bucket and key as Glance has them (literal),
        # encoded as botocore encodes them, so the signature matches.
        segments = [*filter(None, location.prefix.split("/")), location.bucket, location.key]
        target = "/" + "/".join(quote(segment, safe="-_.~") for segment in segments)
        headers = {"Accept-Encoding": "identity"}
        if not (start == 0 and total_size is not None and length == total_size):
            headers["Range"] = f"bytes={start}-{start + length - 1}"
        netloc = netloc_label(location.host, None if port == DEFAULT_PORTS[scheme] else port)
        signed = self._sign(keys, f"{scheme}://{netloc}{target}", headers)
        return self.http.fetch(scheme, location.host, port, target, signed, label, start, length, total_size,
                               error_detail=_error_code)

    # -- decisions (no I/O) ------------------------------------------------------

    @staticmethod
    def _parse(url: str, label: str) -> S3URL:
        try:
            return parse_s3_url(url)
        except ValueError as error:
            raise BackendError(label, f"invalid s3 URL ({error})", Failure.INVALID_URL) from None

    def _transport(self, location: S3URL) -> tuple[str, int]:
        scheme = location.transport or self.default_scheme
        return scheme, location.port or DEFAULT_PORTS[scheme]

    def _keys(self, location: S3URL, port: int) -> S3Keys | None:
        if location.access_key and location.secret_key:
            return S3Keys(location.access_key, location.secret_key)
        return self.credentials.find(location.host, port, location.bucket)

    def _sign(self, keys: S3Keys, url: str, headers: dict[str, str]) -> dict[str, str]:
        assert self._signing is not None
        signer, request_class, credentials_class = self._signing
        request = request_class(method="GET", url=url, headers=headers)
        signer(credentials_class(keys.access_key, keys.secret_key), "s3", self.region).add_auth(request)
        signed = dict(request.headers.items())
        signed["User-Agent"] = USER_AGENT  # not signed: botocore leaves User-Agent out
        return signed


def _error_code(response: urllib3.BaseHTTPResponse) -> str:
    """`` (<S3 error Code>)`` from a small error body: a bare word, safe to show."""
    body = response.read(_ERROR_BODY_LIMIT, decode_content=False)
    match = _ERROR_CODE.search(body or b"")
    return f" ({match.group(1).decode()})" if match else ""


READER = Reader("s3", frozenset(S3_SCHEMES), S3Options, {
    "s3_credentials": ("credentials", S3Credentials.parse),
    "s3_default_scheme": ("default_scheme", one_of("https", "http")),
    "s3_region": ("region", parse_name),
}, S3Backend)
