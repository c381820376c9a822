"""When to copy an image into the site's own Glance store (pure core and its ledger).

``promote = auto``: an image with no copy in ``local_stores`` whose
downloads were served ``promote_after`` times within ``promote_window`` is
copied by Glance itself into the first local store (``copy-image``
import, asked by ``locproxy.promoter``). This module decides; it does no
HTTP.

* ``locality(stores, local_stores)``: whether an image (as the upstream
  showed it to the client) already has a local copy.
* ``ImageState`` and the pure steps ``on_download`` / ``on_result``: the
  downloads counted in the window, a copy being asked or watched, the
  back-off after a failure (doubled per failure up to
  ``promote_max_backoff``, so never a tight loop).
* ``Ledger``: those states for every image, in the shared ``metrics_file``
  (``locproxy.bookkeeping.SharedFile``) so that every worker of a node (and
  sidecars sharing the file) count together and one of them asks; in
  memory when there is no file or it fails (bookkeeping never hurts a
  download). Across nodes, Glance's own import lock (its 409) is the single
  flight: no coordinator of ours.

What is counted is decided by the caller (``locproxy.download.handler``):
only whole downloads of active images with no local copy, served to a
client the image API authorised, from whatever source (a node's cache hit
counts too: the site still lacks its copy, and every other node's cache
fills across the link).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, replace
from enum import Enum
from typing import Callable, Iterable

from locproxy.bookkeeping import SharedFile
from locproxy.strategies import stores_of

LOG = logging.getLogger(__name__)

MEMORY_SIZE = 4096  # images whose state a process keeps when the file fails
_SCHEMA = "CREATE TABLE IF NOT EXISTS promotions (image TEXT PRIMARY KEY, state TEXT, updated REAL)"


class Outcome(Enum):
    """How one promotion ended, from this node's point of view."""

    DONE = "done"  # the local store lists the image (copied now, or already there)
    FAILED = "failed"  # refused, a task error, a quota, a timeout: back off
    GONE = "gone"  # the image is no longer active (deleted, deactivated): nothing to do


@dataclass(frozen=True)
class Rule:
    after: int = 3
    window: float = 3600.0
    backoff: float = 300.0
    max_backoff: float = 21600.0
    stale: float = 7200.0  # a copy "in progress" older than this was abandoned (its worker died)


@dataclass(frozen=True)
class ImageState:
    hits: tuple[float, ...] = ()  # times of counted downloads, within the window
    running_since: float = 0.0  # 0: no copy being asked or watched by this node
    retry_at: float = 0.0  # back-off: no copy asked before then
    failures: int = 0  # failed copies in a row

    @property
    def empty(self) -> bool:
        return self == ImageState()


def locality(stores: Iterable[str], local_stores: Iterable[str]) -> bool:
    """Whether one of ``stores`` (the image's) is local."""
    return bool(set(stores) & set(local_stores))


def on_download(state: ImageState, now: float, rule: Rule) -> tuple[ImageState, bool]:
    """Count a download of an image with no local copy; True: ask for the copy now."""
    hits = tuple(t for t in state.hits if now - t < rule.window) + (now,)
    if state.running_since and now - state.running_since < rule.stale:
        return replace(state, hits=()), False  # a copy is under way: nothing to count towards
    if now < state.retry_at or len(hits) < rule.after:
        return replace(state, hits=hits[-rule.after:], running_since=0.0), False
    return replace(state, hits=(), running_since=now), True


def on_result(state: ImageState, outcome: Outcome, now: float, rule: Rule) -> ImageState:
    """The state once a copy this node asked for ended."""
    if outcome is Outcome.FAILED:
        failures = state.failures + 1
        delay = min(rule.backoff * 2 ** (failures - 1), rule.max_backoff)
        return ImageState(retry_at=now + delay, failures=failures)
    return ImageState()  # done or gone: a fresh count if the local copy ever goes away


def backoff_of(state: ImageState, now: float) -> float:
    """Seconds left of the back-off (0: none)."""
    return max(0.0, state.retry_at - now)


# -- what Glance answers (pure) -------------------------------------------------

class Answer(Enum):
    """Glance's answer to ``POST /v2/images/{id}/import`` with ``copy-image``."""

    STARTED = "started"  # 202: a task of ours copies it
    IN_PROGRESS = "in_progress"  # 409 while the image's import lock is held: someone's copy runs
    ALREADY = "already"  # the store holds it already
    REFUSED = "refused"  # 401/403: the policy (copy_image) refuses our identity; 404: it cannot see the image
    GONE = "gone"  # no longer active
    FAILED = "failed"  # anything else: a quota (413), a bad store (400)...


def _listed(image: dict, key: str) -> set[str]:
    value = image.get(key)
    return {item.strip() for item in value.split(",")} if isinstance(value, str) else set()


def import_answer(status: int, body: bytes, image: dict | None, target: str) -> Answer:
    """Classify the import's answer; ``image``: the image read after a 409 or 400 (None if unread)."""
    if status == 202:
        return Answer.STARTED
    if status in (401, 403, 404):
        # 404: a client was just served the image, so the service identity
        # does not see it (a private image of another project), unless it was
        # deleted since: a refusal, backed off, never asked for again and again.
        return Answer.REFUSED
    if image is not None and image.get("status") != "active":
        return Answer.GONE
    if image is not None and target in stores_of(image):
        return Answer.ALREADY  # Glance's 400 "already present at store", or a copy that just ended
    if status == 409 and image is not None and (target in _listed(image, "os_glance_importing_to_stores")
                                                or "os_glance_import_task" in image):
        return Answer.IN_PROGRESS
    return Answer.FAILED


def watch_verdict(image: dict | None, target: str) -> Outcome | None:
    """How a copy in progress stands from the image as Glance shows it now;
    None: still running. ``image`` None: the image is gone (404)."""
    if image is None or image.get("status") != "active":
        return Outcome.GONE
    if target in stores_of(image):
        return Outcome.DONE
    if target in _listed(image, "os_glance_importing_to_stores") or "os_glance_import_task" in image:
        return None  # before a failure listed by an earlier copy: this one still runs
    return Outcome.FAILED  # the lock is gone and the store does not hold it (os_glance_failed_import)


class Ledger:
    """Every image's ``ImageState``, shared through ``metrics_file`` (see the module docstring)."""

    def __init__(self, path: str | None, rule: Rule, *, on_error: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.rule = rule
        self.clock = clock
        self._file = SharedFile(path, on_error=on_error) if path else None
        if self._file is not None:
            self._file.open("promotions", lambda db: db.execute(_SCHEMA))
        self._memory: OrderedDict[str, ImageState] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def degraded(self) -> bool:
        return self._file is not None and self._file.degraded is not None

    def download(self, image_id: str) -> bool:
        """Count one download; True when this caller is to ask for the copy."""
        return self._step(image_id, lambda state, now: on_download(state, now, self.rule))

    def result(self, image_id: str, outcome: Outcome) -> ImageState:
        """Record how the copy this node asked for ended; the new state."""
        return self._step(image_id, lambda state, now: _twice(on_result(state, outcome, now, self.rule)))

    def state(self, image_id: str) -> ImageState:
        return self._step(image_id, lambda state, now: (state, state))

    def _step(self, image_id: str, step: Callable[[ImageState, float], tuple[ImageState, object]]) -> object:
        now = self.clock()
        if self._file is not None:
            ok, result = self._file.run("promotions", lambda db: _in_file(db, image_id, step, now))
            if ok:
                return result
        with self._lock:  # no file, or it fails now: this process's memory
            new, result = step(self._memory.get(image_id, ImageState()), now)
            self._memory[image_id] = new
            self._memory.move_to_end(image_id)
            while len(self._memory) > MEMORY_SIZE:
                self._memory.popitem(last=False)
        return result


def _twice(state: ImageState) -> tuple[ImageState, ImageState]:
    return state, state


def _in_file(db: sqlite3.Connection, image_id: str, step: Callable[[ImageState, float], tuple[ImageState, object]],
             now: float) -> object:
    """One read-modify-write under the file's write lock: workers never both
    see the count reach the threshold."""
    db.execute("BEGIN IMMEDIATE")
    row = db.execute("SELECT state FROM promotions WHERE image = ?", (image_id,)).fetchone()
    new, result = step(_decode(row[0]) if row else ImageState(), now)
    if new.empty:
        db.execute("DELETE FROM promotions WHERE image = ?", (image_id,))
    else:
        db.execute("INSERT OR REPLACE INTO promotions VALUES (?, ?, ?)", (image_id, json.dumps(asdict(new)), now))
    db.execute("COMMIT")
    return result


def _decode(text: str) -> ImageState:
    try:
        values = json.loads(text)
        return ImageState(hits=tuple(float(t) for t in values["hits"]), running_since=float(values["running_since"]),
                          retry_at=float(values["retry_at"]), failures=int(values["failures"]))
    except (ValueError, KeyError, TypeError):
        return ImageState()  # a row not understood counts afresh
