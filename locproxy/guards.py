"""The two guards that decide which locations locproxy may read at all.

Location URLs come from the image API, and image owners can often set them:
every URL is hostile until one of these says otherwise. Nothing else in the
download path should be relied on for safety, and both are meant to be
reviewed on their own.

* ``FileRoots``: ``file://`` is read only below the configured roots, judged
  on the *resolved* path (``..`` and symlinks pointing out of a root are
  refused). The path is taken literally, never percent-decoded, as Glance's
  filesystem store does. A hard link inside a root to a file outside it
  cannot be told apart from an ordinary file: roots must not be writable by
  untrusted users.
* ``AllowedHosts``: ``http(s)://`` is fetched only from these hosts. The host
  and port checked are exactly the ones connected to (the URL is never
  re-parsed by another parser, so ``http://allowed@evil/`` and
  ``http://allowed\\@evil/`` both mean ``evil`` and are refused), and
  redirects are never followed. Names are resolved by DNS, so an allowed
  *name* is only as trustworthy as its DNS.

Both parse their option once, at load, and raise ``ConfigError`` naming it.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from typing import Any, Iterable

from locproxy.options import ConfigError, parse_list

DEFAULT_PORTS = {"http": 80, "https": 443}

# host, host:port, [ipv6] or [ipv6]:port (RFC 3986 authority, without userinfo).
_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<name>[A-Za-z0-9_.-]+))(?::(?P<port>\d{1,5}))?$")


def normalize_host(host: str) -> str:
    """Lowercase; IP literals in one canonical form (``0:0::1`` == ``::1``)."""
    host = host.lower()
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return host


def _valid_v6(literal: str | None) -> bool:
    if literal is None:
        return True
    try:
        return ipaddress.ip_address(literal).version == 6
    except ValueError:
        return False


@dataclass(frozen=True)
class AllowedHosts:
    """``(host, port or None for any port)`` pairs that http(s) may reach."""

    entries: frozenset[tuple[str, int | None]] = frozenset()

    @classmethod
    def parse(cls, option: str, value: Any) -> AllowedHosts:
        """``host`` (any port), ``host:port``, ``[ipv6]`` or ``[ipv6]:port``,
        comma-separated (no scheme, no path)."""
        entries = set()
        for item in parse_list(option, value):
            match = _HOST_PORT.match(item)
            port = int(match.group("port")) if match and match.group("port") else None
            if match is None or (port is not None and port > 65535) or not _valid_v6(match.group("v6")):
                raise ConfigError(f"{option}: {item!r} is not host, host:port or [ipv6]:port (no scheme, no path)")
            entries.add((normalize_host(match.group("v6") or match.group("name")), port))
        return cls(frozenset(entries))

    def __bool__(self) -> bool:
        return bool(self.entries)

    def allows(self, host: str, port: int) -> bool:
        host = normalize_host(host)
        return (host, None) in self.entries or (host, port) in self.entries


@dataclass(frozen=True)
class FileRoots:
    """Resolved directories that ``file://`` locations may be read from."""

    roots: tuple[str, ...] = ()

    @classmethod
    def parse(cls, option: str, value: Any) -> FileRoots:
        roots = []
        for item in parse_list(option, value):
            if not os.path.isabs(item):
                raise ConfigError(f"{option}: {item!r} is not an absolute path")
            if not os.path.isdir(item):
                raise ConfigError(f"{option}: {item!r} is not a directory")
            roots.append(item)
        return cls.of(roots)

    @classmethod
    def of(cls, roots: Iterable[str]) -> FileRoots:
        # Resolved once: paths are compared with resolved roots.
        return cls(tuple(os.path.realpath(root) for root in roots))

    def __bool__(self) -> bool:
        return bool(self.roots)

    def contain(self, real_path: str) -> bool:
        """Whether a *resolved* path lies inside a root."""
        # commonpath compares whole components, so /data/root2/x is not
        # inside /data/root (a plain startswith() would say it is).
        for root in self.roots:
            try:
                if os.path.commonpath([root, real_path]) == root:
                    return True
            except ValueError:
                continue
        return False
