"""locproxy: choose the best copy of an image, and serve it from there.

The selection library is importable on its own, by clients, with nothing but
the standard library::

    import locproxy
    locproxy.order_locations(image["locations"], strategy="store_type",
                             store_type_preference="rbd, file")

The WSGI parts (``locproxy.middleware``, ``locproxy.proxy``) are imported only
when a server loads them.
"""

from __future__ import annotations

from locproxy.strategies import (
    ENTRY_POINT_GROUP,
    Selector,
    best_location,
    order_locations,
    register_strategy,
    registered_strategies,
    strategy_names,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "Selector",
    "best_location",
    "order_locations",
    "register_strategy",
    "registered_strategies",
    "strategy_names",
]
