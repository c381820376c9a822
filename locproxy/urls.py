"""Location URL helpers: credential scrubbing, backend labels, and the
``rbd://`` and ``s3://`` URL forms Glance writes (pure).

Location URLs are hostile input: the parsers here never quote a URL in
their errors (an s3 URL may hold a secret key).
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

# scheme://user:pass@host -> scheme://host. Matches up to the last "@" before
# the path, so passwords containing "@" or ":" are removed entirely.
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#]*@)")


def scrub_credentials(url: str) -> str:
    """The URL without its ``user:password@`` part; anything else unchanged."""
    return _USERINFO.sub(r"\g<scheme>", url, count=1) if "@" in url else url


def backend_label(url: str) -> str:
    """A short, credential-free name for the backend holding ``url``.

    ``scheme://host[:port]`` for network backends, ``file`` for local files:
    used in logs, error bodies and metric labels, so it must never carry
    secrets or unbounded values such as image paths.
    """
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme == "rbd":
        return rbd_label(url)
    if scheme in S3_SCHEMES:
        # Glance splits s3 URLs at the "@" itself: a secret holding an
        # unencoded "/" would otherwise be read as a host by urlsplit.
        try:
            s3 = parse_s3_url(url)
        except ValueError:
            return scheme
        return f"{scheme}://{netloc_label(s3.host, s3.port)}"
    try:
        parts = urlsplit(scrub_credentials(url))
        host = parts.hostname
        port = parts.port
    except ValueError:
        return "invalid-url"
    scheme = parts.scheme.lower() or "unknown"
    if scheme == "file" or not host:
        return scheme
    return f"{scheme}://{netloc_label(host, port)}"


def netloc_label(host: str, port: int | None) -> str:
    """``host[:port]``, an IPv6 literal in brackets (RFC 3986 section 3.2.2)."""
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}" if port else host


def normalize_host(host: str) -> str:
    """Lowercase; IP literals in one canonical form (``0:0::1`` == ``::1``)."""
    host = host.lower()
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return host


# -- rbd:// --------------------------------------------------------------------


@dataclass(frozen=True)
class RbdURL:
    """An ``rbd://`` location: ``fsid`` is None for the legacy ``rbd://<image>``."""

    fsid: str | None
    pool: str | None
    image: str
    snapshot: str | None


def rbd_label(url: str, with_pool: bool = False) -> str:
    """``rbd://<fsid>`` (``/<pool>`` too with ``with_pool``): the cluster. The
    legacy ``rbd://<image>`` names an image, not a backend: never a label."""
    try:
        rbd = parse_rbd_url(url)
    except ValueError:
        return "rbd"
    if not rbd.fsid:
        return "rbd"
    return f"rbd://{rbd.fsid}/{quote(rbd.pool or '', safe='')}" if with_pool else f"rbd://{rbd.fsid}"


def parse_rbd_url(url: str) -> RbdURL:
    """Split an ``rbd://`` URL as Glance's rbd ``StoreLocation.parse_uri`` does:
    ``rbd://<fsid>/<pool>/<image>/<snapshot>`` (each piece percent-decoded,
    the fsid a UUID) or the legacy ``rbd://<image>`` (taken literally).
    ValueError if it is neither."""
    if not isinstance(url, str) or url[:6].lower() != "rbd://":
        raise ValueError("not an rbd:// URL")
    pieces = url[6:].split("/")
    if any(piece == "" for piece in pieces) or "\x00" in url or "?" in url or "#" in url:
        raise ValueError("empty component, query or fragment")
    if len(pieces) == 1:
        return RbdURL(None, None, pieces[0], None)
    if len(pieces) != 4:
        raise ValueError("expected rbd://fsid/pool/image/snapshot or rbd://image")
    fsid, pool, image, snapshot = (unquote(piece) for piece in pieces)
    try:
        fsid = str(uuid.UUID(fsid))
    except ValueError:
        raise ValueError("fsid is not a UUID") from None
    if not all((pool, image, snapshot)) or "\x00" in pool + image + snapshot:
        raise ValueError("empty component")
    return RbdURL(fsid, pool, image, snapshot)


# -- s3:// ---------------------------------------------------------------------

#: Scheme -> transport: plain ``s3://`` leaves it to configuration (Glance
#: takes it from its ``s3_store_host``).
S3_SCHEMES = {"s3": None, "s3+http": "http", "s3+https": "https"}


@dataclass(frozen=True)
class S3URL:
    """An s3 location; ``access_key``/``secret_key`` only in the legacy form."""

    transport: str | None  # "http", "https", or None for plain s3://
    host: str  # normalised (lowercase, canonical IP literal)
    port: int | None
    prefix: str  # service path before the bucket ("" usually)
    bucket: str
    key: str
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)


def parse_s3_url(url: str) -> S3URL:
    """Split an s3 URL as Glance's s3 ``StoreLocation.parse_uri`` does:

    * ``s3://<access>:<secret>@<host[:port]>[/prefix]/<bucket>/<key>``: the
      legacy single-store form (credentials percent-encoded, but Glance also
      accepts a secret with an unencoded ``/``: it splits at the ``@``);
    * ``s3://<host[:port]>[/prefix]/<bucket>/<key>``: Glance multi-store,
      credentials in the store's configuration.

    ValueError (never quoting the URL) if it is neither.
    """
    if not isinstance(url, str) or url.count("://") != 1:
        raise ValueError("not a single-scheme URL")
    scheme, _, rest = url.partition("://")
    if scheme.lower() not in S3_SCHEMES:
        raise ValueError("not an s3, s3+http or s3+https URL")
    if "?" in rest or "#" in rest or "\x00" in rest or "\\" in rest:
        raise ValueError("query, fragment, backslash or NUL in URL")
    entire = rest.strip("/")
    access = secret = None
    if "@" in entire:
        if entire.count("@") != 1:
            raise ValueError("more than one '@'")
        userinfo, _, entire = entire.partition("@")
        access, sep, secret = userinfo.partition(":")
        if not sep or not access or not secret:
            raise ValueError("credentials not of the form access:secret")
        access, secret = unquote(access), unquote(secret)
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
    return S3URL(S3_SCHEMES[scheme.lower()], normalize_host(host), port, prefix, bucket, key, access, secret)
