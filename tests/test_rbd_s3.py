"""rbd:// and s3:// readers: URL and option parsing (pure), then a real Ceph cluster.

The cluster tests use ``tests.support_ceph`` (mon + BlueStore OSD + radosgw
on loopback, ~20 s to start, once per module; as root it apt-get installs
Ceph first if needed, ~40 s). They skip with the lab's reason when Ceph
cannot run here (not root and not installed, no package), or when
``LOCPROXY_SKIP_CEPH=1``.
Every wait is bounded: librados op timeouts of a few seconds, urllib3 read
timeouts, and an explicit elapsed-time assertion on each outage test.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import quote

import pytest

from locproxy.backends import BackendError
from locproxy.options import ConfigError
from locproxy.rbd_reader import RbdCluster, RbdLocation, RbdReader, parse_rbd_clusters, parse_rbd_url
from locproxy.s3_reader import S3Credentials, S3Location, S3Reader, parse_s3_credentials, parse_s3_url
from tests import support_ceph
from tests.support_ceph import OSD_NAME, RGW_NAME, CephCluster, CephUnavailable

MiB = 1024 * 1024
BLOCK = 4 * MiB
# 24 MiB + 13: six rbd blocks and a ragged tail; random bytes, so a shifted or
# repeated block cannot compare equal.
DATA = random.Random(20240611).randbytes(24 * MiB + 13)
SIZE = len(DATA)
FSID = "6f1c7b3e-2f4a-4c1e-9d7b-0a1b2c3d4e5f"
SECRET = "wJal/rXUtn+FEMI=K7:MD"  # '/', '+', '=' and ':' as real secrets may hold

# (start, length): whole, edges, odd offsets across block boundaries, tail.
RANGES = [
    pytest.param(0, SIZE, id="whole"),
    pytest.param(0, 1, id="first-byte"),
    pytest.param(SIZE - 1, 1, id="last-byte"),
    pytest.param(BLOCK - 3, 7, id="across-one-boundary"),
    pytest.param(12_345, 2 * BLOCK + 4_321, id="odd-offset-three-blocks"),
    pytest.param(SIZE - BLOCK - 13, BLOCK + 13, id="ragged-tail"),
]


# -- pure: rbd URLs and options ---------------------------------------------------


@pytest.mark.parametrize(
    "url, expected",
    [
        pytest.param(f"rbd://{FSID}/images/0a1b/snap", RbdLocation(FSID, "images", "0a1b", "snap"), id="glance"),
        pytest.param(f"RBD://{FSID.upper()}/images/a%2Fb/snap", RbdLocation(FSID, "images", "a/b", "snap"), id="decoded"),
        pytest.param("rbd://0a1b-image", RbdLocation(None, None, "0a1b-image", None), id="legacy"),
        pytest.param("rbd://a%2Fb", RbdLocation(None, None, "a%2Fb", None), id="legacy-literal"),
    ],
)
def test_parse_rbd_url(url: str, expected: RbdLocation) -> None:
    assert parse_rbd_url(url) == expected


@pytest.mark.parametrize(
    "url, message",
    [
        pytest.param("rbd://", "empty component", id="empty"),
        pytest.param("http://x/y", "not an rbd:// URL", id="scheme"),
        pytest.param(f"rbd://{FSID}/images/img", "expected rbd://fsid/pool/image/snapshot", id="three-parts"),
        pytest.param(f"rbd://{FSID}/images//snap", "empty component", id="empty-image"),
        pytest.param("rbd://not-a-uuid/images/img/snap", "fsid is not a UUID", id="fsid"),
        pytest.param(f"rbd://{FSID}/images/img/snap/extra", "expected rbd://fsid", id="five-parts"),
    ],
)
def test_parse_rbd_url_refuses(url: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_rbd_url(url)
    assert message in str(caught.value)


def test_parse_rbd_clusters() -> None:
    other = str(uuid.uuid4())
    value = f"{FSID.upper()}:/etc/ceph/a.conf:client.glance:/etc/ceph/a.keyring,\n {other}:/etc/ceph/b.conf"
    assert parse_rbd_clusters("rbd_clusters", value) == {
        FSID: RbdCluster("/etc/ceph/a.conf", "glance", "/etc/ceph/a.keyring"),
        other: RbdCluster("/etc/ceph/b.conf", "admin", None),
    }
    assert parse_rbd_clusters("rbd_clusters", None) == {}


@pytest.mark.parametrize(
    "value, message",
    [
        pytest.param(f"{FSID}", "item 1", id="no-conf"),
        pytest.param("nope:/etc/ceph/ceph.conf", "'nope' is not a cluster fsid", id="fsid"),
        pytest.param(f"{FSID}:ceph.conf", "must be absolute", id="relative"),
        pytest.param(f"{FSID}:/a.conf, {FSID}:/b.conf", "listed twice", id="twice"),
        pytest.param(f"{FSID}:/a.conf:u:/k:extra", "item 1", id="too-many"),
    ],
)
def test_parse_rbd_clusters_refuses(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_rbd_clusters("rbd_clusters", value)
    assert str(caught.value).startswith("rbd_clusters: ") and message in str(caught.value), str(caught.value)


# -- pure: s3 URLs and options ------------------------------------------------------


@pytest.mark.parametrize(
    "url, expected",
    [
        pytest.param(
            "s3://127.0.0.1:7480/images/0a1b", S3Location(None, "127.0.0.1", 7480, "", "images", "0a1b"), id="multistore"
        ),
        pytest.param(
            f"s3://AK:{quote(SECRET, safe='')}@s3.example.org/images/0a1b",
            S3Location(None, "s3.example.org", None, "", "images", "0a1b", S3Credentials("AK", SECRET)),
            id="legacy-encoded",
        ),
        pytest.param(
            "s3://AK:wJal/rXU@host:9000/b/k",
            S3Location(None, "host", 9000, "", "b", "k", S3Credentials("AK", "wJal/rXU")),
            id="legacy-slash-in-secret",
        ),
        pytest.param(
            "s3+https://S3.Example.org/prefix/v1/bucket/key",
            S3Location("https", "s3.example.org", None, "prefix/v1", "bucket", "key"),
            id="https-prefix",
        ),
        pytest.param("s3+http://[::1]:7480/b/k", S3Location("http", "::1", 7480, "", "b", "k"), id="ipv6"),
    ],
)
def test_parse_s3_url(url: str, expected: S3Location) -> None:
    parsed = parse_s3_url(url)
    assert parsed == expected
    assert parsed.credentials == expected.credentials


@pytest.mark.parametrize(
    "url, message",
    [
        pytest.param("s3://host/bucket", "expected host/bucket/key", id="no-key"),
        pytest.param("s3://AK:SK@https://host/b/k", "not a single-scheme URL", id="two-schemes"),
        pytest.param("s3://AK:S@K@host/b/k", "more than one '@'", id="two-at"),
        pytest.param("s3://AK@host/b/k", "access:secret", id="no-secret"),
        pytest.param("s3://host/b/k?versionId=1", "query", id="query"),
        pytest.param("swift://host/b/k", "not an s3", id="scheme"),
        pytest.param("s3://host:99999/b/k", "invalid host or port", id="port"),
    ],
)
def test_parse_s3_url_refuses(url: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_s3_url(url)
    assert message in str(caught.value)
    assert "SK" not in str(caught.value) and "S@K" not in str(caught.value)


def test_parse_s3_credentials() -> None:
    value = f"127.0.0.1:7480/images=AK1:{SECRET}, 127.0.0.1=AK2:s2\n S3.example.org:443=AK3:s3"
    assert parse_s3_credentials("s3_credentials", value) == {
        ("127.0.0.1", 7480, "images"): S3Credentials("AK1", SECRET),
        ("127.0.0.1", None, None): S3Credentials("AK2", "s2"),
        ("s3.example.org", 443, None): S3Credentials("AK3", "s3"),
    }
    assert "s2" not in repr(parse_s3_credentials("s3_credentials", "h=AK2:s2")), "repr shows the secret"


@pytest.mark.parametrize(
    "value, message",
    [
        pytest.param("127.0.0.1 AK:wJalrXUtn", "item 1 is not host[:port][/bucket]=access:secret", id="no-equals"),
        pytest.param(f"127.0.0.1 AK:{SECRET}", "item 1: the part before '=' is not", id="no-equals-secret-has-one"),
        pytest.param("h=AK:x, h2=wJalrXU", "item 2 is not", id="no-colon"),
        pytest.param(f"h:notaport=AK:{SECRET}", "item 1: the part before '=' is not host[:port][/bucket]", id="port"),
        pytest.param(f"h/b/c=AK:{SECRET}", "the part before '=' is not", id="two-slashes"),
        pytest.param(f"h=AK:{SECRET},H=AK:{SECRET}", "listed twice", id="twice"),
    ],
)
def test_parse_s3_credentials_refuses_without_showing_secrets(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_s3_credentials("s3_credentials", value)
    text = str(caught.value)
    assert text.startswith("s3_credentials: ") and message in text, text
    assert SECRET not in text and "wJal" not in text, f"secret in {text!r}"


@pytest.mark.parametrize(
    "url, label",
    [
        pytest.param(f"s3://AK:{quote(SECRET, safe='')}@127.0.0.1:7480/b/k", "s3://127.0.0.1:7480", id="legacy"),
        pytest.param("s3://AK:wJal/rXU@host/b/k", "s3://host", id="unencoded-slash"),
        pytest.param("s3+https://[::1]:9/b/k", "s3://[::1]:9", id="ipv6"),
        pytest.param("s3://AK:S@K@host/b/k", "s3", id="invalid"),
    ],
)
def test_s3_labels_never_hold_credentials(url: str, label: str) -> None:
    reader = S3Reader(allowed_hosts={"127.0.0.1"})
    assert reader.label_for(url) == label


@pytest.mark.parametrize(
    "url, reason",
    [
        pytest.param("s3://10.0.0.1:7480/b/k", "host not allowed", id="host"),
        pytest.param("s3://127.0.0.1:7481/b/k", "host not allowed", id="port"),
        pytest.param("s3+https://127.0.0.1/b/k", "host not allowed", id="default-port"),
        pytest.param("s3://127.0.0.1:7480/other/k", "no credentials for this host or bucket", id="bucket"),
        pytest.param("s3://127.0.0.1:7480/b", "invalid s3 URL (expected host/bucket/key)", id="invalid"),
    ],
)
def test_s3_refusals_need_no_network(url: str, reason: str) -> None:
    reader = S3Reader(allowed_hosts={"127.0.0.1:7480"}, credentials="127.0.0.1:7480/b=AK:SK", plain_scheme="http")
    with pytest.raises(BackendError) as caught:
        reader.open(url, 0, 10, None)
    assert caught.value.reason == reason


# -- the real cluster -------------------------------------------------------------------


def test_lab_skips_with_a_reason_when_it_cannot_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(support_ceph, "missing_tools", lambda: ["ceph-osd", "rbd"])
    monkeypatch.setattr(support_ceph.os, "geteuid", lambda: 1000)
    with pytest.raises(CephUnavailable) as caught:
        support_ceph.ensure_packages()
    assert caught.value.reason == "Ceph tools missing (ceph-osd, rbd) and not root: cannot apt-get install"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CephCluster]:
    if os.environ.get("LOCPROXY_SKIP_CEPH", "") not in ("", "0"):
        pytest.skip("LOCPROXY_SKIP_CEPH is set")
    with contextlib.ExitStack() as stack:
        try:
            support_ceph.import_bindings()
            lab = stack.enter_context(support_ceph.ceph_cluster(tmp_path_factory.mktemp("ceph")))
        except CephUnavailable as error:
            pytest.skip(f"no Ceph lab: {error.reason}")
        yield lab


@pytest.fixture(scope="module")
def rbd_url(lab: CephCluster) -> str:
    return lab.create_rbd_image("img", DATA)


@pytest.fixture(scope="module")
def s3_object(lab: CephCluster) -> support_ceph.S3Object:
    return lab.put_s3_object("images", "0a1b-img", DATA)


@pytest.fixture
def make_rbd_reader(lab: CephCluster) -> Iterator[Callable[..., RbdReader]]:
    readers: list[RbdReader] = []

    def make(**options: object) -> RbdReader:
        settings: dict = {"op_timeout": 3, "connect_timeout": 5}
        settings.update(options)
        reader = RbdReader({lab.fsid: RbdCluster(str(lab.conf))}, **settings)
        readers.append(reader)
        return reader

    yield make
    for reader in readers:
        reader.close()


@pytest.fixture
def make_s3_reader(lab: CephCluster) -> Iterator[Callable[..., S3Reader]]:
    readers: list[S3Reader] = []

    def make(keys: tuple[str, str] | None = None, **options: object) -> S3Reader:
        access, secret = keys or lab.s3_keys()
        settings: dict = {
            "allowed_hosts": {lab.rgw_host},
            "credentials": {lab.rgw_host: (access, secret)},
            "plain_scheme": "http",
            "read_timeout": 3.0,
            "connect_timeout": 3.0,
        }
        settings.update(options)
        reader = S3Reader(**settings)
        readers.append(reader)
        return reader

    yield make
    for reader in readers:
        reader.clear()


def _read_all(stream: object) -> tuple[bytes, list[int]]:
    chunks = list(stream)  # type: ignore[call-overload]
    return b"".join(chunks), [len(chunk) for chunk in chunks]


@pytest.mark.parametrize("start, length", RANGES)
def test_rbd_reads_exact_bytes(make_rbd_reader: Callable[..., RbdReader], rbd_url: str, start: int, length: int) -> None:
    reader = make_rbd_reader()
    with reader.open(rbd_url, start, length, SIZE) as stream:
        body, sizes = _read_all(stream)
    assert body == DATA[start : start + length], f"bytes differ in {start}+{length}"
    assert max(sizes) == min(BLOCK, length), f"chunks not in whole blocks: {sizes}"


@pytest.mark.parametrize("form", ["url", "legacy_url"])
@pytest.mark.parametrize("start, length", RANGES)
def test_s3_reads_exact_bytes(
    make_s3_reader: Callable[..., S3Reader], s3_object: support_ceph.S3Object, form: str, start: int, length: int
) -> None:
    reader = make_s3_reader(credentials=None) if form == "legacy_url" else make_s3_reader()
    with reader.open(getattr(s3_object, form), start, length, SIZE) as stream:
        body, sizes = _read_all(stream)
    assert body == DATA[start : start + length], f"bytes differ in {start}+{length}"
    assert max(sizes) == min(MiB, length), f"chunk sizes {sizes}"


def test_each_reader_is_served_by_its_backend(
    lab: CephCluster, make_rbd_reader: Callable[..., RbdReader], make_s3_reader: Callable[..., S3Reader],
    rbd_url: str, s3_object: support_ceph.S3Object,
) -> None:
    osd, rgw = lab.osd_read_bytes(), lab.rgw_read_bytes()
    with make_rbd_reader().open(rbd_url, 0, SIZE, SIZE) as stream:
        assert _read_all(stream)[0] == DATA
    osd_rbd, rgw_rbd = lab.osd_read_bytes() - osd, lab.rgw_read_bytes() - rgw
    assert osd_rbd >= SIZE and rgw_rbd == 0, f"rbd read: OSD +{osd_rbd}, RGW +{rgw_rbd}"
    osd, rgw = lab.osd_read_bytes(), lab.rgw_read_bytes()
    with make_s3_reader().open(s3_object.url, 0, SIZE, SIZE) as stream:
        assert _read_all(stream)[0] == DATA
    osd_s3, rgw_s3 = lab.osd_read_bytes() - osd, lab.rgw_read_bytes() - rgw
    # RGW's get_b counts one byte less than it sends (ofs_end - ofs, inclusive end).
    assert SIZE - 1 <= rgw_s3 <= SIZE and osd_s3 >= SIZE, f"s3 read: OSD +{osd_s3}, RGW +{rgw_s3}"


def test_legacy_rbd_url_reads_the_default_pool(lab: CephCluster, make_rbd_reader: Callable[..., RbdReader]) -> None:
    data = DATA[: 5 * MiB + 1]
    lab.create_rbd_image("legacy-img", data)
    reader = make_rbd_reader(default_cluster=lab.fsid, default_pool="images")
    assert reader.label_for("rbd://legacy-img") == f"rbd://{lab.fsid}"
    with reader.open("rbd://legacy-img", 3, len(data) - 3, len(data)) as stream:
        assert _read_all(stream)[0] == data[3:]


def test_unlisted_fsid_is_never_contacted(
    lab: CephCluster, make_rbd_reader: Callable[..., RbdReader], rbd_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rados

    reader = make_rbd_reader()

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("librados was asked to connect")

    monkeypatch.setattr(rados, "Rados", refuse)
    unlisted = rbd_url.replace(lab.fsid, FSID)
    for url, reason in [
        (unlisted, "cluster not configured"),
        ("rbd://img", "legacy rbd URL and no default cluster and pool"),
    ]:
        with pytest.raises(BackendError) as caught:
            reader.open(url, 0, 10, SIZE)
        assert caught.value.reason == reason, url
    assert reader.connected() == (), "a cluster handle was created"


@pytest.mark.parametrize(
    "change, reason",
    [
        pytest.param(("/images/", "/nopool/"), "pool: not found", id="pool"),
        pytest.param(("/img/", "/nope/"), "image or snapshot: not found", id="image"),
        pytest.param(("/snap", "/nosnap"), "image or snapshot: not found", id="snapshot"),
    ],
)
def test_rbd_missing_things_fail_before_the_first_byte(
    make_rbd_reader: Callable[..., RbdReader], rbd_url: str, change: tuple[str, str], reason: str
) -> None:
    with pytest.raises(BackendError) as caught:
        make_rbd_reader().open(rbd_url.replace(*change), 0, 10, SIZE)
    assert caught.value.reason == reason


def test_rbd_size_mismatch_fails_before_the_first_byte(make_rbd_reader: Callable[..., RbdReader], rbd_url: str) -> None:
    with pytest.raises(BackendError) as caught:
        make_rbd_reader().open(rbd_url, 0, 10, SIZE + 1)
    assert caught.value.reason == f"size mismatch (image has {SIZE} bytes, expected {SIZE + 1})"


@pytest.mark.parametrize(
    "keys, reason",
    [
        pytest.param("wrong-secret", "HTTP 403 (SignatureDoesNotMatch)", id="secret"),
        pytest.param("unknown-access", "HTTP 403 (InvalidAccessKeyId)", id="access"),
    ],
)
def test_s3_bad_credentials_fail_before_the_first_byte(
    lab: CephCluster, make_s3_reader: Callable[..., S3Reader], s3_object: support_ceph.S3Object, keys: str, reason: str
) -> None:
    access, secret = lab.s3_keys()
    bad = (access, secret[::-1]) if keys == "wrong-secret" else ("LPNOSUCHKEY0", secret)
    with pytest.raises(BackendError) as caught:
        make_s3_reader(bad).open(s3_object.url, 0, SIZE, SIZE)
    assert caught.value.reason == reason
    assert caught.value.label == f"s3://{lab.rgw_host}"


def test_s3_missing_object_fails_before_the_first_byte(
    make_s3_reader: Callable[..., S3Reader], s3_object: support_ceph.S3Object
) -> None:
    with pytest.raises(BackendError) as caught:
        make_s3_reader().open(s3_object.url + "-nope", 0, 10, None)
    assert caught.value.reason == "HTTP 404 (NoSuchKey)"


def _fail_mid_stream(stream: object, outage: Callable[[], None]) -> tuple[BackendError, int, float]:
    """Read one chunk, cause the outage, read on: (error, bytes before it, seconds from outage to error)."""
    chunks = iter(stream)  # type: ignore[call-overload]
    received = len(next(chunks))
    outage()
    started = time.monotonic()
    with pytest.raises(BackendError) as caught:
        for chunk in chunks:
            received += len(chunk)
    return caught.value, received, time.monotonic() - started


def test_osd_stop_mid_stream_fails_in_bounded_time_then_resumes(
    lab: CephCluster, make_rbd_reader: Callable[..., RbdReader], rbd_url: str
) -> None:
    reader = make_rbd_reader(op_timeout=3, readahead=1)
    try:
        with reader.open(rbd_url, 0, SIZE, SIZE) as stream:
            error, received, seconds = _fail_mid_stream(stream, lambda: lab.stop(OSD_NAME))
        assert 0 < received < SIZE and error.reason.endswith(f"at byte {received}"), (error.reason, received)
        assert error.reason.startswith(("timeout", "read timeout")), error.reason
        assert seconds < 3 + 5 + 5, f"took {seconds:.1f} s to fail"
    finally:
        lab.start(OSD_NAME)
    # Resume where it broke, on the same pooled cluster handle.
    with reader.open(rbd_url, received, SIZE - received, SIZE) as stream:
        assert _read_all(stream)[0] == DATA[received:], "resumed bytes differ"


def test_hung_osd_fails_stream_and_open_in_bounded_time(
    lab: CephCluster, make_rbd_reader: Callable[..., RbdReader], rbd_url: str
) -> None:
    reader = make_rbd_reader(op_timeout=2, readahead=1)
    stream = reader.open(rbd_url, 0, SIZE, SIZE)
    try:
        error, received, seconds = _fail_mid_stream(stream, lambda: lab.send_signal(OSD_NAME, signal.SIGSTOP))
        assert error.reason == f"timeout at byte {received}", error.reason
        assert seconds < 2 + 5 + 5, f"stream took {seconds:.1f} s to fail"
        started = time.monotonic()
        with pytest.raises(BackendError) as caught:
            reader.open(rbd_url, 0, 10, SIZE)
        seconds = time.monotonic() - started
        assert caught.value.reason == "image or snapshot: timeout" and seconds < 2 + 5, (caught.value.reason, seconds)
    finally:
        stream.close()
        lab.send_signal(OSD_NAME, signal.SIGCONT)
    with reader.open(rbd_url, received, 10, SIZE) as stream:
        assert _read_all(stream)[0] == DATA[received : received + 10]


def test_unreachable_mon_fails_connect_in_bounded_time(lab: CephCluster, tmp_path: Path) -> None:
    conf = tmp_path / "ceph.conf"
    port = support_ceph.free_port()  # nothing listens there
    conf.write_text(
        f"[global]\nfsid = {FSID}\nmon host = [v2:127.0.0.1:{port}]\nauth client required = none\n"
        f"log file = {tmp_path}/client.log\nadmin socket = \n"
    )
    reader = RbdReader({FSID: RbdCluster(str(conf))}, connect_timeout=2, op_timeout=2)
    started = time.monotonic()
    try:
        with pytest.raises(BackendError) as caught:
            reader.open(f"rbd://{FSID}/images/img/snap", 0, 10, None)
    finally:
        reader.close()
    seconds = time.monotonic() - started
    assert caught.value.reason == "connect failed: timeout", caught.value.reason
    assert seconds < 2 + 5, f"connect took {seconds:.1f} s to fail"
    assert reader.connected() == ()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["term", "kill"])
def test_rgw_stop_mid_stream_fails_in_bounded_time_then_resumes(
    lab: CephCluster, make_s3_reader: Callable[..., S3Reader], s3_object: support_ceph.S3Object, sig: int
) -> None:
    reader = make_s3_reader()
    try:
        with reader.open(s3_object.url, 0, SIZE, SIZE) as stream:
            error, received, seconds = _fail_mid_stream(stream, lambda: lab.stop(RGW_NAME, sig))
        assert 0 < received < SIZE and error.reason.endswith(f"at byte {received}"), (error.reason, received)
        assert seconds < 3 + 5, f"took {seconds:.1f} s to fail"
    finally:
        lab.start(RGW_NAME)
    with reader.open(s3_object.url, received, SIZE - received, SIZE) as stream:
        assert _read_all(stream)[0] == DATA[received:], "resumed bytes differ"


def test_no_credentials_in_logs_or_errors(
    lab: CephCluster, make_s3_reader: Callable[..., S3Reader], s3_object: support_ceph.S3Object,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    access, secret = lab.s3_keys()
    errors: list[str] = []
    for reader, url in [
        (make_s3_reader(), s3_object.url),
        (make_s3_reader(credentials=None), s3_object.legacy_url),
        (make_s3_reader((access, secret[::-1])), s3_object.url),
        (make_s3_reader(credentials=None), s3_object.legacy_url.replace(s3_object.bucket, "nobucket")),
    ]:
        try:
            with reader.open(url, 5, 1000, SIZE) as stream:
                assert _read_all(stream)[0] == DATA[5:1005]
        except BackendError as error:
            errors.append(f"{error} {error.label} {error.reason}")
    assert len(errors) == 2, errors
    assert any(record.name.startswith("locproxy.s3_reader") for record in caplog.records), "nothing logged at DEBUG"
    logged = caplog.text + " ".join(errors) + " ".join(map(str, (r.args for r in caplog.records)))
    for secret_text in (access, secret, quote(secret, safe=""), secret[::-1], "Signature="):
        assert secret_text not in logged, f"{secret_text[:4]}… appears in logs or errors"
