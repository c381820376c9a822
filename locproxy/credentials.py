"""S3 credentials for location URLs that carry none (pure).

Glance 33 in multi-store mode writes ``s3://host:port/bucket/key``: the keys
live in the store's configuration, not in the URL. locproxy's
``s3_credentials`` option says which keys sign requests to which host (and,
optionally, bucket)::

    s3_credentials = 127.0.0.1:7480/glance=ACCESS:SECRET, s3.example.org=ACCESS2:SECRET2

The most specific entry wins: host, port and bucket; host and bucket; host
and port; host. Keys in a location URL (the legacy single-store form) are
used as they are.

Trust: an entry applies to every object its host (and bucket) holds, so an
image owner who can set location URLs can make locproxy read, with these
keys, any object they can name there (on a host in ``allowed_hosts``). Give
locproxy read-only keys limited to the image buckets. Secrets never appear
in a ``repr``, an error message or a log line: errors name the option and
the item's position only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import urlsplit

from locproxy.options import ConfigError, parse_list
from locproxy.urls import normalize_host

Where = tuple[str, "int | None", "str | None"]  # host, port, bucket


@dataclass(frozen=True)
class S3Keys:
    access_key: str
    secret_key: str = field(repr=False)


@dataclass(frozen=True)
class S3Credentials:
    """``((host, port or None, bucket or None), S3Keys)`` pairs."""

    entries: tuple[tuple[Where, S3Keys], ...] = ()

    @classmethod
    def parse(cls, option: str, value: Any) -> S3Credentials:
        """``host[:port][/bucket]=access:secret``, comma- or newline-separated
        (secrets may hold ``/``, ``+``, ``=`` and ``:`` but no ``,`` or
        whitespace); a mapping ``{"host[:port][/bucket]": (access, secret)}``
        is accepted too."""
        if isinstance(value, Mapping):
            items = [(str(where), keys) for where, keys in value.items()]
        else:
            text = value.replace("\n", ",") if isinstance(value, str) else value
            items = []
            for position, item in enumerate(parse_list(option, text), 1):
                where, sep, keys = item.partition("=")
                access, colon, secret = keys.strip().partition(":")
                if not sep or not colon or not access or not secret:
                    raise ConfigError(f"{option}: item {position} is not host[:port][/bucket]=access:secret")
                items.append((where, (access, secret)))
        found: dict[Where, S3Keys] = {}
        for position, (where, keys) in enumerate(items, 1):
            key = _where(option, position, where)
            if key in found:
                raise ConfigError(f"{option}: item {position}: host[:port][/bucket] listed twice")
            if isinstance(keys, S3Keys):
                found[key] = keys
                continue
            try:
                access, secret = keys
            except (TypeError, ValueError):
                raise ConfigError(f"{option}: item {position}: expected (access, secret)") from None
            if not access or not secret:
                raise ConfigError(f"{option}: item {position}: empty access or secret key")
            found[key] = S3Keys(str(access), str(secret))
        if found:
            require_botocore(option)
        return cls(tuple(sorted(found.items(), key=lambda pair: repr(pair[0]))))

    def __bool__(self) -> bool:
        return bool(self.entries)

    def find(self, host: str, port: int, bucket: str) -> S3Keys | None:
        """The keys for an object of ``bucket`` on ``host:port``, most specific first."""
        table = dict(self.entries)
        host = normalize_host(host)
        for key in ((host, port, bucket), (host, None, bucket), (host, port, None), (host, None, None)):
            if key in table:
                return table[key]
        return None


def _where(option: str, position: int, text: str) -> Where:
    hostport, _, bucket = text.strip().partition("/")
    try:
        split = urlsplit("//" + hostport)
        host, port = split.hostname, split.port
    except ValueError:
        host, port = None, None
    if not host or "/" in bucket or split.username is not None or split.password is not None:
        # Not quoted back: a misplaced "=" can put part of a secret here.
        raise ConfigError(f"{option}: item {position}: the part before '=' is not host[:port][/bucket]")
    return normalize_host(host), port, bucket or None


def require_botocore(option: str) -> None:
    """ConfigError naming ``option`` unless botocore (which signs) imports."""
    try:
        import botocore.auth  # noqa: F401, PLC0415 - optional dependency (extra "s3")
    except ImportError as error:
        raise ConfigError(f"{option}: s3 locations need botocore to sign requests ({error}); "
                          "install locproxy[s3] (pip install 'locproxy[s3]' or pip install botocore)") from None
