"""A Swift API for tests: a radosgw of its own on the Ceph lab, trusting the
Keystone lab (``rgw_keystone_*``), with the store user and the catalog's
``object-store`` endpoints in Keystone.

::

    with swift_gateway(ceph_lab, keystone_lab) as swift:
        swift.references_file          # [ref1] for Glance's swift store and locproxy alike
        swift.storage_url              # http://127.0.0.1:P/swift/v1/AUTH_<service project id>
        swift.request("GET", "/glance/<id>")   # with the store user's token
        swift.log_lines(mark)          # one 'beast:' line per request (user agent, Range)

* radosgw ``client.swift`` runs beside the lab's S3 one on the same cluster,
  every option on its command line (own port, log, data dir, Keystone
  trust: ``rgw_keystone_*``, implicit tenants, account in URL); the
  Keystone admin's password is read from a file (off ``ps``).
* Keystone: the user ``swiftglance`` with role ``member`` on project
  ``service`` (Glance's store identity, ``user = service:swiftglance``) and
  the catalog's ``object-store`` endpoints (public and internal).
* Stopped by pid (the Ceph lab's ``Daemon``), never by name.

Trust: a loopback lab; the passwords are for it only.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import pytest

from tests.support.ceph import CephCluster, CephUnavailable, Daemon, free_port
from tests.support.keystone.lab import KeystoneLab
from tests.support.keystone.server import ADMIN_PASSWORD

NAME = "client.swift"
STORE_USER, STORE_PROJECT, STORE_PASSWORD = "swiftglance", "service", "lab-swiftglance-secret"
START_TIMEOUT = 60.0


@dataclass
class SwiftGateway:
    ceph: CephCluster
    keystone: KeystoneLab
    port: int
    workdir: Path
    project_id: str
    _token: str = ""

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def storage_url(self) -> str:
        return f"http://{self.host}/swift/v1/AUTH_{self.project_id}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "radosgw.log"

    @property
    def references_file(self) -> Path:
        return self.workdir / "glance-swift.conf"

    @property
    def inline(self) -> tuple[str, str, str]:
        """Glance's inline store credentials: (Keystone URL, project:user, key)."""
        return f"{self.keystone.url}/v3", f"{STORE_PROJECT}:{STORE_USER}", STORE_PASSWORD

    def write_references(self, key: str = STORE_PASSWORD, name: str = "ref1") -> Path:
        """The references file (Glance's ``swift_store_config_file`` format)."""
        path = self.workdir / ("glance-swift.conf" if key == STORE_PASSWORD else f"glance-swift-{name}-bad.conf")
        path.write_text(f"[{name}]\nauth_address = {self.keystone.url}/v3\nuser = {STORE_PROJECT}:{STORE_USER}\n"
                        f"key = {key}\nuser_domain_id = default\nproject_domain_id = default\n")
        return path

    # -- the daemon --

    def start(self) -> None:
        self.ceph.start(NAME, wait=False)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                self.request("GET", "", token="")
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise CephUnavailable(f"{NAME} not answering after {START_TIMEOUT:.0f} s") from None
                process = self.ceph.daemons[NAME].process
                if process is None or process.poll() is not None:
                    raise CephUnavailable(f"{NAME} exited: {self.log_tail()}") from None
                time.sleep(0.5)

    def stop(self) -> None:
        self.ceph.stop(NAME)

    def log_tail(self, lines: int = 5) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return " | ".join(text.strip().splitlines()[-lines:])

    def log_mark(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def log_lines(self, mark: int = 0, agent: str = "") -> list[str]:
        """radosgw's access lines (``beast:``) since ``mark``, of ``agent`` if given."""
        with open(self.log_path, "rb") as log:
            log.seek(mark)
            text = log.read().decode(errors="replace")
        return [line for line in text.splitlines() if "beast:" in line and agent in line]

    # -- requests --

    def token(self) -> str:
        """The store user's token (one, kept)."""
        if not self._token:
            auth = {"identity": {"methods": ["password"], "password": {"user": {
                "name": STORE_USER, "domain": {"id": "default"}, "password": STORE_PASSWORD}}},
                "scope": {"project": {"name": STORE_PROJECT, "domain": {"id": "default"}}}}
            response = self.keystone.identities.request("POST", "/v3/auth/tokens", {"auth": auth}, token="",
                                                        expect=(201,))
            self._token = response.header("X-Subject-Token") or ""
        return self._token

    def request(self, method: str, path: str, *, token: str | None = None, body: bytes | None = None,
                headers: Mapping[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """``method`` on ``<storage URL><path>`` (the store user's token unless given)."""
        all_headers = {**({"X-Auth-Token": self.token()} if token is None else
                          {"X-Auth-Token": token} if token else {}), **(headers or {})}
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(method, f"/swift/v1/AUTH_{self.project_id}{path}", body=body, headers=all_headers)
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()

    def listing(self, container: str, prefix: str = "") -> list[dict[str, object]]:
        status, _, body = self.request("GET", f"/{container}?format=json&prefix={prefix}")
        assert status in (200, 204), status
        return json.loads(body or b"[]")


def _keystone_setup(keystone: KeystoneLab, port: int) -> str:
    """The store user and the object-store endpoints; the service project's id."""
    ids = keystone.identities
    roles = {role["name"]: role["id"] for role in ids.request("GET", "/v3/roles").json()["roles"]}
    project = ids.projects[STORE_PROJECT]
    if STORE_USER not in ids.users:
        ids.users[STORE_USER] = ids.request("POST", "/v3/users", {"user": {
            "name": STORE_USER, "domain_id": "default", "password": STORE_PASSWORD,
            "default_project_id": project}}).json()["user"]["id"]
        ids.request("PUT", f"/v3/projects/{project}/users/{ids.users[STORE_USER]}/roles/{roles['member']}")
    for interface in ("public", "internal"):
        ids.set_endpoint("object-store", interface, f"http://127.0.0.1:{port}/swift/v1/AUTH_$(project_id)s")
    return project


def _command(ceph: CephCluster, keystone: KeystoneLab, port: int, workdir: Path) -> list[str]:
    secret = workdir / "keystone-admin-password"
    secret.write_text(ADMIN_PASSWORD)
    secret.chmod(0o600)
    options = {
        "rgw-frontends": f"beast endpoint=127.0.0.1:{port}", "rgw-data": str(workdir / "data"),
        "log-file": str(workdir / "radosgw.log"), "auth-client-required": "none", "ms-mon-client-mode": "crc",
        "rgw-keystone-url": keystone.url, "rgw-keystone-api-version": "3",
        "rgw-keystone-admin-user": "admin", "rgw-keystone-admin-password-path": str(secret),
        "rgw-keystone-admin-project": "admin", "rgw-keystone-admin-domain": "Default",
        "rgw-keystone-accepted-roles": "member, admin", "rgw-keystone-verify-ssl": "false",
        "rgw-swift-account-in-url": "true", "rgw-keystone-implicit-tenants": "true",
        "rgw-s3-auth-use-keystone": "false", "debug-rgw": "1", "rgw-enable-usage-log": "false",
    }
    return ["radosgw", "-c", str(ceph.conf), "-f", "-n", NAME, *(f"--{name}={value}" for name, value in options.items())]


@contextlib.contextmanager
def swift_gateway(ceph: CephCluster, keystone: KeystoneLab) -> Iterator[SwiftGateway]:
    """A radosgw speaking Swift with Keystone trust (CephUnavailable if it cannot run)."""
    port = free_port()
    workdir = ceph.workdir / "swift"
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    project = _keystone_setup(keystone, port)
    ceph.daemons[NAME] = Daemon(NAME, _command(ceph, keystone, port, workdir), workdir / "radosgw.out")
    gateway = SwiftGateway(ceph, keystone, port, workdir, project)
    gateway.write_references()
    try:
        gateway.start()
        yield gateway
    finally:
        gateway.stop()
        del ceph.daemons[NAME]


@contextlib.contextmanager
def swift_gateway_or_skip(ceph: CephCluster, keystone: KeystoneLab) -> Iterator[SwiftGateway]:
    """``swift_gateway``, or the test skipped with the reason where it cannot run."""
    with contextlib.ExitStack() as stack:
        try:
            gateway = stack.enter_context(swift_gateway(ceph, keystone))
        except CephUnavailable as error:
            pytest.skip(f"no Swift gateway here: {error.reason}")
        yield gateway
