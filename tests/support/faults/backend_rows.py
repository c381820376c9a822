"""Fault table rows: one backend broken in every way, then every location at once."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable

from locproxy.demo import location
from tests.support.client import Fetched, fetch
from tests.support.faults.lab import (
    BLOCK_REFUSED,
    DATA,
    SHA512,
    FaultLab,
    Scenarios,
    check_download,
    sha512,
    verified,
)

ROWS = Scenarios()
scenario = ROWS.row


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


@scenario("backend", "wrong byte (corrupt copy first), a first read")
def _corrupt_first_read(lab: FaultLab) -> tuple[str, str]:
    broken = lab.backend("corrupt_byte:600000")
    with lab.first_reads():
        image_id = lab.image(lab.web(broken), lab.file_copy())
        return check_download(lab, image_id, "aborted")


@scenario("backend", "wrong byte (corrupt copy first), image read before")
def _corrupt(lab: FaultLab) -> tuple[str, str]:
    broken = lab.backend("corrupt_byte:600000")
    image_id = lab.image(lab.web(broken), lab.file_copy())
    return check_download(lab, image_id, "caught", via="backend")


@scenario("backend", "wrong byte in the last chunk, the only copy, a first read")
def _corrupt_last(lab: FaultLab) -> tuple[str, str]:
    broken = lab.backend(f"corrupt_byte:{len(DATA) - 1}")
    with lab.first_reads():
        image_id = lab.image(lab.web(broken))
        return check_download(lab, image_id, "aborted")


@scenario("backend", "wrong byte, Range request, image read before", path="download + Range")
def _corrupt_range(lab: FaultLab) -> tuple[str, str]:
    """The image's fingerprint covers every block: a range is checked too."""
    broken = lab.backend("corrupt_byte:1000")
    image_id = lab.image(lab.web(broken), lab.file_copy())
    mark = lab.log_mark()
    result = lab.download(image_id, headers={"Range": "bytes=0-4095"})
    assert (result.status, result.complete) == (206, True), result.describe()
    assert result.body == DATA[:4096], "the exact range, its block from the next copy"
    assert re.search(BLOCK_REFUSED, lab.log_since(mark, until=rf"image {image_id}: bytes 0-4095 sent from"))
    return "206, the exact range; the bad block refused, the range from the next copy", \
        f"exact range ✓ ({len(result.body)} B)"


@scenario("backend", "wrong byte, Range request, a first read", path="download + Range")
def _corrupt_range_first_read(lab: FaultLab) -> tuple[str, str]:
    """Never read whole here: no fingerprint, no per-range digest. The
    corrupt byte is served (a documented limit, as in Glance); length and
    offsets stay exact."""
    broken = lab.backend("corrupt_byte:1000")
    with lab.first_reads():
        image_id = lab.image(lab.web(broken), lab.file_copy())
        result = lab.download(image_id, headers={"Range": "bytes=0-4095"})
    assert (result.status, result.complete, len(result.body)) == (206, True, 4096), result.describe()
    wrong = sum(1 for a, b in zip(result.body, DATA[:4096]) if a != b)
    assert wrong == 1
    return "206, exact length; a range of an image never read whole is not checked", \
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


@scenario("backend", "a file copy read before, rewritten in place (same size, mtime restored)")
def _rewritten_in_place(lab: FaultLab) -> tuple[str, str]:
    """Content, not identity: the changed block is refused before it is
    sent, and the body goes on from the next copy."""
    copy, other = lab.file_copy(), lab.file_copy()
    image_id = lab.image(copy, other)
    check_download(lab, image_id, "served", via="backend")
    path = Path(copy["url"][len("file://"):])
    before = path.stat()
    with open(path, "r+b") as stream:
        stream.seek(500_000)
        stream.write(bytes([DATA[500_000] ^ 0xFF]))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    return check_download(lab, image_id, "caught", via="backend")


def _many_missing(lab: FaultLab, directories: int) -> tuple[Fetched, list[str]]:
    """10,000 missing file copies (in ``directories`` backends: a file
    backend is its directory) before a good one: one download."""
    base = lab.root / f"many-{os.urandom(3).hex()}"
    missing = [location(f"file://{base}/d{number % directories}/missing-{number}", "disk")
               for number in range(10_000)]
    image_id = lab.image(*missing, lab.file_copy())
    with lab.private_sidecar(max_rewrite_size="4M") as sidecar:
        mark = len(sidecar.log())
        result = fetch(sidecar.port, f"/v2/images/{image_id}/file")
        lines = [line for line in sidecar.log()[mark:].splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert (result.status, result.complete) == (200, True) and sha512(result.body) == SHA512, result.describe()
    assert len(lines) <= 5, f"{len(lines)} WARNING/ERROR lines for one download: " + "\n".join(lines[:10])
    return result, lines


@scenario("backend", "10,000 unreadable locations, each in a backend of its own", path="download: log lines")
def _many_broken_backends(lab: FaultLab) -> tuple[str, str]:
    result, lines = _many_missing(lab, directories=10_000)
    assert any("9997 more locations failed" in line for line in lines), lines
    return f"200, correct body; {len(lines)} WARNING lines (3 named, the rest summed up)", verified(result)


@scenario("backend", "10,000 unreadable locations in one backend", path="download: attempts")
def _many_broken_copies(lab: FaultLab) -> tuple[str, str]:
    """Three failures demote the backend: its other copies go after the good one."""
    result, lines = _many_missing(lab, directories=1)
    assert len(lines) == 3 and all("file not found" in line for line in lines), lines
    return "200, correct body after 3 failed attempts (the backend demoted, its other copies put last)", \
        verified(result)


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


@scenario("all at once", "the same 16 plus one silently corrupt copy, a first read")
def _all_broken_corrupt(lab: FaultLab) -> tuple[str, str]:
    with lab.first_reads():
        image_id = lab.image(*all_broken(lab, detectable_only=False))
        return check_download(lab, image_id, "aborted")


@scenario("all at once", "the same 16 plus one silently corrupt copy, image read before")
def _all_broken_corrupt_known(lab: FaultLab) -> tuple[str, str]:
    image_id = lab.image(*all_broken(lab, detectable_only=False))
    return check_download(lab, image_id, "caught", via="upstream")


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
    # It broke inside the first block: nothing went out yet, and nothing wrong was seen, so the client's own
    # request goes to the upstream, which answers it in its own words (here: 503), as without locproxy.
    assert result.status == 503 and result.headers["content-type"] == "application/json", result.describe()
    assert DATA[:1024] not in result.body, "an error response carries no image bytes"
    assert asked == 2, f"the upstream's /file was asked {asked} times (once to resume, once as the client asked)"
    assert result.seconds < 3, f"the download must end at once, not after {result.seconds:.1f} s"
    return ("the upstream's own 503 (JSON): it broke inside the first block, before any byte went out",
            verified(result))


@scenario("all at once", "mid-stream failure after a block went out, nothing can resume, image read before")
def _nothing_resumes_after_a_block(lab: FaultLab) -> tuple[str, str]:
    first = lab.backend(f"truncate_after:{len(DATA) - 10}")
    image_id = lab.image(lab.web(first), lab.refused())
    before = lab.upstream_file_calls
    result = lab.download(image_id, "/nofile", timeout=4)
    asked = lab.upstream_file_calls - before
    assert result.status == 200 and not result.complete, result.describe()
    assert result.body == DATA[:1 << 20], "what was sent is the first block, checked"
    assert asked == 1, f"the upstream's /file was asked {asked} times to resume one download"
    assert result.seconds < 3, f"the transfer must be aborted at once, not after {result.seconds:.1f} s"
    return "200 headers, connection aborted after the first block (upstream asked once)", verified(result)
