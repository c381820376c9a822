"""The swift reader alone on the real thing: radosgw speaking Swift with
Keystone trust (``tests/support/swiftlab.py``), objects written as Glance's
swift store writes them (a plain object; a DLO: segments ``<name>-00001``...
and a 0-byte manifest with ``X-Object-Manifest``), read through
``Backends`` with a references file.

Skips with the lab's reason where Ceph or Keystone cannot run.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Iterator

import pytest

from locproxy.config import configured_backends
from locproxy.download.backends import BackendError, Backends, BackendStream
from locproxy.download.backends.swift_auth import LOGINS
from tests.support.ceph import CephCluster
from tests.support.keystone.lab import KeystoneLab
from tests.support.swiftlab import STORE_PASSWORD, SwiftGateway, swift_gateway_or_skip

pytestmark = pytest.mark.integration

SEGMENT = 1_000_003  # odd, so blocks and segments never line up
DATA = os.urandom(4 * SEGMENT + 12345)
PLAIN = os.urandom(3 * 1024 * 1024 + 1)


@pytest.fixture(scope="module")
def swift(ceph_lab: CephCluster, keystone_lab: KeystoneLab) -> Iterator[SwiftGateway]:
    with swift_gateway_or_skip(ceph_lab, keystone_lab) as lab:
        put(lab, "/reader", b"")
        put(lab, "/reader/plain", PLAIN)
        for n, offset in enumerate(range(0, len(DATA), SEGMENT), 1):
            put(lab, f"/reader/dlo-{n:05d}", DATA[offset:offset + SEGMENT])
        put(lab, "/reader/dlo", b"", {"X-Object-Manifest": "reader/dlo-"})
        yield lab


def put(swift: SwiftGateway, path: str, body: bytes, headers: dict[str, str] | None = None) -> None:
    status, _, text = swift.request("PUT", path, body=body, headers={"Content-Length": str(len(body)),
                                                                      **(headers or {})})
    assert status in (201, 202), (path, status, text[:200])


def backends(swift: SwiftGateway, **options: str) -> Backends:
    return configured_backends(**{"allowed_hosts": swift.host, "swift_store_config_file": str(swift.references_file),
                                 "backend_first_byte_timeout": "5", "backend_read_timeout": "5",
                                 "swift_block_size": "300000", **options})


def read(stream: BackendStream) -> bytes:
    with stream:
        return b"".join(stream)


@pytest.mark.parametrize("readers", ["4", "1"])
@pytest.mark.parametrize("start, length", [(0, len(DATA)), (SEGMENT - 10, 20), (SEGMENT - 1, 2 * SEGMENT + 2),
                                           (len(DATA) - 100, 100), (12345, 300000), (3 * SEGMENT, SEGMENT)])
def test_dlo_reads_are_exact_across_segments(swift: SwiftGateway, readers: str, start: int, length: int) -> None:
    reader = backends(swift, swift_segment_readers=readers)
    assert read(reader.open("swift+config://ref1/reader/dlo", start, length, len(DATA))) == \
        DATA[start:start + length]


@pytest.mark.parametrize("start, length", [(0, len(PLAIN)), (1, 10), (len(PLAIN) - 1, 1)])
def test_plain_reads_are_exact(swift: SwiftGateway, start: int, length: int) -> None:
    stream = backends(swift).open("swift+config://ref1/reader/plain", start, length, len(PLAIN))
    assert read(stream) == PLAIN[start:start + length]


def test_segments_are_read_in_parallel_ranged_gets(swift: SwiftGateway) -> None:
    mark = swift.log_mark()
    assert read(backends(swift).open("swift+config://ref1/reader/dlo", 0, len(DATA), len(DATA))) == DATA
    lines = swift.log_lines(mark, agent="locproxy")
    gets = [line for line in lines if '"GET /swift/v1/' in line and "/reader/dlo-" in line]
    assert len(gets) >= 5 * 3, lines  # blocks of 300,000 bytes within five segments
    assert not any('"GET /swift/v1/' in line and "/reader/dlo " in line for line in lines), "not the manifest"


def test_many_streams_share_few_connections(swift: SwiftGateway) -> None:
    """Three DLO reads at once, read in turn, on a pool of 2 connections per
    host: read-ahead shrinks, nothing waits out a pool timeout, all exact."""
    reader = backends(swift, backend_pool_maxsize="2")
    streams = [reader.open("swift+config://ref1/reader/dlo", start, len(DATA) - start, len(DATA))
               for start in (0, 7, SEGMENT + 3)]
    iterators = [iter(stream) for stream in streams]
    got: list[list[bytes]] = [[], [], []]
    try:
        while any(iterators):
            for n, iterator in enumerate(iterators):
                if iterator is not None:
                    chunk = next(iterator, None)
                    if chunk is None:
                        iterators[n] = None  # type: ignore[call-overload]
                    else:
                        got[n].append(chunk)
    finally:
        for stream in streams:
            stream.close()
    for n, start in enumerate((0, 7, SEGMENT + 3)):
        assert b"".join(got[n]) == DATA[start:]


def test_a_wrong_size_or_a_missing_segment_is_refused_before_the_first_byte(swift: SwiftGateway) -> None:
    reader = backends(swift)
    with pytest.raises(BackendError, match=rf"segments hold {len(DATA)} bytes, expected {len(DATA) + 1}"):
        reader.open("swift+config://ref1/reader/dlo", 0, len(DATA) + 1, len(DATA) + 1)
    one_get = backends(swift, swift_segment_readers="1")
    with pytest.raises(BackendError, match="Content-Length mismatch"):
        one_get.open("swift+config://ref1/reader/dlo", 0, len(DATA) + 1, len(DATA) + 1)
    with pytest.raises(BackendError, match="HTTP 404"):
        reader.open("swift+config://ref1/reader/absent", 0, 10, 10)


def test_the_token_is_kept_and_a_refused_one_renewed(swift: SwiftGateway, keystone_lab: KeystoneLab) -> None:
    """Many reads, one login; the token revoked before radosgw saw it: the
    storage's 401 makes the reader log in once more, and the read succeeds."""
    reader = backends(swift)
    label = "swift+config://ref1"
    before = LOGINS.labels(label)._value.get()
    for _ in range(5):
        assert read(reader.open("swift+config://ref1/reader/plain", 0, 100, len(PLAIN))) == PLAIN[:100]
    assert LOGINS.labels(label)._value.get() == before + 1
    swift_reader = reader.readers["swift"]
    login = swift_reader._login(swift_reader._parse("swift+config://ref1/reader/plain", label), label)
    swift_reader.logins.invalidate(login)
    token, _ = swift_reader.logins.token(login, label)  # a new token radosgw has never seen...
    keystone_lab.revoke(token)  # ...revoked: radosgw answers it 401
    assert read(reader.open("swift+config://ref1/reader/plain", 0, 100, len(PLAIN))) == PLAIN[:100]
    assert LOGINS.labels(label)._value.get() == before + 3


def test_a_token_about_to_expire_is_renewed_before_it_does(swift: SwiftGateway, keystone_lab: KeystoneLab) -> None:
    """Keystone tokens of 125 s: keystoneauth renews within 120 s of the
    expiry, so after 6 s the next read logs in first (Keystone's access log
    counts it), and reads on."""
    keystone_lab.restart({"token": {"expiration": "125"}})
    try:
        reader = backends(swift)
        before, logins = keystone_lab.server.token_requests(), LOGINS.labels("swift+config://ref1")._value.get()
        assert read(reader.open("swift+config://ref1/reader/plain", 0, 100, len(PLAIN))) == PLAIN[:100]
        assert read(reader.open("swift+config://ref1/reader/plain", 0, 100, len(PLAIN))) == PLAIN[:100]
        first = keystone_lab.server.token_requests()
        time.sleep(6)
        assert read(reader.open("swift+config://ref1/reader/plain", 100, 100, len(PLAIN))) == PLAIN[100:200]
        renewed = keystone_lab.server.token_requests()
    finally:
        keystone_lab.restart({})
    assert first - before >= 1 and renewed - first >= 1, (before, first, renewed)
    assert LOGINS.labels("swift+config://ref1")._value.get() == logins + 2  # the first, and the one renewal


def test_bad_credentials_and_unlisted_hosts(swift: SwiftGateway) -> None:
    bad = backends(swift, swift_store_config_file=str(swift.write_references(key="wrong")))
    with pytest.raises(BackendError, match="Keystone refused the swift credentials"):
        bad.open("swift+config://ref1/reader/plain", 0, 10, len(PLAIN))
    mark = swift.log_mark()
    elsewhere = backends(swift, allowed_hosts="127.0.0.1:1")
    with pytest.raises(BackendError, match="storage host not allowed"):
        elsewhere.open("swift+config://ref1/reader/plain", 0, 10, len(PLAIN))
    assert swift.log_lines(mark, agent="locproxy") == []


def test_no_key_or_token_in_debug_logs(swift: SwiftGateway, caplog: pytest.LogCaptureFixture) -> None:
    """DEBUG everywhere (locproxy, keystoneauth, urllib3): a login and reads
    log neither the key nor the token."""
    caplog.set_level(logging.DEBUG)
    reader = backends(swift)
    assert read(reader.open("swift+config://ref1/reader/dlo", 0, len(DATA), len(DATA))) == DATA
    swift_reader = reader.readers["swift"]
    label = "swift+config://ref1"
    token, _ = swift_reader.logins.token(swift_reader._login(swift_reader._parse(
        "swift+config://ref1/reader/dlo", label), label), label)
    assert "new Keystone token" in caplog.text and "GET swift+config://ref1" in caplog.text
    assert STORE_PASSWORD not in caplog.text and token not in caplog.text
