"""A single-node Ceph lab (mon + one BlueStore OSD + radosgw) for tests and benchmarks.

::

    with ceph_cluster(tmp_path) as lab:          # CephUnavailable(reason) if it cannot run
        location = lab.create_rbd_image("img", data)        # rbd://<fsid>/images/img/snap
        obj = lab.put_s3_object("bucket", "key", data)      # obj.legacy_url, obj.url
        before = lab.osd_read_bytes()
        lab.stop("osd.0"); lab.start("osd.0")               # mid-test outage and resume
        lab.send_signal("osd.0", signal.SIGSTOP)            # a hung daemon (SIGCONT revives it)

    python -m tests.support.ceph --selfcheck [--keep]    # install if needed, start, exercise, time

What it does, and why:

* ``ensure_packages()`` installs Debian's Ceph packages with apt-get when a
  tool is missing and we run as root (no daemon starts by itself: the machine
  runs no systemd); otherwise ``CephUnavailable`` says why, and tests turn it
  into ``pytest.skip(reason)``.
* Every file of the cluster lives in one private directory (``workdir``): its
  own ``ceph.conf`` (passed with ``-c`` to every tool, so ``/etc/ceph`` is
  never read), data, sockets, logs, and the 8 GiB *sparse* BlueStore block
  file. Nothing is written under ``/var`` or ``/etc``. The directory is removed
  on exit (a sparse file keeps the space of deleted objects, so reuse across
  runs would only grow it); ``LOCPROXY_KEEP_CEPH=1`` keeps it.
* Each daemon runs in the foreground (``-f``) as our child, under
  ``setpriv --pdeathsig KILL`` so it dies with the process that started it,
  its pid recorded in ``workdir/pids.json``; it is stopped by that pid (TERM,
  wait, KILL), never by name. A later ``ceph_cluster`` on the same workdir
  first stops pids left there by a killed run, after checking that each pid's
  command line names this workdir's ``ceph.conf``.
* Ports are free loopback ports (checked just before use). Readiness is a real
  ``rados put``/``get`` round trip and an HTTP request answered by radosgw,
  not a status line. Every wait has a deadline: a tool 60 s, a daemon's
  readiness 60 s, apt-get 600 s; a normal start takes ~20 s.
* Auth is ``none``: this is a lab on 127.0.0.1. radosgw needs
  ``auth client required = none`` and ``ms mon client mode = crc`` in its own
  section or it refuses to start (its built-in defaults ask for cephx).

Byte counters, to prove which backend served a read: ``osd_read_bytes()``
(the OSD's ``op_r_out_bytes``: rbd *and* RGW reads both go through it) and
``rgw_read_bytes()`` (radosgw's ``get_b``: S3 GETs only).

``import_bindings()`` makes Debian's ``rados``/``rbd`` extension modules
importable from another CPython with the same ABI (the project's pyenv 3.11
venv) through a directory holding only symlinks to them: putting all of
``/usr/lib/python3/dist-packages`` on the path would shadow the venv's own
packages.

Trust: a lab for loopback tests only. No authentication anywhere, and the S3
helper signs with AWS signature v2 (standard library only, accepted by RGW).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import email.utils
import hashlib
import hmac
import http.client
import importlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import types
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence
from urllib.parse import quote

# ceph-mgr: only the pool-quota rows run one (pool usage needs it), started by those tests.
PACKAGES = ("ceph-mon", "ceph-osd", "ceph-mgr", "ceph-common", "python3-rados", "python3-rbd", "radosgw")
TOOLS = ("ceph-mon", "ceph-osd", "ceph-mgr", "ceph", "ceph-authtool", "monmaptool", "rados", "rbd", "radosgw",
         "radosgw-admin")
DIST_PACKAGES = Path("/usr/lib/python3/dist-packages")
BINDING_MODULES = ("rados", "rbd")

ENV_KEEP = "LOCPROXY_KEEP_CEPH"
ENV_SKIP = "LOCPROXY_SKIP_CEPH"
ENV_NO_INSTALL = "LOCPROXY_CEPH_NO_INSTALL"

POOL = "images"
RGW_NAME = "client.rgw"
OSD_NAME = "osd.0"
MON_NAME = "mon.a"
BLOCK_SIZE = 8 << 30  # sparse: only written extents use disk

# Seconds. Measured here: mon+OSD ready in ~11 s, with radosgw ~21 s, apt ~40 s.
INSTALL_TIMEOUT = 600
DAEMON_START_TIMEOUT = 60
STOP_TIMEOUT = 15
TOOL_TIMEOUT = 60
HTTP_TIMEOUT = 30


class CephUnavailable(Exception):
    """The lab cannot run here; ``reason`` says why (tests skip with it)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _log(message: str) -> None:
    if os.environ.get("LOCPROXY_CEPH_QUIET") != "1":
        print(f"ceph lab: {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ packages --


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None] + [
        name for name in BINDING_MODULES if not list(DIST_PACKAGES.glob(f"{name}.cpython-*.so"))
    ]


def ensure_packages(install: bool = True) -> None:
    """Install Ceph's Debian packages if any tool is missing; CephUnavailable if we cannot."""
    missing = missing_tools()
    if not missing:
        return
    if not install or os.environ.get(ENV_NO_INSTALL) == "1":
        raise CephUnavailable(f"Ceph tools missing ({', '.join(missing)}) and installing is disabled")
    if os.geteuid() != 0:
        raise CephUnavailable(f"Ceph tools missing ({', '.join(missing)}) and not root: cannot apt-get install")
    if shutil.which("apt-get") is None:
        raise CephUnavailable(f"Ceph tools missing ({', '.join(missing)}) and no apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    command = ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]
    _log("installing " + " ".join(PACKAGES))
    started = time.monotonic()
    # The package lists may be missing or stale on a fresh machine: update once, then retry.
    for attempt in (1, 2):
        try:
            result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise CephUnavailable(f"apt-get install timed out after {INSTALL_TIMEOUT} s") from None
        if result.returncode == 0:
            break
        if attempt == 2:
            tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
            raise CephUnavailable(f"apt-get install failed (exit {result.returncode}): {tail}")
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=INSTALL_TIMEOUT)
    _log(f"installed in {time.monotonic() - started:.0f} s")
    missing = missing_tools()
    if missing:
        raise CephUnavailable(f"still missing after apt-get install: {', '.join(missing)}")


# ------------------------------------------------------------------ bindings --


def bindings_dir(create: bool = True) -> Path:
    """A directory holding only symlinks to Debian's rados/rbd extension modules.

    Put it on ``PYTHONPATH`` (or ``sys.path``) of any CPython whose ABI tag
    matches Debian's (``cpython-311-x86_64-linux-gnu`` on Debian 12).
    """
    soabi = sysconfig.get_config_var("SOABI") or "unknown"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    directory = cache / "locproxy" / f"ceph-bindings-{soabi}"
    if not create:
        return directory
    sources = {name: DIST_PACKAGES / f"{name}.{soabi}.so" for name in BINDING_MODULES}
    absent = [str(path) for path in sources.values() if not path.exists()]
    if absent:
        debian = sorted(path.name for path in DIST_PACKAGES.glob("rados.cpython-*.so"))
        raise CephUnavailable(
            f"no rados/rbd binding for this interpreter's ABI ({soabi}): missing {', '.join(absent)}"
            + (f"; Debian's are {', '.join(debian)}" if debian else "; python3-rados/python3-rbd not installed")
        )
    directory.mkdir(parents=True, exist_ok=True)
    for source in sources.values():
        link = directory / source.name
        if link.is_symlink() and os.readlink(link) == str(source):
            continue
        # Atomic replace: several test processes may race here.
        temporary = directory / f".{source.name}.{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        temporary.symlink_to(source)
        os.replace(temporary, link)
    return directory


def import_bindings() -> tuple[types.ModuleType, types.ModuleType]:
    """Import and return (rados, rbd), adding ``bindings_dir()`` to sys.path if needed."""
    try:
        return importlib.import_module("rados"), importlib.import_module("rbd")
    except ImportError:
        pass
    directory = str(bindings_dir())
    if directory not in sys.path:
        sys.path.append(directory)  # appended: never shadows the venv's packages
    importlib.invalidate_caches()
    try:
        return importlib.import_module("rados"), importlib.import_module("rbd")
    except ImportError as error:
        raise CephUnavailable(f"rados/rbd bindings not importable from {directory}: {error}") from None


def bindings_pythonpath() -> str:
    """A PYTHONPATH value for a subprocess (e.g. Glance's venv) that needs the bindings."""
    current = os.environ.get("PYTHONPATH")
    directory = str(bindings_dir())
    return f"{current}{os.pathsep}{directory}" if current else directory


# ------------------------------------------------------------------- helpers --


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_ports(count: int) -> list[int]:
    # Bind them all at once so the kernel hands out distinct ones.
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@dataclass
class S3Object:
    """An object put through RGW, and its location URLs in Glance's two forms."""

    bucket: str
    key: str
    size: int
    legacy_url: str  # s3://access:secret@host:port/bucket/key (single-store Glance)
    url: str  # s3://host:port/bucket/key (Glance 33 multi-store: credentials in config)


@dataclass
class Daemon:
    name: str
    command: list[str]
    log: Path
    process: subprocess.Popen | None = None


@dataclass
class CephCluster:
    """A running lab. Build with ``ceph_cluster(workdir)``; see the module docstring."""

    workdir: Path
    fsid: str
    conf: Path
    keyring: Path
    mon_port: int
    rgw_port: int
    pool: str = POOL
    daemons: dict[str, Daemon] = field(default_factory=dict)
    s3_access_key: str = ""
    s3_secret_key: str = ""

    # -- addresses -----------------------------------------------------------

    @property
    def rgw_host(self) -> str:
        """``127.0.0.1:<port>``: the ``host:port`` in s3 URLs and allowed_hosts."""
        return f"127.0.0.1:{self.rgw_port}"

    @property
    def rgw_endpoint(self) -> str:
        return f"http://{self.rgw_host}"

    @property
    def run_dir(self) -> Path:
        return self.workdir / "run"

    def admin_socket(self, name: str) -> Path:
        return self.run_dir / f"ceph-{name}.asok"

    # -- tools ---------------------------------------------------------------

    def tool(
        self, *args: str, timeout: float = TOOL_TIMEOUT, input: bytes | None = None, name: str | None = None
    ) -> str:
        """Run a Ceph tool with this lab's ceph.conf; its stdout, or CephUnavailable."""
        command = [args[0], "-c", str(self.conf)]
        if name:
            command += ["-n", name]
        command += list(args[1:])
        try:
            result = subprocess.run(command, input=input, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise CephUnavailable(f"{' '.join(args[:3])} timed out after {timeout} s") from None
        if result.returncode != 0:
            err = result.stderr.decode(errors="replace").strip().splitlines()[-3:]
            raise CephUnavailable(f"{' '.join(args[:3])} failed (exit {result.returncode}): {' | '.join(err)}")
        return result.stdout.decode(errors="replace")

    def ceph(self, *args: str, timeout: float = TOOL_TIMEOUT) -> str:
        return self.tool("ceph", "--connect-timeout", str(int(timeout)), *args, timeout=timeout + 5)

    # -- daemons -------------------------------------------------------------

    def _record_pids(self) -> None:
        pids = {name: d.process.pid for name, d in self.daemons.items() if d.process and d.process.poll() is None}
        temporary = self.workdir / "pids.json.tmp"
        temporary.write_text(json.dumps({"conf": str(self.conf), "pids": pids}))
        os.replace(temporary, self.workdir / "pids.json")

    def start(self, name: str, wait: bool = True) -> None:
        """Start a registered daemon (``mon.a``, ``osd.0``, ``client.rgw``) and wait until it serves."""
        daemon = self.daemons[name]
        if daemon.process is not None and daemon.process.poll() is None:
            return
        if daemon.process is not None:
            daemon.process.wait()
        # PDEATHSIG: if the test process dies without cleanup, the daemons go
        # too (it follows the *thread* that started them: start from a
        # long-lived thread).
        command = ["setpriv", "--pdeathsig", "KILL", "--", *daemon.command] if shutil.which("setpriv") else daemon.command
        with open(daemon.log, "ab") as log:
            daemon.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._record_pids()
        if wait:
            self.wait_ready(name)

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> None:
        """Stop a daemon by its pid: ``sig`` (TERM; KILL simulates a crash), wait, then KILL."""
        daemon = self.daemons[name]
        process = daemon.process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                process.wait(STOP_TIMEOUT)
        self._record_pids()

    def send_signal(self, name: str, sig: int) -> None:
        """Send ``sig`` to a running daemon by pid (SIGSTOP/SIGCONT: a hung, then revived, daemon)."""
        process = self.daemons[name].process
        if process is None or process.poll() is not None:
            raise CephUnavailable(f"{name} is not running")
        process.send_signal(sig)

    def restart(self, name: str, sig: int = signal.SIGTERM) -> None:
        self.stop(name, sig)
        self.start(name)

    def pid(self, name: str) -> int | None:
        process = self.daemons[name].process
        return process.pid if process is not None and process.poll() is None else None

    def stop_all(self) -> None:
        # radosgw and the OSD before the mon, so they can say goodbye to it.
        for name in (RGW_NAME, OSD_NAME, MON_NAME):
            if name in self.daemons:
                self.stop(name)

    def _check_running(self, name: str) -> None:
        process = self.daemons[name].process
        if process is None or process.poll() is not None:
            code = None if process is None else process.returncode
            tail = " | ".join(self.daemons[name].log.read_text(errors="replace").strip().splitlines()[-3:])
            raise CephUnavailable(f"{name} exited (code {code}): {tail}")

    def wait_ready(self, name: str, timeout: float = DAEMON_START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        last = "not tried"
        while time.monotonic() < deadline:
            self._check_running(name)
            try:
                if name == MON_NAME:
                    self.ceph("mon", "stat", timeout=5)
                elif name == OSD_NAME:
                    status = json.loads(self.ceph("osd", "stat", "--format=json", timeout=5))
                    if int(status.get("num_up_osds", status.get("osdmap", {}).get("num_up_osds", 0))) < 1:
                        raise CephUnavailable("osd not up yet")
                    self.rados_roundtrip()
                elif name == RGW_NAME:
                    self.rgw_request("GET", "/")
                return
            except (CephUnavailable, OSError, http.client.HTTPException, ValueError) as error:
                last = str(error)
                time.sleep(0.5)
        raise CephUnavailable(f"{name} not ready after {timeout:.0f} s: {last}")

    def rados_roundtrip(self) -> None:
        """A real write and read through the OSD (readiness, not a status line)."""
        payload = secrets.token_bytes(64)
        self.tool("rados", "-p", self.pool, "put", "locproxy-ready", "-", input=payload, timeout=20)
        got = subprocess.run(
            ["rados", "-c", str(self.conf), "-p", self.pool, "get", "locproxy-ready", "-"],
            capture_output=True,
            timeout=20,
        )
        if got.stdout != payload:
            raise CephUnavailable("rados round trip returned other bytes")

    # -- counters ------------------------------------------------------------

    def perf_dump(self, name: str) -> dict[str, Any]:
        output = self.tool("ceph", "--admin-daemon", str(self.admin_socket(name)), "perf", "dump", timeout=20)
        return json.loads(output)

    def osd_read_bytes(self) -> int:
        """Bytes the OSD has returned to clients (rbd and radosgw alike) since it started."""
        return int(self.perf_dump(OSD_NAME)["osd"]["op_r_out_bytes"])

    def rgw_read_bytes(self) -> int:
        """Bytes radosgw has sent in S3 GET bodies since it started."""
        dump = self.perf_dump(RGW_NAME)
        return int(dump["rgw"]["get_b"])

    # -- rbd -----------------------------------------------------------------

    def create_rbd_image(self, name: str, data: bytes | Path, pool: str | None = None) -> str:
        """Create an image as Glance's rbd store does; return its location.

        Layering image, data written, snapshot ``snap`` created and protected:
        ``rbd://<fsid>/<pool>/<name>/snap``.
        """
        pool = pool or self.pool
        source = data if isinstance(data, Path) else self.workdir / f"upload-{name}"
        if not isinstance(data, Path):
            source.write_bytes(data)
        try:
            self.tool(
                "rbd", "import", "--no-progress", "--image-format", "2", "--image-feature", "layering",
                str(source), f"{pool}/{name}", timeout=300,
            )
        finally:
            if not isinstance(data, Path):
                source.unlink()
        self.tool("rbd", "snap", "create", f"{pool}/{name}@snap")
        self.tool("rbd", "snap", "protect", f"{pool}/{name}@snap")
        return f"rbd://{self.fsid}/{pool}/{name}/snap"

    # -- s3 (RGW) ------------------------------------------------------------

    def create_s3_user(self, uid: str, access_key: str | None = None, secret_key: str | None = None) -> tuple[str, str]:
        """An RGW user with the given (or random) keys; returns (access, secret)."""
        access_key = access_key or "LP" + secrets.token_hex(9).upper()
        secret_key = secret_key or base64.b64encode(secrets.token_bytes(30)).decode()  # has '/' and '+'
        self.tool(
            "radosgw-admin", "user", "create", f"--uid={uid}", f"--display-name={uid}",
            f"--access-key={access_key}", f"--secret-key={secret_key}", name=RGW_NAME,
        )
        return access_key, secret_key

    def rgw_request(
        self, method: str, path: str, body: bytes | None = None, keys: tuple[str, str] | None = None
    ) -> tuple[int, bytes]:
        """One HTTP request to radosgw, signed with AWS v2 when ``keys`` are given."""
        headers = {"Date": email.utils.formatdate(usegmt=True), "Content-Length": str(len(body or b""))}
        if keys:
            access, secret = keys
            content_type = headers["Content-Type"] = "application/octet-stream" if body else ""
            if not body:
                del headers["Content-Type"]
            # AWS signature v2: VERB \n MD5 \n type \n date \n resource.
            string_to_sign = f"{method}\n\n{content_type}\n{headers['Date']}\n{path}"
            digest = hmac.new(secret.encode(), string_to_sign.encode(), hashlib.sha1).digest()
            headers["Authorization"] = f"AWS {access}:{base64.b64encode(digest).decode()}"
        connection = http.client.HTTPConnection("127.0.0.1", self.rgw_port, timeout=HTTP_TIMEOUT)
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def s3_keys(self) -> tuple[str, str]:
        """The lab's default S3 user (created on first use)."""
        if not self.s3_access_key:
            self.s3_access_key, self.s3_secret_key = self.create_s3_user("locproxy")
        return self.s3_access_key, self.s3_secret_key

    def create_bucket(self, bucket: str, keys: tuple[str, str] | None = None) -> None:
        status, body = self.rgw_request("PUT", f"/{bucket}", keys=keys or self.s3_keys())
        if status not in (200, 409):
            raise CephUnavailable(f"bucket create: HTTP {status} {body[:200]!r}")

    def put_s3_object(self, bucket: str, key: str, data: bytes, keys: tuple[str, str] | None = None) -> S3Object:
        """Create the bucket if needed, put the object; return it with both URL forms."""
        keys = keys or self.s3_keys()
        self.create_bucket(bucket, keys)
        path = f"/{quote(bucket)}/{quote(key)}"
        status, body = self.rgw_request("PUT", path, body=data, keys=keys)
        if status != 200:
            raise CephUnavailable(f"object put: HTTP {status} {body[:200]!r}")
        access, secret = keys
        userinfo = f"{quote(access, safe='')}:{quote(secret, safe='')}"
        return S3Object(
            bucket=bucket,
            key=key,
            size=len(data),
            legacy_url=f"s3://{userinfo}@{self.rgw_host}/{bucket}/{key}",
            url=f"s3://{self.rgw_host}/{bucket}/{key}",
        )


# ---------------------------------------------------------------- bootstrap --


def _write_conf(conf: Path, workdir: Path, fsid: str, mon_port: int, mon_v1_port: int, rgw_port: int) -> None:
    w = workdir
    conf.write_text(
        f"""[global]
fsid = {fsid}
mon host = [v2:127.0.0.1:{mon_port},v1:127.0.0.1:{mon_v1_port}]
mon initial members = a
public addr = 127.0.0.1
cluster addr = 127.0.0.1
auth cluster required = none
auth service required = none
auth client required = none
keyring = {w}/keyring
run dir = {w}/run
admin socket = {w}/run/$cluster-$name.asok
pid file = {w}/run/$cluster-$name.pid
log file = {w}/log/$cluster-$name.log
crash dir = {w}/crash
mon data = {w}/mon/$cluster-$id
osd data = {w}/osd/$cluster-$id
mon cluster log file = {w}/log/cluster.log
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon warn on pool no redundancy = false
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon max pg per osd = 1000
osd crush chooseleaf type = 0
ms bind ipv6 = false

[osd]
osd objectstore = bluestore
bluestore block create = true
bluestore block size = {BLOCK_SIZE}
osd memory target = 1073741824
osd max object name len = 460
osd max object namespace len = 64

[{RGW_NAME}]
# radosgw's built-in defaults ask for cephx and a secure mon connection.
auth client required = none
ms mon client mode = crc
rgw frontends = beast endpoint=127.0.0.1:{rgw_port}
rgw data = {w}/rgw
rgw enable usage log = false
"""
    )


def _stop_leftovers(workdir: Path) -> None:
    """Stop daemons a killed earlier run left in this workdir (by recorded pid)."""
    record = workdir / "pids.json"
    if not record.exists():
        return
    try:
        data = json.loads(record.read_text())
    except (OSError, ValueError):
        return
    conf = data.get("conf", "")
    for name, pid in data.get("pids", {}).items():
        # Only a process whose command line names *this* conf: pids get reused.
        if conf and _pid_alive(pid) and conf in _cmdline(pid):
            _log(f"stopping leftover {name} (pid {pid})")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    record.unlink()


def _bootstrap(workdir: Path, with_rgw: bool) -> CephCluster:
    fsid = str(uuid.uuid4())
    mon_port, mon_v1_port, rgw_port = _free_ports(3)
    for directory in ("run", "log", "crash", "mon/ceph-a", "osd/ceph-0", "rgw"):
        (workdir / directory).mkdir(parents=True, exist_ok=True)
    conf = workdir / "ceph.conf"
    keyring = workdir / "keyring"
    _write_conf(conf, workdir, fsid, mon_port, mon_v1_port, rgw_port)
    lab = CephCluster(workdir=workdir, fsid=fsid, conf=conf, keyring=keyring, mon_port=mon_port, rgw_port=rgw_port)
    # ceph-mon --mkfs wants a keyring even with auth none.
    subprocess.run(
        ["ceph-authtool", "--create-keyring", str(keyring), "--gen-key", "-n", "mon.", "--cap", "mon", "allow *"],
        check=True, capture_output=True, timeout=TOOL_TIMEOUT,
    )
    monmap = workdir / "monmap"
    subprocess.run(
        ["monmaptool", "--create", "--fsid", fsid, "--addv", "a",
         f"[v2:127.0.0.1:{mon_port},v1:127.0.0.1:{mon_v1_port}]", str(monmap)],
        check=True, capture_output=True, timeout=TOOL_TIMEOUT,
    )
    lab.tool("ceph-mon", "--mkfs", "-i", "a", "--monmap", str(monmap), "--keyring", str(keyring))
    logs = workdir / "log"
    lab.daemons[MON_NAME] = Daemon(MON_NAME, ["ceph-mon", "-c", str(conf), "-f", "-i", "a"], logs / "mon.a.out")
    lab.daemons[OSD_NAME] = Daemon(OSD_NAME, ["ceph-osd", "-c", str(conf), "-f", "-i", "0"], logs / "osd.0.out")
    lab.daemons[RGW_NAME] = Daemon(RGW_NAME, ["radosgw", "-c", str(conf), "-f", "-n", RGW_NAME], logs / "rgw.out")
    for port in (mon_port, mon_v1_port):
        if not port_is_free(port):
            raise CephUnavailable(f"port {port} taken before the mon started")
    lab.start(MON_NAME)
    osd_uuid = str(uuid.uuid4())
    osd_id = lab.ceph("osd", "new", osd_uuid).strip()
    if osd_id != "0":
        raise CephUnavailable(f"ceph osd new returned {osd_id!r}, expected 0")
    lab.tool("ceph-osd", "-i", "0", "--mkfs", "--osd-uuid", osd_uuid, timeout=120)
    lab.start(OSD_NAME, wait=False)
    lab.ceph("osd", "pool", "create", POOL, "8", "8")
    lab.ceph("osd", "pool", "application", "enable", POOL, "rbd")
    lab.wait_ready(OSD_NAME)
    if with_rgw:
        if not port_is_free(rgw_port):
            raise CephUnavailable(f"port {rgw_port} taken before radosgw started")
        lab.start(RGW_NAME)
    return lab


@contextlib.contextmanager
def ceph_cluster(workdir: str | Path, with_rgw: bool = True, install: bool = True) -> Iterator[CephCluster]:
    """A running lab under ``workdir/ceph`` (removed on exit unless LOCPROXY_KEEP_CEPH=1).

    Raises ``CephUnavailable(reason)`` when Ceph cannot run here (not root
    and not installed, no package, a daemon that will not start in time).
    """
    if sys.platform != "linux":
        raise CephUnavailable("the Ceph lab needs Linux")
    ensure_packages(install)
    root = Path(workdir).resolve() / "ceph"
    _stop_leftovers(root)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    lab: CephCluster | None = None
    started = time.monotonic()
    try:
        try:
            lab = _bootstrap(root, with_rgw)
        except subprocess.CalledProcessError as error:
            stderr = (error.stderr or b"").decode(errors="replace").strip().splitlines()[-2:]
            raise CephUnavailable(f"{error.cmd[0]} failed: {' | '.join(stderr)}") from None
        except subprocess.TimeoutExpired as error:
            raise CephUnavailable(f"{error.cmd[0]} timed out") from None
        _log(f"cluster {lab.fsid} ready in {time.monotonic() - started:.1f} s "
             f"(mon :{lab.mon_port}, rgw :{lab.rgw_port if with_rgw else '-'}) under {root}")
        yield lab
    finally:
        if lab is not None:
            lab.stop_all()
        _stop_leftovers(root)
        if os.environ.get(ENV_KEEP) == "1":
            _log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


# ----------------------------------------------------------------- selfcheck --


def selfcheck(workdir: Path | None, keep: bool) -> int:
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    ensure_packages()
    timings["packages"] = time.monotonic() - t0
    rados, rbd = import_bindings()
    print(f"bindings: rados {rados.__file__}, rbd {rbd.__file__}")
    base = workdir or Path(tempfile.mkdtemp(prefix="locproxy-ceph-"))
    if keep:
        os.environ[ENV_KEEP] = "1"
    try:
        t0 = time.monotonic()
        with ceph_cluster(base) as lab:
            timings["start"] = time.monotonic() - t0
            data = secrets.token_bytes(5 * 1024 * 1024 + 17)
            t0 = time.monotonic()
            location = lab.create_rbd_image("selfcheck", data)
            timings["rbd image"] = time.monotonic() - t0
            before = lab.osd_read_bytes()
            cluster = rados.Rados(conffile=str(lab.conf))
            cluster.connect(timeout=10)
            try:
                with cluster.open_ioctx(POOL) as ioctx, rbd.Image(ioctx, "selfcheck", snapshot="snap", read_only=True) as image:
                    assert image.read(0, len(data)) == data, "rbd read returned other bytes"
                    assert image.is_protected_snap("snap"), "snapshot not protected"
            finally:
                cluster.shutdown()
            print(f"rbd: {location} read back OK; OSD read counter +{lab.osd_read_bytes() - before} bytes")
            t0 = time.monotonic()
            obj = lab.put_s3_object("selfcheck", "object", data)
            timings["s3 put"] = time.monotonic() - t0
            before = lab.rgw_read_bytes()
            status, body = lab.rgw_request("GET", "/selfcheck/object", keys=lab.s3_keys())
            assert status == 200 and body == data, f"s3 GET: HTTP {status}, {len(body)} bytes"
            print(f"s3: {obj.url} (legacy form has credentials) read back OK; RGW get_b +{lab.rgw_read_bytes() - before}")
            t0 = time.monotonic()
            lab.restart(OSD_NAME)
            timings["osd restart"] = time.monotonic() - t0
            t0 = time.monotonic()
            lab.restart(RGW_NAME)
            timings["rgw restart"] = time.monotonic() - t0
            t0 = time.monotonic()
        timings["stop"] = time.monotonic() - t0
    finally:
        if workdir is None and not keep:
            shutil.rmtree(base, ignore_errors=True)
    print("timings: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--selfcheck", action="store_true", help="install if needed, start, exercise, stop")
    parser.add_argument("--workdir", type=Path, help="parent of the lab's directory (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the lab's directory (logs) afterwards")
    parser.add_argument("--bindings-dir", action="store_true", help="print the bindings symlink dir (for PYTHONPATH)")
    args = parser.parse_args(argv)
    try:
        if args.bindings_dir:
            print(bindings_dir())
            return 0
        if args.selfcheck:
            return selfcheck(args.workdir, args.keep)
    except CephUnavailable as error:
        print(f"ceph lab: unavailable: {error.reason}", file=sys.stderr)
        return 3
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
