"""The rows of the table, one module each, in the order they are measured
and printed. Each module declares its ``ROW`` (``bench.row.Row``)."""

from __future__ import annotations

from bench.row import Row
from bench.rows import (
    cache,
    ceph,
    concurrent,
    failover,
    fallback,
    file,
    http,
    memory,
    promote,
    relay,
    rewrite,
    show_filter,
    show_sidecar,
    swift,
    verify,
)

ROWS: tuple[Row, ...] = (
    file.ROW,
    http.ROW,
    concurrent.ROW,
    relay.ROW,
    fallback.ROW,
    show_sidecar.ROW,
    show_filter.ROW,
    rewrite.ROW,
    memory.ROW,
    failover.ROW,
    verify.ROW,
    cache.ROW,
    ceph.ROW,
    promote.ROW,
    swift.ROW,
)
NAMES = tuple(row.name for row in ROWS)
