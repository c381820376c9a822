"""The fault lab: one upstream, fresh fault-injecting backends per row, a
file root and the real sidecar, shared by every row of the fault table.

* The upstream is the demo image API behind ``FaultyUpstream``: a path
  prefix such as ``/badjson/v2/...`` selects an upstream fault.
* Backends are ``tests.support.faultserver.FaultServer`` instances, a fresh
  one per row so no row inherits another's state, plus a refusing port.
* The sidecar is ``gunicorn --paste`` (the ``locproxy`` filter in front of
  the ``proxy`` app, DEBUG logging captured); its strategy comes from a live
  ``config_file`` (``weight``): each row orders its locations by weight.

``check_download`` asserts a row's promise: the client receives a correct
body (sha512 equal to the image's), or a clear error (an HTTP error, or a
transfer aborted before its Content-Length with an ERROR logged); never a
corrupt body that looks complete. ``Scenario`` is one row, ``Scenarios`` an
ordered table of them (``tests.support.faults.table`` holds the table that
``tests/test_faults.py`` and ``bench/reliability.py`` run).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from locproxy.demo import DemoImageAPI, demo_bytes, location, serve_wsgi
from tests.support.client import Fetched, fetch
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

    def log_since(self, mark: int, until: str | None = None) -> str:
        """The sidecar's log after ``mark``, once it has ``until`` (a regex;
        lines a worker writes after its client has the last byte)."""
        return (self.sidecar.log() if until is None else self.sidecar.log_after(until))[mark:]

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

    @contextmanager
    def first_reads(self) -> Iterator[None]:
        """The rows inside run against a sidecar of their own that has read
        no image yet (no fingerprint known: every download is a first read)."""
        with self.private_sidecar() as sidecar:
            shared, self.sidecar = self.sidecar, sidecar
            try:
                yield
            finally:
                self.sidecar = shared

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


BLOCK_REFUSED = r"ERROR locproxy\.download: image \S+: block \d+ from \S+ does not match the image's fingerprint"


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

    ``expect``: "served" (200, complete, sha512 equal), "caught" (served,
    and an ERROR says a block was refused), "aborted" (200 headers,
    connection cut before Content-Length, ERROR logged) or a status code (an
    error response carrying no image bytes). ``via``: "backend"
    (the upstream's /file untouched), "upstream" (the upstream's /file
    used), or None (either). ``untouched``: servers that must see no request.
    """
    before = lab.upstream_file_calls
    counts = [server.request_count for server in untouched]
    mark = lab.log_mark()
    result = lab.download(image_id, prefix, headers=headers)
    used_upstream = lab.upstream_file_calls > before
    log = lab.log_since(mark)
    if expect in ("served", "caught"):
        assert (result.status, result.complete) == (200, True), result.describe()
        assert sha512(result.body) == SHA512, "a complete body must be the image"
        outcome = "200, correct body"
        if expect == "caught":
            log = lab.log_since(mark, until=rf"image {image_id}: bytes \d+-\d+ sent from")
            assert re.search(BLOCK_REFUSED, log), log[-3000:]
            outcome += " (the bad block refused before it was sent, ERROR logged; the rest from the next copy)"
    elif expect == "aborted":
        assert result.status == 200 and not result.complete, result.describe()
        assert len(result.body) < len(DATA)
        if re.search(BLOCK_REFUSED, log):
            outcome = "200 headers, then the connection is aborted (a bad block refused, no copy had it right)"
        else:
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


class Scenarios(list):
    """An ordered table of scenarios; ``@table.row(group, fault, path)``
    registers a function ``(lab) -> (outcome, verified)`` as one row."""

    def row(self, group: str, fault: str, path: str = "download") -> Callable:
        def register(function: Callable[[FaultLab], tuple[str, str]]) -> Callable:
            self.append(Scenario(group, fault, path, function))
            return function
        return register
