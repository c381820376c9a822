"""The byte pump (``locproxy.download.body``) on its own, with copies in
memory: what it sends, where it resumes, what it refuses (pure logic; the
same rules run against real servers in test_download, test_faults and
test_fingerprints)."""

from __future__ import annotations

import hashlib

import pytest

from locproxy.download.backends import BackendError
from locproxy.download.body import ImageBody
from locproxy.download.policy import body_policy, read_span
from locproxy.download.verify import Check, ChecksumMismatch, Verifier
from locproxy.fingerprints import BLOCK, Fingerprints
from tests.support.download_fakes import DATA, Copy, GlanceFile, MemoryBackends, fingerprint_of, plan, sources

CORRUPT = DATA[:BLOCK + 5] + bytes([DATA[BLOCK + 5] ^ 1]) + DATA[BLOCK + 6:]


def run(copies: dict[str, Copy], *, start: int = 0, end: int | None = None, known: bool = False,
        mode: str = "on", upstream: GlanceFile | None = None) -> tuple[ImageBody, bytes, Fingerprints]:
    download = plan(start, end, names=tuple(copies))
    fingerprints = Fingerprints()
    if known:
        fingerprints.add(download.digest, fingerprint_of(DATA))
    policy = body_policy(download, mode, fingerprints.get(download.digest, download.size))
    pumped = sources(download, MemoryBackends(copies), upstream)
    first = pumped.open_next(*read_span(download, download.start, policy.aligned))
    body = ImageBody(download, pumped, first, Verifier(policy.check, download.digest, policy.fingerprint),
                     fingerprints)
    body.prime()
    return body, b"".join(body), fingerprints


@pytest.mark.parametrize("known", [False, True], ids=["first-read", "fingerprinted"])
@pytest.mark.parametrize("fail_at", [5, BLOCK - 1, BLOCK, 2 * BLOCK + 7], ids=lambda at: f"cut-at-{at}")
def test_a_cut_resumes_from_the_next_copy_at_the_block(known: bool, fail_at: int) -> None:
    a, b = Copy(fail_at=fail_at), Copy()
    _body, sent, _ = run({"a": a, "b": b}, known=known)
    assert sent == DATA
    assert b.reads == [(fail_at - fail_at % BLOCK, len(DATA))], "the rest read from the start of its block"


def test_a_first_read_records_the_fingerprint_only_when_it_matched() -> None:
    _body, sent, fingerprints = run({"a": Copy()})
    assert sent == DATA and fingerprints.get(plan().digest, len(DATA)).blocks == fingerprint_of(DATA).blocks
    with pytest.raises(ChecksumMismatch):
        run({"a": Copy(CORRUPT)})  # bytes went out before the verdict: the body is cut


def test_a_bad_block_is_never_sent_and_the_next_copy_sends_it() -> None:
    a, b = Copy(CORRUPT), Copy()
    body, sent, _ = run({"a": a, "b": b}, known=True)
    assert sent == DATA and body.refused
    assert b.reads == [(BLOCK, len(DATA))], "from the bad block on"


def test_a_small_corrupt_copy_falls_through_before_any_byte_goes_out() -> None:
    """One block: the digest judges it before anything is sent, so the next copy starts again."""
    small = DATA[:1000]
    download = plan(data=small, names=("a", "b"), digest=("sha512", hashlib.sha512(small).hexdigest()))
    copies = {"a": Copy(small[:-1] + b"x"), "b": Copy(small)}
    pumped = sources(download, MemoryBackends(copies))
    body = ImageBody(download, pumped, pumped.open_next(0, len(small)), Verifier(Check.DIGEST, download.digest, None),
                     Fingerprints())
    body.prime()
    assert b"".join(body) == small and copies["b"].reads == [(0, len(small))]


@pytest.mark.parametrize("ranges", [True, False], ids=["range", "glance-400-to-range"])
def test_the_upstream_resumes_with_a_range_or_from_byte_0_checking_what_was_sent(ranges: bool) -> None:
    upstream = GlanceFile(ranges=ranges)
    _body, sent, _ = run({"a": Copy(fail_at=2 * BLOCK + 9)}, known=True, upstream=upstream)
    assert sent == DATA
    assert upstream.asked == ([f"bytes={2 * BLOCK}-{len(DATA) - 1}"] if ranges
                              else [f"bytes={2 * BLOCK}-{len(DATA) - 1}", None])


def test_an_upstream_that_differs_in_what_was_sent_is_refused() -> None:
    """Read from byte 0 (a 400 to the Range), its block 1 differs from what
    was sent: the body is cut, never completed with another copy's bytes."""
    upstream = GlanceFile(data=CORRUPT, ranges=False)
    with pytest.raises(BackendError, match="no source could resume"):
        run({"a": Copy(fail_at=2 * BLOCK + 9)}, known=True, upstream=upstream)


@pytest.mark.parametrize("span", [(10, 20), (BLOCK - 3, BLOCK + 3), (3 * BLOCK, len(DATA))],
                         ids=["inside-a-block", "across-blocks", "the-last-block"])
def test_a_range_of_a_fingerprinted_image_is_checked_and_exact(span: tuple[int, int]) -> None:
    a, b = Copy(CORRUPT), Copy()
    body, sent, _ = run({"a": a, "b": b}, start=span[0], end=span[1], known=True)
    assert sent == DATA[span[0]:span[1]]
    assert body.verifier.check is Check.BLOCKS
    first = span[0] - span[0] % BLOCK
    assert a.reads == [(first, min(len(DATA), -(-span[1] // BLOCK) * BLOCK))], "whole blocks, checked"


def test_nothing_checked_reads_exactly_the_span() -> None:
    a = Copy()
    body, sent, _ = run({"a": a}, start=10, end=20, mode="off")
    assert sent == DATA[10:20] and a.reads == [(10, 20)] and body.verifier.check is Check.NONE
