"""Trust content, not identity: image fingerprints, digests beside the
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
from locproxy.fingerprints import BLOCK, Fingerprint, FingerprintBuilder, Fingerprints, block_count
from tests.support.servers import run_gunicorn, sidecar_ini

DATA = demo_bytes("fingerprint-tests", 3 * 1024 * 1024 + 5)
SHA512 = hashlib.sha512(DATA).hexdigest()
DIGEST = ("sha512", SHA512)


def fingerprint_of(data: bytes) -> Fingerprint:
    built = FingerprintBuilder()
    for start in range(0, len(data), BLOCK):
        built.add(data[start:start + BLOCK])
    return built.fingerprint(len(data))


# -- fingerprints --------------------------------------------------------------------

def test_a_fingerprint_matches_each_block_of_the_image_and_nothing_else() -> None:
    fingerprint = fingerprint_of(DATA)
    assert block_count(len(DATA)) == 4 and len(fingerprint.blocks) == 4 * 16
    for index in range(4):
        block = DATA[index * BLOCK:(index + 1) * BLOCK]
        assert fingerprint.matches(index, block)
        assert not fingerprint.matches(index, block[:-1] + bytes([block[-1] ^ 1])), "one bit"
        assert not fingerprint.matches(index, block[:-1]), "one byte short"
    assert not fingerprint.matches(1, DATA[:BLOCK]), "another block's bytes"
    assert not fingerprint.matches(4, b"x"), "past the end"
    with pytest.raises(ValueError):
        Fingerprint(len(DATA), fingerprint.blocks[:-16])


@pytest.mark.parametrize("shared", [False, True], ids=["memory", "metrics-file"])
def test_fingerprints_are_kept_by_the_images_digest_and_size(tmp_path: Path, shared: bool) -> None:
    store = Fingerprints(str(tmp_path / "m.sqlite") if shared else None)
    assert store.get(DIGEST, len(DATA)) is None
    store.add(DIGEST, fingerprint_of(DATA))
    assert store.get(DIGEST, len(DATA)).blocks == fingerprint_of(DATA).blocks
    assert store.get(("SHA512", SHA512.upper()), len(DATA)) is not None, "names and hex compare case-insensitively"
    assert store.get(("sha512", "0" * 128), len(DATA)) is None, "another image"
    assert store.get(DIGEST, len(DATA) + 1) is None, "another size"
    assert store.get(None, len(DATA)) is None, "no digest: nothing to trust"
    store.close()


def test_workers_and_restarts_share_fingerprints(tmp_path: Path) -> None:
    path = str(tmp_path / "m.sqlite")
    first, second = Fingerprints(path), Fingerprints(path)
    first.add(DIGEST, fingerprint_of(DATA))
    assert second.get(DIGEST, len(DATA)) is not None, "another worker"
    first.close()
    second.close()
    restarted = Fingerprints(path)
    assert restarted.get(DIGEST, len(DATA)) is not None, "kept across restarts"
    restarted.close()


def test_a_locked_or_damaged_file_costs_a_first_read_never_an_error(tmp_path: Path) -> None:
    path = str(tmp_path / "m.sqlite")
    errors: list[str] = []
    store = Fingerprints(path, on_error=errors.append)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        store.add(DIGEST, fingerprint_of(DATA))
        assert store.get(DIGEST, len(DATA)) is not None, "this process still remembers"
        assert store.get(("sha512", "1" * 128), 5) is None
        assert time.monotonic() - started < 1.0
        assert errors and store.degraded
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        store.close()
    with sqlite3.connect(path) as db:  # a row of the wrong length: ignored, not trusted
        db.execute("UPDATE fingerprints SET blocks = ?", (b"short",))
    assert Fingerprints(path).get(DIGEST, len(DATA)) is None


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

    def __init__(self, data: bytes, validator: bool = True) -> None:
        self.data = data
        self.validator = validator
        self.cut_after: int | None = None
        self.requests = 0

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        self.requests += 1
        start, end = 0, len(self.data)
        header = environ.get("HTTP_RANGE")
        if header:
            first, last = header.split("=", 1)[1].split("-")
            start, end = int(first), int(last) + 1
        headers = [("Content-Length", str(end - start))]
        if self.validator:
            headers.append(("Last-Modified", "Tue, 01 Sep 2026 10:00:00 GMT"))
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
    def sidecar(self, metrics_file: Path | None = None, workers: int = 2, **options: Any) -> Iterator[Any]:
        ini = sidecar_ini(self.base / f"sidecar-{os.urandom(3).hex()}.ini", self.upstream, {
            "file_roots": str(self.root), "allowed_hosts": "127.0.0.1", "chunk_size": "256K",
            "metrics_file": metrics_file or self.metrics_file(), "backend_read_timeout": 2, **options})
        with run_gunicorn(ini, workers=workers, threads=4) as server:
            yield server

    def file_copy(self, data: bytes = DATA) -> dict:
        path = self.root / os.urandom(6).hex()
        path.write_bytes(data)
        return location(f"file://{path}", "disk")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    base = tmp_path_factory.mktemp("fingerprints")
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


def test_a_first_read_fingerprints_the_image_for_every_worker_and_after_a_restart(lab: Lab) -> None:
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
    assert all(line.endswith(EVERY_BLOCK) for line in lines[1:]), lines
    assert after_restart[0].endswith(EVERY_BLOCK), after_restart


EVERY_BLOCK = "(every block checked against the image's fingerprint)"


def test_a_copy_rewritten_in_place_is_refused_by_content(lab: Lab) -> None:
    """Same size, mtime restored (ctime is all that changes): nothing of its
    identity is trusted; the changed block is refused and the next copy
    sends it."""
    copy = lab.file_copy()
    image_id = lab.api.add_image(data=DATA, locations=[copy, lab.file_copy()])
    path = Path(copy["url"][len("file://"):])
    with lab.sidecar() as server:
        assert download(server, image_id) == (200, DATA, True)
        before = path.stat()
        with open(path, "r+b") as stream:
            stream.seek(BLOCK + 1000)
            stream.write(bytes([DATA[BLOCK + 1000] ^ 1]))
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        result = download(server, image_id)
        line = sent_lines(server, image_id, 2)[-1]
        log = server.log()
    assert result == (200, DATA, True)
    assert re.search(rf"ERROR locproxy\.download: image {image_id}: block 1 from file does not match", log)
    assert line.endswith(f"sent from file {EVERY_BLOCK}"), line


@pytest.mark.parametrize("validator", ["last-modified", "none"])
def test_an_http_copy_replaced_with_the_same_size_is_refused_by_content(lab: Lab, validator: str) -> None:
    """Behind a plain server the validators do not change (nginx's ETag is
    mtime-size; Last-Modified has 1 s): nothing of them is trusted."""
    backend = LastModifiedBackend(DATA, validator=validator == "last-modified")
    with serve_wsgi(backend) as web:
        image_id = lab.api.add_image(data=DATA, locations=[location(web.url + "/image", "web"), lab.file_copy()])
        with lab.sidecar() as server:
            assert download(server, image_id) == (200, DATA, True)
            backend.data = DATA[:2 * BLOCK] + bytes(len(DATA) - 2 * BLOCK)  # other bytes, same size
            result = download(server, image_id)
            lines = sent_lines(server, image_id, 2)
            log = server.log()
    assert result == (200, DATA, True)
    assert re.search(r"block 2 from http://127\.0\.0\.1:\d+ does not match the image's fingerprint", log)
    assert re.search(rf"sent from http://127\.0\.0\.1:\d+, file {re.escape(EVERY_BLOCK)}$", lines[-1]), lines


@pytest.mark.parametrize("resume_copy", ["good", "swapped"])
def test_a_copy_taking_over_mid_stream_is_checked_block_by_block(lab: Lab, resume_copy: str) -> None:
    """The copy that takes over is read from the block where the first broke
    off; a swapped one is refused there, and the rest comes from the image
    API's own /file: the client still gets one exact body."""
    backend = LastModifiedBackend(DATA)
    spare = DATA if resume_copy == "good" else DATA[:BLOCK] + bytes(reversed(DATA[BLOCK:]))
    with serve_wsgi(backend) as web:
        image_id = lab.api.add_image(data=DATA, locations=[location(web.url + "/image", "web"),
                                                           lab.file_copy(spare)])
        with lab.sidecar() as server:
            assert download(server, image_id) == (200, DATA, True)  # fingerprinted now
            backend.cut_after = BLOCK + 4096
            result = download(server, image_id)
            line = sent_lines(server, image_id, 2)[-1]
            log = server.log()
    assert result == (200, DATA, True)
    assert line.endswith(EVERY_BLOCK), line
    if resume_copy == "good":
        assert re.search(r"sent from http://127\.0\.0\.1:\d+, file \(", line), line
    else:
        assert re.search(rf"image {image_id}: block 1 from file does not match", log), log[-2000:]
        assert re.search(r"sent from http://127\.0\.0\.1:\d+, file, upstream \(", line), line
        assert "verified)" not in line


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


def test_verify_ahead_fingerprints_while_idle(lab: Lab) -> None:
    """A HEAD plans the download; while idle, a worker reads the file copy
    and records the fingerprint: the first GET is checked block by block."""
    image_id = lab.api.add_image(data=DATA, locations=[lab.file_copy()])
    with lab.sidecar(verify_ahead="true", workers=1) as server:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        connection.request("HEAD", f"/v2/images/{image_id}/file")
        assert connection.getresponse().status == 200
        connection.close()
        server.log_after("verified ahead of need", timeout=15)
        result = download(server, image_id)
        lines = sent_lines(server, image_id, 1)
    assert result == (200, DATA, True)
    assert lines[0].endswith(EVERY_BLOCK), lines


def test_sidecars_sharing_a_metrics_file_check_what_they_see(lab: Lab) -> None:
    """One sidecar fingerprinted the image; another, sharing its
    metrics_file, sees other bytes behind the same URL: it checks them
    against the fingerprint, and refuses them."""
    backend = LastModifiedBackend(DATA)
    metrics_file = lab.metrics_file()
    with serve_wsgi(backend) as web:
        image_id = lab.api.add_image(data=DATA, locations=[location(web.url + "/image", "web"), lab.file_copy()])
        with lab.sidecar(metrics_file) as one:
            assert download(one, image_id) == (200, DATA, True)
        backend.data = bytes(BLOCK) + DATA[BLOCK:]
        with lab.sidecar(metrics_file) as other:
            result = download(other, image_id)
            log = other.log_after(rf"image {image_id}: bytes 0-\d+ sent from")
    assert result == (200, DATA, True)
    assert re.search(rf"image {image_id}: block 0 from http://127\.0\.0\.1:\d+ does not match", log), log[-2000:]
