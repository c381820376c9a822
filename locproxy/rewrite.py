"""The image JSON rewrite and the JSON-patch index translation (pure functions).

No request objects, no I/O: the WSGI filter decides *whether* to rewrite and
with which ``RewritePolicy``; this module decides *what* the body becomes.
Inputs are never mutated. A rewrite that would change nothing returns
``None`` so the caller can pass the upstream's bytes through untouched.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from typing import Any, Sequence

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


def rewrite_body(body: bytes, kind: str, policy: RewritePolicy) -> bytes | None:
    """The rewritten JSON body, or None if it is not JSON of the expected shape
    or would not change."""
    document = parse_json(body)
    if document is None:
        return None
    rewritten = rewrite_document(document, kind, policy)
    return None if rewritten is document else dump_json(rewritten)


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
    changes: dict[str, Any] = {}
    locations = image.get("locations")
    if well_formed(locations):
        # The upstream showed every location, so the best one is known.
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
    elif policy.scrub_credentials:
        # Not all locations are understood: their order stays, credentials still go.
        if isinstance(locations, list):
            scrubbed = [_scrubbed(location) if isinstance(location, dict) else location for location in locations]
            if any(new is not old for new, old in zip(scrubbed, locations)):
                changes["locations"] = scrubbed
        if isinstance(image.get("direct_url"), str):
            clean = scrub_credentials(image["direct_url"])
            if clean != image["direct_url"]:
                changes["direct_url"] = clean
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


_REMOVE = object()


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


def translate_patch(operations: list, upstream_locations: list, view_locations: list) -> list:
    """Rewrite ``/locations/N`` paths from the client's view to the upstream's order.

    ``view_locations`` is the order the client saw: the same objects as
    ``upstream_locations``, permuted. Operations are replayed on both lists in
    turn, since each ``add``/``remove`` shifts the indexes of later ones.
    Operations that cannot be translated (bad index, unknown op, malformed)
    are passed on unchanged, for the upstream to judge and refuse.
    """
    token_of = {id(location): position for position, location in enumerate(upstream_locations)}
    upstream = list(range(len(upstream_locations)))  # tokens in the upstream's order
    view = [token_of[id(location)] for location in view_locations]  # tokens as the client saw them
    next_token = len(upstream)
    translated = []
    for op in operations:
        path = op.get("path") if isinstance(op, dict) else None
        match = _LOCATION_INDEX.match(path) if isinstance(path, str) else None
        name = op.get("op") if isinstance(op, dict) else None
        if isinstance(op, dict) and op.get("path") == "/locations" and name in ("add", "replace"):
            # A whole new list, in the order the client wrote it: both views agree again.
            value = op.get("value")
            size = len(value) if isinstance(value, list) else 0
            upstream = list(range(next_token, next_token + size))
            view = list(upstream)
            next_token += size
        if match is None or name not in ("add", "remove", "replace", "test"):
            translated.append(op)
            continue
        index, rest = match.group(1), match.group(2) or ""
        if index == "-":
            if name == "add":
                upstream.append(next_token)
                view.append(next_token)
                next_token += 1
            translated.append(op)
            continue
        position = int(index)
        if name == "add" and position == len(view):
            target = len(upstream)
        elif position < len(view):
            target = upstream.index(view[position])
        else:
            translated.append(op)  # out of range: the upstream refuses it
            continue
        translated.append({**op, "path": f"/locations/{target}{rest}"})
        if rest:
            continue  # a member of a location: the list itself is unchanged
        if name == "add":
            upstream.insert(target, next_token)
            view.insert(position, next_token)
            next_token += 1
        elif name == "remove":
            del upstream[target]
            del view[position]
    return translated
