"""A small network of Linux network namespaces for the fleet bench (root only).

One *lab* is N node namespaces, B backend namespaces and one image-API
namespace, all named ``{prefix}-...``, joined by veth pairs:

* backend ``j`` has a service address ``10.77.0.{j+1}/32`` on its ``lo``;
  the image API has ``10.77.1.1/32`` on the API namespace's ``lo``;
* node ``i`` has its own veth pair to every backend (``b{j}`` in the node,
  ``n{i}`` in the backend; ``10.{100+i}.{j}.2`` / ``.1``) and one to the API
  (``api`` / ``n{i}``; ``10.{100+i}.250.2`` / ``.1``), and a host route to
  each service address over its own link. The same URL
  (``http://10.77.0.1:8080/...``) therefore travels over a different link
  from every node, which is the situation locproxy's ``measured`` strategy
  is for;
* each node↔backend link is shaped with ``tbf`` on the backend's egress
  (where the image bytes flow): ``rate(i, j)`` is ``rates[(j - i) % len(rates)]``,
  so node ``i``'s fastest backend is ``i % B`` when ``rates`` is descending.

Nothing is added to the root namespace. ``cleanup(prefix)`` removes what a
killed run left behind: it stops the processes still inside ``{prefix}-*``
namespaces (by pid, from ``ip netns pids``) and deletes the namespaces (their
veth pairs go with them). A ``Lab`` calls it before building and on close,
under a per-prefix lock file so two runs with one prefix cannot tear each
other's network down. Every command and every wait is bounded.

Processes are started inside a namespace with ``ip netns exec`` (which execs,
so the pid recorded is the program's own), each in its own session, and are
stopped by that pid: SIGTERM to the group, a bounded wait, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Mapping, Sequence

COMMAND_TIMEOUT = 15.0  # seconds for one ip/tc command
STOP_TIMEOUT = 10.0
LOCK_TIMEOUT = 120.0
LOCK_DIR = Path("/run/lock") if Path("/run/lock").is_dir() else Path("/tmp")

SERVICE_NET = "10.77"
API_ADDRESS = f"{SERVICE_NET}.1.1"
MAX_NODES = 100
MAX_BACKENDS = 200


class LabError(RuntimeError):
    """A command that builds or changes the lab failed (its stderr is in the message)."""


def run(*argv: str, check: bool = True, timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess:
    """Run one command (``ip ...``, ``tc ...``) with a bound; LabError if it fails and ``check``."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise LabError(f"{' '.join(argv)}: {error}") from None
    if check and done.returncode != 0:
        raise LabError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done


def unavailable_reason(prefix: str = "lpchk") -> str | None:
    """Why this process cannot build a lab (None: it can). Tries the real
    thing once: a namespace, a veth pair into a second one, a tbf qdisc."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth pairs and tc)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` (iproute2) not found"
    first, second = f"{prefix}-{os.getpid()}-a", f"{prefix}-{os.getpid()}-b"
    try:
        run("ip", "netns", "add", first)
        run("ip", "netns", "add", second)
        run("ip", "-n", first, "link", "add", "x0", "type", "veth", "peer", "name", "x1", "netns", second)
        run("tc", "-n", first, "qdisc", "add", "dev", "x0", "root", "tbf", "rate", "10mbit",
            "burst", "32kb", "latency", "20ms")
    except LabError as error:
        return f"cannot build network namespaces here: {error}"
    finally:
        for name in (first, second):
            run("ip", "netns", "del", name, check=False)
    return None


def namespaces(prefix: str) -> list[str]:
    """Existing namespaces named ``{prefix}-*``."""
    listing = run("ip", "netns", "list", check=False).stdout
    names = [line.split()[0] for line in listing.splitlines() if line.strip()]
    return [name for name in names if name.startswith(prefix + "-")]


def cleanup(prefix: str) -> list[str]:
    """Stop every process inside ``{prefix}-*`` namespaces and delete them.
    Returns the namespaces removed (stale ones after a killed run)."""
    removed = namespaces(prefix)
    for name in removed:
        pids = run("ip", "netns", "pids", name, check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        for pid in pids:
            _reap(int(pid))
        run("ip", "netns", "del", name, check=False)
    return removed


def _reap(pid: int, timeout: float = STOP_TIMEOUT) -> None:
    """Wait (bounded) until ``pid`` is gone; reap it if it is our child."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        if not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.05)


@dataclass(frozen=True)
class Topology:
    """The lab's shape: ``rates`` (Mbit/s) rotate per node, see the module docstring."""

    prefix: str = "lpf"
    nodes: int = 3
    backends: int = 3
    rates: tuple[int, ...] = (800, 200, 50)
    port: int = 8080  # every backend's http port
    api_port: int = 9292

    def __post_init__(self) -> None:
        if not (1 <= self.nodes <= MAX_NODES and 1 <= self.backends <= MAX_BACKENDS):
            raise ValueError(f"nodes must be 1..{MAX_NODES} and backends 1..{MAX_BACKENDS}")
        if len(self.rates) != self.backends or min(self.rates) <= 0:
            raise ValueError(f"rates: one positive Mbit/s figure per backend, got {self.rates}")
        if not self.prefix.isalnum() or len(self.prefix) > 8:
            raise ValueError(f"prefix: up to 8 letters and digits, got {self.prefix!r}")

    def node_ns(self, node: int) -> str:
        return f"{self.prefix}-n{node}"

    def backend_ns(self, backend: int) -> str:
        return f"{self.prefix}-b{backend}"

    @property
    def api_ns(self) -> str:
        return f"{self.prefix}-api"

    @staticmethod
    def backend_address(backend: int) -> str:
        return f"{SERVICE_NET}.0.{backend + 1}"

    def backend_url(self, backend: int) -> str:
        return f"http://{self.backend_address(backend)}:{self.port}"

    @property
    def api_url(self) -> str:
        return f"http://{API_ADDRESS}:{self.api_port}"

    def rate(self, node: int, backend: int) -> int:
        """Mbit/s from ``backend`` to ``node``."""
        return self.rates[(backend - node) % self.backends]

    def fastest(self, node: int) -> int:
        rates = [self.rate(node, backend) for backend in range(self.backends)]
        return rates.index(max(rates))

    def backend_of(self, text: str) -> int | None:
        """The backend whose service address appears in ``text`` (a URL or label)."""
        for backend in range(self.backends):
            address = self.backend_address(backend)
            if f"//{address}:" in text or f"//{address}/" in text or text.endswith(f"//{address}"):
                return backend
        return None


@dataclass
class Proc:
    """A process started in a namespace: stopped by its pid (its session)."""

    name: str
    popen: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, *markers: str, timeout: float) -> None:
        """Until every marker appears in the log; LabError with the log if
        the process exits or ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.log()
            if all(marker in text for marker in markers):
                return
            if not self.alive():
                raise LabError(f"{self.name} exited ({self.popen.returncode}) before {markers}:\n{text[-4000:]}")
            if time.monotonic() > deadline:
                raise LabError(f"{self.name}: no {markers} within {timeout:g}s:\n{text[-4000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM to its group, a bounded wait, then SIGKILL (also workers
        that outlived their master)."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=STOP_TIMEOUT)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=STOP_TIMEOUT)


class Lab:
    """Builds the namespaces and links of a ``Topology`` and starts processes
    in them. Use as a context manager: everything is removed on exit."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.procs: list[Proc] = []
        self._lock_file: IO[Any] | None = None
        self.stale_removed: list[str] = []

    def __enter__(self) -> Lab:
        self._lock()
        try:
            self.stale_removed = cleanup(self.topology.prefix)
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()
        cleanup(self.topology.prefix)
        if self._lock_file is not None:
            self._lock_file.close()  # releases the flock
            self._lock_file = None

    def _lock(self) -> None:
        path = LOCK_DIR / f"locproxy-netlab-{self.topology.prefix}.lock"
        self._lock_file = open(path, "w")  # noqa: SIM115 - held until close()
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    self._lock_file.close()
                    self._lock_file = None
                    raise LabError(f"another lab with prefix {self.topology.prefix!r} held {path} "
                                   f"for {LOCK_TIMEOUT:g}s") from None
                time.sleep(0.5)

    # -- building ------------------------------------------------------------

    def _build(self) -> None:
        topo = self.topology
        for name in ([topo.api_ns] + [topo.node_ns(i) for i in range(topo.nodes)]
                     + [topo.backend_ns(j) for j in range(topo.backends)]):
            run("ip", "netns", "add", name)
            run("ip", "-n", name, "link", "set", "lo", "up")
        run("ip", "-n", topo.api_ns, "addr", "add", f"{API_ADDRESS}/32", "dev", "lo")
        for j in range(topo.backends):
            run("ip", "-n", topo.backend_ns(j), "addr", "add", f"{topo.backend_address(j)}/32", "dev", "lo")
        for i in range(topo.nodes):
            node = topo.node_ns(i)
            self._link(node, "api", topo.api_ns, f"n{i}", f"10.{100 + i}.250")
            run("ip", "-n", node, "route", "add", f"{API_ADDRESS}/32", "via", f"10.{100 + i}.250.1")
            for j in range(topo.backends):
                self._link(node, f"b{j}", topo.backend_ns(j), f"n{i}", f"10.{100 + i}.{j}")
                run("ip", "-n", node, "route", "add", f"{topo.backend_address(j)}/32", "via", f"10.{100 + i}.{j}.1")
                self._shape(i, j)

    @staticmethod
    def _link(node_ns: str, node_dev: str, peer_ns: str, peer_dev: str, net: str) -> None:
        """A veth pair created inside the namespaces (never in the root one)."""
        run("ip", "-n", node_ns, "link", "add", node_dev, "type", "veth", "peer", "name", peer_dev,
            "netns", peer_ns)
        run("ip", "-n", node_ns, "addr", "add", f"{net}.2/24", "dev", node_dev)
        run("ip", "-n", peer_ns, "addr", "add", f"{net}.1/24", "dev", peer_dev)
        run("ip", "-n", node_ns, "link", "set", node_dev, "up")
        run("ip", "-n", peer_ns, "link", "set", peer_dev, "up")

    def _shape(self, node: int, backend: int) -> None:
        mbit = self.topology.rate(node, backend)
        # A bucket of about 1 ms at the rate (at least 32 KiB): enough for the
        # rate to be reached, small enough that a short probe is not served
        # from the bucket alone. 20 ms of queue: TCP cannot build a deep queue
        # that would delay a probe sharing the link with a download.
        burst = max(32 * 1024, mbit * 1_000_000 // 8 // 1000)
        run("tc", "-n", self.topology.backend_ns(backend), "qdisc", "replace", "dev", f"n{node}", "root",
            "tbf", "rate", f"{mbit}mbit", "burst", str(burst), "latency", "20ms")

    # -- faults --------------------------------------------------------------

    def set_backend_links(self, backend: int, up: bool) -> None:
        """Take all of one backend's node links down (or bring them back):
        its namespace's ends, so every node sees the carrier go and its
        packets to the backend vanish (connections time out, as with a dead
        host). Routes and shaping survive; they are re-applied to be sure."""
        topo = self.topology
        ns = topo.backend_ns(backend)
        for i in range(topo.nodes):
            run("ip", "-n", ns, "link", "set", f"n{i}", "up" if up else "down")
        if up:
            for i in range(topo.nodes):
                run("ip", "-n", topo.node_ns(i), "route", "replace", f"{topo.backend_address(backend)}/32",
                    "via", f"10.{100 + i}.{backend}.1")
                self._shape(i, backend)

    # -- processes -----------------------------------------------------------

    def start(self, name: str, ns: str, argv: Sequence[str], log_path: Path, *,
              cwd: Path | None = None, env: Mapping[str, str] | None = None) -> Proc:
        """Start ``argv`` inside namespace ``ns`` (own session), output to ``log_path``."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                ["ip", "netns", "exec", ns, *argv],
                cwd=str(cwd) if cwd else None,
                env={**os.environ, **(env or {})},
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Proc(name, popen, log_path)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.procs:
            self.procs.remove(proc)
