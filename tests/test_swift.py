"""The swift reader without a Swift: URL forms, the references file, what is
refused without any I/O, and that keys never show."""

from __future__ import annotations

from pathlib import Path

import pytest

from locproxy.config import configured_backends, load_filter_settings
from locproxy.download.backends import BackendError
from locproxy.options import ConfigError
from locproxy.swift_locations import SwiftReferences, SwiftURL, keystone_v3, parse_swift_url
from locproxy.urls import backend_label

IMAGE = "0b5a0e6e-1b1c-4f7e-9b0f-0c2f0f6d8a11"
KEY = "s3cr3t/+=key"


@pytest.mark.parametrize(
    "url, expected",
    [
        pytest.param(f"swift+config://ref1/glance/{IMAGE}", SwiftURL("glance", IMAGE, reference="ref1"), id="config"),
        pytest.param(f"swift+http://service%3Aswiftglance:pw@127.0.0.1:5000/v3/glance/{IMAGE}",
                     SwiftURL("glance", IMAGE, auth_url="http://127.0.0.1:5000/v3", user="service:swiftglance",
                              key="pw"), id="inline"),
        pytest.param(f"swift://service%3Aglance:{KEY.replace('/', '%2F')}@keystone.example.org/glance/{IMAGE}",
                     SwiftURL("glance", IMAGE, auth_url="https://keystone.example.org", user="service:glance",
                              key=KEY), id="inline-https"),
        pytest.param(f"swift+http://127.0.0.1:7480/swift/v1/AUTH_abc/glance_{IMAGE}/{IMAGE}",
                     SwiftURL(f"glance_{IMAGE}", IMAGE, storage_url="http://127.0.0.1:7480/swift/v1/AUTH_abc"),
                     id="multi-tenant"),
    ],
)
def test_parse_swift_url(url: str, expected: SwiftURL) -> None:
    assert parse_swift_url(url) == expected


@pytest.mark.parametrize(
    "url, message",
    [
        pytest.param("swift+config://ref1/glance", "expected host/container/object", id="short"),
        pytest.param("swift+config://ref1/x/glance/o", "reference/container/object only", id="config-path"),
        pytest.param("swift+config://u:k@ref1/glance/o", "reference/container/object only", id="config-creds"),
        pytest.param("swift+http://a@b@host/c/o", "more than one '@'", id="two-at"),
        pytest.param("swift+http://nokey@host/c/o", "user:key", id="no-key"),
        pytest.param("swift+http://host:99999/c/o", "invalid host or port", id="port"),
        pytest.param("swift+http://host/c/o?x", "query", id="query"),
        pytest.param("s3://host/c/o", "not a swift", id="scheme"),
    ],
)
def test_parse_swift_url_refuses_without_quoting(url: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_swift_url(url)
    assert message in str(caught.value)
    assert "host" not in str(caught.value).replace("host/container", "").replace("host or port", "").replace(
        "invalid host", "")


def test_keys_never_in_repr_or_labels() -> None:
    url = f"swift+http://service%3Aglance:{KEY.replace('/', '%2F')}@127.0.0.1:5000/v3/glance/{IMAGE}"
    assert "s3cr3t" not in repr(parse_swift_url(url))
    assert backend_label(url) == "swift+http://127.0.0.1:5000"
    assert backend_label(f"swift+config://ref1/glance/{IMAGE}") == "swift+config://ref1"
    assert keystone_v3("http://k:5000") == keystone_v3("http://k:5000/v3/") == "http://k:5000/v3"


def write_refs(tmp_path: Path, text: str) -> str:
    path = tmp_path / "glance-swift.conf"
    path.write_text(text)
    return str(path)


REFS = """
[ref1]
auth_address = http://127.0.0.1:5000
user = service:swiftglance
key = "pa:ss"
user_domain_id = default
project_domain_id = default

[ref2]
auth_address = 'http://127.0.0.1:5000/v3'
user = other:reader
key = k2
auth_version = 3
"""


def test_references_file_as_glance_reads_it(tmp_path: Path) -> None:
    refs = SwiftReferences.parse("swift_store_config_file", write_refs(tmp_path, REFS))
    ref1, ref2 = refs.get("ref1"), refs.get("ref2")
    assert ref1 is not None and ref2 is not None and refs.get("ref3") is None
    login1, login2 = ref1.login, ref2.login
    assert (login1.auth_url, login1.project, login1.user, login1.key) == ("http://127.0.0.1:5000/v3", "service",
                                                                          "swiftglance", "pa:ss")
    assert (login2.auth_url, login2.project, login2.user_domain_id, login2.project_domain_id) == (
        "http://127.0.0.1:5000/v3", "other", "default", "default")
    assert "pa:ss" not in repr(refs)


@pytest.mark.parametrize(
    "text, message",
    [
        pytest.param("", "has no reference section", id="empty"),
        pytest.param("[r]\nuser = a:b\nkey = k\n", "section [r]: auth_address is required", id="no-auth"),
        pytest.param("[r]\nauth_address = http://k\nuser = ab\nkey = secretvalue\n", "user must be project:user",
                     id="user"),
        pytest.param("[r]\nauth_address = ftp://k\nuser = a:b\nkey = secretvalue\n", "auth_address", id="url"),
        pytest.param("[r]\nauth_address = http://k\nuser = a:b\nkey = secretvalue\nauth_version = 2\n",
                     "only Keystone v3", id="v2"),
        pytest.param("not ini", "cannot read", id="garbage"),
    ],
)
def test_bad_references_file_fails_at_load(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_filter_settings({}, {"swift_store_config_file": write_refs(tmp_path, text)})
    assert message in str(caught.value) and "swift_store_config_file" in str(caught.value)
    assert "secretvalue" not in str(caught.value)


def test_missing_references_file_fails_at_load(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="swift_store_config_file: cannot read"):
        load_filter_settings({}, {"swift_store_config_file": str(tmp_path / "absent.conf")})


def test_without_keystoneauth_swift_is_refused_at_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from locproxy.download.backends import swift

    monkeypatch.setattr(swift, "keystoneauth_available", lambda: False)
    with pytest.raises(ConfigError, match=r"swift_store_config_file: .*pip install"):
        load_filter_settings({}, {"swift_store_config_file": write_refs(tmp_path, REFS)})


@pytest.mark.parametrize(
    "url, reason",
    [
        pytest.param(f"swift+config://ref9/glance/{IMAGE}", "swift reference not in swift_store_config_file",
                     id="unknown-ref"),
        pytest.param(f"swift+http://a%3Ab:k@10.0.0.1:5000/v3/glance/{IMAGE}", "Keystone host not allowed",
                     id="keystone-host"),
        pytest.param(f"swift+http://ab:k@127.0.0.1:5000/v3/glance/{IMAGE}",
                     "invalid swift URL (user is not project:user)", id="user"),
        pytest.param(f"swift+http://127.0.0.1:7480/swift/v1/AUTH_p/glance_{IMAGE}/{IMAGE}",
                     "multi-tenant swift copy: storage host not in swift_multi_tenant_hosts", id="multi-tenant"),
        pytest.param("swift+config://ref1/glance", "invalid swift URL (expected host/container/object)", id="bad"),
    ],
)
def test_refusals_need_no_network(tmp_path: Path, url: str, reason: str) -> None:
    backends = configured_backends(allowed_hosts="127.0.0.1", swift_store_config_file=write_refs(tmp_path, REFS))
    assert not backends.readable(url)
    with pytest.raises(BackendError) as caught:
        backends.open(url, 0, 10, None)
    assert caught.value.reason == reason


def test_storage_endpoint_outside_allowed_hosts_is_refused_without_io(tmp_path: Path) -> None:
    backends = configured_backends(allowed_hosts="127.0.0.1:5000", swift_store_endpoint="http://10.9.9.9:7480/swift/v1",
                                  swift_store_config_file=write_refs(tmp_path, REFS))
    assert not backends.readable(f"swift+config://ref1/glance/{IMAGE}")
    allowed = configured_backends(allowed_hosts="127.0.0.1", swift_store_endpoint="http://127.0.0.1:7480/swift/v1",
                                 swift_store_config_file=write_refs(tmp_path, REFS))
    assert allowed.readable(f"swift+config://ref1/glance/{IMAGE}")


@pytest.mark.parametrize("url", ["swift+https://tenant:Sekr1t@keystone.example/v3/container/obj",
                                 "swift://account:Sekr1t@auth/container/obj",
                                 "swift+http://a%3Ab:Sekr1t@10.1.1.1:1/v3/c/o"])
def test_refused_inline_keys_never_show(url: str) -> None:
    backends = configured_backends(allowed_hosts="127.0.0.1")
    assert not backends.readable(url)
    with pytest.raises(BackendError) as caught:
        backends.open(url, 0, 10, 10)
    assert "Sekr1t" not in str(caught.value) and "tenant" not in str(caught.value)


@pytest.mark.parametrize("start, length", [(0, 25), (9, 2), (10, 10), (3, 19), (24, 1)])
def test_blocks_cover_the_span_within_segments(start: int, length: int) -> None:
    from locproxy.download.backends.swift_segments import Segment, _blocks

    segments = [Segment(f"/s{n}", size, "") for n, size in enumerate((10, 10, 5))]
    blocks = list(_blocks(segments, start, length, block_size=4))
    assert all(0 < size <= 4 and offset + size <= segment.size for segment, offset, size in blocks)
    data = b"".join(bytes(range(n * 10, n * 10 + s.size)) for n, s in enumerate(segments))
    got = b"".join(bytes(range(segments.index(seg) * 10 + off, segments.index(seg) * 10 + off + size))
                   for seg, off, size in blocks)
    assert got == data[start:start + length]


def test_a_failed_login_is_not_retried_at_once(tmp_path: Path) -> None:
    """A Keystone that accepts and never answers: the first download waits
    out the timeout, the next ones within RETRY_AFTER fall back at once."""
    import threading
    import time

    from tests.support.servers import serve_raw_http_in_thread

    released = threading.Event()

    def hang(head: bytes, sock: object) -> bool:
        released.wait(5)
        return False

    with serve_raw_http_in_thread(hang) as url:
        refs = write_refs(tmp_path, f"[ref1]\nauth_address = {url}/v3\nuser = p:u\nkey = secretvalue\n")
        backends = configured_backends(allowed_hosts="127.0.0.1", swift_store_config_file=refs,
                                       backend_first_byte_timeout="1")
        try:
            started = time.monotonic()
            with pytest.raises(BackendError, match="Keystone unreachable") as first:
                backends.open(f"swift+config://ref1/glance/{IMAGE}", 0, 10, 10)
            waited = time.monotonic() - started
            started = time.monotonic()
            with pytest.raises(BackendError, match=r"Keystone unreachable .*\(not retried yet\)"):
                backends.open(f"swift+config://ref1/glance/{IMAGE}", 0, 10, 10)
            again = time.monotonic() - started
        finally:
            released.set()
    assert waited >= 0.9 and again < 0.2, (waited, again, first.value.reason)
    assert "secretvalue" not in str(first.value)
