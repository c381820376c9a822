"""Test-only paste filter: turn ``X-Auth-Token: user:project:role,role`` into identity headers.

Glance without keystonemiddleware trusts the identity headers that authtoken
would set (``X-Identity-Status: Confirmed``, ``X-User-Id``, ``X-Project-Id``,
``X-Roles``); HTTP clients in the tests send those directly. The python-glanceclient
CLI cannot send arbitrary headers, only ``--os-auth-token``, so this filter (the
same idea as Glance's own ``glance.tests.utils.FakeAuthMiddleware``, which needs
Glance's test dependencies) derives the headers from such a token. A request that
already says ``X-Identity-Status`` or whose token is not of that form is left alone.
The token may be URL-quoted: python-glanceclient quotes header values.

NEVER use this outside a test environment: it trusts whatever the client says.
It is loaded by the lab's Glance (the repository root is first on its
PYTHONPATH) as::

    [filter:tokenauth]
    paste.filter_factory = tests.support.glance.tokenauth:filter_factory

It imports nothing but the standard library: Glance's venv runs it.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable
from urllib.parse import unquote


def filter_factory(global_conf: dict[str, str], **local_conf: str) -> Callable[[Any], Any]:
    def make(app: Any) -> Any:
        def tokenauth(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            # python-glanceclient URL-quotes header values ("a%3Ab%3Aadmin").
            token = unquote(environ.get("HTTP_X_AUTH_TOKEN", ""))
            parts = token.split(":")
            if "HTTP_X_IDENTITY_STATUS" not in environ and len(parts) == 3 and all(parts):
                user, project, roles = parts
                environ["HTTP_X_IDENTITY_STATUS"] = "Confirmed"
                environ["HTTP_X_USER_ID"] = user
                environ["HTTP_X_PROJECT_ID"] = project
                environ["HTTP_X_TENANT_ID"] = project
                environ["HTTP_X_ROLES"] = roles
            return app(environ, start_response)

        return tokenauth

    return make
