"""What every row of the table declares (``bench/rows/``): its ``--rows``
name, the peer and target it is judged by, the image files and the Glance
peer it needs, and ``measure(context)`` returning its table lines."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from bench.context import Context
from bench.images import file_name
from bench.results import Result
from bench.settings import Sizes


def no_images(sizes: Sizes) -> list[tuple[str, int]]:
    return []


@dataclass(frozen=True)
class Row:
    name: str  # for --rows
    peer: str  # what locproxy is measured against (--help, bench/README.md)
    target: str  # the product's target
    measure: Callable[[Context], list[Result]]
    images: Callable[[Sizes], list[tuple[str, int]]] = no_images  # (file name, size) it reads
    glance: bool = False  # also measured against a real Glance when one is cached


def one_image(size_of: Callable[[Sizes], int]) -> Callable[[Sizes], list[tuple[str, int]]]:
    """``images`` for a row reading one file, e.g. ``one_image(lambda s: s.big)``."""
    return lambda sizes: [(file_name(size_of(sizes)), size_of(sizes))]


def concurrent_images(sizes: Sizes) -> list[tuple[str, int]]:
    """``images`` for a row reading the concurrent set."""
    return [(file_name(sizes.concurrent_size, i), sizes.concurrent_size) for i in range(sizes.concurrent_count)]
