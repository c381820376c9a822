"""JSON-patch on a list of image locations, as the upstream applies it, for
checking locproxy's index translation (``locproxy.rewrite.translate_patch``).

``tokens(locations)`` are the identities ``translate_patch`` compares;
``apply_patch(operations, locations)`` applies ``add`` / ``remove`` /
``replace`` on ``/locations/N`` (``-``: the end) and ``replace`` of the
whole ``/locations`` list, Glance-style: None when the upstream would refuse
(an index out of range). The input list is never changed.
"""

from __future__ import annotations

import re
from typing import Any

from locproxy.rewrite import location_token


def tokens(locations: list[Any]) -> list[str]:
    return [location_token(location) for location in locations]


def apply_patch(operations: list[dict[str, Any]], locations: list[Any]) -> list[Any] | None:
    """The list after ``operations``; None when refused."""
    current = list(locations)
    for op in operations:
        match = re.fullmatch(r"/locations/(0|[1-9]\d*|-)", op["path"])
        if op["path"] == "/locations":
            current = list(op["value"])
            continue
        index = match.group(1)
        if op["op"] == "add":
            position = len(current) if index == "-" else int(index)
            if position > len(current):
                return None
            current.insert(position, op["value"])
        elif index == "-" or int(index) >= len(current):
            return None
        elif op["op"] == "remove":
            del current[int(index)]
        else:
            current[int(index)] = op["value"]
    return current
