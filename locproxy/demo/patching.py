"""JSON-patch operations on a demo image, as Glance applies them.

Location operations index the stored order (``01`` reads as 1, as in
Glance: that leniency is why locproxy refuses such indexes before they
reach an upstream). Adding the first location activates a queued image, its
bytes read by ``probe``.
"""

from __future__ import annotations

from typing import Any, Callable

from locproxy.demo.model import (
    CORE,
    READ_ONLY,
    ApiError,
    DemoImage,
    PatchOp,
    location_position,
    validate_attribute,
    validate_location,
)
from locproxy.urls import scrub_credentials


class Patcher:
    """Applies parsed operations (``locproxy.demo.model.parse_patch``)."""

    def __init__(self, show_multiple_locations: bool, probe: Callable[[list[dict[str, Any]]], bytes | None]) -> None:
        self.show_multiple_locations = show_multiple_locations
        self.probe = probe

    def apply(self, image: DemoImage, op: PatchOp, *, admin: bool) -> None:
        """One operation on ``image`` (a working copy: a failure leaves the original untouched)."""
        name = op.path[0]
        if name == "locations":
            self._apply_locations(image, op)
        elif name == "owner" and not admin:
            raise ApiError(403, "Owner can't be updated by non admin.")
        elif op.op == "remove":
            if name in CORE or name in READ_ONLY:
                raise ApiError(403, f"Property {name} may not be removed.")
            if name not in image.properties:
                raise ApiError(409, f"Property {name} does not exist.")
            del image.properties[name]
        else:
            value = validate_attribute(name, op.value)
            if name in CORE:
                setattr(image, name, value)
            elif op.op == "replace" and name not in image.properties:
                raise ApiError(409, f"Property {name} does not exist.")
            else:
                image.properties[name] = value

    def _apply_locations(self, image: DemoImage, op: PatchOp) -> None:
        """Glance's location operations; positions index the stored order."""
        if not self.show_multiple_locations:
            raise ApiError(403, "It's not allowed to update locations if locations are invisible.")
        if op.op == "replace":
            self._replace_locations(image, op)
        elif len(op.path) != 2:
            raise ApiError(400, f"Operation {op.op!r} on /locations needs a position.")
        elif op.op == "add":
            self._add_location(image, op.path[1], op.value)
        else:
            self._remove_location(image, op.path[1])

    def _replace_locations(self, image: DemoImage, op: PatchOp) -> None:
        if len(op.path) != 1 or not isinstance(op.value, list):
            raise ApiError(400, "Replacing locations needs path /locations and a list value.")
        image.locations = self._unique_locations(op.value)
        if not image.locations:
            image.data = None
            image.status = "queued"
        elif image.status == "queued":
            self._activate(image)

    def _add_location(self, image: DemoImage, position: str, value: Any) -> None:
        if image.status not in ("active", "queued"):
            raise ApiError(409, f"It's not allowed to add locations if image status is {image.status}.")
        pos = location_position(position, len(image.locations), insert=True)
        image.locations.insert(pos, validate_location(value))
        image.locations = self._unique_locations(image.locations)
        if image.status == "queued":
            self._activate(image)

    def _remove_location(self, image: DemoImage, position: str) -> None:
        if image.status != "active":
            raise ApiError(409, f"It's not allowed to remove locations if image status is {image.status}.")
        if len(image.locations) == 1:
            raise ApiError(403, "Cannot remove last location in the image.")
        del image.locations[location_position(position, len(image.locations), insert=False)]

    @staticmethod
    def _unique_locations(values: list[Any]) -> list[dict[str, Any]]:
        locations = [validate_location(value) for value in values]
        seen: set[str] = set()
        for loc in locations:
            if loc["url"] in seen:
                raise ApiError(400, f"The location {scrub_credentials(loc['url'])} already exists")
            seen.add(loc["url"])
        return locations

    def _activate(self, image: DemoImage) -> None:
        # Glance asks the store for the size; the demo reads the bytes when it can.
        if image.data is None:
            image.data = self.probe(image.locations)
        image.status = "active"
