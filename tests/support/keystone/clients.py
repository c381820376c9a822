"""OpenStack's own clients as a Keystone user, from the Glance lab's venv
(python-glanceclient, openstacksdk and python-openstackclient are in its
``REQUIREMENTS``, pinned by ``glance-constraints.txt``): each authenticates
with the user's password through the catalog and downloads one image.

* ``glanceclient_download``: ``glanceclient.Client('2', session=...,
  interface=... | endpoint_override=...)``, ``images.get`` then
  ``images.data`` (glanceclient checks the md5 itself);
* ``openstacksdk_download``: ``openstack.connect(...,
  image_endpoint_override=...)``, ``conn.image.download_image``;
* ``openstack_image_save``: ``openstack [--os-interface I] image save``.

Each returns ``ClientResult`` (size and sha512 of what it received, and
what the library's show said). ``ClientMissing`` when the venv lacks it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from tests.support.glance.venv import clean_env, venv_python

TIMEOUT = 180

GLANCECLIENT = """
import hashlib, json, sys
from keystoneauth1 import session
from keystoneauth1.identity import v3
import glanceclient
creds, image_id, interface, override = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
s = session.Session(auth=v3.Password(**creds))
client = glanceclient.Client("2", session=s, interface=interface, endpoint_override=override or None)
shown = dict(client.images.get(image_id))
data = b"".join(client.images.data(image_id))
print(json.dumps({"size": len(data), "sha512": hashlib.sha512(data).hexdigest(),
                  "direct_url": shown.get("direct_url"), "locations": "locations" in shown}))
"""

OPENSTACKSDK = """
import hashlib, json, sys
import openstack
creds, image_id, override = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
conn = openstack.connect(auth_type="password", auth=creds, image_endpoint_override=override or None,
                         identity_api_version="3")
image = conn.image.get_image(image_id)
got = conn.image.download_image(image)
data = got.content if hasattr(got, "content") else got
print(json.dumps({"size": len(data), "sha512": hashlib.sha512(data).hexdigest(),
                  "direct_url": image.direct_url, "locations": image.locations is not None}))
"""


class ClientMissing(RuntimeError):
    """The client is not installed in the Glance venv."""


@dataclass
class ClientResult:
    size: int
    sha512: str
    direct_url: str | None = None
    locations: bool = False


def _run(venv: Path, args: list[str], env: Mapping[str, str] | None = None) -> str:
    done = subprocess.run([str(venv_python(venv)), *args], capture_output=True, text=True, timeout=TIMEOUT,
                          env=clean_env(**(env or {})), stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        if "ModuleNotFoundError" in done.stderr or "No module named" in done.stderr:
            raise ClientMissing(done.stderr.strip().splitlines()[-1])
        raise AssertionError(f"{args[:2]} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return done.stdout


def glanceclient_download(venv: Path, lab: Any, image_id: str, *, user: str = "alice", interface: str = "public",
                          endpoint_override: str = "") -> ClientResult:
    out = _run(venv, ["-c", GLANCECLIENT, json.dumps(lab.credentials(user)), image_id, interface,
                      endpoint_override])
    return ClientResult(**json.loads(out.strip().splitlines()[-1]))


def openstacksdk_download(venv: Path, lab: Any, image_id: str, *, user: str = "alice",
                          endpoint_override: str = "") -> ClientResult:
    out = _run(venv, ["-c", OPENSTACKSDK, json.dumps(lab.credentials(user)), image_id, endpoint_override])
    return ClientResult(**json.loads(out.strip().splitlines()[-1]))


def openstack_image_save(venv: Path, lab: Any, image_id: str, *, user: str = "alice",
                         interface: str = "public") -> ClientResult:
    """``openstack --os-interface INTERFACE image save --file F ID``."""
    cli = venv / "bin" / "openstack"
    if not cli.exists():
        raise ClientMissing(f"no {cli} (python-openstackclient)")
    creds = lab.credentials(user)
    env = {"OS_AUTH_URL": creds["auth_url"], "OS_USERNAME": creds["username"], "OS_PASSWORD": creds["password"],
           "OS_PROJECT_NAME": creds["project_name"], "OS_USER_DOMAIN_NAME": creds["user_domain_name"],
           "OS_PROJECT_DOMAIN_NAME": creds["project_domain_name"], "OS_IDENTITY_API_VERSION": "3"}
    with tempfile.TemporaryDirectory(prefix="locproxy-osc-") as tmp:
        target = Path(tmp) / "image.raw"
        _run(venv, [str(cli), "--os-interface", interface, "image", "save", "--file", str(target), image_id], env)
        data = target.read_bytes()
    return ClientResult(len(data), hashlib.sha512(data).hexdigest())
