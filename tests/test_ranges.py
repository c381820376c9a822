"""Range header parsing for downloads."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from locproxy.ranges import RangeRefused, SeveralRanges, Unsatisfiable, parse_range, refused_range_headers


@pytest.mark.parametrize(
    "header, size, expected",
    [
        pytest.param(None, 10, None, id="absent"),
        pytest.param("bytes=0-4", 10, (0, 5), id="first-five"),
        pytest.param("bytes=5-", 10, (5, 10), id="open-ended"),
        pytest.param("bytes=8-100", 10, (8, 10), id="end-clamped"),
        pytest.param("bytes=-3", 10, (7, 10), id="suffix"),
        pytest.param("bytes=-30", 10, (0, 10), id="suffix-longer-than-image"),
        pytest.param(" Bytes = 2 - 3 ", 10, (2, 4), id="whitespace-and-case"),
        pytest.param("bytes=9-9", 10, (9, 10), id="last-byte"),
    ],
)
def test_parse_range(header, size, expected):
    assert parse_range(header, size) == expected


@pytest.mark.parametrize(
    "header, size, message",
    [
        pytest.param("bytes=10-", 10, "beyond the image size", id="start-at-size"),
        pytest.param("bytes=5-2", 10, "ends before it starts", id="reversed"),
        pytest.param("bytes=-0", 10, "empty suffix", id="empty-suffix"),
        pytest.param("items=0-1", 10, "one 'bytes=' range only", id="other-unit"),
        pytest.param("bytes=a-b", 10, "one 'bytes=' range only", id="garbage"),
        pytest.param("bytes=-", 10, "one 'bytes=' range only", id="no-numbers"),
        pytest.param("bytes=0-", 0, "beyond the image size", id="empty-image"),
        pytest.param("bytes=-5", 0, "empty suffix", id="suffix-of-empty-image"),
        pytest.param("bytes=١-٢", 10, "one 'bytes=' range only", id="non-ascii-digits"),
    ],
)
def test_unsatisfiable(header, size, message):
    with pytest.raises(Unsatisfiable, match=message):
        parse_range(header, size)


@pytest.mark.parametrize("header", ["bytes=0-1,3-4", "bytes=0-1, 5-", "bytes=,0-1"])
def test_several_ranges_are_400_as_glance(header):
    with pytest.raises(SeveralRanges) as refused:
        parse_range(header, 10)
    assert refused.value.status == 400 and refused_range_headers(refused.value, 10) == {}


def test_unsatisfiable_names_the_size():
    with pytest.raises(Unsatisfiable) as refused:
        parse_range("bytes=10-", 10)
    assert refused.value.status == 416 and refused_range_headers(refused.value, 10) == {"Content-Range": "bytes */10"}


@given(header=st.text(max_size=40), size=st.integers(min_value=0, max_value=10**12))
def test_any_header_parses_inside_the_image_or_refuses(header, size):
    try:
        span = parse_range(header, size)
    except RangeRefused:
        return
    if span is not None:
        start, end = span
        assert 0 <= start < end <= size


@given(start=st.integers(min_value=0, max_value=10**15), length=st.integers(min_value=1, max_value=10**15),
       size=st.integers(min_value=1, max_value=10**15))
def test_explicit_ranges(start, length, size):
    header = f"bytes={start}-{start + length - 1}"
    if start >= size:
        with pytest.raises(Unsatisfiable):
            parse_range(header, size)
    else:
        assert parse_range(header, size) == (start, min(start + length, size))
