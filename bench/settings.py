"""What one benchmark run measures with: the sizes and repetitions of a full
or a quick run, and the locproxy sidecar settings under test."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from bench.images import GiB, MiB


@dataclass(frozen=True)
class Sizes:
    """Image sizes and repetitions; ``quick()`` is a smoke run, not a measurement."""

    big: int
    rss: int
    concurrent_count: int
    concurrent_size: int
    small: int
    reps: int
    conc_reps: int
    latency_rounds: int
    latency_per_round: int
    ttfb_samples: int
    rewrite_repeat: int
    relay_count: int = 16  # the relay row: this many downloads at once ...
    relay_size: int = 64 * MiB  # ... of this size each (bench/run --relay-count, --relay-size)

    @classmethod
    def full(cls) -> Sizes:
        return cls(GiB, 4 * GiB, 16, 256 * MiB, 16 * MiB, reps=5, conc_reps=3, latency_rounds=10,
                   latency_per_round=200, ttfb_samples=40, rewrite_repeat=15)

    @classmethod
    def quick(cls) -> Sizes:
        return cls(128 * MiB, 512 * MiB, 16, 32 * MiB, 16 * MiB, reps=2, conc_reps=1, latency_rounds=4,
                   latency_per_round=100, ttfb_samples=10, rewrite_repeat=3, relay_size=16 * MiB)


@dataclass(frozen=True)
class SidecarConfig:
    """gunicorn and paste settings of a locproxy sidecar under test."""

    workers: int = 1
    threads: int = 16
    worker_class: str = "gthread"
    chunk_size: str = "1M"
    extra: dict[str, str] = field(default_factory=dict)

    def label(self) -> str:
        extra = "".join(f", {k}={v}" for k, v in self.extra.items())
        return f"gunicorn {self.worker_class} workers={self.workers} threads={self.threads}, chunk_size={self.chunk_size}{extra}"

    def with_options(self, **extra: str) -> SidecarConfig:
        """The same sidecar with other paste options (replacing any extra ones)."""
        return dataclasses.replace(self, extra=extra)
