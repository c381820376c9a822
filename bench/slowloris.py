#!/usr/bin/env python3
"""Idle, slowloris and slow-read clients against the locproxy sidecar, alone
and behind nginx (issue 10): how long legitimate requests take meanwhile.

The recommended sidecar (``gunicorn -c etc/gunicorn.conf.py --paste`` of a
sidecar ini: gthread, 2 workers x 16 threads, keep-alive 5 s) serves a
64 MiB image from a ``file://`` location under ``file_roots`` (sendfile once
verified) and image shows from a ``DemoImageAPI`` upstream. For each setup
and attack, a fresh sidecar is started and warmed up, 300 attackers connect
from 127.0.0.2, and 5 s later a legitimate client (127.0.0.1) starts one
download and one image show every 4 s, 10 of each, on new connections, each
bounded by 60 s. Attacks, one at a time:

* ``idle``: connect and send nothing; reconnect 1 s after the server closes.
* ``slowloris``: a request line, then one more header line every 3 s, never
  the blank line that ends the head.
* ``slowread``: request the image with a 4 KiB receive buffer and read 1 byte
  a second.

Setups: the sidecar alone (``gunicorn``), nginx in front of it with
``etc/nginx-front.conf.example`` (``nginx``; only the two addresses are
substituted), and optional gunicorn-only mitigations and an nginx variant
without temp-file spooling. Prints a markdown table.

    .venv/bin/python bench/slowloris.py                    # gunicorn and nginx rows, ~9 min
    .venv/bin/python bench/slowloris.py --setups gunicorn-keepalive2,gunicorn-256threads,nginx-nospool
    .venv/bin/python bench/slowloris.py --attacks idle --requests 3 --timeout 20   # quick look

Everything listens on 127.0.0.1 (attackers bind 127.0.0.2); every process
started here is stopped on exit, and every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
os.chdir(REPO_ROOT)  # run_gunicorn and the helpers expect the checkout

from bench.servers import accepts, free_port, stop  # noqa: E402
from locproxy.demo import DemoImageAPI, demo_bytes, location, serve_wsgi  # noqa: E402
from tests.support.servers import GunicornServer, run_gunicorn, sidecar_ini  # noqa: E402

NGINX_EXAMPLE = REPO_ROOT / "etc" / "nginx-front.conf.example"
GUNICORN_CONF = REPO_ROOT / "etc" / "gunicorn.conf.py"
BIG_IMAGE = "5104e115-0000-4000-8000-000000000064"
SMALL_IMAGE = "5104e115-0000-4000-8000-000000000001"
BIG_SIZE = 64 << 20
LEGIT_SOURCE = "127.0.0.1"
ATTACK_SOURCE = "127.0.0.2"  # one attacking host: what limit_conn per address sees
ATTACKS = ("none", "idle", "slowloris", "slowread")

# Attackers: seconds between slowloris header lines, between slow reads, and
# before reconnecting (keeps a refused attacker from spinning the CPU that
# the servers under test share).
SLOWLORIS_INTERVAL = 3.0
SLOWREAD_INTERVAL = 1.0
RECONNECT_DELAY = 1.0
SLOWREAD_RCVBUF = 4096
TCP_ESTABLISHED, TCP_CLOSE = 1, 7


# -- setups ----------------------------------------------------------------------

@dataclass(frozen=True)
class Setup:
    name: str
    description: str
    threads: int = 16
    gunicorn_args: tuple[str, ...] = ()
    nginx: bool = False
    # (directive line in the example, replacement): variants of the example
    nginx_changes: tuple[tuple[str, str], ...] = ()


SETUPS = {setup.name: setup for setup in (
    Setup("gunicorn", "sidecar alone (etc/gunicorn.conf.py: gthread 2 × 16, keep-alive 5 s)"),
    Setup("nginx", "nginx (etc/nginx-front.conf.example) → the same sidecar", nginx=True),
    Setup("nginx-nospool", "nginx as the example but `proxy_max_temp_file_size 0` (memory buffers only)",
          nginx=True, nginx_changes=(("proxy_max_temp_file_size 1024m;", "proxy_max_temp_file_size 0;"),)),
    Setup("gunicorn-keepalive2", "sidecar alone, `--keep-alive 2`", gunicorn_args=("--keep-alive", "2")),
    Setup("gunicorn-256threads", "sidecar alone, 2 × 256 threads (pools 256)", threads=256),
)}
DEFAULT_SETUPS = ("gunicorn", "nginx")


# -- the legitimate client -----------------------------------------------------------

@dataclass
class Outcome:
    seconds: float
    error: str | None = None  # None: complete and correct


def fetch(port: int, path: str, timeout: float, *, expect_size: int | None = None,
          expect_id: str | None = None) -> Outcome:
    """GET ``path`` on a new connection from LEGIT_SOURCE, the whole exchange
    bounded by ``timeout``; checks the status and the body's size (downloads)
    or its image id (shows)."""
    started = time.monotonic()
    deadline = started + timeout

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        return left

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                      source_address=(LEGIT_SOURCE, 0)) as sock:
            sock.settimeout(remaining())
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
            buffered = b""
            while b"\r\n\r\n" not in buffered:
                sock.settimeout(remaining())
                data = sock.recv(65536)
                if not data:
                    return Outcome(time.monotonic() - started, "closed before a response")
                buffered += data
            head, body_start = buffered.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
            length = int(headers.get("content-length", -1))
            body = bytearray(body_start) if expect_size is None else None
            received = len(body_start)
            chunk = bytearray(1 << 20)
            while length < 0 or received < length:
                sock.settimeout(remaining())
                count = sock.recv_into(chunk)
                if not count:
                    break
                received += count
                if body is not None:
                    body += chunk[:count]
        elapsed = time.monotonic() - started
        if status != 200:
            return Outcome(elapsed, f"HTTP {status}")
        if expect_size is not None and received != expect_size:
            return Outcome(elapsed, "short body")
        if expect_id is not None and not _shows(bytes(body or b""), expect_id):
            return Outcome(elapsed, "wrong body")
        return Outcome(elapsed)
    except (TimeoutError, socket.timeout):
        return Outcome(time.monotonic() - started, "timeout")
    except OSError as error:
        return Outcome(time.monotonic() - started, type(error).__name__)


def _shows(body: bytes, image_id: str) -> bool:
    try:
        return json.loads(body)["id"] == image_id
    except (ValueError, KeyError, TypeError):
        return False


def legit_load(port: int, requests: int, interval: float, timeout: float) -> tuple[list[Outcome], list[Outcome]]:
    """One download and (half an interval later) one show every ``interval``
    seconds, ``requests`` of each, whether or not earlier ones finished: users
    do not wait for each other."""
    t0 = time.monotonic()

    def at(when: float, path: str, expect_size: int | None = None, expect_id: str | None = None) -> Outcome:
        time.sleep(max(0.0, t0 + when - time.monotonic()))
        return fetch(port, path, timeout, expect_size=expect_size, expect_id=expect_id)

    with ThreadPoolExecutor(max_workers=2 * requests) as pool:
        downloads = [pool.submit(at, i * interval, f"/v2/images/{BIG_IMAGE}/file", expect_size=BIG_SIZE)
                     for i in range(requests)]
        shows = [pool.submit(at, (i + 0.5) * interval, f"/v2/images/{SMALL_IMAGE}", expect_id=SMALL_IMAGE)
                 for i in range(requests)]
        return [f.result() for f in downloads], [f.result() for f in shows]


# -- attackers -------------------------------------------------------------------------

@dataclass
class AttackStats:
    connections: int = 0  # connections opened in all
    open: int = 0
    open_at_start: int = 0  # open when the legitimate client started
    answers: Counter[str] = field(default_factory=Counter)  # status codes the attackers received
    ends: Counter[str] = field(default_factory=Counter)  # how their connections ended

    def summary(self) -> str:
        answers = ", ".join(f"{count} × {status}" for status, count in sorted(self.answers.items())) or "none"
        ends = ", ".join(f"{count} {how}" for how, count in self.ends.most_common()) or "none"
        return f"{self.open_at_start} / {self.connections} / {answers} / {ends}"


def _tcp_state(sock: socket.socket) -> int:
    """The kernel's TCP state (tcpi_state): ESTABLISHED until the server
    closes or resets, which a slow reader would otherwise not notice for a
    long time (the FIN waits behind unread data)."""
    return struct.unpack("B", sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1))[0]


def _status(data: bytes) -> str | None:
    """``"429"`` from ``b"HTTP/1.1 429 ..."``."""
    match = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return match.group(1).decode() if match else None


class Attack:
    """``count`` attackers of one kind against 127.0.0.1:``port``, each on its
    own connection from ATTACK_SOURCE, reconnecting whenever the server
    closes; run by an asyncio loop in a thread. A context manager."""

    def __init__(self, kind: str, port: int, count: int) -> None:
        self.kind, self.port, self.count = kind, port, count
        self.stats = AttackStats()
        self._loop = asyncio.new_event_loop()
        self._stopping: asyncio.Event | None = None
        self._running = threading.Event()  # _stopping exists (it belongs to the loop's thread)
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._main(),), daemon=True)

    def __enter__(self) -> Attack:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._running.wait(5.0) and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(15.0)
        if self._thread.is_alive():
            raise RuntimeError("attackers did not stop within 15 s")
        self._loop.close()

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        self._running.set()
        tasks = [asyncio.create_task(self._attacker()) for _ in range(self.count)]
        await self._stopping.wait()
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=10.0)

    async def _attacker(self) -> None:
        loop = asyncio.get_running_loop()
        attack = getattr(self, f"_{self.kind}")
        while True:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            # Linux: choose the source port at connect(), per destination, so
            # thousands of reconnects from one address do not run out of ports.
            sock.setsockopt(socket.IPPROTO_IP, getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24), 1)
            if self.kind == "slowread":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOWREAD_RCVBUF)
            sock.setblocking(False)
            try:
                sock.bind((ATTACK_SOURCE, 0))
                await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", self.port)), 10.0)
                self.stats.connections += 1
                self.stats.open += 1
                try:
                    self.stats.ends[await attack(loop, sock)] += 1
                finally:
                    self.stats.open -= 1
            except ConnectionResetError:
                self.stats.ends["reset by the server"] += 1
            except (OSError, asyncio.TimeoutError) as error:
                self.stats.ends[type(error).__name__] += 1
            finally:
                # RST, not FIN: no TIME_WAIT pile-up on the attacking side.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
            await asyncio.sleep(RECONNECT_DELAY)

    def _answered(self, data: bytes) -> str:
        status = _status(data)
        if status:
            self.stats.answers[status] += 1
        return "answered" if data else "closed by the server"

    async def _idle(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> str:
        return self._answered(await loop.sock_recv(sock, 4096))

    async def _slowloris(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> str:
        await loop.sock_sendall(sock, f"GET /v2/images/{SMALL_IMAGE} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode())
        line = 0
        while True:
            try:
                data = await asyncio.wait_for(loop.sock_recv(sock, 4096), SLOWLORIS_INTERVAL)
                return self._answered(data)
            except asyncio.TimeoutError:
                line += 1
                await loop.sock_sendall(sock, f"X-Slow-{line}: {line}\r\n".encode())

    async def _slowread(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> str:
        await loop.sock_sendall(sock, f"GET /v2/images/{BIG_IMAGE}/file HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        head = b""
        while (state := _tcp_state(sock)) == TCP_ESTABLISHED:
            await asyncio.sleep(SLOWREAD_INTERVAL)
            try:
                data = sock.recv(1)  # non-blocking: nothing yet while the request waits for a thread
            except BlockingIOError:
                continue
            if not data:
                break
            head += data
            if len(head) == 12 and _status(head):  # the status line, 12 s in
                self.stats.answers[_status(head)] += 1
        return "reset by the server" if state == TCP_CLOSE else "closed by the server"


# -- servers ----------------------------------------------------------------------

def ensure_nginx() -> str:
    """The nginx binary; installed as bench/run does when missing."""
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if binary:
        return binary
    print("slowloris: installing nginx", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "nginx"]
    if subprocess.run(install, env=env, capture_output=True, timeout=600).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600, check=True)
        subprocess.run(install, env=env, capture_output=True, timeout=600, check=True)
    return shutil.which("nginx") or "/usr/sbin/nginx"


def nginx_front_config(prefix: Path, listen_port: int, sidecar_port: int,
                       changes: Sequence[tuple[str, str]] = ()) -> str:
    """A whole nginx.conf: loopback-only globals and temp paths (as the stock
    nginx.conf and package would set them), then the example file with only
    its listen and sidecar addresses (and ``changes``) substituted."""
    example = NGINX_EXAMPLE.read_text()
    for old, new in (("listen 8080;", f"listen 127.0.0.1:{listen_port};"),
                     ("server 127.0.0.1:9393;", f"server 127.0.0.1:{sidecar_port};"), *changes):
        if example.count(old) != 1:  # the example changed under the benchmark
            raise RuntimeError(f"{NGINX_EXAMPLE.name}: expected exactly one {old!r}")
        example = example.replace(old, new)
    temp_paths = "\n".join(f"    {kind}_temp_path {prefix}/tmp/{kind};"
                           for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return (f"# bench/slowloris.py: written per run.\nworker_processes 2;\npid {prefix}/nginx.pid;\n"
            f"error_log {prefix}/error.log warn;\nworker_rlimit_nofile 16384;\n"
            "events { worker_connections 4096; }\n"
            "http {\n    access_log off;\n    sendfile on;\n    tcp_nopush on;\n"
            f"{temp_paths}\n{textwrap.indent(example, '    ')}}}\n")


@contextlib.contextmanager
def nginx_front(workdir: Path, sidecar_port: int, changes: Sequence[tuple[str, str]]) -> Iterator[int]:
    """nginx with the example config in front of the sidecar; yields its port."""
    prefix = Path(tempfile.mkdtemp(prefix="nginx-", dir=workdir))
    (prefix / "tmp").mkdir()
    for path in (workdir, prefix, prefix / "tmp"):
        path.chmod(0o755)  # run as root, nginx's workers become "nobody"
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_front_config(prefix, port, sidecar_port, changes))
    with open(prefix / "stdout.log", "wb") as log:
        process = subprocess.Popen([ensure_nginx(), "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"],
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + 15.0
        while not accepts(port):
            if process.poll() is not None or time.monotonic() > deadline:
                error_log = prefix / "error.log"
                raise RuntimeError("nginx did not start: " + (error_log.read_text()[-2000:] if error_log.exists() else ""))
            time.sleep(0.05)
        yield port
    finally:
        stop(process)


@contextlib.contextmanager
def sidecar(workdir: Path, upstream: str, root: Path, setup: Setup) -> Iterator[GunicornServer]:
    """The recommended sidecar: gunicorn with etc/gunicorn.conf.py (gthread,
    keep-alive 5 s, timeout 60 s), 2 workers, ``setup.threads`` threads."""
    pool = max(32, setup.threads)
    ini = sidecar_ini(workdir / f"sidecar-{setup.name}.ini", upstream,
                      {"file_roots": root, "backend_pool_maxsize": pool}, {"pool_maxsize": pool})
    # The worker's pid on each log line: warm_up must see every worker verify.
    ini.write_text(ini.read_text().replace("format = %(levelname)s", "format = %(process)d %(levelname)s"))
    extra = ["--config", str(GUNICORN_CONF), "--timeout", "60", *setup.gunicorn_args]
    with run_gunicorn(ini, workers=2, threads=setup.threads, extra_args=extra) as server:
        yield server


def warm_up(server: GunicornServer, workers: int, timeout: float) -> None:
    """Download the image until every worker has verified it once, so every
    later download is sent with sendfile (verification is per worker)."""
    verified = re.compile(rf"^(\d+) INFO \S+: image {BIG_IMAGE}: .*\(sha512 verified\)$", re.MULTILINE)
    for _ in range(20):
        if len(set(verified.findall(server.log()))) >= workers:
            return
        with ThreadPoolExecutor(max_workers=workers) as pool:
            outcomes = list(pool.map(lambda _: fetch(server.port, f"/v2/images/{BIG_IMAGE}/file", timeout,
                                                     expect_size=BIG_SIZE), range(workers)))
        if any(outcome.error for outcome in outcomes):
            raise RuntimeError(f"warm-up download failed: {[o.error for o in outcomes]}")
    raise RuntimeError(f"the {workers} workers did not all verify the image in 20 rounds")


# -- scenarios ---------------------------------------------------------------------------

@dataclass
class Result:
    setup: Setup
    attack: str
    downloads: list[Outcome]
    shows: list[Outcome]
    sendfile: int
    attack_stats: AttackStats | None
    seconds: float


def run_scenario(workdir: Path, upstream: str, root: Path, setup: Setup, attack: str,
                 args: argparse.Namespace) -> Result:
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(sidecar(workdir, upstream, root, setup))
        warm_up(server, 2, args.timeout)
        port = server.port
        if setup.nginx:
            port = stack.enter_context(nginx_front(workdir, port, setup.nginx_changes))
        stats = None
        if attack != "none":
            stats = stack.enter_context(Attack(attack, port, args.attackers)).stats
            time.sleep(args.ramp)  # let the attackers connect and settle
            stats.open_at_start = stats.open
        log_before = server.log().count("(sendfile)")
        downloads, shows = legit_load(port, args.requests, args.interval, args.timeout)
        sendfile = server.log().count("(sendfile)") - log_before
    return Result(setup, attack, downloads, shows, sendfile, stats, time.monotonic() - started)


# -- report -----------------------------------------------------------------------------

def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def _latency(outcomes: Sequence[Outcome], timeout: float) -> tuple[str, str, str]:
    """p50, max and failures over all requests; a request that timed out
    counts at the time bound, shown as "> bound"."""
    times = sorted(outcome.seconds for outcome in outcomes)

    def shown(value: float) -> str:
        return f"> {timeout:.0f} s" if value >= timeout - 0.05 else _duration(value)

    errors = Counter(outcome.error for outcome in outcomes if outcome.error)
    failed = f"{sum(errors.values())}/{len(outcomes)}"
    if errors:
        failed += " (" + ", ".join(f"{count} {name}" for name, count in errors.most_common()) + ")"
    return shown(statistics.median_low(times)), shown(times[-1]), failed


def table(results: Sequence[Result], timeout: float, attackers: int) -> str:
    lines = [
        f"| in front of the sidecar | {attackers} attackers | 64 MiB download p50 | max | failed | "
        "image show p50 | max | failed | attackers: open at start / connections / statuses received / ends |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        down = _latency(result.downloads, timeout)
        show = _latency(result.shows, timeout)
        attackers = result.attack_stats.summary() if result.attack_stats else "–"
        front = "nothing (gunicorn)" if result.setup.name == "gunicorn" else result.setup.name
        lines.append(f"| {front} | {result.attack} | {' | '.join(down)} | {' | '.join(show)} | {attackers} |")
    return "\n".join(lines)


def _versions() -> str:
    import gunicorn

    nginx = subprocess.run([ensure_nginx(), "-v"], capture_output=True, text=True, timeout=10)
    return (f"python {platform.python_version()}, gunicorn {gunicorn.__version__}, "
            f"nginx {(nginx.stderr or nginx.stdout).strip().rsplit('/', 1)[-1]}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setups", default=",".join(DEFAULT_SETUPS),
                        help=f"comma-separated, of: {', '.join(SETUPS)}")
    parser.add_argument("--attacks", default=",".join(ATTACKS), help=f"comma-separated, of: {', '.join(ATTACKS)}")
    parser.add_argument("--attackers", type=int, default=300)
    parser.add_argument("--requests", type=int, default=10, help="legitimate downloads (and shows) per scenario")
    parser.add_argument("--interval", type=float, default=4.0, help="seconds between legitimate requests")
    parser.add_argument("--timeout", type=float, default=60.0, help="bound of each legitimate request, seconds")
    parser.add_argument("--ramp", type=float, default=5.0, help="seconds between the attack and the first request")
    args = parser.parse_args(argv)
    setups = [SETUPS[name] for name in args.setups.split(",")]
    attacks = args.attacks.split(",")
    if unknown := set(attacks) - set(ATTACKS):
        parser.error(f"unknown attacks: {', '.join(sorted(unknown))}")
    if any(setup.nginx for setup in setups):
        ensure_nginx()

    started = time.monotonic()
    load_before = os.getloadavg()[0]
    results = []
    with tempfile.TemporaryDirectory(prefix="locproxy-slowloris-") as tmp:
        workdir = Path(tmp)
        root = workdir / "store"
        root.mkdir()
        big = demo_bytes("slowloris-64m", BIG_SIZE)
        (root / BIG_IMAGE).write_bytes(big)
        (root / SMALL_IMAGE).write_bytes(b"small image\n")
        api = DemoImageAPI(file_roots=[str(root)])
        api.add_image(id=BIG_IMAGE, data=big, name="big", locations=[location(f"file://{root / BIG_IMAGE}", "disk")])
        api.add_image(id=SMALL_IMAGE, data=b"small image\n", name="small",
                      locations=[location(f"file://{root / SMALL_IMAGE}", "disk")])
        api.image(BIG_IMAGE)  # digests computed once, not in the first request
        with serve_wsgi(api) as served:
            upstream = served.url
            for setup in setups:
                for attack in attacks:
                    result = run_scenario(workdir, upstream, root, setup, attack, args)
                    results.append(result)
                    print(f"slowloris: {setup.name} / {attack}: {result.seconds:.0f} s", file=sys.stderr)

    print(f"# Slow and idle clients against the locproxy sidecar\n\n"
          f"- {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, {os.cpu_count()} cores, "
          f"load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after, run took "
          f"{time.monotonic() - started:.0f} s; {_versions()}")
    print(f"- {args.attackers} attackers from {ATTACK_SOURCE}, connected {args.ramp:g} s before the first "
          f"legitimate request; {args.requests} downloads and {args.requests} shows from {LEGIT_SOURCE}, one of "
          f"each every {args.interval:g} s on new connections, each bounded by {args.timeout:g} s")
    for setup in setups:
        print(f"- `{setup.name}`: {setup.description}")
    quiet = [result for result in results if result.attack == "none"]
    if quiet:  # under attack the attackers' downloads are counted too
        print(f"- legitimate downloads the sidecar sent with sendfile, without attackers: "
              f"{sum(r.sendfile for r in quiet)} of {sum(len(r.downloads) for r in quiet)}")
    print()
    print(table(results, args.timeout, args.attackers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
