"""rbd:// and s3:// readers: URL, label and option parsing (pure), then the
readers (``Backends``, built from validated filter options) against a real
Ceph cluster.

The cluster is the session's ``ceph_lab`` (``tests/conftest.py``,
``tests/support/ceph.py``: mon + BlueStore OSD + radosgw on loopback, ~20 s
to start; as root it apt-get installs Ceph first if needed). Those tests
skip with the lab's reason where Ceph cannot run, or with
``LOCPROXY_SKIP_CEPH=1``. Every wait is bounded: librados op timeouts of a
few seconds, urllib3 read timeouts, and an elapsed-time assertion on each
outage test.
"""

from __future__ import annotations

import builtins
import logging
import random
import signal
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import quote

import pytest

from locproxy import guards
from locproxy.config import load_filter_settings
from locproxy.credentials import S3Credentials, S3Keys
from locproxy.download.backends import BackendError, Backends, BackendStream
from locproxy.download.backends.rbd import connected_clusters
from locproxy.failures import Failure
from locproxy.guards import RbdCluster, RbdClusters
from locproxy.options import ConfigError
from locproxy.urls import S3URL, RbdURL, backend_label, parse_rbd_url, parse_s3_url
from tests.support import ceph
from tests.support.ceph import OSD_NAME, RGW_NAME, CephCluster

MiB = 1024 * 1024
BLOCK = 4 * MiB
# 24 MiB + 13: six rbd blocks and a ragged tail; random bytes, so a shifted or
# repeated block cannot compare equal.
DATA = random.Random(20240611).randbytes(24 * MiB + 13)
SIZE = len(DATA)
FSID = "6f1c7b3e-2f4a-4c1e-9d7b-0a1b2c3d4e5f"
REQUIRE_RBD_BINDINGS = guards.require_rbd_bindings
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


# -- pure: URLs and labels ----------------------------------------------------------


@pytest.mark.parametrize(
    "url, expected",
    [
        pytest.param(f"rbd://{FSID}/images/0a1b/snap", RbdURL(FSID, "images", "0a1b", "snap"), id="glance"),
        pytest.param(f"RBD://{FSID.upper()}/images/a%2Fb/snap", RbdURL(FSID, "images", "a/b", "snap"), id="decoded"),
        pytest.param("rbd://0a1b-image", RbdURL(None, None, "0a1b-image", None), id="legacy"),
        pytest.param("rbd://a%2Fb", RbdURL(None, None, "a%2Fb", None), id="legacy-literal"),
    ],
)
def test_parse_rbd_url(url: str, expected: RbdURL) -> None:
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
        pytest.param(f"rbd://{FSID}/images/img/snap?x=1", "query", id="query"),
    ],
)
def test_parse_rbd_url_refuses(url: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_rbd_url(url)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    "url, expected",
    [
        pytest.param("s3://127.0.0.1:7480/images/0a1b", S3URL(None, "127.0.0.1", 7480, "", "images", "0a1b"),
                     id="multistore"),
        pytest.param(f"s3://AK:{quote(SECRET, safe='')}@s3.example.org/images/0a1b",
                     S3URL(None, "s3.example.org", None, "", "images", "0a1b", "AK", SECRET), id="legacy-encoded"),
        pytest.param("s3://AK:wJal/rXU@host:9000/b/k", S3URL(None, "host", 9000, "", "b", "k", "AK", "wJal/rXU"),
                     id="legacy-slash-in-secret"),
        pytest.param("s3+https://S3.Example.org/prefix/v1/bucket/key",
                     S3URL("https", "s3.example.org", None, "prefix/v1", "bucket", "key"), id="https-prefix"),
        pytest.param("s3+http://[::1]:7480/b/k", S3URL("http", "::1", 7480, "", "b", "k"), id="ipv6"),
    ],
)
def test_parse_s3_url(url: str, expected: S3URL) -> None:
    parsed = parse_s3_url(url)
    assert parsed == expected
    assert (parsed.access_key, parsed.secret_key) == (expected.access_key, expected.secret_key)
    assert SECRET not in repr(parsed) and "wJal" not in repr(parsed)


@pytest.mark.parametrize(
    "url, message",
    [
        pytest.param("s3://host/bucket", "expected host/bucket/key", id="no-key"),
        pytest.param("s3://AK:SK@https://host/b/k", "not a single-scheme URL", id="two-schemes"),
        pytest.param("s3://AK:S@K@host/b/k", "more than one '@'", id="two-at"),
        pytest.param("s3://AK@host/b/k", "access:secret", id="no-secret"),
        pytest.param("s3://host/b/k?versionId=1", "query", id="query"),
        pytest.param("s3://h\\@evil/b/k", "backslash", id="backslash"),
        pytest.param("swift://host/b/k", "not an s3", id="scheme"),
        pytest.param("s3://host:99999/b/k", "invalid host or port", id="port"),
    ],
)
def test_parse_s3_url_refuses(url: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_s3_url(url)
    assert message in str(caught.value)
    assert "SK" not in str(caught.value) and "S@K" not in str(caught.value)


@pytest.mark.parametrize(
    "url, label",
    [
        pytest.param(f"rbd://{FSID.upper()}/images/secret-image/snap", f"rbd://{FSID}", id="rbd"),
        pytest.param("rbd://secret-image", "rbd", id="rbd-legacy-names-no-image"),
        pytest.param("rbd://not-a-uuid/images/secret-image/snap", "rbd", id="rbd-invalid"),
        pytest.param(f"s3://AK:{quote(SECRET, safe='')}@127.0.0.1:7480/b/k", "s3://127.0.0.1:7480", id="s3-legacy"),
        pytest.param("s3://AK:wJal/rXU@host/b/k", "s3://host", id="s3-unencoded-slash"),
        pytest.param("s3+https://[::1]:9/b/k", "s3+https://[::1]:9", id="s3-ipv6"),
        pytest.param("s3://AK:S@K@host/b/k", "s3", id="s3-invalid"),
    ],
)
def test_labels_never_hold_credentials_or_image_names(url: str, label: str) -> None:
    assert backend_label(url) == label


# -- pure: options ----------------------------------------------------------------------


@pytest.fixture
def conf_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """A ceph.conf and a keyring; the rados/rbd bindings taken as present
    (parsing is checked here, not the distribution's packages)."""
    monkeypatch.setattr(guards, "require_rbd_bindings", lambda option: None)
    conf, keyring = tmp_path / "ceph.conf", tmp_path / "keyring"
    conf.write_text("[global]\n")
    keyring.write_text("")
    return str(conf), str(keyring)


def test_parse_rbd_clusters(conf_files: tuple[str, str]) -> None:
    conf, keyring = conf_files
    other = str(uuid.uuid4())
    value = f"{FSID.upper()}:{conf}:client.glance:{keyring},\n {other}:{conf}"
    clusters = RbdClusters.parse("rbd_clusters", value)
    assert clusters.get(FSID) == RbdCluster(conf, "glance", keyring)
    assert clusters.get(other) == RbdCluster(conf, "admin", None)
    assert clusters.get(str(uuid.uuid4())) is None and clusters.get(None) is None
    assert not RbdClusters.parse("rbd_clusters", "")


@pytest.mark.parametrize(
    "value, message",
    [
        pytest.param(f"{FSID}", "item 1", id="no-conf"),
        pytest.param("nope:{conf}", "'nope' is not a cluster fsid", id="fsid"),
        pytest.param(f"{FSID}:ceph.conf", "is not an absolute path", id="relative"),
        pytest.param(f"{FSID}:/nonexistent/ceph.conf", "is not a readable file", id="missing"),
        pytest.param(f"{FSID}:{{conf}}, {FSID}:{{conf}}", "listed twice", id="twice"),
        pytest.param(f"{FSID}:{{conf}}:u:{{keyring}}:extra", "item 1", id="too-many"),
    ],
)
def test_rbd_clusters_refused_at_load(conf_files: tuple[str, str], value: str, message: str) -> None:
    conf, keyring = conf_files
    with pytest.raises(ConfigError) as caught:
        load_filter_settings({}, {"rbd_clusters": value.format(conf=conf, keyring=keyring)})
    assert str(caught.value).startswith("rbd_clusters: ") and message in str(caught.value), str(caught.value)


def test_rbd_cluster_without_bindings_is_refused_at_load(conf_files: tuple[str, str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_bindings(name: str, *args: Any, **kwargs: Any) -> Any:
        if name in ("rados", "rbd"):
            raise ImportError(f"No module named '{name}'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_bindings)
    monkeypatch.setattr(guards, "require_rbd_bindings", REQUIRE_RBD_BINDINGS)
    with pytest.raises(ConfigError) as caught:
        load_filter_settings({}, {"rbd_clusters": f"{FSID}:{conf_files[0]}"})
    text = str(caught.value)
    assert text.startswith("rbd_clusters: the rados/rbd Python bindings are not importable"), text
    assert "python3-rados" in text and "python3-rbd" in text
    # Without a cluster the bindings are never needed.
    assert not dict(load_filter_settings({}, {}).readers)["rbd"].clusters


def test_s3_without_botocore_is_refused_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_botocore(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("botocore"):
            raise ImportError("No module named 'botocore'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_botocore)
    with pytest.raises(ConfigError) as caught:
        load_filter_settings({}, {"s3_credentials": f"h=AK:{SECRET}"})
    assert str(caught.value).startswith("s3_credentials: s3 locations need botocore") and \
        "locproxy[s3]" in str(caught.value)
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize(
    "options, message",
    [
        pytest.param({"rbd_default_cluster": FSID}, "set both", id="cluster-without-pool"),
        pytest.param({"rbd_default_cluster": FSID, "rbd_default_pool": "images"}, "is not in rbd_clusters",
                     id="unlisted-default"),
        pytest.param({"rbd_default_cluster": "x"}, "rbd_default_cluster: 'x' is not a cluster fsid", id="fsid"),
        pytest.param({"rbd_default_pool": "a/b"}, "rbd_default_pool: 'a/b' is not a name", id="pool"),
        pytest.param({"rbd_block_size": "0"}, "rbd_block_size: must be between", id="block"),
        pytest.param({"rbd_readahead": "0"}, "rbd_readahead: expected an integer >= 1", id="readahead"),
        pytest.param({"rbd_op_timeout": "-1"}, "rbd_op_timeout: expected a number of seconds", id="timeout"),
        pytest.param({"s3_default_scheme": "ftp"}, "s3_default_scheme: unknown value 'ftp'; valid choices: https, http",
                     id="scheme"),
    ],
)
def test_ceph_options_refused_at_load(options: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_filter_settings({}, options)
    assert message in str(caught.value), str(caught.value)


def test_parse_s3_credentials() -> None:
    value = f"127.0.0.1:7480/images=AK1:{SECRET}, 127.0.0.1=AK2:s2\n S3.example.org:443=AK3:s3"
    credentials = S3Credentials.parse("s3_credentials", value)
    assert credentials.find("127.0.0.1", 7480, "images") == S3Keys("AK1", SECRET)
    assert credentials.find("127.0.0.1", 7480, "other") == S3Keys("AK2", "s2")
    assert credentials.find("127.0.0.1", 9999, "images") == S3Keys("AK2", "s2")
    assert credentials.find("s3.example.org", 443, "b") == S3Keys("AK3", "s3")
    assert credentials.find("s3.example.org", 80, "b") is None
    assert "s2" not in repr(S3Credentials.parse("s3_credentials", "h=AK2:s2")), "repr shows the secret"


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
def test_s3_credentials_refused_without_showing_secrets(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_filter_settings({}, {"s3_credentials": value})
    text = str(caught.value)
    assert text.startswith("s3_credentials: ") and message in text, text
    assert SECRET not in text and "wJal" not in text, f"secret in {text!r}"


def offline_backends(**options: str) -> Backends:
    return Backends.from_settings(load_filter_settings({}, options))


@pytest.mark.parametrize(
    "url, reason",
    [
        pytest.param("s3://10.0.0.1:7480/b/k", "host not allowed", id="host"),
        pytest.param("s3://127.0.0.1:7481/b/k", "host not allowed", id="port"),
        pytest.param("s3+https://127.0.0.1/b/k", "host not allowed", id="default-port"),
        pytest.param("s3://127.0.0.1:7480/other/k", "no credentials for this host or bucket", id="bucket"),
        pytest.param("s3://127.0.0.1:7480/b", "invalid s3 URL (expected host/bucket/key)", id="invalid"),
        pytest.param(f"rbd://{FSID}/images/img/snap", "rbd locations not enabled (no rbd_clusters)", id="rbd-off"),
    ],
)
def test_refusals_need_no_network(url: str, reason: str) -> None:
    backends = offline_backends(allowed_hosts="127.0.0.1:7480", s3_credentials="127.0.0.1:7480/b=AK:SK",
                                s3_default_scheme="http")
    assert not backends.readable(url)
    with pytest.raises(BackendError) as caught:
        backends.open(url, 0, 10, None)
    assert caught.value.reason == reason


# -- the real cluster -------------------------------------------------------------------


def test_lab_skips_with_a_reason_when_it_cannot_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ceph, "missing_tools", lambda: ["ceph-osd", "rbd"])
    monkeypatch.setattr(ceph.os, "geteuid", lambda: 1000)
    with pytest.raises(ceph.CephUnavailable) as caught:
        ceph.ensure_packages()
    assert caught.value.reason == "Ceph tools missing (ceph-osd, rbd) and not root: cannot apt-get install"


@pytest.fixture(scope="module")
def rbd_url(ceph_lab: CephCluster) -> str:
    return ceph_lab.create_rbd_image("rbd-s3-img", DATA)


@pytest.fixture(scope="module")
def s3_object(ceph_lab: CephCluster) -> ceph.S3Object:
    return ceph_lab.put_s3_object("rbd-s3-images", "0a1b-img", DATA)


def lab_options(lab: CephCluster, **overrides: str) -> dict[str, str]:
    access, secret = lab.s3_keys()
    options = {
        "rbd_clusters": f"{lab.fsid}:{lab.conf}",
        "rbd_op_timeout": "3",
        "backend_connect_timeout": "3",
        "backend_read_timeout": "3",
        "allowed_hosts": lab.rgw_host,
        "s3_credentials": f"{lab.rgw_host}={access}:{secret}",
        "s3_default_scheme": "http",
    }
    options.update(overrides)
    return {name: value for name, value in options.items() if value is not None}


@pytest.fixture
def make_backends(ceph_lab: CephCluster) -> Iterator[Callable[..., Backends]]:
    made: list[Backends] = []

    def make(**overrides: Any) -> Backends:
        backends = Backends.from_settings(load_filter_settings({}, lab_options(ceph_lab, **overrides)))
        made.append(backends)
        return backends

    yield make
    for backends in made:
        backends.clear()


def read_all(stream: BackendStream) -> tuple[bytes, list[int]]:
    chunks = list(stream)
    return b"".join(chunks), [len(chunk) for chunk in chunks]


@pytest.mark.parametrize("start, length", RANGES)
def test_rbd_reads_exact_bytes(make_backends: Callable[..., Backends], rbd_url: str, start: int, length: int) -> None:
    with make_backends().open(rbd_url, start, length, SIZE) as stream:
        body, sizes = read_all(stream)
    assert body == DATA[start : start + length], f"bytes differ in {start}+{length}"
    assert max(sizes) == min(BLOCK, length), f"chunks not in whole blocks: {sizes}"


@pytest.mark.parametrize("form", ["url", "legacy_url"])
@pytest.mark.parametrize("start, length", RANGES)
def test_s3_reads_exact_bytes(make_backends: Callable[..., Backends], s3_object: ceph.S3Object, form: str,
                              start: int, length: int) -> None:
    backends = make_backends(s3_credentials=None) if form == "legacy_url" else make_backends()
    with backends.open(getattr(s3_object, form), start, length, SIZE) as stream:
        body, sizes = read_all(stream)
    assert body == DATA[start : start + length], f"bytes differ in {start}+{length}"
    assert max(sizes) == min(MiB, length), f"chunk sizes {sizes}"


def test_each_reader_is_served_by_its_backend(ceph_lab: CephCluster, make_backends: Callable[..., Backends],
                                              rbd_url: str, s3_object: ceph.S3Object) -> None:
    backends = make_backends()
    osd, rgw = ceph_lab.osd_read_bytes(), ceph_lab.rgw_read_bytes()
    with backends.open(rbd_url, 0, SIZE, SIZE) as stream:
        assert read_all(stream)[0] == DATA
    osd_rbd, rgw_rbd = ceph_lab.osd_read_bytes() - osd, ceph_lab.rgw_read_bytes() - rgw
    assert osd_rbd >= SIZE and rgw_rbd == 0, f"rbd read: OSD +{osd_rbd}, RGW +{rgw_rbd}"
    osd, rgw = ceph_lab.osd_read_bytes(), ceph_lab.rgw_read_bytes()
    with backends.open(s3_object.url, 0, SIZE, SIZE) as stream:
        assert read_all(stream)[0] == DATA
    osd_s3, rgw_s3 = ceph_lab.osd_read_bytes() - osd, ceph_lab.rgw_read_bytes() - rgw
    # RGW's get_b counts one byte less than it sends (ofs_end - ofs, inclusive end).
    assert SIZE - 1 <= rgw_s3 <= SIZE and osd_s3 >= SIZE, f"s3 read: OSD +{osd_s3}, RGW +{rgw_s3}"


def test_legacy_rbd_url_reads_the_default_pool(ceph_lab: CephCluster, make_backends: Callable[..., Backends]) -> None:
    data = DATA[: 5 * MiB + 1]
    ceph_lab.create_rbd_image("legacy-img", data)
    backends = make_backends(rbd_default_cluster=ceph_lab.fsid, rbd_default_pool="images")
    assert backend_label("rbd://legacy-img") == "rbd"
    with backends.open("rbd://legacy-img", 3, len(data) - 3, len(data)) as stream:
        assert read_all(stream)[0] == data[3:]


def test_unlisted_fsid_is_never_contacted(ceph_lab: CephCluster, make_backends: Callable[..., Backends],
                                          rbd_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import rados

    backends = make_backends()

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("librados was asked to connect")

    monkeypatch.setattr(rados, "Rados", refuse)
    unlisted = rbd_url.replace(ceph_lab.fsid, FSID)
    for url, reason in [
        (unlisted, "cluster not configured"),
        ("rbd://img", "legacy rbd URL and no rbd_default_cluster and rbd_default_pool"),
    ]:
        assert not backends.readable(url)
        with pytest.raises(BackendError) as caught:
            backends.open(url, 0, 10, SIZE)
        assert (caught.value.reason, caught.value.kind) == (reason, Failure.NOT_ALLOWED), url
    assert FSID not in connected_clusters(), "a cluster handle was made for the unlisted fsid"


@pytest.mark.parametrize(
    "change, reason",
    [
        pytest.param(("/images/", "/nopool/"), "pool: not found", id="pool"),
        pytest.param(("/rbd-s3-img/", "/nope/"), "image or snapshot: not found", id="image"),
        pytest.param(("/snap", "/nosnap"), "image or snapshot: not found", id="snapshot"),
    ],
)
def test_rbd_missing_things_fail_before_the_first_byte(make_backends: Callable[..., Backends], rbd_url: str,
                                                       change: tuple[str, str], reason: str) -> None:
    with pytest.raises(BackendError) as caught:
        make_backends().open(rbd_url.replace(*change), 0, 10, SIZE)
    assert (caught.value.reason, caught.value.kind) == (reason, Failure.MISSING)
    assert "rbd-s3-img" not in str(caught.value) and "nope" not in str(caught.value)


def test_rbd_size_mismatch_fails_before_the_first_byte(make_backends: Callable[..., Backends], rbd_url: str) -> None:
    with pytest.raises(BackendError) as caught:
        make_backends().open(rbd_url, 0, 10, SIZE + 1)
    assert caught.value.reason == f"size mismatch (image has {SIZE} bytes, expected {SIZE + 1})"


@pytest.mark.parametrize(
    "keys, reason",
    [
        pytest.param("wrong-secret", "HTTP 403 (SignatureDoesNotMatch)", id="secret"),
        pytest.param("unknown-access", "HTTP 403 (InvalidAccessKeyId)", id="access"),
    ],
)
def test_s3_bad_credentials_fail_before_the_first_byte(ceph_lab: CephCluster, make_backends: Callable[..., Backends],
                                                       s3_object: ceph.S3Object, keys: str, reason: str) -> None:
    access, secret = ceph_lab.s3_keys()
    bad = (access, secret[::-1]) if keys == "wrong-secret" else ("LPNOSUCHKEY0", secret)
    backends = make_backends(s3_credentials=f"{ceph_lab.rgw_host}={bad[0]}:{bad[1]}")
    with pytest.raises(BackendError) as caught:
        backends.open(s3_object.url, 0, SIZE, SIZE)
    assert (caught.value.reason, caught.value.label) == (reason, f"s3://{ceph_lab.rgw_host}")


def test_s3_missing_object_fails_before_the_first_byte(make_backends: Callable[..., Backends],
                                                       s3_object: ceph.S3Object) -> None:
    with pytest.raises(BackendError) as caught:
        make_backends().open(s3_object.url + "-nope", 0, 10, None)
    assert caught.value.reason == "HTTP 404 (NoSuchKey)"


def fail_mid_stream(stream: BackendStream, outage: Callable[[], None]) -> tuple[BackendError, int, float]:
    """Read one chunk, cause the outage, read on: (error, bytes before it, seconds from outage to error)."""
    chunks = iter(stream)
    received = len(next(chunks))
    outage()
    started = time.monotonic()
    with pytest.raises(BackendError) as caught:
        for chunk in chunks:
            received += len(chunk)
    return caught.value, received, time.monotonic() - started


def test_osd_stop_mid_stream_fails_in_bounded_time_then_resumes(ceph_lab: CephCluster,
                                                                make_backends: Callable[..., Backends],
                                                                rbd_url: str) -> None:
    backends = make_backends(rbd_op_timeout="3", rbd_readahead="1")
    try:
        with backends.open(rbd_url, 0, SIZE, SIZE) as stream:
            error, received, seconds = fail_mid_stream(stream, lambda: ceph_lab.stop(OSD_NAME))
        assert 0 < received < SIZE and error.reason.endswith(f"at byte {received}"), (error.reason, received)
        assert error.kind is Failure.TIMEOUT, error.reason
        assert seconds < 3 + 5 + 5, f"took {seconds:.1f} s to fail"
    finally:
        ceph_lab.start(OSD_NAME)
    # Resume where it broke, on the same pooled cluster handle.
    with backends.open(rbd_url, received, SIZE - received, SIZE) as stream:
        assert read_all(stream)[0] == DATA[received:], "resumed bytes differ"


def test_hung_osd_fails_stream_and_open_in_bounded_time(ceph_lab: CephCluster, make_backends: Callable[..., Backends],
                                                        rbd_url: str) -> None:
    backends = make_backends(rbd_op_timeout="2", rbd_readahead="1")
    stream = backends.open(rbd_url, 0, SIZE, SIZE)
    try:
        error, received, seconds = fail_mid_stream(stream, lambda: ceph_lab.send_signal(OSD_NAME, signal.SIGSTOP))
        assert error.reason == f"timeout at byte {received}", error.reason
        assert seconds < 2 + 5 + 5, f"stream took {seconds:.1f} s to fail"
        started = time.monotonic()
        with pytest.raises(BackendError) as caught:
            backends.open(rbd_url, 0, 10, SIZE)
        seconds = time.monotonic() - started
        assert caught.value.kind is Failure.TIMEOUT and seconds < 2 + 5, (caught.value.reason, seconds)
    finally:
        stream.close()
        ceph_lab.send_signal(OSD_NAME, signal.SIGCONT)
    with backends.open(rbd_url, received, 10, SIZE) as stream:
        assert read_all(stream)[0] == DATA[received : received + 10]


def test_unreachable_mon_fails_connect_in_bounded_time(ceph_lab: CephCluster, tmp_path: Path) -> None:
    conf = tmp_path / "ceph.conf"
    port = ceph.free_port()  # nothing listens there
    conf.write_text(
        f"[global]\nfsid = {FSID}\nmon host = [v2:127.0.0.1:{port}]\nauth client required = none\n"
        f"log file = {tmp_path}/client.log\nadmin socket = \n"
    )
    backends = Backends.from_settings(load_filter_settings({}, {
        "rbd_clusters": f"{FSID}:{conf}", "backend_connect_timeout": "2", "rbd_op_timeout": "2"}))
    started = time.monotonic()
    with pytest.raises(BackendError) as caught:
        backends.open(f"rbd://{FSID}/images/img/snap", 0, 10, None)
    seconds = time.monotonic() - started
    assert (caught.value.reason, caught.value.kind) == ("connect failed: timeout", Failure.CONNECT_TIMEOUT)
    assert seconds < 2 + 5, f"connect took {seconds:.1f} s to fail"
    assert FSID not in connected_clusters()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["term", "kill"])
def test_rgw_stop_mid_stream_fails_in_bounded_time_then_resumes(ceph_lab: CephCluster,
                                                                make_backends: Callable[..., Backends],
                                                                s3_object: ceph.S3Object, sig: int) -> None:
    backends = make_backends()
    try:
        with backends.open(s3_object.url, 0, SIZE, SIZE) as stream:
            error, received, seconds = fail_mid_stream(stream, lambda: ceph_lab.stop(RGW_NAME, sig))
        assert 0 < received < SIZE and error.reason.endswith(f"at byte {received}"), (error.reason, received)
        assert seconds < 3 + 5, f"took {seconds:.1f} s to fail"
    finally:
        ceph_lab.start(RGW_NAME)
    with backends.open(s3_object.url, received, SIZE - received, SIZE) as stream:
        assert read_all(stream)[0] == DATA[received:], "resumed bytes differ"


def test_no_credentials_in_logs_or_errors(ceph_lab: CephCluster, make_backends: Callable[..., Backends],
                                          s3_object: ceph.S3Object, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    access, secret = ceph_lab.s3_keys()
    errors: list[str] = []
    for backends, url in [
        (make_backends(), s3_object.url),
        (make_backends(s3_credentials=None), s3_object.legacy_url),
        (make_backends(s3_credentials=f"{ceph_lab.rgw_host}={access}:{secret[::-1]}"), s3_object.url),
        (make_backends(s3_credentials=None), s3_object.legacy_url.replace(s3_object.bucket, "nobucket")),
    ]:
        try:
            with backends.open(url, 5, 1000, SIZE) as stream:
                assert read_all(stream)[0] == DATA[5:1005]
        except BackendError as error:
            errors.append(f"{error} {error.label} {error.reason}")
    assert len(errors) == 2, errors
    assert any(record.name.startswith("locproxy.download.backends") for record in caplog.records), "no DEBUG log"
    logged = caplog.text + " ".join(errors) + " ".join(map(str, (r.args for r in caplog.records)))
    for secret_text in (access, secret, quote(secret, safe=""), secret[::-1], "Signature="):
        assert secret_text not in logged, f"{secret_text[:4]}… appears in logs or errors"
