"""The security lab: the demo upstream (``FaultyUpstream``), an allowed
backend, and *traps* (a file outside the roots, loopback servers outside
``allowed_hosts``, one on ``::1``) that hold ``SECRET`` (as many bytes as
the image, so size checks cannot save the day) and count what reaches them,
behind a real sidecar; the escape tables (``FILE_ESCAPES``,
``HOST_ESCAPES``) that ``tests/test_security.py`` asserts and
``run_escapes`` counts for ``bench/reliability.py``.
"""

from __future__ import annotations

import socket
import threading
from collections import Counter
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

from locproxy.demo import DemoImageAPI, demo_bytes, location, serve_wsgi
from tests.support.client import Fetched, fetch
from tests.support.faults.lab import DATA, FaultyUpstream
from tests.support.faultserver import FaultServer
from tests.support.processes import children
from tests.support.servers import run_gunicorn, sidecar_ini

SECRET = demo_bytes("secret-outside-the-roots", len(DATA))
USER, PASSWORD = "vault-user", "Loc-Secret-7d2e"
CREDS = f"{USER}:{PASSWORD}"
QUERY_SECRET = "tempurlsig0f3a9c"  # e.g. a Swift temp_url_sig / S3 X-Amz-Signature


class Tripwire:
    """A listener that only counts connections (for addresses FaultServer
    cannot bind, e.g. ``::1``); every connection is closed at once."""

    def __init__(self, host: str) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.bind((host, 0))
        self._sock.listen(16)
        self._sock.settimeout(0.05)
        self.port: int = self._sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


class SecurityLab:
    def __init__(self, base: Path, stack: ExitStack) -> None:
        self.base = base
        self.root = base / "root"
        self.outside = base / "outside"
        self.root.mkdir()
        self.outside.mkdir()
        (self.root / "image").write_bytes(DATA)
        (self.outside / "secret").write_bytes(SECRET)
        (self.root / "link-to-secret").symlink_to(self.outside / "secret")
        (self.root / "link-to-outside").symlink_to(self.outside)
        (self.root / "%2e%2e").mkdir()  # a directory literally named %2e%2e: must not mean ".."
        self.api = DemoImageAPI()
        release = threading.Event()
        self.upstream_app = FaultyUpstream(self.api, release)
        self.upstream_url = stack.enter_context(serve_wsgi(self.upstream_app)).url
        stack.callback(release.set)
        self.web = stack.enter_context(FaultServer(DATA))
        self.trap = stack.enter_context(FaultServer(SECRET))  # not allowed
        self.redirector = stack.enter_context(FaultServer(DATA, f"redirect:{self.trap.url('/redirected')}"))
        self.trap6 = Tripwire("::1")
        stack.callback(self.trap6.close)
        self.sidecar = stack.enter_context(run_gunicorn(sidecar_ini(
            base / "sidecar.ini", self.upstream_url,
            {
                "location_strategy": "location_order",
                "file_roots": str(self.root),
                "allowed_hosts": f"127.0.0.1:{self.web.port}, 127.0.0.1:{self.redirector.port}",
                "chunk_size": "64K",
                "backend_connect_timeout": 1,
                "backend_read_timeout": 1,
                "metrics_path": "/-/metrics",
                "healthcheck_path": "/-/health",
            },
            {"connect_timeout": 1, "read_timeout": 5},
        ), threads=8))

    def image(self, *locations: dict, **attributes: Any) -> str:
        """An active image with exactly these locations. They are set after
        creation: the demo API validates locations as Glance's schema does
        (a url with "://"), and a hostile upstream entry need not pass that."""
        image_id = self.api.add_image(data=DATA, **attributes)
        with self.api._lock:
            self.api._images[image_id].locations = [dict(item) for item in locations]
        return image_id

    def get(self, path: str, **kwargs: Any) -> Fetched:
        return fetch(self.sidecar.port, path, **kwargs)

    def trap_requests(self) -> int:
        return self.trap.request_count + self.trap6.connections

    def worker_pid(self) -> int:
        workers = children(self.sidecar.pid)
        assert len(workers) == 1, workers
        return workers[0]


@contextmanager
def security_lab(base: Path) -> Iterator[SecurityLab]:
    with ExitStack() as stack:
        yield SecurityLab(base, stack)


FILE_ESCAPES = [
    pytest.param("file://{outside}/secret", id="outside-roots"),
    pytest.param("file://{root}/../outside/secret", id="dot-dot"),
    pytest.param("file://{root}/./../outside/./secret", id="dot-segments"),
    pytest.param("file://{root}//..//outside//secret", id="double-slashes"),
    pytest.param("file://{root}/link-to-secret", id="symlink-file"),
    pytest.param("file://{root}/link-to-outside/secret", id="symlink-directory"),
    pytest.param("file://{root}/%2e%2e/../outside/secret", id="encoded-dot-dot-then-dot-dot"),
    pytest.param("file://{root}/%2e%2e/%2e%2e/outside/secret", id="encoded-dot-dot"),
    pytest.param("file://{root}/..%2foutside%2fsecret", id="encoded-slash"),
    pytest.param("file://localhost{root}/../outside/secret", id="localhost-dot-dot"),
    pytest.param("file://127.0.0.1{outside}/secret", id="file-url-with-host"),
    pytest.param("FILE://{outside}/secret", id="uppercase-scheme"),
    pytest.param("file:{outside}/secret", id="no-authority"),
    pytest.param("file://{root}/image\x00/../../outside/secret", id="nul-byte"),
    pytest.param("file:///etc/passwd", id="etc-passwd"),
    pytest.param("file:///proc/self/environ", id="proc-environ"),
    pytest.param("file://{root}", id="the-root-directory-itself"),
]


HOST_ESCAPES = [
    pytest.param("http://127.0.0.1:{trap}/img", id="other-port"),
    pytest.param("https://127.0.0.1:{trap}/img", id="other-port-https"),
    pytest.param("http://localhost:{trap}/img", id="localhost-name"),
    pytest.param("http://[::1]:{trap6}/img", id="ipv6-loopback"),
    pytest.param("http://[::ffff:127.0.0.1]:{trap}/img", id="ipv4-mapped-ipv6"),
    pytest.param("http://127.0.0.1:{web}@127.0.0.1:{trap}/img", id="userinfo-allowed-at-evil"),
    pytest.param("http://127.0.0.1%3A{web}@127.0.0.1:{trap}/img", id="encoded-userinfo"),
    pytest.param("http://127.0.0.1:{trap}?@127.0.0.1:{web}/img", id="query-before-at"),
    pytest.param("http://127.0.0.1:{trap}#@127.0.0.1:{web}/img", id="fragment-before-at"),
    pytest.param("http://127.0.0.1:{trap}\\@127.0.0.1:{web}/img", id="backslash-at"),
    pytest.param("http://2130706433:{trap}/img", id="decimal-ip"),
    pytest.param("http://0x7f000001:{trap}/img", id="hex-ip"),
    pytest.param("http://0177.0.0.1:{trap}/img", id="octal-ip"),
    pytest.param("http://127.1:{trap}/img", id="short-ip"),
    pytest.param("http://127.0.0.1.:{trap}/img", id="trailing-dot"),
    pytest.param("http://127.0.0.1:{web}:{trap}/img", id="two-ports"),
    pytest.param("http://127.0.0.1: {trap}/img", id="space-in-port"),
    pytest.param("http://127.0.0.1:{trap}\r\nX-Injected: 1/img", id="crlf"),
    pytest.param("gopher://127.0.0.1:{trap}/_GET%20/img", id="gopher"),
    pytest.param("ftp://127.0.0.1:{trap}/img", id="ftp"),
    pytest.param("dict://127.0.0.1:{trap}/img", id="dict"),
    pytest.param("swift+http://{creds}@127.0.0.1:{trap}/v1/c/o", id="swift-http"),
    pytest.param("s3+http://{creds}@127.0.0.1:{trap}/bucket/o", id="s3-http"),
    pytest.param("rbd://fsid/pool/image/snap", id="rbd"),
    pytest.param("cinder://volume-id", id="cinder"),
    pytest.param("data:application/octet-stream;base64,AAAA", id="data-url"),
    pytest.param("jar:http://127.0.0.1:{trap}/x.jar!/img", id="jar"),
    pytest.param("http:/127.0.0.1:{trap}/img", id="one-slash"),
    pytest.param("http:///127.0.0.1:{trap}/img", id="three-slashes"),
]


def run_escapes(lab: SecurityLab) -> dict[str, int]:
    """Every FILE_ESCAPES and HOST_ESCAPES location, whole and ranged."""
    counts = Counter()
    templates = [param.values[0] for param in FILE_ESCAPES + HOST_ESCAPES]
    for template in templates:
        evil = template.format(root=lab.root, outside=lab.outside, trap=lab.trap.port, trap6=lab.trap6.port,
                               web=lab.web.port, creds=CREDS)
        image_id = lab.image(location(evil, "evil"))  # alone: the upstream's /file is the fallback
        for headers in ({}, {"Range": "bytes=0-65535"}):
            before = lab.trap_requests()
            result = lab.get(f"/v2/images/{image_id}/file", headers=headers)
            counts["downloads"] += 1
            counts["correct image bytes"] += result.complete and result.body == (DATA[:65536] if headers else DATA)
            counts["secret bytes served"] += SECRET[:64] in result.body
            counts["trap contacted"] += lab.trap_requests() > before
    counts["escape templates"] = len(templates)
    return dict(counts)

