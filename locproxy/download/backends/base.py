"""What every backend reader gives the download path: a stream of exactly the
bytes asked for, or a ``BackendError`` that says why not."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Iterator, Mapping

from locproxy.failures import Failure


class BackendError(Exception):
    """A location could not be read.

    ``label`` is a credential-free backend label (``backend_label``);
    ``reason`` is short text safe for logs and clients: no paths, no URLs, no
    credentials; ``kind`` is what metrics count it as.
    """

    def __init__(self, label: str, reason: str, kind: Failure = Failure.OTHER):
        # All in args so the exception pickles and copies.
        super().__init__(label, reason, kind)
        self.label = label
        self.reason = reason
        self.kind = kind

    def __str__(self) -> str:
        return f"{self.label}: {self.reason}"


class BackendStream:
    """An opened location: iterate once for exactly ``length`` bytes, then close().

    Iterating raises ``BackendError`` if the source fails mid-stream: the
    caller must then abort or resume, never end the body as if complete.
    ``fileobj`` is the open file (file:// only), positioned at ``start``: a
    caller may hand it to ``wsgi.file_wrapper`` (sendfile) instead of
    iterating, and must then not iterate.
    """

    label: str
    fileobj: BinaryIO | None = None

    def __init__(self, label: str, start: int, length: int, chunk_size: int) -> None:
        self.label = label
        self.start = start
        self.length = length
        self._chunk_size = chunk_size
        self._sent = 0
        self._closed = False

    @property
    def position(self) -> int:
        """Absolute offset (in the image) of the next byte to yield."""
        return self.start + self._sent

    def __iter__(self) -> Iterator[bytes]:
        if self._closed:
            raise BackendError(self.label, "stream closed")
        return self._chunks()

    def _chunks(self) -> Iterator[bytes]:  # pragma: no cover - overridden
        raise NotImplementedError

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> BackendStream:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label} bytes {self.start}+{self.length}>"


Parser = Callable[[str, Any], Any]

# A header value a token can be (RFC 9110 field-value, no spaces or controls):
# anything else is no token at all, never sent anywhere.
_TOKEN = re.compile(r"[\x21-\x7e]{1,16384}")


@dataclass(frozen=True)
class Caller:
    """The client of one download, as far as a reader may act for it: its
    own Keystone token (``X-Auth-Token``), the one the upstream authorised
    the client's own show of the image with (the same environ).

    Only readers that declare ``for_caller`` get it, and only for locations
    nobody else may read (multi-tenant swift copies). It lives as long as
    the download's sources: never logged (not in ``repr``), never stored,
    never the key of anything shared between clients."""

    token: str = field(default="", repr=False)

    @classmethod
    def of(cls, environ: Mapping[str, Any]) -> Caller:
        token = environ.get("HTTP_X_AUTH_TOKEN")
        return cls(token) if isinstance(token, str) and _TOKEN.fullmatch(token) else NOBODY


#: No client credentials: background work (probes, verification ahead), or a client without a token.
NOBODY = Caller()


@dataclass(frozen=True)
class Reader:
    """One row of the backend table (``locproxy.download.backends.READERS``).

    ``options`` is the reader's own frozen dataclass, whose defaults mean
    "not configured"; ``parsers`` maps each of its ini options to the field
    it sets and the parser that validates it at load (a parser of an
    optional dependency's options refuses at load, with the install hint,
    when the dependency is missing: the reader then stays in the table and
    refuses its URLs). ``build(options, common, built)`` makes the reader
    from its options, the options every reader shares
    (``config.BackendSettings``) and the readers built before it (s3 reads
    through the http reader's pools). ``for_caller``: its ``check`` and
    ``open`` take the download's ``Caller`` as ``caller=`` (readers that
    may read some locations as the client).
    """

    name: str
    schemes: frozenset[str]
    options: type
    parsers: Mapping[str, tuple[str, Parser]]
    build: Callable[[Any, Any, Mapping[str, Any]], Any]
    for_caller: bool = False
