"""Location URL helpers: credential scrubbing and backend labels (pure)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

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
