"""The Keystone lab as context managers.

``keystone_lab()`` builds or reuses the Keystone venv, sets Keystone up in a
temporary directory (sqlite, fernet keys, bootstrap), starts it under
gunicorn on 127.0.0.1:<free port>, creates the identities of
``tests.support.keystone.identities`` and yields a ``KeystoneLab``:
URLs, credentials, tokens for each identity, revocation, catalog entries,
stop/start/restart. ``hook(lab)``, if given, runs once the identities exist
(e.g. to add an ``object-store`` endpoint or users of its own).

``keystone_glance(lab)`` starts a Glance 33 lab server (stores ``fs1``,
``fs2`` file and ``web`` http, as ``tests.support.glance.lab``) behind
keystonemiddleware: Glance's own paste file with ``flavor = keystone``,
default policies plus, unless told otherwise, the one line of
``locations_from = service_token``; ``show_multiple_locations = False`` and
``show_image_direct_url = True``. It registers itself as the catalog's
public and internal ``image`` endpoint, and its API helpers act as the
lab's admin unless given another identity.

Both skip nothing themselves: callers (the tests' fixtures) turn
``KeystoneEnvError`` into a skip with its reason. ``LOCPROXY_KEEP_GLANCE_TMP=1``
keeps the temporary directories.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from tests.support.glance.lab import ENV_KEEP, glance_server
from tests.support.glance.server import GlanceServer
from tests.support.glance.venv import VenvInfo
from tests.support.keystone.config import SERVICE_TOKEN_POLICY, glance_keystone_overrides, glance_paste_ini
from tests.support.keystone.identities import Identities
from tests.support.keystone.server import KeystoneServer
from tests.support.keystone.venv import ensure_venv
from tests.support.processes import free_port

#: Seconds a token handed out by ``KeystoneLab.token`` is reused (fresh ones: ``fresh_token``).
TOKEN_REUSE = 600.0


@dataclass
class KeystoneLab:
    """A running Keystone with the lab's identities (see the module docstring)."""

    server: KeystoneServer
    identities: Identities
    _tokens: dict[str, tuple[str, float]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """``auth_url``: the identity API's root."""
        return self.server.url

    def credentials(self, name: str) -> dict[str, str]:
        return self.identities.credentials(name)

    def service_options(self, name: str = "locproxy") -> dict[str, str]:
        """locproxy's ``service_*`` options for identity ``name`` (password auth)."""
        return self.identities.service_options(name)

    def token(self, name: str) -> str:
        """A token of ``name``, reused by later calls for ``TOKEN_REUSE`` seconds."""
        token, issued = self._tokens.get(name, ("", 0.0))
        if not token or time.monotonic() - issued > TOKEN_REUSE:
            token = self.fresh_token(name)
            self._tokens[name] = (token, time.monotonic())
        return token

    def fresh_token(self, name: str, *, project: str | None = None) -> str:
        """A token Keystone issues now (never handed out before)."""
        return self.identities.token(name, project=project)

    def revoke(self, token: str) -> None:
        self.identities.revoke(token)
        self._tokens = {name: held for name, held in self._tokens.items() if held[0] != token}

    def revoke_all(self, name: str) -> None:
        """Every token of ``name`` issued so far (``Identities.revoke_all``)."""
        self.identities.revoke_all(name)
        self._tokens.pop(name, None)

    def set_endpoint(self, service_type: str, interface: str, url: str) -> None:
        self.identities.set_endpoint(service_type, interface, url)

    def forget_tokens(self) -> None:
        """After a restart with a fresh database: every token is gone."""
        self._tokens.clear()
        self.identities._admin_token = ""

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> float:
        return self.server.start()

    def restart(self, overrides: Mapping[str, Mapping[str, str]] | None = None) -> float:
        """Same database and keys (tokens stay valid), other keystone.conf options."""
        return self.server.restart(overrides)


@contextlib.contextmanager
def keystone_lab(*, venv: VenvInfo | None = None, workdir: Path | None = None,
                 overrides: Mapping[str, Mapping[str, str]] | None = None,
                 hook: Callable[[KeystoneLab], None] | None = None) -> Iterator[KeystoneLab]:
    venv = venv or ensure_venv()
    own = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="locproxy-keystone-")) if workdir is None else workdir
    server = KeystoneServer(venv=venv.path, workdir=workdir, port=free_port(),
                            overrides={section: dict(options) for section, options in (overrides or {}).items()})
    try:
        server.set_up()
        server.start()
        identities = Identities(server.url)
        identities.create_all()
        lab = KeystoneLab(server, identities)
        if hook is not None:
            hook(lab)
        yield lab
    finally:
        server.stop()
        if own and not os.environ.get(ENV_KEEP):
            shutil.rmtree(workdir, ignore_errors=True)


@dataclass
class KeystoneGlance(GlanceServer):
    """A Glance lab server behind Keystone; its helpers act as ``acting`` (admin)."""

    keystone: Any = None  # KeystoneLab
    acting: str = "admin"

    def headers(self, project: str = "", roles: Sequence[str] | str = (), user: str = "") -> dict[str, str]:
        """No identity headers here (Glance would ignore them): a token of ``user`` or ``acting``."""
        return {"X-Auth-Token": self.keystone.token(user or self.acting)}

    def as_user(self, name: str) -> dict[str, str]:
        """``identity=`` for the API helpers: ``name``'s token."""
        return {"X-Auth-Token": self.keystone.token(name)}

    def render_api_conf(self, overrides: Mapping[str, Mapping[str, str]] | None = None) -> str:
        """glance-api.conf in keystone mode, with ``overrides`` on top (e.g. store weights)."""
        merged = glance_keystone_overrides(keystone_url=self.keystone.url,
                                           glance_password=self.keystone.identities.password("glance"))
        for section, options in (overrides or {}).items():
            merged.setdefault(section, {}).update(options)
        return super().render_api_conf(merged)

    def paste_with_locproxy(self, **options: str) -> str:
        """Glance's own paste file with locproxy right before rootapp (keystone pipeline)."""
        return glance_paste_ini(self.venv, locproxy=options)

    def own_paste(self) -> str:
        return glance_paste_ini(self.venv)


@contextlib.contextmanager
def keystone_glance(lab: KeystoneLab, *, venv: VenvInfo | None = None, workdir: Path | None = None,
                    overrides: Mapping[str, Mapping[str, str]] | None = None,
                    policy: str = SERVICE_TOKEN_POLICY) -> Iterator[KeystoneGlance]:
    """A Glance 33 behind ``lab``'s Keystone (see the module docstring)."""
    with glance_server(venv=venv, workdir=workdir, server_class=KeystoneGlance, api_overrides=overrides,
                       paste_ini=lambda path: glance_paste_ini(path), policy=policy, keystone=lab,
                       access_log=True) as glance:
        for interface in ("public", "internal"):
            lab.set_endpoint("image", interface, glance.url)
        yield glance  # type: ignore[misc]
