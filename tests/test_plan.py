"""``plan_download`` (pure): what a download will be, from the image the
upstream showed this client and the request."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from locproxy.download.plan import Refusal, expected_digest, plan_download
from locproxy.strategies import Selector

DATA = b"0123456789" * 100
SHA512 = hashlib.sha512(DATA).hexdigest()


def image(**changes: Any) -> dict:
    base = {"id": "img", "status": "active", "size": len(DATA), "checksum": hashlib.md5(DATA).hexdigest(),
            "os_hash_algo": "sha512", "os_hash_value": SHA512,
            "locations": [{"url": "file:///a/img", "metadata": {"store": "fs"}},
                          {"url": "http://web/img", "metadata": {"store": "web"}},
                          {"url": "rbd://f/p/i/s", "metadata": {"store": "ceph"}},
                          {"url": "http://web/gone", "metadata": {"store": "web"}, "status": "pending_delete"}]}
    return {**base, **changes}


def planned(shown: dict, method: str = "GET", range_header: str | None = None, prefer: tuple[str, ...] = (),
            demoted: tuple[str, ...] = ()) -> Any:
    return plan_download(shown, method=method, range_header=range_header,
                         selector=Selector("store_type", store_type_preference="http, file"), prefer=prefer,
                         readable=lambda url: not url.startswith("rbd:"),
                         demoted=lambda backend, copy: backend in demoted)


def test_a_whole_download() -> None:
    plan = planned(image())
    assert (plan.status, plan.start, plan.end, plan.whole_image, plan.head_only) == (200, 0, len(DATA), True, False)
    assert dict(plan.headers) == {"Content-Type": "application/octet-stream", "Content-Length": str(len(DATA)),
                                  "Accept-Ranges": "bytes", "Content-MD5": hashlib.md5(DATA).hexdigest()}
    assert plan.digest == ("sha512", SHA512)
    assert [c.url for c in plan.candidates] == ["http://web/img", "file:///a/img"], \
        "the strategy's order, only what may be read, never an inactive copy"


@pytest.mark.parametrize("header, status, span, content_range", [
    pytest.param("bytes=10-19", 206, (10, 20), f"bytes 10-19/{len(DATA)}", id="range"),
    pytest.param("bytes=-5", 206, (len(DATA) - 5, len(DATA)), f"bytes {len(DATA) - 5}-{len(DATA) - 1}/{len(DATA)}",
                 id="suffix"),
])
def test_a_range(header: str, status: int, span: tuple[int, int], content_range: str) -> None:
    plan = planned(image(), range_header=header)
    assert (plan.status, (plan.start, plan.end)) == (status, span)
    headers = dict(plan.headers)
    assert headers["Content-Range"] == content_range and "Content-MD5" not in headers
    assert plan.digest == ("sha512", SHA512), "the image's digest: a fingerprint may check a range"


def test_unsatisfiable_range_is_a_416_refusal() -> None:
    refusal = planned(image(), range_header=f"bytes={len(DATA)}-")
    assert isinstance(refusal, Refusal) and refusal.status == 416
    assert refusal.headers == {"Content-Range": f"bytes */{len(DATA)}"}


@pytest.mark.parametrize("changes", [
    pytest.param({"status": "queued"}, id="not-active"),
    pytest.param({"status": "deactivated"}, id="deactivated"),
    pytest.param({"size": 0}, id="no-data"),
    pytest.param({"size": None}, id="size-unknown"),
    pytest.param({"size": True}, id="size-not-a-number"),
])
def test_what_the_upstream_decides(changes: dict) -> None:
    assert planned(image(**changes)) is None


def test_prefer_and_demotion_order_the_candidates() -> None:
    assert [c.url for c in planned(image(), prefer=("fs",)).candidates] == ["file:///a/img", "http://web/img"]
    demoted = planned(image(), demoted=("http://web",))
    assert [c.url for c in demoted.candidates] == ["file:///a/img", "http://web/img"], "demoted: last"


def test_direct_url_alone_is_a_candidate() -> None:
    shown = image(locations=None, direct_url="http://web/img")
    del shown["locations"]
    assert [c.url for c in planned(shown).candidates] == ["http://web/img"]


@pytest.mark.parametrize("shown, digest", [
    pytest.param({"os_hash_algo": "sha512", "os_hash_value": "ab"}, ("sha512", "ab"), id="os-hash"),
    pytest.param({"os_hash_algo": "SHA512", "os_hash_value": "ab"}, ("sha512", "ab"), id="os-hash-case"),
    pytest.param({"os_hash_algo": "nosuch", "os_hash_value": "ab", "checksum": "cd"}, ("md5", "cd"),
                 id="unknown-algorithm-md5"),
    pytest.param({"os_hash_algo": "sha512", "os_hash_value": "abc", "checksum": "cd"}, ("md5", "cd"),
                 id="odd-hex-md5"),
    pytest.param({}, None, id="none"),
])
def test_expected_digest(shown: dict, digest: Any) -> None:
    assert expected_digest(shown) == digest
