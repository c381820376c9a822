"""The image JSON rewrite and the JSON-patch index translation (pure functions).

No request objects, no I/O: the WSGI filter decides *whether* to rewrite and
with which ``RewritePolicy``; this module decides *what* the body becomes.
Inputs are never mutated. A rewrite that would change nothing returns
``None`` so the caller can pass the upstream's bytes through untouched.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

from locproxy.strategies import Selector, best_location
from locproxy.urls import scrub_credentials

IMAGE = "image"  # GET/PATCH /v2/images/{id}, POST /v2/images
IMAGES = "images"  # GET /v2/images: {"images": [...], "next": ..., "first": ...}
LOCATIONS = "locations"  # GET /v2/images/{id}/locations: [{"url": ..., "metadata": ...}]


@dataclass(frozen=True)
class RewritePolicy:
    """How to rewrite the image bodies of one response."""

    selector: Selector
    prefer: tuple[str, ...] = ()
    add_direct_url: bool = False
    scrub_credentials: bool = False
    hide: tuple[str, ...] = ()  # fields removed for this client
    # Copies the upstream hides (locproxy.hidden): they decide direct_url only.
    hidden: Callable[[dict], list | None] | None = None


def rewrite_body(body: bytes, kind: str, policy: RewritePolicy) -> tuple[bytes | None, Any]:
    """``(new body, document as the client gets it)``. The new body is None
    when the upstream's bytes go out unchanged (not JSON of the expected
    shape, or nothing to change); the document is None when not JSON."""
    document = parse_json(body)
    if document is None:
        return None, None
    rewritten = rewrite_document(document, kind, policy)
    if rewritten is document:
        return None, document
    new = dump_json(rewritten)
    return new, (rewritten if new is not None else document)


def shown_orders(document: Any, kind: str, image_id: str | None = None) -> list[tuple[str, tuple[str, ...]]]:
    """``(image id, location tokens in order)`` for every image whose
    locations ``document`` shows (``image_id`` names the image of a bare
    location list)."""
    if kind == LOCATIONS:
        pairs = [(image_id, document)]
    elif kind == IMAGE:
        pairs = [(document.get("id"), document.get("locations"))] if isinstance(document, dict) else []
    else:
        images = document.get("images") if isinstance(document, dict) else None
        pairs = [(image.get("id"), image.get("locations")) for image in images or () if isinstance(image, dict)]
    return [
        (image, tuple(location_token(location) for location in locations))
        for image, locations in pairs
        if isinstance(image, str) and isinstance(locations, list)
    ]


def parse_json(body: bytes) -> Any:
    """The JSON document, or None if ``body`` is not (strict) JSON (or is ``null``)."""
    try:
        return _DECODER.decode(body.decode(json.detect_encoding(body), "surrogatepass"))
    except (ValueError, RecursionError):  # ValueError includes UnicodeDecodeError
        return None


def dump_json(document: Any) -> bytes | None:
    """Compact UTF-8 JSON, or None if ``document`` cannot be strict JSON."""
    try:
        return _ENCODER.encode(document).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: escape it instead
        return _ASCII_ENCODER.encode(document).encode("ascii")
    except (ValueError, RecursionError):  # NaN or infinity (e.g. 1e400): not JSON
        return None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# Built once: json.loads/dumps with options build a new coder on every call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False)
_ASCII_ENCODER = json.JSONEncoder(allow_nan=False)


def rewrite_document(document: Any, kind: str, policy: RewritePolicy) -> Any:
    """``document`` itself when nothing changes, else a rewritten copy."""
    if kind == IMAGE:
        return rewrite_image(document, policy) if isinstance(document, dict) else document
    if kind == IMAGES:
        images = document.get("images") if isinstance(document, dict) else None
        if not isinstance(images, list):
            return document
        rewritten = [rewrite_image(image, policy) if isinstance(image, dict) else image for image in images]
        if all(new is old for new, old in zip(rewritten, images)):
            return document
        return {**document, "images": rewritten}
    if kind == LOCATIONS:
        locations = _ordered_locations(document, policy)
        return document if locations is None else locations
    raise ValueError(f"unknown document kind {kind!r}")


def rewrite_image(image: dict, policy: RewritePolicy) -> dict:
    """One image: ordered ``locations``, ``direct_url`` = best active location,
    ``stores`` in the same order, optional scrubbing and hiding."""
    locations = image.get("locations")
    if well_formed(locations):
        changes = _ordered(image, locations, policy)
    elif locations is None and policy.hidden is not None and isinstance(image.get("direct_url"), str):
        changes = _hidden_direct_url(image, policy)
    else:
        changes = {}
    if "locations" not in changes and not well_formed(locations) and policy.scrub_credentials:
        changes.update(_scrubbed_as_they_are(image, locations, changes))
    for name in policy.hide:
        if name in image or name in changes:
            changes[name] = _REMOVE
    if not changes:
        return image
    new = {**image, **changes}
    for name, value in changes.items():
        if value is _REMOVE:
            new.pop(name, None)
    return new


def _ordered(image: dict, locations: list, policy: RewritePolicy) -> dict[str, Any]:
    """The upstream showed every location, so the best one is known."""
    changes: dict[str, Any] = {}
    ordered = policy.selector.order(locations, policy.prefer)
    if policy.scrub_credentials:
        ordered = [_scrubbed(location) for location in ordered]
    if any(new is not old for new, old in zip(ordered, locations)):
        changes["locations"] = ordered
    if "direct_url" in image or policy.add_direct_url:
        best = best_location(ordered)
        if best is None:
            changes["direct_url"] = _REMOVE
        elif best["url"] != image.get("direct_url"):
            changes["direct_url"] = best["url"]
    stores = _ordered_stores(image.get("stores"), ordered)
    if stores is not None:
        changes["stores"] = stores
    return changes


def _scrubbed_as_they_are(image: dict, locations: Any, changes: dict[str, Any]) -> dict[str, Any]:
    """Not all locations are understood: their order stays, credentials still go."""
    scrubbed: dict[str, Any] = {}
    if isinstance(locations, list):
        clean = [_scrubbed(location) if isinstance(location, dict) else location for location in locations]
        if any(new is not old for new, old in zip(clean, locations)):
            scrubbed["locations"] = clean
    if isinstance(image.get("direct_url"), str) and "direct_url" not in changes:
        url = scrub_credentials(image["direct_url"])
        if url != image["direct_url"]:
            scrubbed["direct_url"] = url
    return scrubbed


_REMOVE = object()


def _hidden_direct_url(image: dict, policy: RewritePolicy) -> dict[str, Any]:
    """``direct_url`` (and ``stores``) from the copies the upstream hides;
    never ``locations``: they were hidden for a reason."""
    hidden = policy.hidden(image) if policy.hidden is not None else None
    if not hidden or not well_formed(hidden):
        return {}
    ordered = policy.selector.order(hidden, policy.prefer)
    best = best_location(ordered)
    changes: dict[str, Any] = {}
    if best is not None:
        url = scrub_credentials(best["url"]) if policy.scrub_credentials else best["url"]
        if url != image.get("direct_url"):
            changes["direct_url"] = url
    stores = _ordered_stores(image.get("stores"), ordered)
    if stores is not None:
        changes["stores"] = stores
    return changes


def well_formed(locations: Any) -> bool:
    """A list of location objects with string urls (others are left alone)."""
    return isinstance(locations, list) and all(
        isinstance(location, dict) and isinstance(location.get("url", ""), str) for location in locations
    )


def _ordered_locations(locations: Any, policy: RewritePolicy) -> list | None:
    """A location list (``GET .../locations``) in the policy's order, scrubbed
    if asked; None if malformed or unchanged."""
    if not well_formed(locations):
        return None
    rewritten = rewrite_image({"locations": locations}, replace(policy, hide=()))["locations"]
    return None if rewritten is locations else rewritten


def _scrubbed(location: dict) -> dict:
    url = location.get("url")
    if isinstance(url, str):
        clean = scrub_credentials(url)
        if clean != url:
            return {**location, "url": clean}
    return location


def _ordered_stores(stores: Any, locations: Sequence[dict]) -> str | None:
    """``stores`` ("a,b,c") reordered to follow ``locations``; stores without a
    location keep their place after those. None when unchanged."""
    if not isinstance(stores, str) or not stores:
        return None
    listed = [name.strip() for name in stores.split(",")]
    order: list[str] = []
    for location in locations:
        metadata = location.get("metadata")
        store = metadata.get("store") if isinstance(metadata, dict) else None
        if store in listed and store not in order:
            order.append(store)
    order += [name for name in listed if name not in order]
    joined = ",".join(order)
    return None if joined == stores else joined


# -- JSON-patch index translation -------------------------------------------

JSON_PATCH_TYPES = (
    "application/openstack-images-v2.1-json-patch",
    "application/openstack-images-v2.0-json-patch",
)

# RFC 6901 array index: "0" or no leading zeros; "-" is "past the end". More
# than 18 digits is no index any image has.
_LOCATION_INDEX = re.compile(r"^/locations/(0|[1-9][0-9]{0,17}|-)(/.*)?$")
_ANY_LOCATION_MEMBER = re.compile(r"^/locations/")


def _paths(operations: Any) -> list[str]:
    if not isinstance(operations, list):
        return []
    return [op["path"] for op in operations if isinstance(op, dict) and isinstance(op.get("path"), str)]


def patch_addresses_locations(operations: Any) -> bool:
    """True if a JSON-patch document addresses a location by index."""
    return any(_LOCATION_INDEX.match(path) for path in _paths(operations))


def odd_location_index(operations: Any) -> bool:
    """True if an operation addresses ``/locations/X`` where X is not a plain
    index: an upstream might still read it as a number ("01", "+1", " 1")."""
    return any(
        _ANY_LOCATION_MEMBER.match(path) and not _LOCATION_INDEX.match(path) for path in _paths(operations)
    )


def location_token(location: Any) -> str:
    """A location's identity in a shown order: its URL without credentials,
    hashed (what ``locproxy.shown`` keeps instead of URLs)."""
    url = location.get("url") if isinstance(location, dict) else None
    text = scrub_credentials(url) if isinstance(url, str) else repr(url)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


class Untranslatable(ValueError):
    """A JSON-patch index cannot be matched to the copy the client saw."""


def translate_patch(operations: list, upstream_tokens: Sequence[str], view_tokens: Sequence[str]) -> list:
    """Rewrite ``/locations/N`` paths from the client's view to the upstream's order.

    Locations are identified by token (``location_token``):
    ``view_tokens`` is the order the client was shown, ``upstream_tokens``
    the upstream's order now. They may differ in more than order (a copy
    added or removed since the client read the image): an index is mapped to
    the copy the client saw there, wherever it is now, and raises
    ``Untranslatable`` if that copy is gone or cannot be told apart.
    Operations are replayed on both lists in turn, since each ``add`` /
    ``remove`` shifts the indexes of later ones. Operations that need no
    translation or cannot be valid (bad index, unknown op, malformed) are
    passed on unchanged, for the upstream to judge and refuse.
    """
    upstream: list[object] = list(upstream_tokens)
    view: list[object] = list(view_tokens)
    if len(set(upstream)) != len(upstream):
        raise Untranslatable("two locations of the image cannot be told apart")
    return [_translate_operation(op, upstream, view) for op in operations]


def _translate_operation(op: Any, upstream: list[object], view: list[object]) -> Any:
    """One operation, translated; ``upstream`` and ``view`` (tokens) are
    updated in place as the operation changes the list."""
    path = op.get("path") if isinstance(op, dict) else None
    match = _LOCATION_INDEX.match(path) if isinstance(path, str) else None
    name = op.get("op") if isinstance(op, dict) else None
    if path == "/locations" and name in ("add", "replace"):
        # A whole new list, in the order the client wrote it: both views agree again.
        value = op.get("value")
        upstream[:] = [object() for _ in (value if isinstance(value, list) else ())]
        view[:] = upstream
    if match is None or name not in ("add", "remove", "replace", "test"):
        return op
    index, rest = match.group(1), match.group(2) or ""
    if index == "-":
        if name == "add":
            new = object()
            upstream.append(new)
            view.append(new)
        return op
    position = int(index)
    if name == "add" and position == len(view):
        target = len(upstream)
    elif position < len(view):
        if view[position] not in upstream:
            raise Untranslatable(f"the location you saw at {position} is no longer there")
        target = upstream.index(view[position])
    else:
        return op  # out of range: the upstream refuses it
    if not rest:  # the list itself changes (a member of a location leaves it as it is)
        if name == "add":
            new = object()
            upstream.insert(target, new)
            view.insert(position, new)
        elif name == "remove":
            del upstream[target]
            del view[position]
    return {**op, "path": f"/locations/{target}{rest}"}
