"""Multi-tenant swift copies read by locproxy with the client's own token:
Glance 33 behind the real Keystone lab, its store ``swiftmt``
(``swift_store_multi_tenant = True``) on a real Ceph radosgw that trusts
that Keystone (``tests/support/swiftlab.py``).

Every image is alice's (member of ``demo``): registered with an http copy
(``web``) while queued, then copied by alice herself (``copy-image``, which
the module's policy lets members do) into ``swiftmt``: Glance writes it with
alice's token into *her* account, container ``glance_<id>``. Glance shows
no locations (production defaults); locproxy reads them with its service
token (``locations_from = service_token``) and prefers swift, then http.

Proven in both deployments (a sidecar; locproxy inside Glance's keystone
pipeline): alice's downloads are read from radosgw with her token, exact
bytes, a DLO's segments listed and read with it too; bob (another project) gets Glance's
404 and no byte, and locproxy asks radosgw nothing; the admin, whom Glance
lets read every image but whose token radosgw refuses for alice's account
(403), is served from the web copy, four times, and the swift copy is not
demoted: alice's next download is read from it again. bob, once a member
of an image (Glance sets its container's read ACL for his project), reads
it from alice's account with his own token. No token in any log.

Whose token a read carried: radosgw's access line names the request, its
status and the user agent (``locproxy``), and as user the *account's*
owner, not the requester. The requests locproxy sends for one copy are the
same for every client but for the token, so radosgw's answer tells them
apart: 200 for alice and for bob (a member), 403 for the admin (another
project). locproxy's own service identity (role ``service`` only) would get
401 from radosgw for any account.

Opt-in (``-m lab``): Ceph, radosgw and Keystone together. Skips with the
lab's reason where they cannot run.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from typing import Iterator

import pytest

from tests.support.client import http_request
from tests.support.keystone.config import SERVICE_TOKEN_POLICY
from tests.support.keystone.fronts import Front, filter_options, open_front, web_reads
from tests.support.keystone.lab import KeystoneGlance, KeystoneLab, keystone_glance
from tests.support.keystone.seed import SeededImage, seed_image
from tests.support.swiftlab import SwiftGateway

pytestmark = [pytest.mark.integration, pytest.mark.lab]  # opt-in: ./run tests -m lab

MiB = 1024 * 1024
SEGMENT = 8_192_000  # swift_store_large_object_chunk_size = 8 ("MB" of 1,024,000 bytes)
DLO_SIZE = 5 * SEGMENT  # an exact multiple: glance_store 5.7.0's segmented upload needs one
STORE = "swiftmt"
OVERRIDES = {
    "DEFAULT": {"enabled_backends": f"fs1:file, fs2:file, web:http, {STORE}:swift"},
    STORE: {"store_description": "lab swift, multi-tenant (radosgw)", "swift_store_multi_tenant": "True",
            "swift_store_container": "glance", "swift_store_create_container_on_put": "True",
            "swift_store_use_trusts": "False", "swift_store_large_object_size": "32",
            "swift_store_large_object_chunk_size": "8"},
}
#: Members may copy their own images (Glance's default: admins only), so the copy lands in the owner's account.
POLICY = SERVICE_TOKEN_POLICY + '"copy_image": "role:member or role:admin"\n'


@dataclass
class TenantImage(SeededImage):
    swift_path: str = ""  # on radosgw: /swift/v1/AUTH_<demo>/glance_<id>/<id>


@pytest.fixture(scope="module")
def glance(keystone_lab: KeystoneLab, swift: SwiftGateway) -> Iterator[KeystoneGlance]:
    with keystone_glance(keystone_lab, overrides=OVERRIDES, policy=POLICY) as server:
        yield server


def seed(glance: KeystoneGlance, keystone_lab: KeystoneLab, swift: SwiftGateway, data: bytes,
         name: str) -> TenantImage:
    seeded = seed_image(glance, data, owner="alice", copies=(), name=name)  # the web copy only
    glance.copy_to_store(seeded.id, STORE, identity=glance.as_user("alice"), timeout=180)  # as alice herself
    demo = keystone_lab.identities.projects["demo"]
    path = f"/swift/v1/AUTH_{demo}/glance_{seeded.id}/{seeded.id}"
    listed = glance.request("GET", f"/v2/images/{seeded.id}/locations", identity=glance.as_user("locproxy-admin"))
    urls = {entry["metadata"]["store"]: entry["url"] for entry in listed.json()}
    assert urls == {"web": glance.web.url + seeded.web_path, STORE: f"swift+http://{swift.host}{path}"}, urls
    return TenantImage(**vars(seeded), swift_path=path)


@pytest.fixture(scope="module")
def images(glance: KeystoneGlance, keystone_lab: KeystoneLab, swift: SwiftGateway) -> dict[str, TenantImage]:
    made = {"plain": seed(glance, keystone_lab, swift, os.urandom(9 * MiB + 7), "lp-mt-plain"),
            "dlo": seed(glance, keystone_lab, swift, os.urandom(DLO_SIZE), "lp-mt-dlo"),
            "shared": seed(glance, keystone_lab, swift, os.urandom(3 * MiB + 1), "lp-mt-shared")}
    # bob becomes a member of "shared": Glance sets the container's read ACL for his project (alice's token).
    other = keystone_lab.identities.projects["other"]
    added = glance.request("POST", f"/v2/images/{made['shared'].id}/members", identity=glance.as_user("alice"),
                           json_body={"member": other})
    assert added.status == 200, added.body[:500]
    accepted = glance.request("PUT", f"/v2/images/{made['shared'].id}/members/{other}",
                              identity=glance.as_user("bob"), json_body={"status": "accepted"})
    assert accepted.status == 200, accepted.body[:500]
    return made


@pytest.fixture(scope="module", params=["sidecar", "pipeline"])
def front(request: pytest.FixtureRequest, glance: KeystoneGlance, keystone_lab: KeystoneLab, swift: SwiftGateway,
          images: dict[str, TenantImage]) -> Iterator[Front]:
    options = filter_options(glance, keystone_lab, "service_token",
                             allowed_hosts=f"127.0.0.1:{glance.web.port}, {swift.host}",
                             swift_multi_tenant_hosts=swift.host, store_type_preference="swift, http, file",
                             backend_first_byte_timeout="5", backend_read_timeout="5")
    with open_front(request.param, glance, options) as opened:
        yield opened


def rgw_reads(swift: SwiftGateway, mark: int, image: TenantImage) -> list[str]:
    """radosgw's access lines of locproxy's requests for ``image`` since ``mark``."""
    return [line for line in swift.log_lines(mark, agent="locproxy") if f"glance_{image.id}" in line]


def status_of(line: str) -> int:
    found = re.search(r'" (\d{3}) ', line)
    assert found, line
    return int(found.group(1))


@pytest.mark.parametrize("which", ["plain", "dlo"])
def test_the_owners_download_is_read_with_her_token(front: Front, glance: KeystoneGlance, keystone_lab: KeystoneLab,
                                                    swift: SwiftGateway, images: dict[str, TenantImage],
                                                    which: str) -> None:
    image = images[which]
    token = keystone_lab.token("alice")
    web, mark = web_reads(glance, image), swift.log_mark()
    got = front.get(f"/v2/images/{image.id}/file", token)
    assert got.status == 200 and got.complete, got.describe()
    assert hashlib.sha512(got.body).hexdigest() == image.sha512, "not the image's bytes"
    reads = rgw_reads(swift, mark, image)
    assert reads and all(status_of(line) in (200, 204, 206) for line in reads), reads
    assert any(image.swift_path in line for line in reads), reads
    if which == "dlo":  # the manifest HEADed, its segments listed and read, all with her token
        for n in range(1, 6):
            assert any(f"{image.id}-{n:05d}" in line for line in reads), (n, reads)
    assert web_reads(glance, image) == web, "the web copy was read: the swift copy did not serve"
    assert token not in front.log()
    for identity in ("locproxy", "admin"):  # so the 200s above carried alice's token, not one of these
        other = http_request(f"http://{swift.host}{image.swift_path}", "HEAD",
                             headers={"X-Auth-Token": keystone_lab.token(identity)})
        assert other.status in (401, 403), (identity, other.status)


def test_range_from_the_multi_tenant_copy(front: Front, keystone_lab: KeystoneLab, swift: SwiftGateway,
                                          images: dict[str, TenantImage]) -> None:
    image = images["dlo"]
    start, end = SEGMENT - 10, 2 * SEGMENT + 9
    mark = swift.log_mark()
    part = front.get(f"/v2/images/{image.id}/file", keystone_lab.token("alice"), Range=f"bytes={start}-{end}")
    assert (part.status, part.header("Content-Range")) == (206, f"bytes {start}-{end}/{len(image.data)}")
    assert part.body == image.data[start:end + 1]
    assert rgw_reads(swift, mark, image)


def test_another_projects_user_gets_glances_404_and_no_byte(front: Front, glance: KeystoneGlance,
                                                             keystone_lab: KeystoneLab, swift: SwiftGateway,
                                                             images: dict[str, TenantImage]) -> None:
    image = images["plain"]
    web, mark = web_reads(glance, image), swift.log_mark()
    for path in (f"/v2/images/{image.id}/file", f"/v2/images/{image.id}"):
        got = front.get(path, keystone_lab.token("bob"))
        assert got.status == 404, got.describe()
        assert image.data[:64] not in got.body
    assert rgw_reads(swift, mark, image) == [], "radosgw was asked on bob's behalf"
    assert web_reads(glance, image) == web


def test_a_token_radosgw_refuses_falls_back_and_demotes_nothing(front: Front, glance: KeystoneGlance,
                                                                keystone_lab: KeystoneLab, swift: SwiftGateway,
                                                                images: dict[str, TenantImage]) -> None:
    """Glance lets the admin read alice's image; radosgw refuses the
    admin's token for alice's account (403). Four downloads (more than the
    health rule's three failures): each served from the web copy, each
    logged as the client's refusal; then alice's is read from swift again."""
    image = images["plain"]
    admin = keystone_lab.token("admin")
    web, mark, log = web_reads(glance, image), swift.log_mark(), len(front.log())
    for _ in range(4):
        got = front.get(f"/v2/images/{image.id}/file", admin)
        assert got.status == 200 and got.body == image.data, got.describe()
    refused = rgw_reads(swift, mark, image)
    assert [status_of(line) for line in refused] == [403] * 4, refused

    assert web_reads(glance, image) == web + 4
    text = front.log()[log:]
    assert len(re.findall(rf"image {image.id}: backend swift\+http://{re.escape(swift.host)} refused the client's "
                          r"own token before the first byte: the client's token was refused \(HTTP 403\)", text)) == 4, \
        text[-3000:]
    assert admin not in front.log()
    if front.observable:
        label = f"swift+http://{swift.host}"
        assert front.metric("locproxy_backend_failures_total", backend=label, reason="denied") >= 4
        assert front.metric("locproxy_backend_demoted", backend=label) == 0
    mark = swift.log_mark()
    got = front.get(f"/v2/images/{image.id}/file", keystone_lab.token("alice"))
    assert got.status == 200 and got.body == image.data, got.describe()
    assert [status_of(line) for line in rgw_reads(swift, mark, image)][-1:] in ([200], [206]), \
        "alice's download was not read from the swift copy first: demoted?"
    assert web_reads(glance, image) == web + 4


def test_a_member_reads_with_his_own_token(front: Front, glance: KeystoneGlance, keystone_lab: KeystoneLab,
                                           swift: SwiftGateway, images: dict[str, TenantImage]) -> None:
    """bob (project other) is a member of alice's shared image: the read
    ACL Glance set on its container lets his own token read it from
    alice's account."""
    image = images["shared"]
    token = keystone_lab.token("bob")
    web, mark = web_reads(glance, image), swift.log_mark()
    got = front.get(f"/v2/images/{image.id}/file", token)
    assert got.status == 200 and got.body == image.data, got.describe()
    reads = rgw_reads(swift, mark, image)
    assert [status_of(line) for line in reads][-1:] in ([200], [206]), (reads, front.log()[-2000:])
    assert web_reads(glance, image) == web
    assert token not in front.log()
