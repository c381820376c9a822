"""Asking Glance to copy an image into a local store, and watching it do so.

The thin I/O half of promotion (the decisions are ``locproxy.promotion``'s):

* ``copy_image(api, image_id, store)``: ``POST /v2/images/{id}/import``
  with ``{"method": {"name": "copy-image"}, "stores": [store]}``, then the
  image is read every ``promote_poll_interval`` until ``stores`` lists the
  store (done), the copy ends without it (failed), the image is gone, or
  ``promote_timeout``. A 409 while the image's import lock is held is
  another node's copy in progress: watched the same way, never an error.
  Used by the filter and by ``locproxy promote``.
* ``Promoter``: what the download path calls after serving a counted
  download (``served``). It never blocks, raises or slows a download: the
  ledger's step is one small sqlite write, the copy runs on a thread of its
  own (at most ``MAX_RUNNING`` per process), and every failure is logged
  once per copy (a WARNING naming the image and the store), counted, and
  backed off per image.
* ``ServiceImageAPI``: requests with locproxy's service identity
  (``locproxy.identity``, keystoneauth1); ``TokenImageAPI``: with a token
  and a URL (the command).

Once the local store is listed, the next show of the image (the client's
own, through the filter) has a new ``stores`` and locations: hidden copies
are read again (``locproxy.hidden`` keys its memory by ``stores``), and the
strategy chooses the local copy, if it ranks local stores first.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import urllib.error
import urllib.request
from typing import Callable, Protocol

from locproxy import observability
from locproxy.config import PromotionSettings
from locproxy.identity import IdentitySettings, ServiceIdentity
from locproxy.promotion import Answer, Ledger, Outcome, Rule, import_answer, watch_verdict

LOG = logging.getLogger(__name__)

MAX_RUNNING = 4  # copies one process asks for and watches at once
_TAGS = re.compile(r"<[^>]*>|\s+")


class ImageAPI(Protocol):
    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        """``(status, body)`` of one request; raises ``OSError`` when it cannot be sent."""


class ServiceImageAPI:
    """The image API as locproxy's service identity (one session per worker)."""

    def __init__(self, identity: ServiceIdentity) -> None:
        self.identity = identity

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        token = self.identity.token()
        endpoint = self.identity.endpoint() if token is not None else None
        if token is None or endpoint is None:
            raise OSError("the service identity has no token or image endpoint now")
        try:
            resp = self.identity.session().request(endpoint + path, method, json=body, raise_exc=False,
                                                   headers={"Accept": "application/json"},
                                                   timeout=self.identity.settings.timeout)
        except Exception as error:  # noqa: BLE001 - keystoneauth's own errors: one kind for the caller
            raise OSError(type(error).__name__) from None
        return resp.status_code, resp.content


class TokenImageAPI:
    """The image API at ``url`` with an ``X-Auth-Token`` (``locproxy promote``)."""

    def __init__(self, url: str, token: str, timeout: float = 30.0) -> None:
        self.url, self._token, self.timeout = url.rstrip("/"), token, timeout

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"X-Auth-Token": self._token, "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as error:
            with error:
                return error.code, error.read()


def message(status: int, body: bytes) -> str:
    """Glance's explanation of an answer, short and as plain text."""
    text = _TAGS.sub(" ", body[:2000].decode("utf-8", "replace")).strip()
    return f"HTTP {status}" + (f": {text[:200]}" if text else "")


def read_image(api: ImageAPI, image_id: str) -> tuple[bool, dict | None]:
    """``(known, image)``: (True, None) when it is gone (404); (False, None) when it could not be read now."""
    try:
        status, body = api.call("GET", f"/v2/images/{image_id}")
    except OSError:
        return False, None
    if status == 404:
        return True, None
    try:
        image = json.loads(body) if status == 200 else None
    except ValueError:
        image = None
    return isinstance(image, dict), image if isinstance(image, dict) else None


def ask(api: ImageAPI, image_id: str, store: str) -> tuple[Answer, str]:
    """The import request and what its answer means."""
    body = {"method": {"name": "copy-image"}, "stores": [store], "all_stores_must_succeed": True}
    status, answer = api.call("POST", f"/v2/images/{image_id}/import", body)
    image = None
    if status in (400, 409):  # in progress, done already, or not active: the image says which
        image = read_image(api, image_id)[1]
    why = message(status, answer)
    if status == 404:
        why += " (the service identity cannot see the image: copy_image needs an identity that can, see the README)"
    return import_answer(status, answer, image, store), why


def copy_image(api: ImageAPI, image_id: str, store: str, *, poll_interval: float, timeout: float,
               progress: Callable[[Answer, dict | None], None] | None = None,
               wait: Callable[[float], bool] = lambda seconds: time.sleep(seconds) or False) -> tuple[Outcome, str]:
    """Copy ``image_id`` into ``store`` and watch until it ends; ``(outcome, why)``.
    ``wait(seconds)`` True: stop watching (the process is stopping)."""
    try:
        answer, why = ask(api, image_id, store)
    except OSError as error:
        answer, why = _unanswered(api, image_id, store, f"the import could not be asked ({error})")
    if progress is not None:
        progress(answer, None)
    if answer in (Answer.REFUSED, Answer.FAILED):
        return Outcome.FAILED, why
    if answer is Answer.GONE:
        return Outcome.GONE, why
    if answer is Answer.ALREADY:
        return Outcome.DONE, "the store holds it already"
    observability.promotion(answer.value)  # started, or in_progress (another node's copy)
    deadline = time.monotonic() + timeout
    while True:
        known, image = read_image(api, image_id)
        verdict = watch_verdict(image, store) if known else None
        if progress is not None and known:
            progress(answer, image)
        if verdict is not None:
            return verdict, "the copy ended without the store (os_glance_failed_import)" \
                if verdict is Outcome.FAILED else verdict.value
        if time.monotonic() >= deadline:
            return Outcome.FAILED, f"not done after promote_timeout ({timeout:g} s)"
        if wait(poll_interval):
            return Outcome.FAILED, "stopped"


def _unanswered(api: ImageAPI, image_id: str, store: str, why: str) -> tuple[Answer, str]:
    """No answer to the import (a timeout): Glance may have taken it all
    the same. A copy running now is watched; else it failed."""
    known, image = read_image(api, image_id)
    verdict = watch_verdict(image, store) if known and image is not None else Outcome.FAILED
    if verdict is None:
        return Answer.IN_PROGRESS, why
    return (Answer.ALREADY, why) if verdict is Outcome.DONE else (Answer.FAILED, why)


class Promoter:
    """Counts downloads and asks for copies in the background (see the module docstring)."""

    def __init__(self, settings: PromotionSettings, ledger: Ledger, api: ImageAPI) -> None:
        self.settings, self.ledger, self.api = settings, ledger, api
        self._slots = threading.BoundedSemaphore(MAX_RUNNING)
        self._stopping = threading.Event()
        self.threads: list[threading.Thread] = []

    def served(self, image_id: str) -> None:
        """A whole download of ``image_id``, which has no local copy, was
        served to an authorised client. Never raises."""
        try:
            observability.promotion_download()
            if self.ledger.download(image_id):
                self._start(image_id)
        except Exception as error:  # noqa: BLE001 - the download it describes goes on
            observability.bookkeeping_error("promotion")
            LOG.warning("image %s: promotion bookkeeping failed (%s); the download goes on", image_id,
                        type(error).__name__)

    def _start(self, image_id: str) -> None:
        if not self._slots.acquire(blocking=False):
            LOG.debug("image %s: %d copies running already; counted afresh", image_id, MAX_RUNNING)
            self.ledger.result(image_id, Outcome.GONE)
            return
        thread = threading.Thread(target=self._run, args=(image_id,), name=f"locproxy-promote-{image_id[:8]}",
                                  daemon=True)
        self.threads = [alive for alive in self.threads if alive.is_alive()] + [thread]
        thread.start()

    def _run(self, image_id: str) -> None:
        store = self.settings.target
        observability.PROMOTIONS_RUNNING.inc()
        outcome, why = Outcome.FAILED, "an error of locproxy's"
        try:
            LOG.info("image %s: asking the image API to copy it into store %s (copy-image)", image_id, store)
            outcome, why = copy_image(self.api, image_id, store, poll_interval=self.settings.poll_interval,
                                      timeout=self.settings.timeout, wait=self._stopping.wait)
        except Exception:  # noqa: BLE001 - a thread of its own: logged, counted, backed off
            LOG.debug("image %s: promotion failed", image_id, exc_info=True)
        finally:
            observability.PROMOTIONS_RUNNING.dec()
            self._slots.release()
            self._ended(image_id, store, outcome, why)

    def _ended(self, image_id: str, store: str, outcome: Outcome, why: str) -> None:
        if self._stopping.is_set() and outcome is Outcome.FAILED:
            outcome, why = Outcome.GONE, "no longer watched (settings replaced)"  # not a failure: no back-off
        observability.promotion(outcome.value)
        state = self.ledger.result(image_id, outcome)
        if outcome is Outcome.FAILED:
            LOG.warning("image %s: copy into store %s failed (%s); downloads go on from the copies there are; "
                        "next try after %.0f s (failure %d)", image_id, store, why,
                        max(0.0, state.retry_at - self.ledger.clock()), state.failures)
        else:
            LOG.info("image %s: copy into store %s: %s", image_id, store, why)

    def stop(self) -> None:
        self._stopping.set()


def open_promoter(settings: PromotionSettings, service: IdentitySettings, metrics_file: str | None) -> Promoter | None:
    """The promoter for ``promote = auto`` (None when off)."""
    if not settings.enabled:
        return None
    rule = Rule(after=settings.after, window=settings.window, backoff=settings.backoff,
                max_backoff=settings.max_backoff, stale=settings.timeout + 4 * settings.poll_interval + 60)
    ledger = Ledger(metrics_file, rule, on_error=observability.bookkeeping_error)
    return Promoter(settings, ledger, ServiceImageAPI(ServiceIdentity(service)))


__all__ = ["ImageAPI", "Promoter", "ServiceImageAPI", "TokenImageAPI", "copy_image", "open_promoter"]
