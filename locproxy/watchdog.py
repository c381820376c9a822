"""Deadlines for blocking socket reads: a backend that drips is cut off.

A socket read timeout bounds each wait for *one* byte: a backend sending a
byte a second never trips it, and holds a client (and a server thread) for
as long as it likes. locproxy bounds the time to a backend's response
headers and the time each body read may take, and when a deadline passes the
watchdog shuts the socket down, which wakes the reading thread with an error;
the download then fails over or resumes from the next copy.

One daemon thread per process (started on first use, again after a fork)
sleeps until the earliest armed deadline. Arming and disarming are a lock and
a notify: cheap next to a read of ``chunk_size`` bytes.

The socket of a request is not known before urllib3 picks a pooled
connection, so the connection classes of the backends' pool call
``attach_current`` with the socket they are about to read the response from;
``Watch.on_this_thread`` says which watch that is.
"""

from __future__ import annotations

import heapq
import itertools
import os
import socket
import threading
import time
from contextlib import contextmanager
from typing import Iterator

_current = threading.local()


class Watch:
    """The deadline of one backend stream; armed around each blocking read."""

    __slots__ = ("watchdog", "sock", "deadline", "expired", "reason")

    def __init__(self, watchdog: Watchdog) -> None:
        self.watchdog = watchdog
        self.sock: socket.socket | None = None
        self.deadline: float | None = None
        self.expired = False
        self.reason = ""

    def arm(self, seconds: float, reason: str) -> None:
        """Cut the socket unless ``disarm`` comes within ``seconds``; ``reason``
        is what the stream reports if it does."""
        self.reason = reason
        self.watchdog._arm(self, time.monotonic() + seconds)

    def disarm(self) -> None:
        self.deadline = None  # the thread skips entries whose deadline moved

    @contextmanager
    def on_this_thread(self) -> Iterator[Watch]:
        """Sockets attached (``attach_current``) in this block belong to this watch."""
        previous = getattr(_current, "watch", None)
        _current.watch = self
        try:
            yield self
        finally:
            _current.watch = previous

    def _expire(self) -> None:
        self.expired = True
        sock = self.sock
        if sock is not None:
            try:
                # Wakes a thread blocked in recv() on this socket; close() is
                # the reading thread's job.
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def attach_current(sock: socket.socket | None) -> None:
    """Give ``sock`` to the watch active on this thread, if any (cut at once
    if its deadline passed while the connection was being made)."""
    watch = getattr(_current, "watch", None)
    if watch is not None:
        watch.sock = sock
        if watch.expired:
            watch._expire()


class Watchdog:
    """Expires armed watches whose deadline passed."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._heap: list[tuple[float, int, Watch]] = []
        self._order = itertools.count()
        self._pid = 0

    def watch(self) -> Watch:
        return Watch(self)

    def _arm(self, watch: Watch, deadline: float) -> None:
        with self._condition:
            watch.deadline = deadline
            heapq.heappush(self._heap, (deadline, next(self._order), watch))
            if self._pid != os.getpid():  # first use in this (forked) process
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="locproxy-watchdog", daemon=True).start()
            elif self._heap[0][2] is watch:
                self._condition.notify()

    def _run(self) -> None:
        with self._condition:
            while True:
                now = time.monotonic()
                while self._heap and (self._heap[0][2].deadline != self._heap[0][0] or self._heap[0][0] <= now):
                    deadline, _, watch = heapq.heappop(self._heap)
                    if watch.deadline == deadline:  # still armed with this deadline: expired
                        watch.deadline = None
                        watch._expire()
                self._condition.wait(self._heap[0][0] - now if self._heap else None)


WATCHDOG = Watchdog()
