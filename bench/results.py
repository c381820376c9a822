"""Lines of the results table and how figures are written in it: medians
with their min–max spread and n, ratios to the peer, the target, met or not."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from bench.measure import Stat

HEADER = ["row", "measure", "locproxy", "peer", "ratio", "target", "met?"]


@dataclass
class Result:
    """One line of the table, with its notes (printed under the table)."""

    measure: str
    locproxy: str
    peer: str
    ratio: str
    target: str
    met: str  # "yes", "**no**", "n/a" or "**error**"
    notes: list[str] = field(default_factory=list)
    row: str = ""  # the name ``bench/run --rows`` knows it by (set by the runner)

    def cells(self) -> list[str]:
        return [self.row, self.measure, self.locproxy, self.peer, self.ratio, self.target, self.met]


def mib_s(stat: Stat) -> str:
    return f"{stat.median:,.0f} MiB/s ({stat.low:,.0f}–{stat.high:,.0f}, n={stat.n})"


def ms(stat: Stat) -> str:
    return f"{stat.median * 1000:.3f} ms ({stat.low * 1000:.3f}–{stat.high * 1000:.3f}, n={stat.n})"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "**no**")


def throughput(measure: str, locproxy: list[float], peer: list[float], peer_name: str, minimum: float | None,
               notes: Sequence[str] = ()) -> Result:
    """MiB/s against a peer's; ``minimum`` is the target ratio (None: informational)."""
    lp_stat, peer_stat = Stat.of(locproxy), Stat.of(peer)
    ratio = lp_stat.median / peer_stat.median
    target = f"≥ {minimum:g} × {peer_name}" if minimum is not None else "(informational)"
    return Result(measure, mib_s(lp_stat), f"{peer_name}: {mib_s(peer_stat)}", f"{ratio:.2f}", target,
                  verdict(None if minimum is None else ratio >= minimum), list(notes))


def failed(name: str, error: BaseException) -> Result:
    """The line of a row that raised: the table still comes out."""
    return Result(name, "error", "—", "—", "—", "**error**", [f"{type(error).__name__}: {str(error)[:300]}"])


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)
