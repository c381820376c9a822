"""locproxy's own service identity in Keystone, through keystoneauth1.

Options are keystoneauth1's own names with a ``service_`` prefix
(``service_auth_type``, ``service_auth_url``, ``service_username``,
``service_password``, ``service_project_name``, ``service_user_domain_name``,
``service_project_domain_name``, ``service_application_credential_id``,
``service_application_credential_secret``...), validated at load by
keystoneauth1's own plugin loader: an unknown auth type, an option the
plugin does not take or a required one missing fails naming the option.
Besides: ``service_interface`` (``internal``), ``service_region_name`` and
``service_endpoint_override`` say where the image API is read (the catalog's
``image`` endpoint, or that URL); ``service_timeout`` (10 s) and
``service_cafile`` how.

At load nothing is sent to Keystone (it may be down while locproxy starts).
Each worker process opens one keystoneauth1 ``Session`` on first use (after
gunicorn's fork); keystoneauth keeps the token, reuses it and fetches a new
one before it expires (within 120 s of it) or after a 401 (``service``
mode); ``renewed_token`` replaces one the image API may have refused
(``service_token`` mode), at most once a minute.

Trust: secrets live in the plugin only; they are never in a repr, a log
line, a metric or an error (keystoneauth masks tokens in its DEBUG logs and
never logs an authentication body). When Keystone cannot be reached or
refuses the identity, ``token()`` returns None: one WARNING per outage,
``locproxy_service_identity_errors_total{reason}``, ``failing`` for
``/healthcheck``, and a 5 s pause before the next try, so the download path
goes on as without an identity.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from prometheus_client import Counter

from locproxy.options import ConfigError, parse_http_url, parse_readable_file, parse_seconds

LOG = logging.getLogger(__name__)

PREFIX = "service_"
#: service_* options of locproxy's own, beside the auth plugin's.
OWN_OPTIONS = ("service_auth_type", "service_interface", "service_region_name", "service_endpoint_override",
               "service_timeout", "service_cafile")
MODES = ("response", "service", "service_token")
RETRY_AFTER = 5.0  # seconds without a try after Keystone failed
RENEW_AFTER = 60.0  # seconds between two renewals of a token the image API may have refused
INSTALL_HINT = "install keystoneauth1 (pip install 'locproxy[keystone]')"

ERRORS = Counter("locproxy_service_identity_errors", "Failures of locproxy's service identity (downloads went on "
                 "without it), by reason: unreachable, refused, failed", ["reason"])
TOKENS = Counter("locproxy_service_tokens", "Tokens keystoneauth1 obtained for locproxy's service identity")


@dataclass(frozen=True)
class IdentitySettings:
    """``locations_from`` and the service identity (secrets kept out of repr)."""

    locations_from: str = "response"
    locations_ttl: float = 60.0
    auth_type: str = ""
    auth_options: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    interface: str = "internal"
    region_name: str = ""
    endpoint_override: str = ""
    timeout: float = 10.0
    cafile: str = ""

    @property
    def enabled(self) -> bool:
        return self.locations_from != "response"


def option_names(local_conf: Mapping[str, Any]) -> set[str]:
    """The options of this module in a section (validated by ``load_settings``)."""
    return {"locations_from", "locations_ttl"} | {name for name in local_conf if name.startswith(PREFIX)}


def load_settings(conf: Mapping[str, Any]) -> IdentitySettings:
    """Validate ``locations_from``, ``locations_ttl`` and every ``service_*`` option."""
    values = {name: str(value).strip() for name, value in conf.items()
              if isinstance(name, str) and (name.startswith(PREFIX) or name in ("locations_from", "locations_ttl"))
              and str(value).strip() != ""}
    mode = values.pop("locations_from", "response")
    if mode not in MODES:
        raise ConfigError(f"locations_from: unknown value {mode!r}; valid choices: {', '.join(MODES)}")
    ttl = parse_seconds("locations_ttl", values.pop("locations_ttl", "60"))
    auth_type = values.pop("service_auth_type", "")
    own = _own_options(values)
    if not auth_type:
        if mode != "response":
            raise ConfigError(f"locations_from: {mode} needs a service identity: set service_auth_type "
                              "(e.g. password) and its service_* options")
        if values:
            raise ConfigError(f"{sorted(values)[0]}: needs service_auth_type")
        return IdentitySettings(locations_ttl=ttl, **own)
    auth_options = _auth_options(auth_type, values)
    return IdentitySettings(mode, ttl, auth_type, auth_options, **own)


def _own_options(values: dict[str, str]) -> dict[str, Any]:
    own: dict[str, Any] = {}
    if "service_interface" in values:
        interface = values.pop("service_interface")
        if interface not in ("internal", "public", "admin"):
            raise ConfigError(f"service_interface: unknown value {interface!r}; valid choices: internal, public, admin")
        own["interface"] = interface
    if "service_region_name" in values:
        own["region_name"] = values.pop("service_region_name")
    if "service_endpoint_override" in values:
        own["endpoint_override"] = parse_http_url("service_endpoint_override", values.pop("service_endpoint_override"))
    if "service_timeout" in values:
        own["timeout"] = parse_seconds("service_timeout", values.pop("service_timeout"))
    if "service_cafile" in values:
        own["cafile"] = parse_readable_file("service_cafile", values.pop("service_cafile"))
    return own


def _auth_options(auth_type: str, values: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """keystoneauth1's loader checks the plugin's options (names, required ones)."""
    loading, exceptions = _keystoneauth()
    try:
        loader = loading.get_plugin_loader(auth_type)
    except exceptions.NoMatchingPlugin:
        valid = ", ".join(sorted(loading.get_available_plugin_names()))
        raise ConfigError(f"service_auth_type: unknown value {auth_type!r}; valid choices: {valid}") from None
    known = {opt.dest for opt in loader.get_options()}
    options = {}
    for name, value in values.items():
        dest = name[len(PREFIX):] if name.startswith(PREFIX) else ""
        if dest not in known:
            valid = ", ".join(sorted(PREFIX + option for option in known | {"auth_type"}) + list(OWN_OPTIONS[1:]))
            raise ConfigError(f"{name}: unknown option for service_auth_type = {auth_type}; valid options: {valid}")
        options[dest] = value
    try:
        loader.load_from_options(**options)
    except exceptions.MissingRequiredOptions as error:
        missing = ", ".join(PREFIX + opt.dest for opt in error.options)
        raise ConfigError(f"{missing}: required with service_auth_type = {auth_type}") from None
    except (exceptions.ClientException, ValueError, TypeError) as error:
        raise ConfigError(f"service_auth_type: {auth_type} cannot be loaded with these options "
                          f"({type(error).__name__})") from None
    return tuple(sorted(options.items()))


def _keystoneauth() -> tuple[Any, Any]:
    try:
        from keystoneauth1 import exceptions, loading
    except ImportError:
        raise ConfigError(f"service_auth_type: keystoneauth1 is not installed; {INSTALL_HINT}") from None
    return loading, exceptions


class ServiceIdentity:
    """One keystoneauth1 session per worker process (see the module docstring)."""

    def __init__(self, settings: IdentitySettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._pid = -1
        self._session: Any = None
        self._auth_ref: Any = None
        self._failing_since: float | None = None
        self._retry_at = 0.0
        self._renew_at = 0.0

    @property
    def failing(self) -> bool:
        return self._failing_since is not None

    def session(self) -> Any:
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._session = self._open()
                    self._auth_ref, self._pid = None, os.getpid()
        return self._session

    def _open(self) -> Any:
        import requests
        from keystoneauth1 import loading, session

        plugin = loading.get_plugin_loader(self.settings.auth_type).load_from_options(**dict(self.settings.auth_options))
        http = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_maxsize=64)  # one worker's threads share it
        http.mount("http://", adapter)
        http.mount("https://", adapter)
        return session.Session(auth=plugin, session=http, timeout=self.settings.timeout,
                               verify=self.settings.cafile or True, user_agent="locproxy")

    def token(self) -> str | None:
        """The service token (kept and renewed by keystoneauth1), or None while it cannot be had."""
        if self._failing_since is not None and time.monotonic() < self._retry_at:
            return None
        try:
            token = self.session().get_token()
        except Exception as error:  # noqa: BLE001 - whatever keystoneauth raises, downloads go on
            self.failed(_reason(error), type(error).__name__)
            return None
        self.note_token()
        return token

    def renewed_token(self) -> str | None:
        """A new token in place of the one held, which the image API may have
        refused (revoked while held: ``service_token`` mode, where Glance
        ignores a service token it cannot validate). At most once per
        ``RENEW_AFTER`` seconds per worker, so a refusal that is a policy
        matter costs Keystone one token a minute, not one per download;
        None meanwhile."""
        session = self.session()
        with self._lock:  # the worker's threads: one renewal between them
            now = time.monotonic()
            if now < self._renew_at:
                return None
            self._renew_at = now + RENEW_AFTER
        session.invalidate()
        return self.token()

    def endpoint(self) -> str | None:
        """Where the image API is read: the override, or the catalog's image endpoint."""
        if self.settings.endpoint_override:
            return self.settings.endpoint_override
        try:
            url = self.session().get_endpoint(service_type="image", interface=self.settings.interface,
                                              region_name=self.settings.region_name or None)
        except Exception as error:  # noqa: BLE001
            self.failed(_reason(error), type(error).__name__)
            return None
        if not url:
            self.failed("failed", f"no {self.settings.interface} image endpoint in the catalog")
            return None
        return str(url).rstrip("/")

    def note_token(self) -> None:
        """Log and count a token keystoneauth1 got since the last call (at a
        ``token()``, or inside a request: its re-authentication after a 401)."""
        auth_ref = getattr(self._session.auth, "auth_ref", None)
        if auth_ref is not None and auth_ref is not self._auth_ref:
            self._auth_ref = auth_ref
            TOKENS.inc()
            LOG.info("service identity: new token (user %s, project %s), expires %s", auth_ref.username,
                     auth_ref.project_name, auth_ref.expires.isoformat() if auth_ref.expires else "never")
        self.recovered()

    def failed(self, reason: str, detail: str) -> None:
        """Count, log once per outage, pause the next try."""
        ERRORS.labels(reason).inc()
        self._retry_at = time.monotonic() + RETRY_AFTER
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            LOG.warning("service identity %s (%s): copies the image API hides are not read and no image is "
                        "promoted meanwhile; downloads go on from direct_url, then the image API's /file",
                        _WORDS[reason], detail)

    def recovered(self) -> None:
        if self._failing_since is not None:
            self._failing_since = None
            LOG.info("service identity works again")


_WORDS = {"unreachable": "cannot reach Keystone", "refused": "refused by Keystone (check service_username, "
          "service_password or service_application_credential_*)", "failed": "failed"}


def _reason(error: Exception) -> str:
    from keystoneauth1 import exceptions

    if isinstance(error, (exceptions.ConnectFailure, exceptions.ConnectTimeout, exceptions.DiscoveryFailure)):
        return "unreachable"
    if isinstance(error, (exceptions.Unauthorized, exceptions.Forbidden)):
        return "refused"
    return "failed"
