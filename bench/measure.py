"""Clients, samplers and statistics: curl downloads (one or many at once),
keep-alive latency loops, time to first byte, CPU time and worker RSS;
medians with their spread. Peers are always measured with the same client,
interleaved (``alternate``, ``interleaved_latency``) so drift hits all."""

from __future__ import annotations

import http.client
import os
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence
from urllib.parse import urlsplit

MiB = 1024 * 1024

CURL_FORMAT = "%{http_code} %{size_download} %{time_total} %{time_starttransfer}"


class BenchError(RuntimeError):
    pass


@dataclass
class Fetch:
    status: int
    size: int
    seconds: float
    ttfb: float

    @property
    def mib_s(self) -> float:
        return self.size / MiB / self.seconds if self.seconds else 0.0


def _curl_command(url: str, headers: Mapping[str, str] | None, args: Sequence[str] = ()) -> list[str]:
    command = ["curl", "-s", "-o", "/dev/null", "--noproxy", "*", "-w", CURL_FORMAT, *args]
    for name, value in (headers or {}).items():
        command += ["-H", f"{name}: {value}"]
    return command + [url]


def _parse(output: str, url: str, expect_size: int | None, expect_status: int = 200) -> Fetch:
    parts = output.split()
    if len(parts) != 4:
        raise BenchError(f"curl {url}: unexpected output {output!r}")
    fetch = Fetch(int(parts[0]), int(float(parts[1])), float(parts[2]), float(parts[3]))
    if fetch.status != expect_status or (expect_size is not None and fetch.size != expect_size):
        raise BenchError(f"curl {url}: HTTP {fetch.status}, {fetch.size} bytes (expected {expect_size})")
    return fetch


def curl(url: str, headers: Mapping[str, str] | None = None, expect_size: int | None = None,
         timeout: float = 300, args: Sequence[str] = (), expect_status: int = 200) -> Fetch:
    """One download with curl; ``args`` are more curl options (e.g. ``--aws-sigv4``)."""
    out = subprocess.run(_curl_command(url, headers, args), capture_output=True, text=True, timeout=timeout)
    return _parse(out.stdout, url, expect_size, expect_status)


def curl_many(urls: Sequence[str], headers: Mapping[str, str] | None = None, expect_size: int | None = None,
              timeout: float = 600) -> tuple[float, list[Fetch]]:
    """All at once; returns (wall seconds from the first start to the last end, fetches)."""
    started = time.perf_counter()
    processes = [subprocess.Popen(_curl_command(url, headers), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  text=True) for url in urls]
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=timeout)[0])
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    wall = time.perf_counter() - started
    return wall, [_parse(out, url, expect_size) for out, url in zip(outputs, urls)]


# -- latency ----------------------------------------------------------------------

class KeepAlive:
    """One persistent HTTP/1.1 connection; ``get()`` returns seconds."""

    def __init__(self, url: str, headers: Mapping[str, str] | None = None) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.path = parts.path + (f"?{parts.query}" if parts.query else "")
        self.headers = dict(headers or {})
        self.connection = http.client.HTTPConnection(self.host, self.port, timeout=30)

    def get(self) -> float:
        started = time.perf_counter()
        try:
            self.connection.request("GET", self.path, headers=self.headers)
            response = self.connection.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException):
            # The server closed an idle keep-alive connection: reconnect, retry once.
            self.connection.close()
            self.connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
            started = time.perf_counter()
            self.connection.request("GET", self.path, headers=self.headers)
            response = self.connection.getresponse()
            body = response.read()
        elapsed = time.perf_counter() - started
        if response.status != 200 or not body:
            raise BenchError(f"GET {self.path} on port {self.port}: HTTP {response.status}")
        return elapsed

    def close(self) -> None:
        self.connection.close()


def get_body(url: str, headers: Mapping[str, str] | None = None) -> bytes:
    """One GET on a fresh connection, the body."""
    client = KeepAlive(url, headers)
    try:
        client.connection.request("GET", client.path, headers=client.headers)
        return client.connection.getresponse().read()
    finally:
        client.close()


def interleaved_latency(targets: Mapping[str, tuple[str, Mapping[str, str] | None]], rounds: int,
                        per_round: int, warmup: int = 50) -> dict[str, list[list[float]]]:
    """Per target, ``rounds`` lists of ``per_round`` request times; targets
    alternate round by round (same client, same connection reuse)."""
    clients = {name: KeepAlive(url, headers) for name, (url, headers) in targets.items()}
    try:
        for client in clients.values():
            for _ in range(warmup):
                client.get()
        samples: dict[str, list[list[float]]] = {name: [] for name in clients}
        names = list(clients)
        for number in range(rounds):
            order = names if number % 2 == 0 else list(reversed(names))
            for name in order:
                client = clients[name]
                samples[name].append([client.get() for _ in range(per_round)])
        return samples
    finally:
        for client in clients.values():
            client.close()


# -- CPU -----------------------------------------------------------------------------

_HZ = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of ``pids`` (threads included), in seconds."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / _HZ


# -- memory -------------------------------------------------------------------------

def proc_status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise BenchError(f"no {field} for pid {pid}")


class RSSSampler:
    """Samples VmRSS of ``pids`` every ``interval`` seconds in a thread."""

    def __init__(self, pids: Sequence[int], interval: float = 0.01) -> None:
        self.pids = list(pids)
        self.interval = interval
        self.peak = {pid: 0 for pid in self.pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in self.pids:
                try:
                    self.peak[pid] = max(self.peak[pid], proc_status_kib(pid, "VmRSS"))
                except (OSError, BenchError):
                    pass
            self._stop.wait(self.interval)

    def __enter__(self) -> RSSSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# -- statistics -----------------------------------------------------------------------

@dataclass
class Stat:
    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        return cls(statistics.median(values), min(values), max(values), len(values))


def alternate(reps: int, runs: Mapping[str, Callable[[], float]]) -> dict[str, list[float]]:
    """Each run once per repetition, the order reversed every other time, so
    drift and other load hit every run alike."""
    results: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for rep in range(reps):
        for name in (names if rep % 2 == 0 else list(reversed(names))):
            results[name].append(runs[name]())
    return results


def flat(rounds: Sequence[Sequence[float]]) -> list[float]:
    return [value for values in rounds for value in values]


@dataclass
class LatencyGap:
    """``other`` against ``base``: both medians, and the added median latency
    overall with the least and most added in any one round."""

    base: Stat
    other: Stat
    added: float
    low: float
    high: float

    @classmethod
    def of(cls, samples: Mapping[str, Sequence[Sequence[float]]], base: str, other: str) -> LatencyGap:
        base_stat, other_stat = Stat.of(flat(samples[base])), Stat.of(flat(samples[other]))
        per_round = [statistics.median(y) - statistics.median(x) for x, y in zip(samples[base], samples[other])]
        return cls(base_stat, other_stat, other_stat.median - base_stat.median, min(per_round), max(per_round))

    def rounds_ms(self) -> str:
        return f"{self.low * 1000:+.3f}…{self.high * 1000:+.3f}"
