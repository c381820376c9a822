"""``ReadAhead``: a body read on a thread of its own, ahead of its sender."""

from __future__ import annotations

import threading
import time
from typing import Iterator

import pytest

from locproxy.download.wire import ReadAhead


class Body:
    def __init__(self, pieces: int, fail_at: int | None = None) -> None:
        self.pieces, self.fail_at = pieces, fail_at
        self.read = 0
        self.closed = threading.Event()

    def __iter__(self) -> Iterator[bytes]:
        for number in range(self.pieces):
            if number == self.fail_at:
                raise ConnectionError(f"broken at piece {number}")
            self.read += 1
            yield bytes([number % 256]) * 10

    def close(self) -> None:
        self.closed.set()


def test_every_piece_in_order() -> None:
    body = Body(100)
    ahead = ReadAhead(body)
    assert b"".join(ahead) == b"".join(bytes([n]) * 10 for n in range(100))
    ahead.close()
    assert body.closed.wait(2)


def test_an_error_of_the_body_reaches_the_sender() -> None:
    ahead = ReadAhead(Body(10, fail_at=3))
    with pytest.raises(ConnectionError, match="broken at piece 3"):
        list(ahead)
    ahead.close()


def test_a_sender_that_stops_stops_the_reader_and_the_body_is_closed() -> None:
    body = Body(10_000)
    ahead = ReadAhead(body, depth=2)
    pieces = iter(ahead)
    next(pieces)
    time.sleep(0.1)
    assert body.read <= 4, "at most depth pieces ahead"
    ahead.close()
    assert body.closed.wait(2), "closed by the reader once it stopped"
    read = body.read
    time.sleep(0.2)
    assert body.read == read, "the reader stopped"


def test_closed_before_it_started() -> None:
    body = Body(3)
    ahead = ReadAhead(body)
    ahead.close()
    assert body.closed.is_set() and list(ahead) == []


def test_the_first_pieces_go_out_before_the_reader_thread_starts() -> None:
    """``first`` (a primed body's first block) is sent from the sender's own
    thread: the first byte waits for no thread start."""
    body = Body(3)
    ahead = ReadAhead(body, first=[b"first"])
    pieces = iter(ahead)
    assert next(pieces) == b"first"
    assert not ahead._thread.is_alive() and body.read == 0, "nothing read on another thread yet"
    assert b"".join(pieces) == b"".join(bytes([n]) * 10 for n in range(3))
    ahead.close()
    assert body.closed.wait(2)


def test_a_sender_gone_after_the_first_pieces_closes_the_body() -> None:
    body = Body(3)
    ahead = ReadAhead(body, first=[b"first"])
    assert next(iter(ahead)) == b"first"
    ahead.close()
    assert body.closed.is_set() and body.read == 0
