"""``swift+config://``, ``swift+http(s)://`` and ``swift://`` locations
(Glance's swift store; OpenStack Swift, Ceph RGW's Swift API).

URL forms: ``locproxy.swift_locations``. ``swift+config`` copies log in
with a reference of ``swift_store_config_file`` (Glance's own file, or one
like it); inline ``user:key@<keystone>`` copies log in with those, when the
Keystone host is in ``allowed_hosts``. Multi-tenant copies (a storage URL,
no credentials) live in the owner's account: ``swift_tenant`` reads them
with the client's own token, as Glance does, on the storage hosts of
``swift_multi_tenant_hosts`` only; elsewhere (or without a token) they are
left to the image API's ``/file``.

Tokens: ``swift_auth`` (keystoneauth1: one session per login and worker,
the token kept and renewed, a 401 renews it once). The storage URL is
``swift_store_endpoint`` or the catalog's ``object-store`` endpoint
(``swift_store_endpoint_type``, ``swift_store_region``), as for Glance;
its host must be in ``allowed_hosts`` (checked before any byte is asked).

Why plain HTTP, not python-swiftclient
--------------------------------------
A Swift read is a GET with ``X-Auth-Token`` and ``Range``: through the
http reader's ``fetch`` it gets the shared ``block=True`` pools, the
connect/read timeouts, no retries or redirects, the drip watchdog and the
Range/Content-Range/Content-Length checks every other reader has.
swiftclient would bring its own requests session per connection, its own
retries and its own login (v1 or keystoneclient), and nothing more that a
read needs. Large objects (Glance's DLOs) are read in parallel by
``swift_segments``.

Lengths: a DLO with a missing segment is silently shorter (RGW: 200 with
the smaller length); every answer's Content-Length / Content-Range is
checked against the image size before the first byte, so such a copy is
refused, never sent short.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import SplitResult, quote, urlsplit

from locproxy.download.backends.base import NOBODY, BackendError, BackendStream, Caller, Reader
from locproxy.download.backends.http import USER_AGENT, HTTPBackend
from locproxy.download.backends.swift_auth import INSTALL_HINT, INTERFACES, Logins, keystoneauth_available
from locproxy.download.backends.swift_segments import Target, open_segmented
from locproxy.download.backends.swift_tenant import TenantHosts, as_caller
from locproxy.failures import Failure
from locproxy.guards import DEFAULT_PORTS
from locproxy.options import ConfigError, MiB, one_of, parse_count, parse_http_url, parse_name, parse_size
from locproxy.swift_locations import (
    SWIFT_SCHEMES,
    Login,
    SwiftReferences,
    SwiftURL,
    keystone_v3,
    parse_swift_url,
    split_user,
)

LOG = logging.getLogger(__package__)  # one logger for all the backends


def parse_references(option: str, value: Any) -> SwiftReferences:
    """The references file, read and checked now; keystoneauth1 is needed to use it."""
    if not keystoneauth_available():
        raise ConfigError(f"{option}: swift copies need keystoneauth1 to log in; {INSTALL_HINT}")
    return SwiftReferences.parse(option, value)


@dataclass(frozen=True)
class SwiftOptions:
    references: SwiftReferences = SwiftReferences()  # swift_store_config_file
    endpoint: str = ""  # swift_store_endpoint: the storage URL, instead of the catalog's
    endpoint_type: str = "publicURL"
    region: str = ""
    segment_readers: int = 4  # parallel reads of one download's DLO segments (1: the manifest, as one GET)
    block_size: int = 8 * MiB  # what one of them asks for at a time
    tenant_hosts: TenantHosts = TenantHosts()  # swift_multi_tenant_hosts: where a client's token may go


class SwiftBackend:
    """Opens swift locations (see the module docstring) through the http reader's pools."""

    def __init__(self, options: SwiftOptions, common: Any, built: Mapping[str, Any]) -> None:
        self.http: HTTPBackend = built["http"]
        self.allowed = self.http.allowed
        self.options = options
        options.tenant_hosts.check_within(self.allowed)
        self.logins = Logins(common.first_byte_timeout, INTERFACES[options.endpoint_type], options.region)
        self.installed = keystoneauth_available()
        # Read-ahead connections of all segmented streams together (see SegmentedStream).
        self._spare = threading.BoundedSemaphore(max(1, common.pool_maxsize // 2))

    def check(self, url: str, parts: SplitResult, label: str, caller: Caller = NOBODY) -> None:
        """Refuse, without I/O, what may never be read (by ``caller``)."""
        location = self._parse(url, label)
        if location.form == "tenant":
            self._tenant(location, label, caller)
        else:
            self._login(location, label)

    def open(self, parts: SplitResult, label: str, start: int, length: int, total_size: int | None,
             caller: Caller = NOBODY) -> BackendStream:
        location = self._parse(parts.geturl(), label)
        if location.form == "tenant":  # the client's own token, never ours: its refusal is its answer
            target = self._tenant(location, label, caller)
            return as_caller(lambda: self._read(target, caller.token, label, start, length, total_size))
        login = self._login(location, label)
        for attempt in (1, 2):
            token, storage = self.logins.token(login, label, self.options.endpoint)
            target = self._target(storage, location, label)
            try:
                return self._read(target, token, label, start, length, total_size)
            except BackendError as error:
                if attempt == 2 or not error.reason.startswith("HTTP 401"):
                    raise
                LOG.info("%s: token refused (401): logging in again", label)
                self.logins.invalidate(login)
        raise AssertionError("unreachable")

    def _read(self, target: Target, token: str, label: str, start: int, length: int,
              total_size: int | None) -> BackendStream:
        headers = {"X-Auth-Token": token, "Accept-Encoding": "identity", "User-Agent": USER_AGENT}
        if self.options.segment_readers > 1 and length > self.options.block_size:
            stream = open_segmented(self.http, target, headers, label, start, length, total_size,
                                    self.options.segment_readers, self.options.block_size, self._spare)
            if stream is not None:
                return stream
        return self.get(target, target.path, headers, label, start, length, total_size)

    def get(self, target: Target, path: str, headers: dict[str, str], label: str, start: int, length: int,
            total_size: int | None) -> BackendStream:
        if not (start == 0 and total_size is not None and length == total_size):
            headers = {**headers, "Range": f"bytes={start}-{start + length - 1}"}
        return self.http.fetch(target.scheme, target.host, target.port, path, headers, label, start, length,
                               total_size)

    # -- decisions (no I/O) ------------------------------------------------------

    @staticmethod
    def _parse(url: str, label: str) -> SwiftURL:
        try:
            return parse_swift_url(url)
        except ValueError as error:
            raise BackendError(label, f"invalid swift URL ({error})", Failure.INVALID_URL) from None

    def _tenant(self, location: SwiftURL, label: str, caller: Caller) -> Target:
        """Where a multi-tenant copy is read as ``caller``: a storage host
        both lists allow, and a token (no I/O)."""
        target = self._target(location.storage_url, location, label)
        if not self.options.tenant_hosts.allows(target.host, target.port):
            raise BackendError(label, "multi-tenant swift copy: storage host not in swift_multi_tenant_hosts",
                               Failure.NOT_ALLOWED)
        if not caller.token:
            raise BackendError(label, "multi-tenant swift copy: read only with the client's own token",
                               Failure.NOT_ALLOWED)
        return target

    def _login(self, location: SwiftURL, label: str) -> Login:
        if not self.installed:
            raise BackendError(label, "swift support not installed (keystoneauth1)", Failure.NOT_ALLOWED)
        if location.form == "config":
            ref = self.options.references.get(location.reference)
            if ref is None:
                raise BackendError(label, "swift reference not in swift_store_config_file", Failure.NOT_ALLOWED)
            login = ref.login
        else:
            self._allowed(location.auth_url, label, "Keystone host not allowed")
            try:
                project, user = split_user(location.user)
            except ValueError:
                raise BackendError(label, "invalid swift URL (user is not project:user)", Failure.INVALID_URL) from None
            login = Login(keystone_v3(location.auth_url), project, user, location.key)
        if self.options.endpoint:
            self._allowed(self.options.endpoint, label, "storage host not allowed")
        return login

    def _allowed(self, url: str, label: str, refusal: str) -> tuple[str, str, int]:
        try:
            parts = urlsplit(url)
            scheme, host, port = parts.scheme, parts.hostname, parts.port or DEFAULT_PORTS.get(parts.scheme, 0)
        except ValueError:
            raise BackendError(label, "invalid URL", Failure.INVALID_URL) from None
        if scheme not in DEFAULT_PORTS or not host:
            raise BackendError(label, "invalid URL", Failure.INVALID_URL)
        if not self.allowed.allows(host, port):
            raise BackendError(label, refusal, Failure.NOT_ALLOWED)
        return scheme, host, port

    def _target(self, storage: str, location: SwiftURL, label: str) -> Target:
        scheme, host, port = self._allowed(storage, label, "storage host not allowed")
        base = urlsplit(storage).path.rstrip("/")
        path = f"{base}/{quote(location.container, safe='')}/{quote(location.obj, safe='')}"
        return Target(scheme, host, port, base, location.container, path)

READER = Reader("swift", frozenset(SWIFT_SCHEMES), SwiftOptions, {
    "swift_store_config_file": ("references", parse_references),
    "swift_store_endpoint": ("endpoint", parse_http_url),
    "swift_store_endpoint_type": ("endpoint_type", one_of(*INTERFACES)),
    "swift_store_region": ("region", parse_name),
    "swift_segment_readers": ("segment_readers", parse_count),
    "swift_block_size": ("block_size", parse_size),
    "swift_multi_tenant_hosts": ("tenant_hosts", TenantHosts.parse),
}, SwiftBackend, for_caller=True)
