"""The Keystone lab's configuration files, rendered as text (pure).

* ``render_keystone_conf``: sqlite, fernet tokens, and (test-only) 4 bcrypt
  rounds, which make a password token 50 ms instead of 270 ms.
* ``render_gunicorn_conf``: Keystone's WSGI app is named *in this file*,
  never on gunicorn's command line: importing ``keystone.wsgi.api`` parses
  ``sys.argv`` with oslo.config, and every gunicorn option would be an
  "unrecognized argument" (each worker exits 2, the master respawns it for
  ever). gunicorn runs with no arguments from the directory of this file.
* ``glance_keystone_overrides``: glance-api.conf sections that put a Glance
  lab server behind keystonemiddleware with Glance's defaults for what users
  see (``show_multiple_locations = False``, ``show_image_direct_url = True``).
* ``glance_paste_ini``: Glance's *own* paste file (from its venv), with
  locproxy added right before ``rootapp`` in the keystone pipeline if asked,
  and ``locproxy.status`` first in it (its /healthcheck and /metrics).
* ``SERVICE_TOKEN_POLICY``: the one policy line of ``locations_from =
  service_token`` (everything else stays Glance's default).

Trust: loopback test servers only.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Mapping

from tests.support.glance.config import apply_overrides

#: The documented override: a user's token plus a service token with the
#: ``service`` role may read locations, with the user's own visibility.
SERVICE_TOKEN_POLICY = '"fetch_image_location": "role:service or role:admin or service_roles:service"\n'
#: No override at all: Glance's defaults.
DEFAULT_POLICY = "# Glance's default policies (no overrides).\n"


def render_keystone_conf(*, workdir: Path, overrides: Mapping[str, Mapping[str, str]] | None = None) -> str:
    keys = workdir / "fernet-keys"
    return apply_overrides(textwrap.dedent(f"""\
        # Written by tests/support/keystone/config.py; loopback test server only.
        [DEFAULT]
        debug = False
        log_file = {workdir / 'logs' / 'keystone.log'}

        [database]
        connection = sqlite:///{workdir / 'keystone.sqlite'}?timeout=30

        [token]
        provider = fernet
        expiration = 3600

        [fernet_tokens]
        key_repository = {keys}

        [fernet_receipts]
        key_repository = {keys}

        [credential]
        key_repository = {workdir / 'credential-keys'}

        [identity]
        # Test-only: bcrypt with 4 rounds (a password token in 50 ms, not 270 ms).
        password_hash_rounds = 4
        """), overrides)


def render_gunicorn_conf(*, workdir: Path, port: int, threads: int = 4) -> str:
    logs = workdir / "logs"
    return textwrap.dedent(f"""\
        # Written by tests/support/keystone/config.py. gunicorn runs with no
        # arguments from this directory (see the module docstring of that file).
        wsgi_app = "keystone.wsgi.api:application"
        bind = "127.0.0.1:{port}"
        workers = 1
        worker_class = "gthread"
        threads = {threads}
        timeout = 120
        graceful_timeout = 5
        pidfile = "{workdir / 'gunicorn.pid'}"
        errorlog = "{logs / 'gunicorn.log'}"
        accesslog = "{logs / 'access.log'}"
        loglevel = "warning"
        # gunicorn 25+ opens ~/.gunicorn/gunicorn.ctl by default, a path every
        # gunicorn of the user would fight for.
        control_socket_disable = True
        """)


def glance_keystone_overrides(*, keystone_url: str, glance_password: str,
                              token_cache_time: int = 300) -> dict[str, dict[str, str]]:
    """glance-api.conf sections for a Glance behind Keystone (``flavor = keystone``)."""
    return {
        "DEFAULT": {"show_multiple_locations": "False", "show_image_direct_url": "True"},
        "paste_deploy": {"flavor": "keystone"},
        "keystone_authtoken": {
            "www_authenticate_uri": keystone_url, "auth_url": keystone_url, "auth_type": "password",
            "user_domain_name": "Default", "project_domain_name": "Default", "project_name": "service",
            "username": "glance", "password": glance_password, "service_type": "image",
            "token_cache_time": str(token_cache_time),
        },
        "oslo_policy": {"policy_file": "policy.yaml"},
    }


#: Where ``locproxy.status`` (first in the pipeline, before authtoken) answers for the filter.
STATUS_PATHS = {"healthcheck_path": "/locproxy/healthcheck", "metrics_path": "/locproxy/metrics"}


def glance_paste_ini(venv: Path, *, locproxy: Mapping[str, str] | None = None) -> str:
    """Glance's own ``glance-api-paste.ini``; with ``locproxy`` options, the
    ``keystone`` pipeline gets ``locproxy`` right before ``rootapp`` and
    ``locproxy_status`` (``STATUS_PATHS``) first, as the README says, and the
    file a section for each."""
    text = (venv / "etc" / "glance" / "glance-api-paste.ini").read_text()
    if locproxy is None:
        return text
    text, count = re.subn(r"(?m)^keystone = (.* context) rootapp$", r"keystone = locproxy_status \1 locproxy rootapp",
                          text)
    if count != 1:
        raise ValueError("Glance's paste file has no 'keystone = ... context rootapp' pipeline line")
    lines = ["", "[filter:locproxy_status]", "paste.filter_factory = locproxy.status:filter_factory",
             *(f"{k} = {v}" for k, v in STATUS_PATHS.items()),
             "", "[filter:locproxy]", "use = egg:locproxy#locproxy", *(f"{k} = {v}" for k, v in locproxy.items())]
    return text.rstrip("\n") + "\n" + "\n".join(lines) + "\n"
