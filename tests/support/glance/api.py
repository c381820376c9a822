"""Talking to the lab's Glance: identity, requests, and the image
operations the tests need (create and upload, locations, copy-image,
deactivate, the glance CLI and library from the Glance venv).

``GlanceAPI`` is the half of ``GlanceServer`` that speaks HTTP; it needs the
server's ``url``, ``venv`` and ``glance_log_path``. Glance on sqlite cannot
take concurrent writes well: the helpers wait until a background task
(copy-image, location import) has released the image's import lock.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from tests.support.client import Fetched, http_request
from tests.support.glance.venv import GlanceEnvError, clean_env, venv_python
from tests.support.processes import wait_until

REQUEST_TIMEOUT = 60

# python-glanceclient, the library: download an image (it verifies
# os_hash_value/checksum at the end of the iteration, raising on a mismatch).
GLANCECLIENT_DOWNLOAD = """
import hashlib, json, sys
import glanceclient
url, image_id, token = sys.argv[1:4]
client = glanceclient.Client("2", endpoint=url, token=token)
data = b"".join(client.images.data(image_id))
print(json.dumps({"size": len(data), "sha512": hashlib.sha512(data).hexdigest()}))
"""

DEFAULT_PROJECT = "locproxy-project"
DEFAULT_USER = "locproxy-user"
DEFAULT_ROLES = ("admin", "member", "reader")


class GlanceAPI:
    """Identity headers, requests and image operations (see the module docstring)."""

    url: str
    venv: Path
    glance_log_path: Path

    # -- identity --

    def headers(
        self,
        project: str = DEFAULT_PROJECT,
        roles: Sequence[str] | str = DEFAULT_ROLES,
        user: str = DEFAULT_USER,
    ) -> dict[str, str]:
        """The identity headers keystonemiddleware would set; Glance trusts them here."""
        roles_value = roles if isinstance(roles, str) else ",".join(roles)
        return {
            "X-Identity-Status": "Confirmed",
            "X-User-Id": user,
            "X-Project-Id": project,
            "X-Tenant-Id": project,
            "X-Roles": roles_value,
        }

    def token(self, project: str = DEFAULT_PROJECT, roles: Sequence[str] | str = DEFAULT_ROLES,
              user: str = DEFAULT_USER) -> str:
        """An ``X-Auth-Token`` the test-only tokenauth filter turns into those headers."""
        roles_value = roles if isinstance(roles, str) else ",".join(roles)
        return f"{user}:{project}:{roles_value}"

    # -- API helpers --

    def request(self, method: str, path: str, *, body: bytes | None = None, json_body: Any = None,
                headers: Mapping[str, str] | None = None, identity: Mapping[str, str] | None = None,
                timeout: float = REQUEST_TIMEOUT) -> Fetched:
        all_headers = dict(self.headers() if identity is None else identity)
        if json_body is not None:
            body = json.dumps(json_body).encode()
            all_headers.setdefault("Content-Type", "application/json")
        all_headers.update(headers or {})
        return http_request(self.url + path, method, body=body, headers=all_headers, timeout=timeout)

    def glance_errors(self, limit: int = 80) -> str:
        """The last ERROR lines of Glance's log (tracebacks), for failure messages."""
        if not self.glance_log_path.exists():
            return ""
        lines = [line for line in self.glance_log_path.read_text(errors="replace").splitlines()
                 if " ERROR " in line and "os_brick" not in line]
        return "\n".join(lines[-limit:])

    def _expect(self, resp: Fetched, *statuses: int, what: str) -> Fetched:
        if resp.status not in statuses:
            detail = f"\nGlance log errors:\n{self.glance_errors()}" if resp.status >= 500 else ""
            raise AssertionError(f"{what}: HTTP {resp.status} (wanted {statuses}): {resp.body[:2000]!r}{detail}")
        return resp

    def get_json(self, path: str, **kwargs: Any) -> Any:
        return self._expect(self.request("GET", path, **kwargs), 200, what=f"GET {path}").json()

    def get_image(self, image_id: str, **kwargs: Any) -> dict[str, Any]:
        return self.get_json(f"/v2/images/{image_id}", **kwargs)

    def create_image(self, data: bytes, *, store: str | None = None, identity: Mapping[str, str] | None = None,
                     **props: Any) -> str:
        """Create an image and upload ``data`` (to ``store``, default fs1); returns its id."""
        props.setdefault("name", "locproxy-test")
        props.setdefault("disk_format", "raw")
        props.setdefault("container_format", "bare")
        resp = self._expect(self.request("POST", "/v2/images", json_body=props, identity=identity), 201,
                            what="create image")
        image_id = resp.json()["id"]
        upload_headers = {"Content-Type": "application/octet-stream"}
        if store:
            upload_headers["X-Image-Meta-Store"] = store
        self._expect(
            self.request("PUT", f"/v2/images/{image_id}/file", body=data, headers=upload_headers, identity=identity),
            204, what=f"upload image {image_id}",
        )
        return image_id

    def patch_image(self, image_id: str, ops: list[dict[str, Any]], *,
                    identity: Mapping[str, str] | None = None) -> Fetched:
        return self.request(
            "PATCH", f"/v2/images/{image_id}", body=json.dumps(ops).encode(), identity=identity,
            headers={"Content-Type": "application/openstack-images-v2.1-json-patch"},
        )

    def add_location(self, image_id: str, url: str, metadata: Mapping[str, Any] | None = None, *,
                     validation_data: Mapping[str, Any] | None = None, position: str = "-",
                     identity: Mapping[str, str] | None = None) -> dict[str, Any]:
        """JSON-patch ``add /locations/<position>``; returns the updated image.

        This works for active images (Glance HEADs an http URL to learn the
        size and checks it against the image). The newer
        ``POST /v2/images/{id}/locations`` (``add_location_api``) only accepts
        *queued* images.
        """
        value: dict[str, Any] = {"url": url, "metadata": dict(metadata or {})}
        if validation_data:
            value["validation_data"] = dict(validation_data)
        resp = self.patch_image(image_id, [{"op": "add", "path": f"/locations/{position}", "value": value}],
                                identity=identity)
        return self._expect(resp, 200, what=f"add location {url} to {image_id}").json()

    def add_location_api(self, image_id: str, url: str, *, validation_data: Mapping[str, Any] | None = None,
                         identity: Mapping[str, str] | None = None, timeout: float = 60) -> dict[str, Any]:
        """``POST /v2/images/{id}/locations`` (queued images only; runs as a task), wait for active."""
        body: dict[str, Any] = {"url": url}
        if validation_data:
            body["validation_data"] = dict(validation_data)
        self._expect(self.request("POST", f"/v2/images/{image_id}/locations", json_body=body, identity=identity),
                     202, what=f"POST locations {url} to {image_id}")
        self._raise_failed_tasks(image_id, self.wait_tasks(image_id, timeout=timeout), "POST locations")
        return self.get_image(image_id, identity=identity)

    def remove_location(self, image_id: str, index: int, *, identity: Mapping[str, str] | None = None) -> Fetched:
        return self.patch_image(image_id, [{"op": "remove", "path": f"/locations/{index}"}], identity=identity)

    def wait_image(self, image_id: str, predicate: Callable[[dict[str, Any]], bool], *, timeout: float = 60,
                   what: str = "image state") -> dict[str, Any]:
        return wait_until(
            lambda: (lambda img: img if predicate(img) else None)(self.get_image(image_id)),
            timeout=timeout, interval=0.2, what=f"{what} of {image_id}",
        )

    def wait_tasks(self, image_id: str, *, timeout: float = 60) -> list[dict[str, Any]]:
        """Wait until the image's import lock is released; return its tasks.

        Glance reports an import's result (``stores``, ``status``) before its
        task has finished writing; a test's next write racing those background
        writes can fail on sqlite ("database is locked"). The lock
        (``os_glance_import_task``) is set before the API answers 202 and
        dropped last. Only the image is polled: ``GET /v2/images/{id}/tasks``
        writes (it soft-deletes expired tasks first), and polling it made
        running tasks fail with "database is locked".
        """
        wait_until(
            lambda: "os_glance_import_task" not in self.get_image(image_id, identity=self.headers()),
            timeout=timeout, interval=0.1, what=f"the import lock of image {image_id} to be released",
        )
        tasks: list[dict[str, Any]] = self.get_json(f"/v2/images/{image_id}/tasks", identity=self.headers())["tasks"]
        return tasks

    def _raise_failed_tasks(self, image_id: str, tasks: list[dict[str, Any]], what: str) -> None:
        failed = [t for t in tasks if t.get("status") == "failure"]
        if failed:
            messages = "; ".join(f"{t['type']}: {t.get('message')}" for t in failed)
            raise GlanceEnvError(f"{what} of image {image_id} failed: {messages}\n{self.glance_errors()}")

    def copy_to_store(self, image_id: str, store: str, *, timeout: float = 60,
                      identity: Mapping[str, str] | None = None) -> dict[str, Any]:
        """``copy-image`` import into ``store``; waits until the image lists it."""
        body = {"method": {"name": "copy-image"}, "stores": [store], "all_stores_must_succeed": True}
        self._expect(self.request("POST", f"/v2/images/{image_id}/import", json_body=body, identity=identity),
                     202, what=f"copy {image_id} to {store}")

        self._raise_failed_tasks(image_id, self.wait_tasks(image_id, timeout=timeout), f"copy-image to {store}")
        image = self.get_image(image_id, identity=identity)
        if store not in image.get("stores", "").split(","):
            raise GlanceEnvError(
                f"copy-image of {image_id} to {store} finished without it: stores={image.get('stores')!r} "
                f"os_glance_failed_import={image.get('os_glance_failed_import')!r}\n{self.glance_errors()}"
            )
        return image

    def deactivate(self, image_id: str, *, identity: Mapping[str, str] | None = None) -> None:
        self._expect(self.request("POST", f"/v2/images/{image_id}/actions/deactivate", identity=identity), 204,
                     what=f"deactivate {image_id}")

    def reactivate(self, image_id: str, *, identity: Mapping[str, str] | None = None) -> None:
        self._expect(self.request("POST", f"/v2/images/{image_id}/actions/reactivate", identity=identity), 204,
                     what=f"reactivate {image_id}")

    def delete_image(self, image_id: str, *, identity: Mapping[str, str] | None = None) -> None:
        self._expect(self.request("DELETE", f"/v2/images/{image_id}", identity=identity), 204, 404,
                     what=f"delete {image_id}")

    # -- python-glanceclient (from the Glance venv) --

    def glance_cli(self, *args: str, token: str | None = None, url: str | None = None,
                   timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run the ``glance`` CLI of the venv against this server (or ``url``), no keystone."""
        return self._venv_run([str(self.venv / "bin" / "glance"), "--os-image-url", url or self.url,
                               "--os-auth-token", token or self.token(), *args], timeout)

    def library_download(self, image_id: str, *, url: str | None = None,
                         token: str | None = None) -> subprocess.CompletedProcess[str]:
        """``glanceclient.Client(...).images.data`` from this server (or ``url``);
        prints ``{"size": ..., "sha512": ...}`` of what it received."""
        return self.venv_python_run(GLANCECLIENT_DOWNLOAD, url or self.url, image_id, token or self.token())

    def venv_python_run(self, code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run Python ``code`` in the Glance venv (e.g. the glanceclient library)."""
        return self._venv_run(["-c", code, *args], timeout)

    def _venv_run(self, args: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(venv_python(self.venv)), *args], capture_output=True, text=True,
                              timeout=timeout, env=clean_env(), stdin=subprocess.DEVNULL)
