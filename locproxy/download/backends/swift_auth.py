"""Keystone v3 tokens for the swift reader, through keystoneauth1.

One keystoneauth1 session per login (a reference of the references file,
or the inline credentials of a location) and per worker process (made on
first use, after gunicorn's fork). keystoneauth keeps the token, reuses it
and fetches a new one when it is within 120 s of expiring; ``invalidate``
drops it after a storage 401 so the next ``token`` logs in again. So a
download costs no login, only the first one of a worker and one per token
lifetime (``locproxy_swift_logins_total`` counts them). A login that
failed is not tried again for ``RETRY_AFTER`` seconds: downloads meanwhile
fall back at once instead of each waiting out an unreachable Keystone.

Trust: the key lives in the plugin only; failures are told by exception
type (keystoneauth's messages may hold URLs), never with a key or token.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from prometheus_client import Counter

from locproxy.download.backends.base import BackendError
from locproxy.failures import Failure
from locproxy.swift_locations import Login

LOG = logging.getLogger(__package__)  # one logger for all the backends

RETRY_AFTER = 5.0  # seconds a failed login is answered from memory, without I/O
INSTALL_HINT = "install keystoneauth1 (pip install 'locproxy[keystone]' or pip install keystoneauth1)"
LOGINS = Counter("locproxy_swift_logins", "Keystone logins of the swift reader (one per worker and token "
                 "lifetime, never one per download), by backend", ["backend"])
#: glance_store's swift_store_endpoint_type values -> keystoneauth interfaces.
INTERFACES = {"publicURL": "public", "internalURL": "internal", "adminURL": "admin"}


def keystoneauth_available() -> bool:
    try:
        import keystoneauth1.identity  # noqa: F401, PLC0415 - optional dependency (extra "keystone")
    except ImportError:
        return False
    return True


class Logins:
    """The sessions of one worker process, by login."""

    def __init__(self, timeout: float, interface: str = "public", region: str = "", cafile: str = "") -> None:
        self.timeout = timeout
        self.interface = interface
        self.region = region
        self.cafile = cafile
        self._lock = threading.Lock()
        self._pid = -1
        self._sessions: dict[Login, Any] = {}
        self._failed: dict[Login, tuple[float, BackendError]] = {}  # the last failure, while it is fresh

    def session(self, login: Login) -> Any:
        with self._lock:
            if self._pid != os.getpid():
                self._sessions, self._failed, self._pid = {}, {}, os.getpid()  # after fork: not ours
            found = self._sessions.get(login)
            if found is None:
                found = self._sessions[login] = self._open(login)
            return found

    def _open(self, login: Login) -> Any:
        from keystoneauth1 import session  # noqa: PLC0415 - optional dependency
        from keystoneauth1.identity import v3  # noqa: PLC0415

        domains = {name: value for name, value in (
            ("user_domain_id", login.user_domain_id), ("user_domain_name", login.user_domain_name),
            ("project_domain_id", login.project_domain_id), ("project_domain_name", login.project_domain_name),
        ) if value}
        plugin = v3.Password(auth_url=login.auth_url, username=login.user, password=login.key,
                             project_name=login.project, **domains)
        return session.Session(auth=plugin, timeout=self.timeout, verify=self.cafile or True,
                               user_agent="locproxy")

    def token(self, login: Login, label: str, endpoint: str = "") -> tuple[str, str]:
        """(token, storage URL): the kept token, and ``endpoint`` or the
        catalog's object-store endpoint. BackendError if they cannot be had."""
        sess = self.session(login)
        failed = self._failed.get(login)
        if failed is not None and time.monotonic() < failed[0]:
            raise BackendError(label, failed[1].reason + " (not retried yet)", failed[1].kind)
        before = getattr(sess.auth, "auth_ref", None)
        try:
            token = sess.get_token()
            url = endpoint or sess.get_endpoint(service_type="object-store", interface=self.interface,
                                                region_name=self.region or None)
        except Exception as error:  # noqa: BLE001 - whatever keystoneauth raises: this copy is not read
            backend_error = _error(label, error)
            self._failed[login] = (time.monotonic() + RETRY_AFTER, backend_error)
            raise backend_error from None
        self._failed.pop(login, None)
        if not token or not url:
            raise BackendError(label, f"no {self.interface} object-store endpoint in the catalog", Failure.MISSING)
        if getattr(sess.auth, "auth_ref", None) is not before:
            LOGINS.labels(label).inc()
            LOG.info("%s: new Keystone token for the swift reader", label)
        return token, str(url).rstrip("/")

    def invalidate(self, login: Login) -> None:
        """Forget the token (the storage refused it): the next ``token`` logs in."""
        self.session(login).invalidate()


def _error(label: str, error: Exception) -> BackendError:
    from keystoneauth1 import exceptions  # noqa: PLC0415

    name = type(error).__name__
    if isinstance(error, (exceptions.ConnectFailure, exceptions.ConnectTimeout, exceptions.DiscoveryFailure)):
        return BackendError(label, f"Keystone unreachable ({name})", Failure.UNREACHABLE)
    if isinstance(error, (exceptions.Unauthorized, exceptions.Forbidden)):
        return BackendError(label, "Keystone refused the swift credentials", Failure.NOT_ALLOWED)
    if isinstance(error, exceptions.EndpointNotFound):
        return BackendError(label, "no object-store endpoint in the catalog", Failure.MISSING)
    return BackendError(label, f"Keystone login failed ({name})", Failure.OTHER)
