"""Verify each copy once: the verified-copy memory, digests beside the
transfer, and what a sidecar does with them (real gunicorn, two workers, a
shared metrics_file, file and http copies on loopback)."""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

from locproxy.demo import DemoImageAPI, demo_bytes, location, serve_wsgi
from locproxy.download.digests import PipelinedHash
from locproxy.verified import VerifiedCopies
from tests.support.servers import run_gunicorn, sidecar_ini

DATA = demo_bytes("verified-tests", 3 * 1024 * 1024 + 5)
SHA512 = hashlib.sha512(DATA).hexdigest()
DIGEST = ("sha512", SHA512)


# -- the memory ------------------------------------------------------------------------

@pytest.mark.parametrize("shared", [False, True], ids=["memory", "metrics-file"])
def test_a_copy_is_trusted_only_for_its_identity_and_digest(tmp_path: Path, shared: bool) -> None:
    copies = VerifiedCopies(str(tmp_path / "m.sqlite") if shared else None)
    identity = ("file", 1, 2, 3, 4, 5)
    assert not copies.contains(identity, DIGEST)
    copies.add(identity, DIGEST)
    assert copies.contains(identity, DIGEST)
    assert copies.contains(identity, ("SHA512", SHA512.upper())), "names and hex compare case-insensitively"
    assert not copies.contains(("file", 1, 2, 3, 4, 6), DIGEST), "another ctime: another copy"
    assert not copies.contains(identity, ("sha512", "0" * 128)), "verified for another digest"
    assert not copies.contains(None, DIGEST), "no identity: never trusted"
    copies.forget(identity)
    assert not copies.contains(identity, DIGEST)
    copies.close()


def test_workers_and_restarts_share_what_was_verified(tmp_path: Path) -> None:
    path = str(tmp_path / "m.sqlite")
    first, second = VerifiedCopies(path), VerifiedCopies(path)
    first.add(("http", "http://web/img", "etag", '"v1"', 7), DIGEST)
    assert second.contains(("http", "http://web/img", "etag", '"v1"', 7), DIGEST), "another worker"
    first.close()
    second.forget(("http", "http://web/img", "etag", '"v1"', 7))
    restarted = VerifiedCopies(path)
    assert not restarted.contains(("http", "http://web/img", "etag", '"v1"', 7), DIGEST), "forgotten everywhere"
    restarted.add(("file", 9), DIGEST)
    restarted.close()
    assert VerifiedCopies(path).contains(("file", 9), DIGEST), "kept across restarts"
    second.close()


def test_a_locked_memory_file_costs_a_verification_never_an_error(tmp_path: Path) -> None:
    path = str(tmp_path / "m.sqlite")
    errors: list[str] = []
    copies = VerifiedCopies(path, on_error=errors.append)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        copies.add(("file", 1), DIGEST)
        assert copies.contains(("file", 1), DIGEST), "this process still remembers"
        assert not copies.contains(("file", 2), DIGEST)
        assert time.monotonic() - started < 1.0
        assert errors and copies.degraded
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        copies.close()


# -- digests beside the transfer -----------------------------------------------------------

@pytest.mark.parametrize("algorithm", ["sha512", "md5", "shake_128"])
def test_pipelined_hash_equals_hashlib(algorithm: str) -> None:
    chunks = [os.urandom(size) for size in (1, 4096, 1 << 20, 7, 3 * (1 << 20))]
    reference = hashlib.new(algorithm)
    pipelined = PipelinedHash(algorithm)
    for chunk in chunks:
        reference.update(chunk)
        pipelined.update(chunk)
    expected = reference.hexdigest(64) if algorithm.startswith("shake") else reference.hexdigest()
    assert pipelined.matches(expected)
    assert not pipelined.matches("0" * len(expected))


def test_abandoned_hashes_leave_no_thread_behind() -> None:
    """Clients that go away mid-download drop their hashes: the digest
    threads are one pool per process, whatever the number of downloads."""
    PipelinedHash("sha512").update(b"x")  # the pool exists
    before = threading.active_count()
    for _ in range(50):
        hasher = PipelinedHash("sha512")
        hasher.update(os.urandom(1 << 20))  # in flight when dropped
        del hasher
    time.sleep(0.2)
    assert threading.active_count() <= max(before, os.cpu_count() or 1) + 1


# -- a sidecar ------------------------------------------------------------------------------

class LastModifiedBackend:
    """An http copy with a Last-Modified validator (a WSGI app), which can
    be told to break off after some bytes or to serve other bytes."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.cut_after: int | None = None
        self.requests = 0

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        self.requests += 1
        start, end = 0, len(self.data)
        header = environ.get("HTTP_RANGE")
        if header:
            first, last = header.split("=", 1)[1].split("-")
            start, end = int(first), int(last) + 1
        headers = [("Content-Length", str(end - start)), ("Last-Modified", "Tue, 01 Sep 2026 10:00:00 GMT")]
        if header:
            headers.append(("Content-Range", f"bytes {start}-{end - 1}/{len(self.data)}"))
        start_response("206 Partial Content" if header else "200 OK", headers)
        body = self.data[start:end]
        if self.cut_after is not None and not header:
            return _broken(body[: self.cut_after])
        return [body]


def _broken(head: bytes) -> Iterator[bytes]:
    yield head
    raise ConnectionError("the backend broke off")


class Lab:
    def __init__(self, base: Path, upstream: str, root: Path, api: DemoImageAPI) -> None:
        self.base, self.upstream, self.root, self.api = base, upstream, root, api

    def metrics_file(self) -> Path:
        """A fresh one: what one test demoted must not steer another."""
        return self.base / f"metrics-{os.urandom(4).hex()}.sqlite"

    @contextmanager
    def sidecar(self, metrics_file: Path | None = None, **options: Any) -> Iterator[Any]:
        ini = sidecar_ini(self.base / f"sidecar-{os.urandom(3).hex()}.ini", self.upstream, {
            "file_roots": str(self.root), "allowed_hosts": "127.0.0.1", "chunk_size": "256K",
            "metrics_file": metrics_file or self.metrics_file(), "backend_read_timeout": 2, **options})
        with run_gunicorn(ini, workers=2, threads=4) as server:
            yield server

    def file_copy(self, data: bytes = DATA) -> dict:
        path = self.root / os.urandom(6).hex()
        path.write_bytes(data)
        return location(f"file://{path}", "disk")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    base = tmp_path_factory.mktemp("verified")
    root = base / "root"
    root.mkdir()
    api = DemoImageAPI()
    with serve_wsgi(api) as upstream:
        yield Lab(base, upstream.url, root, api)


def download(server: Any, image_id: str) -> tuple[int, bytes, bool]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        connection.request("GET", f"/v2/images/{image_id}/file")
        response = connection.getresponse()
        try:
            return response.status, response.read(), True
        except http.client.IncompleteRead as error:
            return response.status, error.partial, False
    finally:
        connection.close()


def sent_lines(server: Any, image_id: str, count: int) -> list[str]:
    """The "sent from" lines of ``count`` downloads of ``image_id``."""
    pattern = rf"INFO locproxy\.download: image {image_id}: bytes .*"
    return re.findall(pattern, server.log_after(pattern, count))


def test_a_file_copy_is_hashed_once_by_any_worker_and_after_a_restart(lab: Lab) -> None:
    image_id = lab.api.add_image(data=DATA, locations=[lab.file_copy()])
    metrics_file = lab.metrics_file()
    with lab.sidecar(metrics_file) as server:
        results = [download(server, image_id) for _ in range(6)]
        lines = sent_lines(server, image_id, 6)
    with lab.sidecar(metrics_file) as restarted:
        again = download(restarted, image_id)
        after_restart = sent_lines(restarted, image_id, 1)
    assert all(result == (200, DATA, True) for result in results + [again])
    assert lines[0].endswith("(sha512 verified)"), lines
    assert all("(sendfile, sha512 verified before)" in line for line in lines[1:]), lines
    assert "(sendfile, sha512 verified before)" in after_restart[0], after_restart


def test_a_copy_rewritten_in_place_is_never_trusted_on_old_evidence(lab: Lab) -> None:
    copy = lab.file_copy()
    image_id = lab.api.add_image(data=DATA, locations=[copy])
    path = Path(copy["url"][len("file://"):])
    with lab.sidecar() as server:
        assert download(server, image_id) == (200, DATA, True)
        before = path.stat()
        with open(path, "r+b") as stream:
            stream.seek(1000)
            stream.write(bytes([DATA[1000] ^ 1]))
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        status, body, complete = download(server, image_id)
        log = server.log()
    assert status == 200 and not complete and len(body) < len(DATA), "hashed again, aborted"
    assert "sha512 digest mismatch" in log


def test_an_http_copy_with_a_validator_is_verified_once(lab: Lab) -> None:
    backend = LastModifiedBackend(DATA)
    with serve_wsgi(backend) as web:
        image_id = lab.api.add_image(data=DATA, locations=[location(web.url + "/image", "web")])
        with lab.sidecar() as server:
            results = [download(server, image_id) for _ in range(3)]
            lines = sent_lines(server, image_id, 3)
    assert all(result == (200, DATA, True) for result in results)
    assert lines[0].endswith("(sha512 verified)") and lines[-1].endswith("(sha512 verified before)"), lines


def test_an_http_copy_without_a_validator_is_verified_every_time(lab: Lab) -> None:
    def no_validator(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("Content-Length", str(len(DATA)))])
        return [DATA]

    with serve_wsgi(no_validator) as web:
        image_id = lab.api.add_image(data=DATA, locations=[location(web.url + "/image", "web")])
        with lab.sidecar() as server:
            results = [download(server, image_id) for _ in range(2)]
            lines = sent_lines(server, image_id, 2)
    assert all(result == (200, DATA, True) for result in results)
    assert all(line.endswith("(sha512 verified)") for line in lines), lines


@pytest.mark.parametrize("resume_copy", ["good", "corrupt"])
def test_a_copy_taking_over_from_a_verified_one_is_checked_whole(lab: Lab, resume_copy: str) -> None:
    backend = LastModifiedBackend(DATA)
    spare = DATA if resume_copy == "good" else DATA[:-1] + bytes([DATA[-1] ^ 1])
    with serve_wsgi(backend) as web:
        image_id = lab.api.add_image(data=DATA, locations=[location(web.url + "/image", "web"),
                                                           lab.file_copy(spare)])
        with lab.sidecar() as server:
            assert download(server, image_id) == (200, DATA, True)  # the web copy is verified now
            backend.cut_after = 1024 * 1024
            status, body, complete = download(server, image_id)
            lines = sent_lines(server, image_id, 2 if resume_copy == "good" else 1)
            log = server.log()
    if resume_copy == "good":
        assert (status, body, complete) == (200, DATA, True)
        assert "sent from http://127.0.0.1" in lines[-1] and lines[-1].endswith("file (sha512 verified)"), lines
    else:
        assert status == 200 and not complete, "the copy that took over was checked whole: aborted"
        assert "sha512 digest mismatch from file" in log


def test_background_mode_sends_at_once_and_demotes_a_corrupt_copy(lab: Lab) -> None:
    corrupt = lab.file_copy(DATA[:-1] + bytes([DATA[-1] ^ 1]))
    good = lab.file_copy()
    image_id = lab.api.add_image(data=DATA, locations=[corrupt, good])
    with lab.sidecar(verify_checksums="background", location_strategy="location_order") as server:
        status, body, complete = download(server, image_id)
        server.log_after("digest mismatch")
        time.sleep(1.1)  # the other worker reads the shared file at most once a second
        second = download(server, image_id)
        log = server.log()
    assert (status, complete) == (200, True) and body != DATA, "sent whole: the client verifies (background)"
    assert re.search(r"ERROR locproxy\.download: .*digest mismatch from file; the body was sent", log), log[-2000:]
    assert second == (200, DATA, True), "the corrupt copy is demoted: the good one serves"


def test_verify_ahead_verifies_file_copies_while_idle(lab: Lab) -> None:
    backend = LastModifiedBackend(DATA)
    with serve_wsgi(backend) as web:
        image_id = lab.api.add_image(data=DATA, locations=[location(web.url + "/image", "web"), lab.file_copy()])
        with lab.sidecar(verify_ahead="true") as server:
            assert download(server, image_id) == (200, DATA, True)  # from the web copy
            server.log_after("verified ahead of need", timeout=15)
            backend.data = b""  # the web copy is gone: 0 bytes, a size mismatch
            time.sleep(1.1)
            result = download(server, image_id)
            lines = sent_lines(server, image_id, 2)
            log = server.log()
    assert "verified ahead of need" in log
    assert result == (200, DATA, True)
    assert "(sendfile, sha512 verified before)" in lines[-1], lines
