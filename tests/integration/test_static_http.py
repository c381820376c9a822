"""The loopback web server of the ``web`` (http) store
(``tests.support.glance.web``): ranges and confinement.

These need no Glance, so they are not marked ``integration``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.client import http_request
from tests.support.glance.web import StaticHTTPServer

DATA = b"0123456789"


@pytest.fixture
def web(tmp_path: Path):
    with StaticHTTPServer(tmp_path / "root") as server:
        yield server


@pytest.mark.parametrize(
    "header, span",
    [
        pytest.param("bytes=0-0", (0, 0), id="first-byte"),
        pytest.param("bytes=2-", (2, 9), id="open-end"),
        pytest.param("bytes=5-100", (5, 9), id="end-clamped"),
        pytest.param("bytes=-3", (7, 9), id="suffix"),
        pytest.param("bytes=-30", (0, 9), id="suffix-longer-than-file"),
        pytest.param("bytes=10-", None, id="start-past-end"),
        pytest.param("bytes=-0", None, id="empty-suffix"),
        # One Range parser in the tree (locproxy.ranges): an end before the
        # start is unsatisfiable, not ignored (RFC 9110 allows either).
        pytest.param("bytes=5-2", None, id="end-before-start"),
    ],
)
def test_static_server_serves_one_range(web: StaticHTTPServer, header: str, span: tuple[int, int] | None) -> None:
    """``span``: the inclusive (first, last) byte served with 206; None: 416."""
    response = http_request(web.put("a.raw", DATA), headers={"Range": header})
    if span is None:
        assert (response.status, response.header("Content-Range"), response.body) == (416, "bytes */10", b"")
    else:
        first, last = span
        assert (response.status, response.header("Content-Range"), response.body) == \
            (206, f"bytes {first}-{last}/10", DATA[first:last + 1])


@pytest.mark.parametrize("header", ["bytes=1-2,4-5", "items=0-1", "bytes=-"])
def test_static_server_ignores_a_range_it_does_not_serve(web: StaticHTTPServer, header: str) -> None:
    response = http_request(web.put("a.raw", DATA), headers={"Range": header})
    assert (response.status, response.header("Content-Range"), response.body) == (200, None, DATA)


def test_static_server_serves_ranges(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("outside the root")
    with StaticHTTPServer(tmp_path / "root") as web:
        url = web.put("a.raw", DATA)
        full = http_request(url)
        part = http_request(url, headers={"Range": "bytes=-3"})
        head = http_request(url, "HEAD")
        bad = http_request(url, headers={"Range": "bytes=10-"})
        missing = http_request(web.url + "/nope")
        escape = http_request(web.url + "/../secret.txt")
    assert (full.status, full.body, full.header("Content-Length")) == (200, b"0123456789", "10")
    assert (part.status, part.body, part.header("Content-Range")) == (206, b"789", "bytes 7-9/10")
    assert (head.status, head.body, head.header("Content-Length")) == (200, b"", "10")
    assert (bad.status, bad.header("Content-Range")) == (416, "bytes */10")
    assert missing.status == 404
    assert escape.status == 404
    assert [r[0] for r in web.requests] == ["GET", "GET", "HEAD", "GET", "GET", "GET"]
