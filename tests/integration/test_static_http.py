"""The loopback web server of the ``web`` (http) store: ranges and confinement.

These need no Glance, so they are not marked ``integration``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from glance_env import http_request
from static_http import StaticHTTPServer, parse_range


@pytest.mark.parametrize(
    "header, size, expected",
    [
        pytest.param("bytes=0-0", 10, (0, 0), id="first-byte"),
        pytest.param("bytes=2-", 10, (2, 9), id="open-end"),
        pytest.param("bytes=5-100", 10, (5, 9), id="end-clamped"),
        pytest.param("bytes=-3", 10, (7, 9), id="suffix"),
        pytest.param("bytes=-30", 10, (0, 9), id="suffix-longer-than-file"),
        pytest.param("bytes=10-", 10, None, id="start-past-end"),
        pytest.param("bytes=-0", 10, None, id="empty-suffix"),
    ],
)
def test_static_server_parse_range(header: str, size: int, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, size) == expected


@pytest.mark.parametrize("header", ["bytes=1-2,4-5", "items=0-1", "bytes=5-2", "bytes=-"])
def test_static_server_parse_range_rejects_what_it_does_not_serve(header: str) -> None:
    with pytest.raises(ValueError):
        parse_range(header, 10)


def test_static_server_serves_ranges(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("outside the root")
    with StaticHTTPServer(tmp_path / "root") as web:
        url = web.put("a.raw", b"0123456789")
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
