"""Where the demo image API's bytes live: file stores under its roots, http
stores under its prefixes, and the in-memory copy of each image.

Trust: bytes are read only from ``file://`` URLs under ``file_roots`` (no
``..`` or symlink escape) and ``http(s)://`` URLs under ``http_prefixes``,
never following redirects; any other location (``rbd://``, ``swift://``...)
is skipped, and the image's in-memory copy is served when no location opens.
"""

from __future__ import annotations

import logging
import os
import threading
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Sequence
from urllib.parse import unquote, urlsplit

from locproxy.demo.model import location
from locproxy.urls import scrub_credentials

LOG = logging.getLogger(__name__)

CHUNK_SIZE = 256 * 1024
MAX_IMAGE_DATA = 256 * 1024 * 1024  # a demo keeps images in memory


class BoundedReader:
    """Yields at most ``length`` bytes of a file-like source and closes it."""

    def __init__(self, source: Any, length: int) -> None:
        self._source = source
        self._remaining = length

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._remaining <= 0:
            raise StopIteration
        chunk = self._source.read(min(CHUNK_SIZE, self._remaining))
        if not chunk:  # a short store file: end early, as a truncated upstream does
            raise StopIteration
        self._remaining -= len(chunk)
        return chunk

    def close(self) -> None:
        self._source.close()


class _MemoryReader:
    def __init__(self, data: bytes) -> None:
        self._chunks = [data[i:i + CHUNK_SIZE] for i in range(0, len(data), CHUNK_SIZE)]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._chunks)

    def close(self) -> None:
        self._chunks = []


class DemoStores:
    """Opens an image's locations as the demo API may; counts which served.

    ``served_from`` counts downloads by the store (or ``memory``) that
    supplied the bytes.
    """

    def __init__(self, file_roots: Sequence[str] = (), http_prefixes: Sequence[str] = (),
                 upload_store: tuple[str, str] | None = None, http_timeout: float = 10.0) -> None:
        self.file_roots = tuple(os.path.realpath(root) for root in file_roots)
        # A trailing "/" so that http://host:80 does not match http://host:8080.
        self.http_prefixes = tuple(prefix.rstrip("/") + "/" for prefix in http_prefixes)
        self.upload_store = upload_store
        self.http_timeout = http_timeout
        self.served_from: Counter[str] = Counter()
        self._lock = threading.Lock()

    def open(self, locations: list[dict[str, Any]], data: bytes, start: int, length: int) -> Any:
        """The first location that opens, as Glance does; the memory copy otherwise."""
        for loc in locations:
            reader = self._open_location(loc["url"], start, length)
            if reader is not None:
                self._count_source(loc["metadata"].get("store") or "unnamed")
                return reader
        self._count_source("memory")
        return _MemoryReader(data[start:start + length])

    def _count_source(self, name: str) -> None:
        with self._lock:
            self.served_from[name] += 1

    def _open_location(self, url: str, start: int, length: int) -> Any:
        scheme = url.partition("://")[0].lower()
        try:
            if scheme == "file":
                path = self._local_path(url)
                if path is not None:
                    return self._open_file(path, start, length)
            elif scheme in ("http", "https") and url.startswith(self.http_prefixes):
                return self._open_http(url, start, length)
        except (OSError, ValueError) as error:  # urllib's errors are OSErrors
            LOG.warning("demo: cannot read %s: %s", scrub_credentials(url), error)
        return None

    def _local_path(self, url: str) -> str | None:
        """The file a ``file://`` URL names, if it is a regular file under a file root."""
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            return None
        path = os.path.realpath(unquote(parts.path))  # resolves ".." and symlinks
        for root in self.file_roots:
            if os.path.commonpath([root, path]) == root and os.path.isfile(path):
                return path
        return None

    @staticmethod
    def _open_file(path: str, start: int, length: int) -> BoundedReader:
        handle = open(path, "rb")
        handle.seek(start)
        return BoundedReader(handle, length)

    def _open_http(self, url: str, start: int, length: int) -> BoundedReader:
        headers = {"Range": f"bytes={start}-{start + length - 1}"} if length else {}
        response = _HTTP_OPENER.open(urllib.request.Request(url, headers=headers), timeout=self.http_timeout)
        try:
            if response.status == 200:  # the server ignored Range: skip to the start
                _discard(response, start)
            elif response.status != 206:
                raise OSError(f"HTTP {response.status}")
        except BaseException:
            response.close()
            raise
        return BoundedReader(response, length)

    def probe(self, locations: list[dict[str, Any]]) -> bytes | None:
        """The whole image from its first readable location, or None."""
        for loc in locations:
            reader = self._open_location(loc["url"], 0, MAX_IMAGE_DATA)
            if reader is not None:
                try:
                    return b"".join(reader)
                finally:
                    reader.close()
        return None

    def store_upload(self, image_id: str, data: bytes) -> dict[str, Any] | None:
        """Write uploaded bytes into the upload store, if there is one."""
        if self.upload_store is None:
            return None
        store, directory = self.upload_store
        path = Path(directory, image_id)  # ids are validated UUIDs: safe file names
        path.write_bytes(data)
        return location(path.resolve().as_uri(), store)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect could leave the allowed prefixes: treat it as a failure."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


# No proxies from the environment (an http_proxy would swallow 127.0.0.1
# backends), no redirects.
_HTTP_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


def _discard(source: Any, count: int) -> None:
    while count > 0:
        chunk = source.read(min(CHUNK_SIZE, count))
        if not chunk:
            raise OSError("body ended before the requested range")
        count -= len(chunk)
