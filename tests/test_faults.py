"""The fault table: every way a backend, the upstream or the operator's
config file can break, and what the client gets.

The rule for every row: the client receives a correct body (sha512 equal to
the image's), or a clear error (an HTTP error, or a transfer that is aborted
before its Content-Length, with an ERROR logged); never a corrupt body that
looks complete.

One ``FaultLab`` serves every row: the demo image API behind
``FaultyUpstream`` (a path prefix such as ``/badjson/v2/...`` selects an
upstream fault), fault-injecting loopback backends (``tests.support.faultserver``, a
fresh server per row so no row inherits another's state), a file root, and
the real sidecar (``gunicorn --paste``: the ``locproxy`` filter in front of the
``proxy`` app, DEBUG logging captured). The strategy comes from a live
``config_file`` (``weight``): each row orders its locations by weight.

``bench/reliability.py`` runs the same ``SCENARIOS`` outside pytest and prints
the table; here each one is a test.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import os
import re
import socket
import sqlite3
import subprocess
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pytest

from locproxy.demo import DemoImageAPI, demo_bytes, location, serve_wsgi
from locproxy.tracker import Tracker
from tests.support.faultserver import FaultServer, RefusingPort
from tests.support.servers import run_gunicorn, sidecar_ini

DATA = demo_bytes("fault-table", 1024 * 1024 + 17)  # 1 MiB + 17: "slow:1000000" takes about a second
SHA512 = hashlib.sha512(DATA).hexdigest()
CHUNK = 64 * 1024
CREDENTIALS = "fault-user:Fault-Secret-9f1c"
# How long a hanging upstream handler waits at most (released at teardown).
HANG_LIMIT = 8.0
BACKEND_TIMEOUT = 1.0  # backend_connect_timeout / backend_read_timeout of the sidecar
UPSTREAM_READ_TIMEOUT = 1.5  # the proxy app's read_timeout
MAX_REWRITE = 256 * 1024
FIRST_BYTE_TIMEOUT = 2.0  # backend_first_byte_timeout
MIN_RATE = 64 * 1024  # backend_min_rate: bytes per second ...
RATE_WINDOW = 1.0  # ... over a read of CHUNK bytes or this many seconds, whichever is longer



def sha512(data: bytes) -> str:
    return hashlib.sha512(data).hexdigest()


# -- a client that tells complete bodies from aborted ones -------------------

@dataclass
class Fetched:
    status: int
    headers: dict[str, str]
    body: bytes
    complete: bool  # False: the connection ended before Content-Length (or the chunked end)
    seconds: float

    def json(self) -> Any:
        return json.loads(self.body)

    def describe(self) -> str:
        return (f"HTTP {self.status}, {len(self.body)} bytes, complete={self.complete}, "
                f"headers={self.headers}, body starts {self.body[:200]!r}")


def fetch(port: int, path: str, method: str = "GET", headers: dict[str, str] | None = None,
          body: bytes | None = None, timeout: float = 20.0) -> Fetched:
    """One request on a fresh loopback connection, every wait bounded."""
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        chunks: list[bytes] = []
        complete = True
        try:
            while True:
                chunk = response.read(256 * 1024)
                if not chunk:
                    break
                chunks.append(chunk)
        except http.client.IncompleteRead as error:  # chunked body cut short
            chunks.append(error.partial)
            complete = False
        except (ConnectionError, socket.timeout):
            complete = False
        received = b"".join(chunks)
        length = response.getheader("Content-Length")
        if method != "HEAD" and length is not None and length.isdigit() and int(length) != len(received):
            complete = False
        headers_out = {name.lower(): value for name, value in response.getheaders()}
        return Fetched(response.status, headers_out, received, complete, time.monotonic() - started)
    finally:
        connection.close()


# -- the upstream, with faults selected by a path prefix ----------------------

class FaultyUpstream:
    """WSGI: the demo image API, or (under ``/{fault}/``) a broken version of it.

    Faults apply to image metadata (``GET /v2/images/{id}``); the image's own
    ``/file`` under a prefix is the healthy API's, except for ``nofile``.
    Every request's method, path and credential headers are recorded in
    ``seen`` (the security tests check where credentials went).
    """

    FAULTS = ("badjson", "huge", "gzip", "html500", "html200", "notobject", "truncjson", "slow",
              "wrongsize", "wrongdigest", "shake", "nofile", "denyfile", "authreq")

    def __init__(self, api: DemoImageAPI, release: threading.Event) -> None:
        self.api = api
        self.release = release
        self.seen: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Any:
        path = environ.get("PATH_INFO", "")
        with self._lock:
            self.seen.append({
                "method": environ["REQUEST_METHOD"], "path": path,
                "x-auth-token": environ.get("HTTP_X_AUTH_TOKEN"),
                "authorization": environ.get("HTTP_AUTHORIZATION"),
                "cookie": environ.get("HTTP_COOKIE"),
            })
        fault, _, rest = path[1:].partition("/")
        if fault not in self.FAULTS:
            return self.api(environ, start_response)
        environ = {**environ, "PATH_INFO": "/" + rest}
        is_file = rest.endswith("/file")
        if fault == "slow":
            self.release.wait(HANG_LIMIT)
            return self.api(environ, start_response)
        if fault == "authreq" and environ.get("HTTP_X_AUTH_TOKEN") != "good-token":
            return _respond(start_response, "401 Unauthorized", "application/json",
                            b'{"error": {"code": 401, "message": "The request you have made requires authentication."}}',
                            extra=[("WWW-Authenticate", 'Keystone uri="http://127.0.0.1:5000"')])
        if is_file:
            if fault == "nofile":
                return _respond(start_response, "503 Service Unavailable", "application/json",
                                b'{"error": {"code": 503, "message": "image data unavailable"}}')
            if fault == "denyfile":  # Glance's download_image policy: may see, may not download
                return _respond(start_response, "403 Forbidden", "application/json",
                                b'{"error": {"code": 403, "message": "download_image is disallowed by policy"}}')
            return self.api(environ, start_response)
        captured: dict[str, Any] = {}

        def capture(status: str, headers: list, exc_info: Any = None) -> None:
            captured["status"], captured["headers"] = status, headers

        body = b"".join(self.api(environ, capture))
        if not captured["status"].startswith("200") or environ["REQUEST_METHOD"] != "GET":
            start_response(captured["status"], captured["headers"])
            return [body]
        return self._broken(fault, body, start_response)

    @staticmethod
    def _broken(fault: str, body: bytes, start_response: Callable) -> list[bytes]:
        if fault == "badjson":
            return _respond(start_response, "200 OK", "application/json", body[: len(body) // 2] + b"}}]garbage")
        if fault == "huge":
            document = json.loads(body)
            document["padding"] = "x" * (MAX_REWRITE + 1024)
            return _respond(start_response, "200 OK", "application/json", json.dumps(document).encode())
        if fault == "gzip":  # ignores the Accept-Encoding: identity the filter asks for
            return _respond(start_response, "200 OK", "application/json", gzip.compress(body),
                            extra=[("Content-Encoding", "gzip"), ("Vary", "Accept-Encoding")])
        if fault == "html500":
            return _respond(start_response, "500 Internal Server Error", "text/html", HTML_500)
        if fault == "html200":
            return _respond(start_response, "200 OK", "text/html", HTML_LOGIN)
        if fault == "notobject":
            return _respond(start_response, "200 OK", "application/json", b"[" + body + b"]")
        if fault == "truncjson":
            # Promises the whole body, sends half, closes (HTTP/1.0 server).
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body[: len(body) // 2]]
        document = json.loads(body)
        if fault == "wrongsize":
            document["size"] += 1
        elif fault == "wrongdigest":
            document["os_hash_value"] = sha512(b"another image")
            document["checksum"] = hashlib.md5(b"another image").hexdigest()
        elif fault == "shake":  # an extendable-output hash: its length is the value's
            document["os_hash_algo"] = "shake_128"
            document["os_hash_value"] = hashlib.shake_128(DATA).hexdigest(64)
        return _respond(start_response, "200 OK", "application/json", json.dumps(document).encode())


HTML_500 = b"<html><head><title>500 Internal Server Error</title></head><body><h1>Oops</h1></body></html>"
HTML_LOGIN = b"<html><body><form action='/login'>Please log in</form></body></html>"


def _respond(start_response: Callable, status: str, content_type: str, body: bytes,
             extra: Sequence[tuple[str, str]] = ()) -> list[bytes]:
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body))), *extra])
    return [body]


# -- the lab ---------------------------------------------------------------------

def ranked(*locations: dict) -> list[dict]:
    """The locations with descending ``metadata.weight``: the ``weight``
    strategy tries them in the given order."""
    ranked_locations = []
    for position, item in enumerate(locations):
        metadata = {**item.get("metadata", {}), "weight": 100 - position}
        ranked_locations.append({**item, "metadata": metadata})
    return ranked_locations


STRATEGY_CONFIG = "[locproxy]\nlocation_strategy = weight\n"


class FaultLab:
    """Upstream, backends and sidecar shared by the rows (see the module docstring)."""

    def __init__(self, base: Path, stack: ExitStack) -> None:
        self.base = base
        self.stack = stack
        self.root = base / "store"
        self.root.mkdir()
        self.config_file = base / "locproxy.ini"
        self.config_file.write_text(STRATEGY_CONFIG)
        self.api = DemoImageAPI()  # no readable locations of its own: its /file serves its memory copy
        self.release = threading.Event()
        self.upstream_app = FaultyUpstream(self.api, self.release)
        self.upstream_url = stack.enter_context(serve_wsgi(self.upstream_app)).url
        stack.callback(self.release.set)  # runs before the upstream server is stopped (LIFO)
        self.upstream_port = int(self.upstream_url.rsplit(":", 1)[1])
        self.refusing = stack.enter_context(RefusingPort())
        self.filter_options: dict[str, Any] = {
            "location_strategy": "location_order",
            "file_roots": str(self.root),
            "allowed_hosts": "127.0.0.1",
            "chunk_size": CHUNK,
            "backend_connect_timeout": BACKEND_TIMEOUT,
            "backend_read_timeout": BACKEND_TIMEOUT,
            "backend_first_byte_timeout": FIRST_BYTE_TIMEOUT,
            "backend_min_rate": MIN_RATE,
            "backend_rate_window": RATE_WINDOW,
            "max_rewrite_size": MAX_REWRITE,
            "config_file": self.config_file,
        }
        self.proxy_options = {"connect_timeout": 1, "read_timeout": UPSTREAM_READ_TIMEOUT}
        ini = sidecar_ini(base / "sidecar.ini", self.upstream_url, self.filter_options, self.proxy_options)
        self.sidecar = stack.enter_context(run_gunicorn(ini, threads=16))
        self._down_sidecar: Any = None

    # -- building images -------------------------------------------------------

    def backend(self, mode: str = "ok", data: bytes = DATA) -> FaultServer:
        """A fresh fault server for one row, stopped with the lab."""
        return self.stack.enter_context(FaultServer(data, mode, hang_limit=HANG_LIMIT))

    def file_copy(self, data: bytes = DATA, name: str | None = None) -> dict:
        path = self.root / (name or os.urandom(8).hex())
        path.write_bytes(data)
        return location(f"file://{path}", "disk")

    def missing_file(self) -> dict:
        return location(f"file://{self.root}/missing-{os.urandom(8).hex()}", "disk")

    @staticmethod
    def web(server: FaultServer, userinfo: str = CREDENTIALS) -> dict:
        return location(server.url(f"/images/{os.urandom(4).hex()}", userinfo=userinfo), f"web-{server.port}")

    def refused(self) -> dict:
        return location(self.refusing.url("/x").replace("http://", f"http://{CREDENTIALS}@"), "dead")

    def image(self, *locations: dict, data: bytes | None = DATA) -> str:
        return self.api.add_image(data=data, locations=ranked(*locations))

    # -- requests ------------------------------------------------------------------

    def get(self, path: str, **kwargs: Any) -> Fetched:
        return fetch(self.sidecar.port, path, **kwargs)

    def download(self, image_id: str, prefix: str = "", **kwargs: Any) -> Fetched:
        return self.get(f"{prefix}/v2/images/{image_id}/file", **kwargs)

    def upstream_get(self, path: str) -> Fetched:
        return fetch(self.upstream_port, path)

    def log_mark(self) -> int:
        return len(self.sidecar.log())

    def log_since(self, mark: int) -> str:
        return self.sidecar.log()[mark:]

    @property
    def upstream_file_calls(self) -> int:
        """GETs of an image's /file the upstream received (faulty ones too)."""
        return sum(1 for seen in list(self.upstream_app.seen)
                   if seen["method"] == "GET" and seen["path"].endswith("/file"))

    @contextmanager
    def private_sidecar(self, **overrides: Any) -> Iterator[Any]:
        """The lab's sidecar configuration (with ``overrides``) in a gunicorn
        of its own, stopped on exit."""
        ini = sidecar_ini(self.base / f"private-{os.urandom(4).hex()}.ini", self.upstream_url,
                          {**self.filter_options, **overrides}, self.proxy_options)
        with run_gunicorn(ini, threads=4) as sidecar:
            yield sidecar

    def down_sidecar(self) -> Any:
        """A second sidecar whose upstream refuses connections (started on first use)."""
        if self._down_sidecar is None:
            ini = sidecar_ini(self.base / "down.ini", self.refusing.url("").rstrip("/"),
                              {"file_roots": str(self.root), "allowed_hosts": "127.0.0.1"},
                              {"connect_timeout": 1, "read_timeout": UPSTREAM_READ_TIMEOUT})
            self._down_sidecar = self.stack.enter_context(run_gunicorn(ini, threads=4))
        return self._down_sidecar


@contextmanager
def fault_lab(base: Path) -> Iterator[FaultLab]:
    with ExitStack() as stack:
        yield FaultLab(base, stack)


# -- checking one download ---------------------------------------------------------

def verified(result: Fetched, expected: bytes = DATA) -> str:
    """The table's "bytes verified" cell: sha512 of what the client received."""
    if result.status not in (200, 206):
        return f"no image bytes ({len(result.body)} B error body)"
    if not result.body:
        return "no image bytes sent"
    if result.complete and sha512(result.body) == sha512(expected):
        return f"sha512 ✓ ({len(result.body)} B)"
    if result.complete:
        return f"sha512 ✗ ({len(result.body)} B complete)"
    return f"incomplete {len(result.body)}/{len(expected)} B: transfer aborted, never completed"


def check_download(
    lab: FaultLab,
    image_id: str,
    expect: str | int,
    *,
    via: str | None = None,
    prefix: str = "",
    headers: dict[str, str] | None = None,
    untouched: Sequence[FaultServer] = (),
) -> tuple[str, str]:
    """Download and assert the row's promise; returns (outcome, verified).

    ``expect``: "served" (200, complete, sha512 equal), "aborted" (200
    headers, connection cut before Content-Length, ERROR logged) or a status
    code (an error response carrying no image bytes). ``via``: "backend"
    (the upstream's /file untouched), "upstream" (the upstream's /file
    used), or None (either). ``untouched``: servers that must see no request.
    """
    before = lab.upstream_file_calls
    counts = [server.request_count for server in untouched]
    mark = lab.log_mark()
    result = lab.download(image_id, prefix, headers=headers)
    used_upstream = lab.upstream_file_calls > before
    log = lab.log_since(mark)
    if expect == "served":
        assert (result.status, result.complete) == (200, True), result.describe()
        assert sha512(result.body) == SHA512, "a complete body must be the image"
        outcome = "200, correct body"
    elif expect == "aborted":
        assert result.status == 200 and not result.complete, result.describe()
        assert len(result.body) < len(DATA)
        assert re.search(r"ERROR locproxy\.download: .*digest mismatch", log), log[-3000:]
        outcome = "200 headers, then the connection is aborted (digest mismatch, ERROR logged)"
    else:
        assert result.status == expect, result.describe()
        assert DATA[:1024] not in result.body, "an error response must carry no image bytes"
        kind = "JSON" if result.headers.get("content-type", "").startswith("application/json") else \
            result.headers.get("content-type", "no body")
        outcome = f"{result.status} ({kind})"
    if via == "backend":
        assert not used_upstream, "served by a backend, not the upstream's /file"
        outcome += " from a backend"
    elif via == "upstream":
        assert used_upstream, "the upstream's own /file served (some of) the bytes"
        outcome += ", the upstream's /file used"
    for server, count in zip(untouched, counts):
        assert server.request_count == count, "this backend must not be contacted"
    assert CREDENTIALS.split(":")[1] not in log, "location credentials must never be logged"
    return outcome, verified(result)


# -- the rows ------------------------------------------------------------------------

@dataclass
class Row:
    group: str
    fault: str
    path: str
    outcome: str
    verified: str
    seconds: float


@dataclass
class Scenario:
    group: str
    fault: str
    path: str
    run_row: Callable[[FaultLab], tuple[str, str]]

    @property
    def id(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", f"{self.group} {self.fault} {self.path}".lower()).strip("-")

    def run(self, lab: FaultLab) -> Row:
        started = time.monotonic()
        outcome, checked = self.run_row(lab)
        return Row(self.group, self.fault, self.path, outcome, checked, time.monotonic() - started)


SCENARIOS: list[Scenario] = []


def scenario(group: str, fault: str, path: str = "download") -> Callable:
    def register(function: Callable[[FaultLab], tuple[str, str]]) -> Callable:
        SCENARIOS.append(Scenario(group, fault, path, function))
        return function
    return register


def one_broken_backend(mode: str, expect: str = "served", via: str | None = "backend",
                       log_pattern: str | None = None) -> Callable[[FaultLab], tuple[str, str]]:
    """Row: [http backend in ``mode``, a good file copy]."""
    def run(lab: FaultLab) -> tuple[str, str]:
        broken = lab.backend(mode)
        image_id = lab.image(lab.web(broken), lab.file_copy())
        mark = lab.log_mark()
        outcome, checked = check_download(lab, image_id, expect, via=via)
        assert broken.request_count >= 1, "the broken backend was tried first"
        log = lab.log_since(mark)
        if log_pattern:
            assert re.search(log_pattern, log), log[-3000:]
        if expect == "served" and mode != "ok" and not mode.startswith(("slow", "extra_bytes")):
            outcome += " (fell back" + (", resumed at the failure offset)" if "at byte" in log else ")")
        return outcome, checked
    return run


BEFORE_FIRST_BYTE = r"WARNING locproxy\.download: .*backend http://127\.0\.0\.1:\d+ failed before the first byte"
MID_STREAM = r"WARNING locproxy\.download: .*backend http://127\.0\.0\.1:\d+ failed at byte \d+"

for _mode, _fault, _pattern in [
    ("hang_headers", "hangs before headers", BEFORE_FIRST_BYTE),
    ("status:404", "answers 404", BEFORE_FIRST_BYTE),
    ("status:500", "answers 500", BEFORE_FIRST_BYTE),
    ("status:503", "answers 503", BEFORE_FIRST_BYTE),
    ("redirect:http://127.0.0.1:9/elsewhere", "answers 302 (not followed)", BEFORE_FIRST_BYTE),
    ("ignore_range,bad_content_length", "promises 1 byte more than it sends", BEFORE_FIRST_BYTE),
    ("truncate_after:300000", "closes early (after 300000 B)", MID_STREAM),
    ("reset_after:300000", "resets the connection mid-body", MID_STREAM),
    ("hang_after:300000", "hangs mid-body", MID_STREAM),
    ("truncate_after:300000,chunked", "chunked body cut short", MID_STREAM),
    ("extra_bytes", "sends more bytes than promised", None),
    ("extra_bytes,no_content_length", "no Content-Length, then more bytes than the image", None),
    ("slow:1000000", "slow (1 MB/s)", None),
    ("drip_headers", "drips its headers (a byte every 0.5 s: no read timeout ever fires)",
     BEFORE_FIRST_BYTE + r": no response within"),
    ("drip_after:300000", "drips its body after 300000 B (a byte every 0.5 s)", MID_STREAM + r": slower than"),
    ("gzip", "answers gzip (Content-Encoding: gzip, chunked)", BEFORE_FIRST_BYTE + r": content-coded body"),
]:
    scenario("backend", _fault)(one_broken_backend(_mode, log_pattern=_pattern))


@scenario("backend", "refuses connections")
def _refused(lab: FaultLab) -> tuple[str, str]:
    image_id = lab.image(lab.refused(), lab.file_copy())
    outcome, checked = check_download(lab, image_id, "served", via="backend")
    return outcome + " (fell back)", checked


@scenario("backend", "file missing / shorter than the image")
def _bad_files(lab: FaultLab) -> tuple[str, str]:
    good = lab.backend()
    image_id = lab.image(lab.missing_file(), lab.file_copy(DATA[:-1]), lab.web(good))
    outcome, checked = check_download(lab, image_id, "served", via="backend")
    assert good.request_count == 1
    return outcome + " (fell back to the 3rd location)", checked


@scenario("backend", "wrong byte (corrupt copy first)")
def _corrupt(lab: FaultLab) -> tuple[str, str]:
    broken = lab.backend("corrupt_byte:600000")
    image_id = lab.image(lab.web(broken), lab.file_copy())
    return check_download(lab, image_id, "aborted")


@scenario("backend", "wrong byte in the last chunk")
def _corrupt_last(lab: FaultLab) -> tuple[str, str]:
    broken = lab.backend(f"corrupt_byte:{len(DATA) - 1}")
    image_id = lab.image(lab.web(broken))
    return check_download(lab, image_id, "aborted")


@scenario("backend", "wrong byte, Range request", path="download + Range")
def _corrupt_range(lab: FaultLab) -> tuple[str, str]:
    """A Range cannot be checked against a whole-image digest: the corrupt
    byte is served (a documented limit, as in Glance). Length and offsets stay exact."""
    broken = lab.backend("corrupt_byte:1000")
    image_id = lab.image(lab.web(broken), lab.file_copy())
    result = lab.download(image_id, headers={"Range": "bytes=0-4095"})
    assert (result.status, result.complete, len(result.body)) == (206, True, 4096), result.describe()
    wrong = sum(1 for a, b in zip(result.body, DATA[:4096]) if a != b)
    assert wrong == 1
    return "206, exact length; ranges are not verifiable (no per-range digest)", \
        "sha512 ✗: 1 wrong byte of 4096 (limitation)"


@scenario("backend", "answers gzip to a Range request", path="download + Range")
def _gzip_range(lab: FaultLab) -> tuple[str, str]:
    coded = lab.backend("gzip")
    image_id = lab.image(lab.web(coded), lab.file_copy())
    result = lab.download(image_id, headers={"Range": "bytes=1000-200999"})
    assert (result.status, result.complete) == (206, True), result.describe()
    assert result.body == DATA[1000:201000], "the exact range, from the file copy"
    assert coded.request_count == 1
    return "206, the exact range from the next location (coded body refused)", f"exact range ✓ ({len(result.body)} B)"


@scenario("backend", "a verified file copy rewritten in place (same size, mtime restored)")
def _rewritten_in_place(lab: FaultLab) -> tuple[str, str]:
    """The second download must not trust the first's verification: the
    file's ctime changed, so it is hashed again, and the bad byte aborts it."""
    copy = lab.file_copy()
    image_id = lab.image(copy)
    check_download(lab, image_id, "served", via="backend")  # verified: later ones may use sendfile
    path = Path(copy["url"][len("file://"):])
    before = path.stat()
    with open(path, "r+b") as stream:
        stream.seek(500_000)
        stream.write(bytes([DATA[500_000] ^ 0xFF]))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    return check_download(lab, image_id, "aborted")


@scenario("backend", "10,000 unreadable locations before the good one", path="download: log lines")
def _many_broken_locations(lab: FaultLab) -> tuple[str, str]:
    # In a directory of their own: a backend (directory) of their own for the health rule.
    broken = lab.root / "many"
    broken.mkdir(exist_ok=True)
    missing = [location(f"file://{broken}/missing-{number}", "disk") for number in range(10_000)]
    image_id = lab.image(*missing, lab.file_copy())
    with lab.private_sidecar(max_rewrite_size="4M") as sidecar:
        mark = len(sidecar.log())
        result = fetch(sidecar.port, f"/v2/images/{image_id}/file")
        lines = [line for line in sidecar.log()[mark:].splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert (result.status, result.complete) == (200, True) and sha512(result.body) == SHA512, result.describe()
    assert len(lines) <= 5, f"{len(lines)} WARNING/ERROR lines for one download: " + "\n".join(lines[:10])
    assert any("9997 more locations failed" in line for line in lines), lines
    return f"200, correct body; {len(lines)} WARNING lines (3 named, the rest summed up)", verified(result)


# -- every location broken at once ------------------------------------------------

def all_broken(lab: FaultLab, detectable_only: bool = True) -> list[dict]:
    # (ignore_range or a wrong Content-Range would not break a whole-image
    # request: none is sent a Range.)
    modes = ["hang_headers", "status:403", "status:404", "status:500", "status:503",
             "redirect:http://127.0.0.1:9/x", "bad_content_length", "truncate_after:300000",
             "hang_after:200000", "reset_after:100000"]
    if not detectable_only:
        modes.insert(0, "corrupt_byte:500000")
    locations = [lab.refused(), lab.missing_file(), lab.file_copy(DATA[:-1]),
                 location("file:///etc/passwd", "disk"), location(f"file://{lab.root}/../escape", "disk")]
    locations += [lab.web(lab.backend(mode)) for mode in modes]
    locations.append(location("rbd://fsid/pool/image/snap", "ceph"))
    return locations


@scenario("all at once", "all 16 locations broken: refused, hangs, 403/404/500/503, 302, short body, cut, "
                         "stall, reset, missing/short/escaping files, rbd")
def _all_broken(lab: FaultLab) -> tuple[str, str]:
    image_id = lab.image(*all_broken(lab))
    outcome, checked = check_download(lab, image_id, "served", via="upstream")
    return outcome, checked


@scenario("all at once", "the same 16, after a first copy that breaks mid-stream")
def _all_broken_mid_stream(lab: FaultLab) -> tuple[str, str]:
    first = lab.backend("truncate_after:400000")
    image_id = lab.image(lab.web(first), *all_broken(lab))
    outcome, checked = check_download(lab, image_id, "served", via="upstream")
    return outcome + " (resumed from it with a Range)", checked


@scenario("all at once", "the same 16 plus one silently corrupt copy")
def _all_broken_corrupt(lab: FaultLab) -> tuple[str, str]:
    image_id = lab.image(*all_broken(lab, detectable_only=False))
    return check_download(lab, image_id, "aborted")


@scenario("all at once", "every location broken and the upstream's /file fails too (503)")
def _all_broken_upstream_too(lab: FaultLab) -> tuple[str, str]:
    image_id = lab.image(*all_broken(lab)[:5])  # the ones that fail before any byte
    return check_download(lab, image_id, 503, prefix="/nofile", via="upstream")


@scenario("all at once", "mid-stream failure, nothing can resume (upstream /file 503)")
def _nothing_resumes(lab: FaultLab) -> tuple[str, str]:
    first = lab.backend("truncate_after:400000")
    image_id = lab.image(lab.web(first), lab.refused())
    # A private sidecar: a download that never ends must not outlive this row.
    with lab.private_sidecar() as sidecar:
        before = lab.upstream_file_calls
        result = fetch(sidecar.port, f"/nofile/v2/images/{image_id}/file", timeout=4)
        asked = lab.upstream_file_calls - before
    assert result.status == 200 and not result.complete, result.describe()
    assert DATA.startswith(result.body), "what was sent is a correct prefix"
    assert asked == 1, f"the upstream's /file was asked {asked} times to resume one download"
    assert result.seconds < 3, f"the transfer must be aborted at once, not after {result.seconds:.1f} s"
    return "200 headers, connection aborted at byte 400000 (upstream asked once)", verified(result)


# -- upstream faults -------------------------------------------------------------

def show_passes_through(prefix: str, status: int = 200) -> Callable[[FaultLab], tuple[str, str]]:
    """Row: the image show with an upstream fault comes back byte for byte."""
    def run(lab: FaultLab) -> tuple[str, str]:
        image_id = lab.image(lab.file_copy(), lab.web(lab.backend()))
        path = f"{prefix}/v2/images/{image_id}"
        direct = lab.upstream_get(path)
        result = lab.get(path)
        assert (result.status, result.body) == (status, direct.body), result.describe()
        assert result.headers.get("content-type") == direct.headers.get("content-type")
        return f"{status}, the upstream's body passed through byte for byte", "n/a (metadata)"
    return run


for _prefix, _fault, _status in [
    ("/badjson", "invalid JSON", 200),
    ("/huge", f"huge JSON (> max_rewrite_size {MAX_REWRITE // 1024} KiB)", 200),
    ("/html500", "HTML error page (500)", 500),
    ("/html200", "HTML page with 200", 200),
    ("/notobject", "JSON that is not an object", 200),
]:
    scenario("upstream", _fault, "show")(show_passes_through(_prefix, _status))


@scenario("upstream", "JSON passed through (invalid, not an object, nothing to reorder)", "show: Content-Length")
def _passthrough_content_length(lab: FaultLab) -> tuple[str, str]:
    """DESIGN: "Content-Length kept when known". A body the filter read and
    then passes through unchanged must keep the upstream's Content-Length."""
    image_id = lab.image(lab.file_copy(), lab.web(lab.backend()))  # weights already in upstream order
    for prefix in ("/badjson", "/notobject", ""):
        path = f"{prefix}/v2/images/{image_id}"
        direct, result = lab.upstream_get(path), lab.get(path)
        assert result.body == direct.body
        assert result.headers.get("content-length") == direct.headers["content-length"], \
            f"{path}: {result.headers}"
    return "200, byte for byte, Content-Length kept", "n/a (metadata)"


@scenario("upstream", "gzip JSON (ignores Accept-Encoding: identity)", "show")
def _gzip_show(lab: FaultLab) -> tuple[str, str]:
    first, second = lab.file_copy(), lab.web(lab.backend())
    image_id = lab.api.add_image(data=DATA, locations=[{**first, "metadata": {"weight": 1}},
                                                       {**second, "metadata": {"weight": 9}}])
    result = lab.get(f"/gzip/v2/images/{image_id}", headers={"Accept-Encoding": "gzip"})
    assert result.status == 200, result.describe()
    assert result.headers.get("content-encoding") in (None, "identity")
    document = result.json()
    assert [item["url"] for item in document["locations"]] == [second["url"], first["url"]], "rewritten"
    assert result.headers["content-length"] == str(len(result.body))
    return "200, decoded and rewritten (weight order), Content-Length recomputed", "n/a (metadata)"


@scenario("upstream", "truncated JSON body", "show")
def _truncated_show(lab: FaultLab) -> tuple[str, str]:
    image_id = lab.image(lab.file_copy())
    result = lab.get(f"/truncjson/v2/images/{image_id}")
    assert result.status == 502 and result.json()["error"]["code"] == 502, result.describe()
    return "502 JSON error", "n/a (metadata)"


@scenario("upstream", "slow upstream (no answer within read_timeout)", "show")
def _slow_show(lab: FaultLab) -> tuple[str, str]:
    image_id = lab.image(lab.file_copy())
    result = lab.get(f"/slow/v2/images/{image_id}")
    assert result.status == 504, result.describe()
    error = result.json()["error"]
    assert error["code"] == 504 and f"did not answer within {UPSTREAM_READ_TIMEOUT:g}s" in error["message"]
    return "504 JSON error", "n/a (metadata)"


@scenario("upstream", "upstream down (connection refused)", "show")
def _down_show(lab: FaultLab) -> tuple[str, str]:
    result = fetch(lab.down_sidecar().port, "/v2/images/5f0a6c1e-0000-4000-8000-000000000001")
    assert result.status == 502, result.describe()
    assert "refused the connection" in result.json()["error"]["message"]
    return "502 JSON error", "n/a (metadata)"


# The same upstream faults on the download path's metadata fetch: no image
# bytes from a backend on unusable metadata; the upstream's answer, or its /file.

def download_metadata_fault(prefix: str, expect: str | int, via: str | None,
                            backend_contacted: bool = False) -> Callable[[FaultLab], tuple[str, str]]:
    def run(lab: FaultLab) -> tuple[str, str]:
        good = lab.backend()
        image_id = lab.image(lab.web(good), lab.file_copy())
        outcome, checked = check_download(lab, image_id, expect, prefix=prefix, via=via,
                                          untouched=() if backend_contacted else (good,))
        if not backend_contacted:
            outcome += "; no backend contacted"
        return outcome, checked
    return run


for _prefix, _fault, _expect, _via, _contacted in [
    ("/badjson", "invalid JSON", "served", "upstream", False),
    ("/huge", "huge JSON (over max_rewrite_size: not read)", "served", "upstream", False),
    ("/gzip", "gzip JSON", "served", "backend", True),
    # The show failed: the client's own /file request goes to the upstream, which decides.
    ("/html500", "HTML error page (500) on the show", "served", "upstream", False),
    ("/html200", "HTML page with 200", "served", "upstream", False),
    ("/notobject", "JSON that is not an object", "served", "upstream", False),
    ("/wrongsize", "metadata size 1 byte too large", "served", "upstream", True),
    ("/authreq", "401 Unauthorized", 401, None, False),
]:
    scenario("upstream", _fault, "download")(download_metadata_fault(_prefix, _expect, _via, _contacted))


@scenario("upstream", "metadata digest does not match the bytes", "download")
def _wrong_digest(lab: FaultLab) -> tuple[str, str]:
    image_id = lab.image(lab.file_copy())
    return check_download(lab, image_id, "aborted", prefix="/wrongdigest")


@scenario("upstream", "slow upstream (no answer within read_timeout)", "download")
def _slow_download(lab: FaultLab) -> tuple[str, str]:
    good = lab.backend()
    image_id = lab.image(lab.web(good))
    return check_download(lab, image_id, 504, prefix="/slow", untouched=(good,))


@scenario("upstream", "upstream down (connection refused)", "download")
def _down_download(lab: FaultLab) -> tuple[str, str]:
    result = fetch(lab.down_sidecar().port, "/v2/images/5f0a6c1e-0000-4000-8000-000000000001/file")
    assert result.status == 502, result.describe()
    assert "refused the connection" in result.json()["error"]["message"]
    return "502 JSON error", verified(result)


@scenario("upstream", "truncated JSON body", "download")
def _truncated_download(lab: FaultLab) -> tuple[str, str]:
    good = lab.backend()
    image_id = lab.image(lab.web(good))
    return check_download(lab, image_id, 502, prefix="/truncjson", untouched=(good,))


@scenario("upstream", "os_hash_algo shake_128 (an extendable-output hash)", "download")
def _shake(lab: FaultLab) -> tuple[str, str]:
    image_id = lab.image(lab.web(lab.backend()))
    mark = lab.log_mark()
    outcome, checked = check_download(lab, image_id, "served", prefix="/shake", via="backend")
    assert "(shake_128 verified)" in lab.log_since(mark)
    return outcome + ", shake_128 verified", checked


# -- bookkeeping: the metrics_file fails, downloads do not --------------------------------

@scenario("bookkeeping", "metrics_file locked by a stopped worker, then free again", "download")
def _metrics_file_locked(lab: FaultLab) -> tuple[str, str]:
    """Every download is served by the preferred backend, quickly, while the
    file is locked (no 500, no leaked pool slot: 2 slots, 12 downloads), and
    after the lock is gone; /healthcheck says degraded meanwhile."""
    web = lab.backend()
    image_id = lab.image(lab.web(web), lab.file_copy())
    metrics_file = lab.base / f"metrics-{os.urandom(4).hex()}.sqlite"
    with lab.private_sidecar(metrics_file=metrics_file, backend_pool_maxsize=2,
                             healthcheck_path="/healthcheck") as sidecar:
        fetch(sidecar.port, f"/v2/images/{image_id}/file")  # creates the file's rows
        holder = sqlite3.connect(str(metrics_file), isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            locked = [fetch(sidecar.port, f"/v2/images/{image_id}/file") for _ in range(6)]
            health = fetch(sidecar.port, "/healthcheck").json()
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        time.sleep(0.5)
        served_before = web.request_count
        after = [fetch(sidecar.port, f"/v2/images/{image_id}/file") for _ in range(6)]
        log = sidecar.log()
    for result in locked + after:
        assert (result.status, result.complete) == (200, True) and sha512(result.body) == SHA512, result.describe()
    slowest = max(result.seconds for result in locked)
    assert slowest < 2.0, f"a download took {slowest:.1f} s while the file was locked"
    assert health["status"] == "degraded", health
    assert web.request_count - served_before == 6, "served by the preferred backend: no pool slot was lost"
    assert "pool exhausted" not in log and "Traceback" not in log, log[-3000:]
    assert log.count("metrics_file") >= 1 and "carrying on from memory" in log
    return (f"200 from the preferred backend, 12/12 (slowest {slowest:.2f} s while locked); "
            "/healthcheck degraded; no pool slot lost", "sha512 ✓ (12 downloads)")


@scenario("bookkeeping", "metrics_file on a full file system", "download")
def _metrics_file_full(lab: FaultLab) -> tuple[str, str]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = lab.base / f"full-{os.urandom(4).hex()}"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True, timeout=10)
    try:
        web = lab.backend()
        image_id = lab.image(lab.web(web), lab.file_copy())
        with lab.private_sidecar(metrics_file=mount / "metrics.sqlite", healthcheck_path="/healthcheck") as sidecar:
            fetch(sidecar.port, "/healthcheck")  # the worker has loaded (and created the file)
            _fill(mount / "filler")
            results = [fetch(sidecar.port, f"/v2/images/{image_id}/file") for _ in range(5)]
            health = fetch(sidecar.port, "/healthcheck").json()
            log = sidecar.log()
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, timeout=10)
    for result in results:
        assert (result.status, result.complete) == (200, True) and sha512(result.body) == SHA512, result.describe()
    assert health["status"] == "degraded", health
    assert "full" in log and "Traceback" not in log, log[-3000:]
    return "200 from the preferred backend, 5/5; /healthcheck degraded", "sha512 ✓ (5 downloads)"


def _fill(path: Path) -> None:
    """Write until the file system is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass  # ENOSPC: full
    finally:
        os.close(fd)


# -- the health rule ------------------------------------------------------------------------

def _demotion(metrics_file: Path, prefix: str) -> float:
    """Seconds of the current demotion of the tracker record whose key starts with ``prefix``."""
    stats = Tracker(str(metrics_file), read_only=True).stats()
    (record,) = [record for key, record in stats.items() if key.startswith(prefix) and "#" in key]
    return record.demoted_until - record.updated


@scenario("health", "corrupt copy: the next download uses the good copy, demotions escalate", "download")
def _corrupt_copy_escalates(lab: FaultLab) -> tuple[str, str]:
    bad = lab.backend(f"corrupt_byte:{len(DATA) // 2}")
    image_id = lab.image(lab.web(bad), lab.file_copy())
    metrics_file = lab.base / f"metrics-{os.urandom(4).hex()}.sqlite"
    with lab.private_sidecar(metrics_file=metrics_file, cooldown=1, max_cooldown=60) as sidecar:
        first = fetch(sidecar.port, f"/v2/images/{image_id}/file")
        first_demotion = _demotion(metrics_file, f"http://127.0.0.1:{bad.port}")
        second = fetch(sidecar.port, f"/v2/images/{image_id}/file")
        tried = bad.request_count
        time.sleep(1.2)  # the copy's first cool-down is over: tried again, and bad again
        third = fetch(sidecar.port, f"/v2/images/{image_id}/file")
        second_demotion = _demotion(metrics_file, f"http://127.0.0.1:{bad.port}")
        backend = Tracker(str(metrics_file), read_only=True).stats()[f"http://127.0.0.1:{bad.port}"]
    assert first.status == 200 and not first.complete, first.describe()
    assert (second.status, second.complete) == (200, True) and sha512(second.body) == SHA512, second.describe()
    assert tried == 1, "the demoted copy was not tried for the second download"
    assert third.status == 200 and not third.complete, third.describe()
    assert first_demotion == pytest.approx(1, abs=0.1) and second_demotion == pytest.approx(2, abs=0.1), \
        (first_demotion, second_demotion)
    assert not backend.demoted(time.time()), "one image's bad copy does not demote its backend"
    return (f"aborted, then 200 from the good copy; the bad copy demoted {first_demotion:.0f} s, "
            f"then {second_demotion:.0f} s (backend not demoted)", "never completed / sha512 ✓")


@scenario("health", "one image with a wrong recorded hash, 5 downloads; then other tenants' images", "download")
def _one_tenant_cannot_demote(lab: FaultLab) -> tuple[str, str]:
    shared = lab.backend()
    bogus = lab.image(lab.web(shared), lab.file_copy())
    metrics_file = lab.base / f"metrics-{os.urandom(4).hex()}.sqlite"
    with lab.private_sidecar(metrics_file=metrics_file) as sidecar:
        aborted = [fetch(sidecar.port, f"/wrongdigest/v2/images/{bogus}/file") for _ in range(5)]
        before = shared.request_count
        others = [lab.image(lab.web(shared), lab.file_copy()) for _ in range(5)]
        served = [fetch(sidecar.port, f"/v2/images/{image_id}/file") for image_id in others]
        from_shared = shared.request_count - before
        # Three more distinct images mismatching there: now the backend is suspect.
        for _ in range(3):
            fetch(sidecar.port, f"/wrongdigest/v2/images/{lab.image(lab.web(shared), lab.file_copy())}/file")
        before = shared.request_count
        late = fetch(sidecar.port, f"/v2/images/{others[0]}/file")
        after_demotion = shared.request_count - before
    assert all(result.status == 200 and not result.complete for result in aborted)
    for result in served + [late]:
        assert (result.status, result.complete) == (200, True) and sha512(result.body) == SHA512, result.describe()
    assert from_shared == 5, f"other images used the shared backend {from_shared}/5 times"
    assert after_demotion == 0, "several images mismatching there demote the backend"
    return ("5 aborted; other images: 5/5 from the shared backend; after 3 more distinct images "
            "mismatch there it is demoted"), "never completed / sha512 ✓"


# -- the operator's config file ------------------------------------------------------

GARBAGE = [
    ("binary garbage", b"\xff\xfe\x00\x81 not an ini file \x00\x00"),
    ("no [locproxy] section", b"[other]\nlocation_strategy = store_type\n"),
    ("invalid value", b"[locproxy]\nlocation_strategy = nonsense\n"),
    ("file deleted", None),
]


@scenario("config", "config_file edited twice within one timestamp (same size, same mtime)", "show")
def _config_same_stat(lab: FaultLab) -> tuple[str, str]:
    low, high = lab.file_copy(), lab.web(lab.backend())
    image_id = lab.api.add_image(data=DATA, locations=[{**low, "metadata": {"weight": 1, "store": "disk"}},
                                                       {**high, "metadata": {"weight": 9, "store": "web"}}])
    edits = [("[locproxy]\nlocation_strategy = location_order\n", [low, high]),
             ("[locproxy]\nlocation_strategy = weight\n# pad12\n", [high, low])]
    assert len({len(text) for text, _ in edits}) == 1, "same size"
    before = lab.config_file.stat()
    try:
        for text, expected in edits:
            with open(lab.config_file, "r+") as stream:
                stream.write(text)
                stream.truncate()
            os.utime(lab.config_file, ns=(before.st_atime_ns, before.st_mtime_ns))
            time.sleep(1.2)
            shown = lab.get(f"/v2/images/{image_id}").json()
            assert [item["url"] for item in shown["locations"]] == [item["url"] for item in expected], text
    finally:
        lab.config_file.write_text(STRATEGY_CONFIG)
    return "each edit applied within a second (judged by content, not stat)", "n/a (metadata)"


@scenario("config", "config_file replaced with garbage while serving", "show + download")
def _config_garbage(lab: FaultLab) -> tuple[str, str]:
    low, high = lab.file_copy(), lab.web(lab.backend())
    # Upstream order [low, high]; only the weight strategy (from the config file) puts high first.
    image_id = lab.api.add_image(data=DATA, locations=[{**low, "metadata": {"weight": 1, "store": "disk"}},
                                                       {**high, "metadata": {"weight": 9, "store": "web"}}])
    mark = lab.log_mark()
    results = []
    try:
        for _name, garbage in GARBAGE:
            if garbage is None:
                lab.config_file.unlink()
            else:
                lab.config_file.write_bytes(garbage)
            # The filter looks at the file at most once a second, on a request.
            time.sleep(1.2)
            shown = lab.get(f"/v2/images/{image_id}")
            assert [item["url"] for item in shown.json()["locations"]] == [high["url"], low["url"]], \
                "the previous settings (weight) still apply"
            results.append(lab.download(image_id))
    finally:
        lab.config_file.write_text(STRATEGY_CONFIG)
    log = lab.log_since(mark)
    assert log.count("rejected, keeping the previous settings") == len(GARBAGE), log[-3000:]
    for result in results:
        assert (result.status, result.complete) == (200, True) and sha512(result.body) == SHA512
    return (f"old settings kept through {len(GARBAGE)} bad versions (ERROR logged each time)",
            f"sha512 ✓ ({len(results)} downloads)")


# -- pytest -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultLab]:
    with fault_lab(tmp_path_factory.mktemp("faults")) as the_lab:
        yield the_lab


# Rows whose promise locproxy breaks today (scenario id -> reason). Each is
# strict: when the bug is fixed the row passes and pytest says so.
KNOWN_BUGS: dict[str, str] = {}  # scenario id -> "BUG: ..." while a fault row fails


def _case_param(case: Scenario) -> Any:
    reason = KNOWN_BUGS.get(case.id)
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
    return pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("case", [_case_param(case) for case in SCENARIOS])
def test_fault(lab: FaultLab, case: Scenario) -> None:
    row = case.run(lab)
    assert row.outcome and row.verified


def test_known_bugs_name_real_scenarios() -> None:
    assert set(KNOWN_BUGS) <= {case.id for case in SCENARIOS}


def test_every_scenario_has_a_unique_id() -> None:
    ids = [case.id for case in SCENARIOS]
    assert len(ids) == len(set(ids))


def test_sidecar_survived_every_fault(lab: FaultLab) -> None:
    """Runs after the table: the same worker still serves correct bytes,
    no worker was restarted, and every traceback logged is a deliberate
    abort (a digest mismatch or a download no source could finish)."""
    image_id = lab.image(lab.file_copy())
    result = lab.download(image_id)
    assert (result.status, result.complete) == (200, True) and sha512(result.body) == SHA512
    log = lab.sidecar.log()
    assert log.count("Booting worker") == 1, "no worker was restarted"
    final_lines = re.findall(r"^([A-Za-z_][\w.]*(?:Error|Exception|Mismatch))\b", log, re.MULTILINE)
    unexpected = set(final_lines) - DELIBERATE_ABORTS - KNOWN_BUG_EXCEPTIONS
    assert not unexpected, f"unexpected exceptions in the sidecar log: {unexpected}"
    assert CREDENTIALS.split(":")[1] not in log


# Raised on purpose to abort a transfer that cannot be completed correctly.
DELIBERATE_ABORTS = {"locproxy.download.body.ChecksumMismatch", "locproxy.download.backends.base.BackendError"}
# Chained causes printed with the tracebacks of KNOWN_BUGS (remove with the fix).
KNOWN_BUG_EXCEPTIONS: set[str] = set()


# -- the table, for bench/reliability.py ---------------------------------------------------

def markdown_table(rows: Sequence[Row]) -> str:
    lines = ["| group | fault | path | outcome | bytes verified | s |", "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row.group} | {row.fault} | {row.path} | {row.outcome} | {row.verified} | {row.seconds:.1f} |")
    return "\n".join(lines)


def run_table(base: Path) -> list[Row]:
    """Every scenario, in order; a failed promise becomes a FAILED row."""
    rows = []
    with fault_lab(base) as the_lab:
        for case in SCENARIOS:
            started = time.monotonic()
            try:
                rows.append(case.run(the_lab))
            except AssertionError as error:
                message = " ".join(str(error).split())[:160]
                rows.append(Row(case.group, case.fault, case.path, f"**FAILED**: {message}", "?",
                                time.monotonic() - started))
            except pytest.skip.Exception as skipped:
                rows.append(Row(case.group, case.fault, case.path, f"skipped: {skipped.msg}", "-",
                                time.monotonic() - started))
    return rows
