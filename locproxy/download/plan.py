"""What a download will be, decided before any byte moves (pure).

``plan_download`` turns the image the upstream showed this client, the
request's method and ``Range``, and the order of the copies locproxy may
read into a ``DownloadPlan``: status, headers, byte span, the image's
digest and the sources in order. How the body is checked and sent is
``policy.py``'s; the shell (``handler.py``) renders both.
Nothing here does I/O.

Returned instead of a plan: ``None`` (the upstream's own ``/file`` decides:
not an active image with data, or not understood) or a ``Refusal`` (answered
by locproxy, e.g. 416 for an unsatisfiable Range).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from locproxy.ranges import RangeRefused, parse_range, refused_range_headers
from locproxy.strategies import Selector, backend_key, copy_key, is_active, store_of, stores_of
from locproxy.urls import backend_label

Digest = tuple[str, str]  # (hashlib name, expected hex value)


@dataclass(frozen=True)
class Candidate:
    """A location locproxy may read: its url, the tracker keys of its backend
    and of this copy, and the backend's public label."""

    url: str
    key: str
    copy: str
    label: str
    store: str = ""  # the Glance store the location names ('' if none)

    @property
    def backend(self) -> bool:
        """A location read from a backend (not the upstream's /file, not the cache)."""
        return bool(self.url)


#: The upstream's own ``/file``: the last resort of every download.
UPSTREAM = Candidate("", "upstream", "upstream", "upstream")
#: The site cache (``locproxy.cache``): an entry, or a fill in progress.
CACHE = Candidate("", "cache", "cache", "cache")


@dataclass(frozen=True)
class Refusal:
    status: int
    message: str
    headers: Mapping[str, str]


@dataclass(frozen=True)
class DownloadPlan:
    image_id: str
    status: int  # 200 or 206
    start: int
    end: int  # exclusive
    size: int
    headers: tuple[tuple[str, str], ...]
    digest: Digest | None  # the image's recorded digest (what checks it, and keys its fingerprint and cache entry)
    candidates: tuple[Candidate, ...]  # best first; demoted ones last
    head_only: bool
    upstream_prefer: tuple[str, ...] = ()  # ?prefer= for the upstream's own /file (see upstream_prefer())
    stores: tuple[str, ...] = ()  # the Glance stores that hold the image (strategies.stores_of)

    @property
    def whole(self) -> bool:
        """The body runs to the end of the image: a file wrapper, which may
        send to the end of the file whatever Content-Length says, is safe."""
        return self.end == self.size

    @property
    def whole_image(self) -> bool:
        """The body is the whole image: what a digest covers."""
        return self.start == 0 and self.end == self.size


def plan_download(
    image: Any,
    *,
    method: str,
    range_header: str | None,
    selector: Selector,
    prefer: Sequence[str],
    readable: Callable[[str], bool],
    demoted: Callable[[str, str], bool],
) -> DownloadPlan | Refusal | None:
    """The plan for this client's download of ``image`` (the upstream's JSON)."""
    size = image.get("size") if isinstance(image, dict) else None
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0 or image.get("status") != "active":
        return None  # not an active image with data, or not understood: the upstream decides
    try:
        span = parse_range(range_header, size)
    except RangeRefused as error:
        return Refusal(error.status, str(error), refused_range_headers(error, size))
    start, end = span or (0, size)
    ordered = strategy_order(image, selector, prefer)
    headers = [("Content-Type", "application/octet-stream"), ("Content-Length", str(end - start)),
               ("Accept-Ranges", "bytes")]
    if span:
        headers.append(("Content-Range", f"bytes {start}-{end - 1}/{size}"))
    elif image.get("checksum"):
        headers.append(("Content-MD5", str(image["checksum"])))
    return DownloadPlan(
        image_id=str(image.get("id")),
        status=206 if span else 200,
        start=start,
        end=end,
        size=size,
        headers=tuple(headers),
        digest=expected_digest(image),
        candidates=tuple(candidates(image, ordered, readable, demoted)),
        head_only=method == "HEAD",
        upstream_prefer=prefer_upstream(image, ordered),
        stores=stores_of(image),
    )


def strategy_order(image: dict, selector: Selector, prefer: Sequence[str]) -> list[dict] | None:
    """The image's active locations in the strategy's order (computed once per
    plan: the candidates and ``upstream_prefer`` both follow it); None when
    the image shows no list of locations."""
    locations = image.get("locations")
    if not isinstance(locations, list) or not all(isinstance(item, dict) for item in locations):
        return None
    return [item for item in selector.order(locations, prefer) if is_active(item)]


def candidates(image: dict, ordered: list[dict] | None, readable: Callable[[str], bool],
               demoted: Callable[[str, str], bool]) -> list[Candidate]:
    """The locations of ``ordered`` (``strategy_order``) locproxy may read,
    best first; those the health rule demotes (backend or copy) after all
    the others. No list: the upstream shows only ``direct_url``."""
    if ordered is None:
        ordered = [{"url": image.get("direct_url")}]
    found = [
        Candidate(location["url"], backend_key(location), copy_key(location), backend_label(location["url"]),
                  store_of(location) or "")
        for location in ordered
        if isinstance(location.get("url"), str) and readable(location["url"])
    ]
    return sorted(found, key=lambda candidate: demoted(candidate.key, candidate.copy))


def expected_digest(image: dict) -> Digest | None:
    """``(hashlib name, hex)``: the image's ``os_hash`` if usable, else md5 ``checksum``."""
    algorithm, value = image.get("os_hash_algo"), image.get("os_hash_value")
    if (isinstance(algorithm, str) and isinstance(value, str) and algorithm.lower() in hashlib.algorithms_available
            and value and len(value) % 2 == 0):
        return algorithm.lower(), value
    checksum = image.get("checksum")
    if isinstance(checksum, str) and checksum:
        return "md5", checksum
    return None


def upstream_prefer(image: dict, selector: Selector, prefer: Sequence[str]) -> tuple[str, ...]:
    """``prefer_upstream`` of the strategy's order of ``image``."""
    return prefer_upstream(image, strategy_order(image, selector, prefer))


def prefer_upstream(image: dict, ordered: list[dict] | None) -> tuple[str, ...]:
    """The ``?prefer=`` that makes the upstream's own ``/file`` try copies in
    the strategy's order, as far as it can.

    Glance 33 puts the locations of the named stores first but keeps the
    *image's* order among them (not the order named), then the rest in the
    image's order. So: the longest prefix of the strategy's store order
    among whose locations the image's order is the strategy's (at least the
    best store); nothing when the image's order already is the strategy's,
    or the best location names no store.
    """
    if ordered is None:
        return ()
    own = [location for location in image["locations"] if is_active(location)]
    if ordered == own:
        return ()
    stores: list[str] = []
    for location in ordered:
        store = store_of(location)
        if store is None:
            break  # a copy Glance cannot be asked for by name: the order ends here
        if store not in stores:
            stores.append(store)
    chosen: tuple[str, ...] = ()
    for count in range(1, len(stores) + 1):
        named = set(stores[:count])
        if [item for item in own if store_of(item) in named] != [item for item in ordered if store_of(item) in named]:
            break
        chosen = tuple(stores[:count])
    return chosen
