"""``bench/fleet/run``: one locproxy sidecar per node, nodes at different
network distances from the same backends, every strategy side by side.

Builds the lab (``netlab.py``: N node, B backend and one image-API network
namespaces; node↔backend links shaped with tbf so that each node has a
different fastest backend), then, for each strategy, starts fresh sidecars
(nothing learnt) and has every node download the same image sequence at the
same time through its own sidecar. A last run repeats ``measured`` with a
fault: backend 0's links go down while node 0 is in the middle of a download
from it, and come back ``--outage`` seconds later.

Writes ``results.csv`` (every download), ``RESULTS.md`` (settings, tables,
probe traffic) and ``fleet.png`` (download time against download number)
into ``--out``. Needs root; matplotlib only for the plot (``bench/fleet/run``
installs it).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.fleet import netlab
from bench.fleet.fleet import UPSTREAM_SOURCE, Fault, Fleet, RunResult, make_images, read_result

HERE = Path(__file__).resolve().parent
MiB = 1024 * 1024
IMAGE_CACHE = Path(os.environ.get("LOCPROXY_FLEET_CACHE", "/var/tmp/locproxy-fleet"))
STRATEGIES = ("location_order", "store_type", "weight", "measured")

# The same health settings for every run: a LAN's connect timeout, a read
# timeout well above any stall of a healthy shaped link.
HEALTH = {"failure_threshold": 3, "cooldown": 15, "backend_connect_timeout": 1, "backend_read_timeout": 3}
PROBING = {"probe_interval": 2, "probe_size": "1M"}


def strategy_options(strategy: str, topology: netlab.Topology) -> dict[str, Any]:
    """Each strategy at its best: static ones as an operator would set them
    once for the whole fleet, ``measured`` with probing."""
    options: dict[str, Any] = {"location_strategy": strategy, **HEALTH}
    if strategy == "store_type":
        options["store_type_preference"] = "http"  # every copy is http: nothing to tell them apart
    elif strategy == "weight":
        options["store_weights"] = global_weights(topology)
    elif strategy == "measured":
        options.update(PROBING)
    return options


def global_weights(topology: netlab.Topology) -> str:
    """One weight per store for the whole fleet: the backend with the least
    total download time over all nodes highest (ties: the lower index)."""
    cost = {j: sum(1 / topology.rate(i, j) for i in range(topology.nodes)) for j in range(topology.backends)}
    ranked = sorted(cost, key=lambda j: (round(cost[j], 9), j))
    return ", ".join(f"b{j}:{10 * (topology.backends - rank)}" for rank, j in enumerate(ranked))


def source_names(sources: tuple[int, ...]) -> str:
    return ">".join("api" if s == UPSTREAM_SOURCE else f"b{s}" for s in sources) or "?"


# -- output --------------------------------------------------------------------

def write_csv(path: Path, results: list[RunResult]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["run", "strategy", "node", "fastest_backend", "n", "image", "start_s", "seconds",
                         "mib_per_s", "bytes", "exact", "sources", "from_fastest", "failures"])
        for result in results:
            for d in sorted(result.downloads, key=lambda d: (d.node, d.n)):
                writer.writerow([
                    result.name, result.strategy, d.node, f"b{result.topology.fastest(d.node)}", d.n, d.image,
                    f"{d.started - result.started:.3f}", f"{d.seconds:.3f}", f"{d.bytes / MiB / d.seconds:.1f}",
                    d.bytes, int(d.ok), source_names(d.sources), int(result.from_fastest(d)),
                    "|".join(f"{source_names((b,))}: {reason}" for b, reason in d.failures),
                ])


def strategy_table(results: list[RunResult]) -> str:
    topo = results[0].topology
    measured = next((r for r in results if r.name == "measured"), None)
    head = ["strategy"] + [f"node {i} (fastest b{topo.fastest(i)})" for i in range(topo.nodes)]
    head += ["fleet total", "÷ measured", "from own fastest", "all on own fastest from download"]
    rows = []
    for r in results:
        exact = all(d.ok for d in r.downloads)
        per_node = [f"{r.total_seconds(i):,.1f} s" for i in range(topo.nodes)]
        ratio = f"{r.total_seconds() / measured.total_seconds():.2f} ×" if measured else "—"
        share = sum(r.from_fastest(d) for d in r.downloads) / len(r.downloads)
        converged = [r.converged_from(i) for i in range(topo.nodes)]
        since = "never" if None in converged else ", ".join(str(c) for c in converged)
        rows.append([r.name] + per_node + [f"{r.total_seconds():,.1f} s" + ("" if exact else " (NOT exact)"),
                                           ratio, f"{share:.0%}", since])
    return markdown(head, rows)


def fault_table(result: RunResult) -> str:
    assert result.fault is not None and result.cut_at is not None and result.restored_at is not None
    fault, topo = result.fault, result.topology
    head = ["node", "downloads cut mid-transfer", f"failed attempts on b{fault.backend} before demotion",
            "of which counted by then", "demoted after the cut", "back on it"]
    rows = []
    for node in range(topo.nodes):
        health = result.health[node]
        baseline = health.total_at(result.cut_at)
        demotion = health.first_demotion()
        cut = [d for d in result.of_node(node) if len(d.sources) > 1]
        cut_text = ", ".join(f"#{d.n} {source_names(d.sources)} ({'exact' if d.ok else 'NOT exact'})"
                             for d in cut) or "none"
        attempts = health.failed_attempts(result.cut_at, result.restored_at, result.attempt_slack())
        counted = "—" if demotion is None else str(demotion[1] - baseline)
        demoted = "not demoted" if demotion is None else f"{demotion[0] - result.cut_at:.1f} s"
        rows.append([f"node {node}", cut_text, str(attempts), counted, demoted, _back_on(result, node)])
    return markdown(head, rows)


def _back_on(result: RunResult, node: int) -> str:
    """When the node used the cut backend again (its own fastest), or when
    its record of it was healthy again."""
    fault = result.fault
    assert fault is not None and result.restored_at is not None
    if result.topology.fastest(node) == fault.backend:
        again = [d for d in result.of_node(node) if d.started > result.cut_at and d.sources == (fault.backend,)]
        if again:
            return f"download #{again[0].n}, {again[0].started - result.restored_at:.1f} s after the links came back"
        return "never"
    healthy = result.health[node].healthy_again(result.restored_at)
    return "record never healthy again" if healthy is None else (
        f"healthy again {healthy - result.restored_at:.1f} s after the links came back (probe)")


def markdown(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def plot(path: Path, results: list[RunResult]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in results if r.fault is None]
    faulted = [r for r in results if r.fault is not None]
    figure, axes = plt.subplots(1, 1 + len(faulted), figsize=(13 if faulted else 8, 5.5), squeeze=False)
    styles = ["-", "--", ":", "-."]
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    left = axes[0][0]
    for k, r in enumerate(runs):
        for node in range(r.topology.nodes):
            downloads = r.of_node(node)
            left.plot([d.n for d in downloads], [d.seconds for d in downloads], styles[k % len(styles)],
                      color=colours[node % len(colours)], marker="o" if r.strategy == "measured" else None,
                      markersize=3, label=f"{r.name}, node {node}")
    from matplotlib.ticker import MaxNLocator

    for ax in axes[0]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.set_yscale("log")
    left.set_xlabel("download number")
    left.set_ylabel("download time (s, log scale)")
    left.set_title("every node, every strategy")
    left.legend(fontsize=7, ncol=2, loc="center right")
    for ax, r in zip(axes[0][1:], faulted):
        fault = r.fault
        assert fault is not None
        for node in range(r.topology.nodes):
            downloads = r.of_node(node)
            ax.plot([d.n for d in downloads], [d.seconds for d in downloads], "-o", markersize=3,
                    color=colours[node % len(colours)], label=f"node {node}")
            for d in downloads:
                if len(d.sources) > 1:
                    ax.annotate(f"resumed {source_names(d.sources)}", (d.n, d.seconds), fontsize=7,
                                textcoords="offset points", xytext=(5, 5))
        outage = [d.n for d in r.of_node(fault.node)
                  if r.cut_at <= d.started + d.seconds and d.started <= r.restored_at]
        if outage:
            ax.axvspan(min(outage) - 0.5, max(outage) + 0.5, color="grey", alpha=0.25,
                       label=f"node {fault.node}'s downloads during the cut of b{fault.backend}")
        demotion = r.health[fault.node].first_demotion() if fault.node in r.health else None
        if demotion is not None and outage:
            cooling = [d.n for d in r.of_node(fault.node)
                       if d.n > max(outage) and d.started <= demotion[2]]
            if cooling:
                ax.axvspan(max(outage) + 0.5, max(cooling) + 0.5, color="grey", alpha=0.1,
                           label=f"b{fault.backend} back, node {fault.node} still in its cool-down")
        ax.set_yscale("log")
        ax.set_xlabel("download number")
        ax.set_title(f"{r.strategy}: b{fault.backend} cut for {fault.outage:g} s")
        ax.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def targets(results: list[RunResult]) -> str:
    """Issue 15's targets, each with the figure it was judged on."""
    rows = []
    measured = next((r for r in results if r.name == "measured"), None)
    static = [r for r in results if r.fault is None and r.strategy != "measured"]
    if measured is not None:
        converged = [measured.converged_from(i) for i in range(measured.topology.nodes)]
        met = None not in converged and max(converged) <= 3
        rows.append(["measured: every node on its own fastest backend from its 3rd download on",
                     "from download " + ", ".join(str(c) for c in converged) + " (node 0, 1, ...)",
                     "yes" if met else "no"])
        if static:
            best = min(static, key=lambda r: r.total_seconds())
            ratio = best.total_seconds() / measured.total_seconds()
            rows.append(["fleet total with measured ≥ 1.5 × better than the best static strategy",
                         f"{best.name} {best.total_seconds():,.1f} s ÷ measured {measured.total_seconds():,.1f} s "
                         f"= {ratio:.2f}", "yes" if ratio >= 1.5 else "no"])
    for r in results:
        if r.fault is None or r.cut_at is None or r.restored_at is None:
            continue
        cut = [d for d in r.downloads if len(d.sources) > 1]
        rows.append([f"{r.name}: every download cut mid-transfer completes with exact bytes (resume)",
                     f"{sum(d.ok for d in cut)} of {len(cut)} exact; all {len(r.downloads)} downloads "
                     f"{'exact' if all(d.ok for d in r.downloads) else 'NOT all exact'}",
                     "yes" if cut and all(d.ok for d in r.downloads) else "no"])
        threshold = int(r.options["failure_threshold"])
        costs = [r.health[node].failed_attempts(r.cut_at, r.restored_at, r.attempt_slack())
                 for node in range(r.topology.nodes)]
        rows.append([f"{r.name}: at most failure_threshold ({threshold}) failed attempts per node before demotion",
                     ", ".join(str(c) for c in costs) + " (node 0, 1, ...)",
                     "yes" if max(costs) <= threshold else "no"])
    return markdown(["target", "measured", "met"], rows)


def report(results: list[RunResult], settings: dict[str, Any]) -> str:
    parts = [f"# Fleet bench results ({settings['date']})", ""]
    parts += [f"- {key}: {value}" for key, value in settings.items() if key != "date"]
    parts += ["", "## Targets", "", targets(results), ""]
    parts += ["## Download time per node and strategy", "", strategy_table(results), ""]
    measured = next((r for r in results if r.name == "measured"), None)
    if measured is not None:
        parts += ["## Probe traffic and metrics (measured run)", ""]
        seconds = measured.ended - measured.started
        rows = []
        for node in range(measured.topology.nodes):
            rows.append([f"node {node}", f"{measured.probe_requests.get(node, 0)} in {seconds:.0f} s",
                         f"{measured.probe_rate(node) / 1024:,.0f} KiB/s",
                         f"{measured.probe_requests.get(node, 0) / seconds:.2f}/s",
                         str(measured.metric_series.get(node, "?"))])
        parts += [markdown(["node", "probe requests", "probe bytes", "probe requests per second",
                            "locproxy_* series on /metrics"], rows), ""]
    for r in results:
        if r.fault is not None and r.cut_at is not None and r.restored_at is not None:
            parts += [f"## Backend cut ({r.name})", "", fault_table(r), ""]
            parts += [f"Links of b{r.fault.backend} down at {r.cut_at - r.started:.1f} s into the run, back at "
                      f"{r.restored_at - r.started:.1f} s; cool-down {r.options['cooldown']} s, failure threshold "
                      f"{r.options['failure_threshold']}. Failures are read from each node's metrics file "
                      f"every {0.1:g} s. *Failed attempts before demotion*: every failure from the cut until "
                      f"the first cool-down ended (or, never demoted, until the links were back and any "
                      f"attempt still running had failed), i.e. of every attempt started while the backend "
                      f"was not demoted; *counted by then*: the tracker's count at the first poll "
                      f"showing the demotion (the difference: attempts in flight when it came).", ""]
    return "\n".join(parts)


# -- main ----------------------------------------------------------------------

# Logs, event files, metrics files and run records of the last run stay here
# (the image files in it are hard links to the cache): --from-logs re-reads them.
LAST_RUN = IMAGE_CACHE / "last-run"


def run_bench(args: argparse.Namespace) -> tuple[list[RunResult], dict[str, Any]]:
    rates = tuple(int(rate) for rate in args.rates.split(","))
    topology = netlab.Topology(prefix="lpf", nodes=args.nodes, backends=len(rates), rates=rates)
    size = args.size * MiB
    images = make_images(IMAGE_CACHE / f"{args.images}x{args.size}M", args.images, size)
    worst = args.images * size * 8 / (min(rates) * 1e6)
    settings = {
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "machine": f"{os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}, "
                   f"kernel {platform.release()}",
        "load average before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "fleet": f"{topology.nodes} nodes, {topology.backends} backends, node↔backend links {args.rates} Mbit/s "
                 f"(tbf, rotated per node)",
        "workload": f"every node downloads the same {args.images} images of {args.size} MiB, one after another, "
                    f"all nodes at once, through its own sidecar (gunicorn, 1 worker × 8 threads)",
        "options, every strategy": ", ".join(f"{k} = {v}" for k, v in HEALTH.items()),
        "measured": ", ".join(f"{k} = {v}" for k, v in PROBING.items()) + " (static strategies: no probing)",
        "weight": f"store_weights = {global_weights(topology)}",
    }
    results: list[RunResult] = []
    with netlab.Lab(topology) as lab:
        if lab.stale_removed:
            print(f"removed stale namespaces: {', '.join(lab.stale_removed)}", file=sys.stderr)
        if LAST_RUN.exists():
            shutil.rmtree(LAST_RUN)
        fleet = Fleet(lab, LAST_RUN, images)
        fleet.start_upstream()
        for strategy in args.strategies.split(","):
            began = time.monotonic()
            result = fleet.run(strategy, strategy_options(strategy, topology), images, timeout=3 * worst + 300)
            results.append(result)
            print(f"{strategy}: fleet total {result.total_seconds():.1f} s "
                  f"(wall {time.monotonic() - began:.0f} s)", file=sys.stderr, flush=True)
        if not args.no_fault:
            fault = Fault(backend=0, node=0, download=min(args.cut_at, args.images), at=8 * MiB, outage=args.outage)
            results.append(fleet.run("measured, b0 cut", strategy_options("measured", topology), images,
                                     fault=fault, timeout=3 * worst + 300))
    settings["load average after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    (LAST_RUN / "bench.json").write_text(json.dumps({
        "settings": settings, "topology": dataclasses.asdict(topology),
        "runs": [fleet.run_dir(r.name).name for r in results],
    }))
    return results, settings


def read_last_run() -> tuple[list[RunResult], dict[str, Any]]:
    """The results of the last run, from its files in LAST_RUN."""
    bench = json.loads((LAST_RUN / "bench.json").read_text())
    topology = netlab.Topology(**{**bench["topology"], "rates": tuple(bench["topology"]["rates"])})
    return [read_result(LAST_RUN / name, topology) for name in bench["runs"]], bench["settings"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20, help="images per sequence (default 20)")
    parser.add_argument("--size", type=int, default=64, help="MiB per image (default 64)")
    parser.add_argument("--rates", default="800,200,50", help="Mbit/s per backend, rotated per node")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--no-fault", action="store_true", help="skip the backend-cut run")
    parser.add_argument("--outage", type=float, default=15.0, help="seconds backend 0 stays cut")
    parser.add_argument("--cut-at", type=int, default=6, help="node 0's download during which backend 0 is cut")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run of the machinery, not of the targets: 8 images of 16 MiB, the cut "
                             "during download 3 for 4 s, results in a temporary --out")
    parser.add_argument("--from-logs", action="store_true",
                        help=f"run nothing: write the outputs again from the last run's files ({LAST_RUN})")
    parser.add_argument("--out", type=Path, default=None, help="where results go (default bench/fleet)")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.size, args.cut_at, args.outage = 8, 16, 3, 4.0
    out = args.out or (Path(tempfile.mkdtemp(prefix="locproxy-fleet-")) if args.quick else HERE)
    if args.from_logs:
        results, settings = read_last_run()
    else:
        reason = netlab.unavailable_reason()
        if reason is not None:
            print(f"bench/fleet: {reason}", file=sys.stderr)
            return 2
        results, settings = run_bench(args)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "results.csv", results)
    text = report(results, settings)
    (out / "RESULTS.md").write_text(text + "\n")
    try:
        plot(out / "fleet.png", results)
    except ImportError:
        print("bench/fleet: matplotlib missing, no plot (bench/fleet/run installs it)", file=sys.stderr)
    print(text)
    print(f"\nwritten to {out}; logs of every process in {LAST_RUN}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
