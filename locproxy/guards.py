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
* ``AllowedHosts``: ``http(s)://`` and ``s3://`` are fetched only from these hosts. The host
  and port checked are exactly the ones connected to (the URL is never
  re-parsed by another parser, so ``http://allowed@evil/`` and
  ``http://allowed\\@evil/`` both mean ``evil`` and are refused), and
  redirects are never followed. Names are resolved by DNS, so an allowed
  *name* is only as trustworthy as its DNS.
* ``RbdClusters``: ``rbd://`` is read only from the Ceph clusters listed
  by fsid; a URL naming any other fsid is refused before librados is
  touched, so no monitor is ever contacted for it. Pool, image and snapshot
  names are still the URL's: give locproxy a Ceph user that may only read
  the image pools.

All three parse their option once, at load, and raise ``ConfigError`` naming it.
"""

from __future__ import annotations

import ipaddress
import os
import re
import uuid
from dataclasses import dataclass
from typing import Any, Iterable

from locproxy.options import ConfigError, parse_list
from locproxy.urls import normalize_host

DEFAULT_PORTS = {"http": 80, "https": 443}

# host, host:port, [ipv6] or [ipv6]:port (RFC 3986 authority, without userinfo).
_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<name>[A-Za-z0-9_.-]+))(?::(?P<port>\d{1,5}))?$")


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


@dataclass(frozen=True)
class RbdCluster:
    """How to reach one Ceph cluster: its ceph.conf, user (without ``client.``)
    and keyring (None: what ceph.conf says)."""

    conf: str
    user: str = "admin"
    keyring: str | None = None


@dataclass(frozen=True)
class RbdClusters:
    """``(fsid, RbdCluster)`` pairs: the clusters ``rbd://`` may be read from."""

    entries: tuple[tuple[str, RbdCluster], ...] = ()

    @classmethod
    def parse(cls, option: str, value: Any) -> RbdClusters:
        """``fsid:/path/ceph.conf[:user[:/path/keyring]]``, comma- or
        newline-separated (paths without ``:`` or ``,``); a mapping
        ``{fsid: RbdCluster or (conf, user, keyring)}`` is accepted too.

        The files must be readable now, and the ``rados``/``rbd`` Python
        bindings importable (they come from the distribution): a cluster
        configured where it could never be read is refused at load.
        """
        pairs = list(value.items()) if isinstance(value, dict) else _cluster_items(option, value)
        clusters: dict[str, RbdCluster] = {}
        for fsid, spec in pairs:
            try:
                key = str(uuid.UUID(str(fsid)))
            except ValueError:
                raise ConfigError(f"{option}: {fsid!r} is not a cluster fsid (a UUID)") from None
            if key in clusters:
                raise ConfigError(f"{option}: fsid {key} is listed twice")
            clusters[key] = _checked_cluster(option, key, spec if isinstance(spec, RbdCluster) else RbdCluster(*spec))
        if clusters:
            require_rbd_bindings(option)
        return cls(tuple(sorted(clusters.items())))

    def __bool__(self) -> bool:
        return bool(self.entries)

    def get(self, fsid: str | None) -> RbdCluster | None:
        """The cluster of ``fsid``, or None: never to be contacted."""
        return dict(self.entries).get(fsid) if fsid else None

    @property
    def fsids(self) -> tuple[str, ...]:
        return tuple(fsid for fsid, _ in self.entries)


def _cluster_items(option: str, value: Any) -> list[tuple[str, tuple[str, ...]]]:
    """``fsid:conf[:user[:keyring]]`` items, comma- or newline-separated."""
    text = value.replace("\n", ",") if isinstance(value, str) else value
    pairs = []
    for position, item in enumerate(parse_list(option, text), 1):
        fields = [part.strip() for part in item.split(":")]
        if not 2 <= len(fields) <= 4 or not all(fields):
            raise ConfigError(f"{option}: item {position} ({item!r}) is not fsid:/path/ceph.conf[:user[:/path/keyring]]")
        pairs.append((fields[0], tuple(fields[1:])))
    return pairs


def _checked_cluster(option: str, key: str, cluster: RbdCluster) -> RbdCluster:
    """``client.`` dropped from the user; the files absolute and readable now."""
    if cluster.user.startswith("client."):
        cluster = RbdCluster(cluster.conf, cluster.user[len("client."):], cluster.keyring)
    for path in (cluster.conf, cluster.keyring):
        if path is None:
            continue
        if not os.path.isabs(path):
            raise ConfigError(f"{option}: {path!r} (cluster {key}) is not an absolute path")
        if not os.path.isfile(path) or not os.access(path, os.R_OK):
            raise ConfigError(f"{option}: {path!r} (cluster {key}) is not a readable file")
    return cluster


RBD_BINDINGS_HELP = (
    "install the distribution's python3-rados and python3-rbd (Debian/Ubuntu; python3-rbd on RHEL) and run "
    "locproxy with that Python (a venv made with --system-site-packages), or put a directory with links to "
    "their rados*.so and rbd*.so on PYTHONPATH of a Python with the same ABI"
)


def require_rbd_bindings(option: str) -> None:
    """ConfigError naming ``option`` unless ``rados`` and ``rbd`` import."""
    try:
        import rados  # noqa: F401, PLC0415 - optional, from the distribution
        import rbd  # noqa: F401, PLC0415
    except ImportError as error:
        raise ConfigError(f"{option}: the rados/rbd Python bindings are not importable ({error}); "
                          f"{RBD_BINDINGS_HELP}") from None
