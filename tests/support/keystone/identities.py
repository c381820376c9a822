"""The lab's projects, users, roles and catalog, made by plain REST with the
admin's project-scoped token, and tokens for each identity.

Who is who (``NAMES``; every user in domain Default):

==================  ==========  ==================  ===========================================
identity            project     roles               what for
==================  ==========  ==================  ===========================================
``admin``           admin       admin (bootstrap)   seeding: copy-image, publicize
``alice``           demo        member              the owner of the lab's private images
``bob``             other       member              another project's member
``locproxy``        service     service             ``locations_from = service_token``
``locproxy-admin``  service     admin, service      ``locations_from = service`` (defaults)
``glance``          service     service             Glance's keystonemiddleware
==================  ==========  ==================  ===========================================

Trust: the passwords are for loopback test servers only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from tests.support.client import Fetched, http_request
from tests.support.keystone.server import ADMIN_PASSWORD

#: name -> (project, roles)
NAMES: dict[str, tuple[str, tuple[str, ...]]] = {
    "alice": ("demo", ("member",)),
    "bob": ("other", ("member",)),
    "locproxy": ("service", ("service",)),
    "locproxy-admin": ("service", ("admin", "service")),
    "glance": ("service", ("service",)),
}


class KeystoneRequestError(AssertionError):
    """Keystone answered a lab request with an unexpected status."""


@dataclass
class Identities:
    """REST on one Keystone: identities, tokens, catalog entries."""

    url: str  # the identity API root, e.g. http://127.0.0.1:PORT
    users: dict[str, str] = field(default_factory=dict)  # name -> user id
    projects: dict[str, str] = field(default_factory=dict)  # name -> project id
    _admin_token: str = ""

    def password(self, name: str) -> str:
        return ADMIN_PASSWORD if name == "admin" else f"lab-{name}-secret"

    def project_of(self, name: str) -> str:
        return "admin" if name == "admin" else NAMES[name][0]

    def credentials(self, name: str) -> dict[str, str]:
        """keystoneauth1 ``password`` options of ``name`` (``auth_url``, ``username``...)."""
        return {"auth_url": self.url, "username": name, "password": self.password(name),
                "project_name": self.project_of(name), "user_domain_name": "Default",
                "project_domain_name": "Default"}

    def service_options(self, name: str = "locproxy") -> dict[str, str]:
        """The same as locproxy's ``service_*`` options."""
        return {"service_auth_type": "password", **{f"service_{k}": v for k, v in self.credentials(name).items()}}

    # -- REST --

    def request(self, method: str, path: str, body: Any = None, *, token: str | None = None,
                headers: Mapping[str, str] | None = None, expect: tuple[int, ...] = (200, 201, 204)) -> Fetched:
        all_headers = {"Content-Type": "application/json", "Accept": "application/json", **(headers or {})}
        chosen = self._admin_token if token is None else token
        if chosen:
            all_headers["X-Auth-Token"] = chosen
        resp = http_request(self.url + path, method, headers=all_headers, timeout=30,
                            body=None if body is None else json.dumps(body).encode())
        if expect and resp.status not in expect:
            raise KeystoneRequestError(f"{method} {path}: HTTP {resp.status}: {resp.body[:500]!r}")
        return resp

    def token(self, name: str, *, project: str | None = None) -> str:
        """A new project-scoped token of ``name`` (Keystone issues one each call)."""
        return self.token_response(name, project=project).header("X-Subject-Token") or ""

    def token_response(self, name: str, *, project: str | None = None) -> Fetched:
        scope = {"project": {"name": project or self.project_of(name), "domain": {"name": "Default"}}}
        auth = {"identity": {"methods": ["password"], "password": {"user": {
            "name": name, "domain": {"name": "Default"}, "password": self.password(name)}}}, "scope": scope}
        return self.request("POST", "/v3/auth/tokens", {"auth": auth}, token="", expect=(201,))

    def revoke(self, token: str) -> None:
        """Revoke a token (``DELETE /v3/auth/tokens``, as admin)."""
        self.request("DELETE", "/v3/auth/tokens", headers={"X-Subject-Token": token}, expect=(204,))

    def revoke_all(self, name: str) -> None:
        """Every token of ``name`` issued so far revoked by Keystone: the user
        disabled (Keystone records a revocation event for the user), then
        enabled again (tokens issued after that work)."""
        for enabled in (False, True):
            self.request("PATCH", f"/v3/users/{self.users[name]}", {"user": {"enabled": enabled}})

    def application_credential(self, name: str = "locproxy", label: str = "locproxy-lab") -> tuple[str, str]:
        """A new application credential of ``name`` on its project: ``(id, secret)``."""
        user_token = self.token(name)
        resp = self.request("POST", f"/v3/users/{self.users[name]}/application_credentials",
                            {"application_credential": {"name": f"{label}-{len(self.users)}-{id(self)}"}},
                            token=user_token, expect=(201,))
        credential = resp.json()["application_credential"]
        return credential["id"], credential["secret"]

    # -- set-up --

    def create_all(self) -> None:
        """Projects, users and role assignments of ``NAMES`` (admin exists: bootstrap)."""
        self._admin_token = self.token("admin")
        roles = {role["name"]: role["id"] for role in self.request("GET", "/v3/roles").json()["roles"]}
        self.projects["admin"] = self.request("GET", "/v3/projects?name=admin").json()["projects"][0]["id"]
        for project in sorted({project for project, _ in NAMES.values()}):
            self.projects[project] = self.request("POST", "/v3/projects", {"project": {
                "name": project, "domain_id": "default"}}).json()["project"]["id"]
        for name, (project, user_roles) in NAMES.items():
            self.users[name] = self.request("POST", "/v3/users", {"user": {
                "name": name, "domain_id": "default", "password": self.password(name),
                "default_project_id": self.projects[project]}}).json()["user"]["id"]
            for role in user_roles:
                self.request("PUT", f"/v3/projects/{self.projects[project]}/users/{self.users[name]}"
                                    f"/roles/{roles[role]}")

    def set_endpoint(self, service_type: str, interface: str, url: str, *, name: str | None = None) -> None:
        """Point the catalog's ``interface`` endpoint of ``service_type`` at ``url``
        (the service and the endpoint are created if missing, else patched)."""
        services = self.request("GET", f"/v3/services?type={service_type}").json()["services"]
        if services:
            service_id = services[0]["id"]
        else:
            service_id = self.request("POST", "/v3/services", {"service": {
                "type": service_type, "name": name or service_type}}).json()["service"]["id"]
        endpoints = self.request("GET", f"/v3/endpoints?service_id={service_id}&interface={interface}").json()
        body = {"endpoint": {"service_id": service_id, "interface": interface, "url": url, "region_id": "RegionOne"}}
        if endpoints["endpoints"]:
            self.request("PATCH", f"/v3/endpoints/{endpoints['endpoints'][0]['id']}", body)
        else:
            self.request("POST", "/v3/endpoints", body)

    def endpoint(self, service_type: str, interface: str) -> str | None:
        services = self.request("GET", f"/v3/services?type={service_type}").json()["services"]
        if not services:
            return None
        found = self.request("GET", f"/v3/endpoints?service_id={services[0]['id']}&interface={interface}").json()
        return found["endpoints"][0]["url"] if found["endpoints"] else None
