"""``Range`` request header parsing for image downloads (pure).

Follows RFC 9110 section 14.1.2 for one byte range, with Glance's choices
where the RFC leaves room, refusing rather than ignoring: several ranges get
400, other units and malformed values 416, as Glance's ``/file`` answers.
"""

from __future__ import annotations

import re

# RFC 9110 section 14.1.1: DIGIT is ASCII only (re.ASCII: \d would match any Unicode digit).
_BYTE_RANGE = re.compile(r"^\s*bytes\s*=\s*(?:(\d+)\s*-\s*(\d*)|-\s*(\d+))\s*$", re.IGNORECASE | re.ASCII)
_HUGE = 10**20  # beyond any image; stands for longer numbers (int() refuses thousands of digits)


def _number(digits: str) -> int:
    significant = digits.lstrip("0") or "0"
    return int(significant) if len(significant) <= 20 else _HUGE


class RangeRefused(ValueError):
    """The Range is not served; ``status`` is the answer."""

    status = 416


class SeveralRanges(RangeRefused):
    """A list of ranges: Glance answers 400 and asks for single-range requests."""

    status = 400


class Unsatisfiable(RangeRefused):
    """The Range cannot be served: answer 416 with ``Content-Range: bytes */size``."""


class Malformed(Unsatisfiable):
    """Not one ``bytes=`` range at all (another unit, garbage).
    locproxy and Glance answer 416; RFC 9110 also lets a server ignore it."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end)`` with ``end`` exclusive, or None for the whole image.

    ``bytes=a-b`` (b inclusive, clamped to the size), ``bytes=a-`` and the
    suffix form ``bytes=-n`` (the last n bytes; all of them if n >= size).
    """
    if header is None:
        return None
    if "," in header:
        raise SeveralRanges("several ranges in one request are not supported: make single-range requests")
    match = _BYTE_RANGE.match(header)
    if match is None:
        raise Malformed(f"unsupported Range {header[:64]!r}: one 'bytes=' range only")
    first, last, suffix = match.groups()
    if suffix is not None:
        length = _number(suffix)
        if length == 0 or size == 0:
            raise Unsatisfiable("empty suffix range")
        return max(size - length, 0), size
    start = _number(first)
    if last:
        end = _number(last) + 1
        if end <= start:
            raise Unsatisfiable("range ends before it starts")
    else:
        end = size
    if start >= size:
        raise Unsatisfiable(f"range starts at or beyond the image size ({size})")
    return start, min(end, size)


def refused_range_headers(error: RangeRefused, size: int) -> dict[str, str]:
    """What goes with the refusal: a 416 names the size (RFC 9110 section 15.5.17)."""
    return {"Content-Range": f"bytes */{size}"} if error.status == 416 else {}
