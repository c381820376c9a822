"""Reading upstream response bodies: bounded, gzip-aware, failure-tolerant.

Used where locproxy must look inside a response (image JSON to rewrite, the
metadata check before a download, the image fetch for JSON-patch
translation). Anything too large, undecodable or not JSON is reported as
such, so the caller can pass the response through untouched.
"""

from __future__ import annotations

import zlib
from typing import Any, Iterable, Iterator

from webob import Response

from locproxy.rewrite import parse_json

JSON = "application/json"


class BodyBroken(Exception):
    """The upstream's body broke off (or its stream failed) while being read."""


def read_bounded(resp: Response, limit: int) -> bytes | None:
    """The whole body if it is at most ``limit`` bytes; otherwise None, and
    ``resp`` is left to stream everything, including what was read.

    Raises ``BodyBroken`` if the body's stream fails while reading.
    """
    if resp.content_length is not None and resp.content_length > limit:
        return None
    app_iter = resp.app_iter
    chunks: list[bytes] = []
    size = 0
    try:
        iterator = iter(app_iter)
        for chunk in iterator:
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                resp.app_iter = _Replay(chunks, iterator, app_iter)
                return None
    except Exception as error:  # whatever the stream raised: the body is unusable
        close_iterable(app_iter)
        raise BodyBroken(str(error)) from error
    close_iterable(app_iter)
    body = b"".join(chunks)
    resp.app_iter = [body]
    resp.content_length = len(body)  # webob forgets it when app_iter is replaced
    return body


def plain_body(resp: Response, body: bytes, limit: int) -> bytes | None:
    """``body`` without its content coding (identity or gzip), or None if
    undecodable or larger than ``limit`` once decoded."""
    encoding = resp.content_encoding
    if encoding in (None, "identity"):
        return body
    if encoding != "gzip":
        return None
    decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        plain = decompressor.decompress(body, limit + 1)
    except zlib.error:
        return None
    if len(plain) > limit or decompressor.unconsumed_tail or not decompressor.eof:
        return None
    return plain


def json_document(resp: Response, limit: int) -> Any:
    """The JSON document of a 2xx JSON response within ``limit``, else None.

    Raises ``BodyBroken`` if the body broke off while being read.
    """
    if not 200 <= resp.status_code < 300 or resp.content_type != JSON:
        return None
    body = read_bounded(resp, limit)
    plain = None if body is None else plain_body(resp, body, limit)
    return None if plain is None else parse_json(plain)


class _Replay:
    """Chunks already read, then the rest of the original iterable (whose
    ``close`` is kept: it releases the upstream connection)."""

    def __init__(self, head: list[bytes], rest: Iterator[bytes], original: Iterable[bytes]) -> None:
        self._head, self._rest, self._original = head, rest, original

    def __iter__(self) -> Iterator[bytes]:
        yield from self._head
        yield from self._rest

    def close(self) -> None:
        close_iterable(self._original)


def close_iterable(iterable: Any) -> None:
    """WSGI: call an app iterable's ``close`` if it has one (releases its connection)."""
    close = getattr(iterable, "close", None)
    if close is not None:
        close()
