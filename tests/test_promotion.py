"""The pure core of promotion (locproxy.promotion), its ledger in a real
sqlite file shared by processes, and copy_image against a scripted image API."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from locproxy.config import ConfigError, PromotionSettings, load_filter_settings
from locproxy.promoter import Promoter, copy_image, message
from locproxy.promotion import (
    Answer,
    ImageState,
    Ledger,
    Outcome,
    Rule,
    import_answer,
    locality,
    on_download,
    on_result,
    watch_verdict,
)
from locproxy.strategies import stores_of

RULE = Rule(after=3, window=100.0, backoff=10.0, max_backoff=40.0, stale=1000.0)
ACTIVE = {"id": "i1", "status": "active", "stores": "web"}
LOCKED = {**ACTIVE, "os_glance_import_task": "t"}  # an import task holds the image
LISTED = {**ACTIVE, "stores": "web,fs2"}  # the copy is done


def count(times: list[float], state: ImageState = ImageState()) -> tuple[ImageState, list[bool]]:
    decisions = []
    for now in times:
        state, go = on_download(state, now, RULE)
        decisions.append(go)
    return state, decisions


def test_promote_after_n_downloads_within_the_window() -> None:
    state, decisions = count([0, 1, 2])
    assert decisions == [False, False, True]
    assert state.running_since == 2 and state.hits == ()


def test_downloads_outside_the_window_do_not_count() -> None:
    _, decisions = count([0, 150, 300, 301, 302])
    assert decisions == [False, False, False, False, True]


def test_no_second_promotion_while_one_runs_and_a_stale_one_is_retried() -> None:
    state, _ = count([0, 1, 2])
    state, decisions = count([3, 4, 5, 6], state)
    assert decisions == [False] * 4, "a copy under way is not asked again"
    state, decisions = count([1100, 1101, 1102], state)
    assert decisions == [False, False, True], "a copy 'running' past stale was abandoned (its worker died)"


def test_backoff_doubles_per_failure_up_to_the_maximum_and_resets_on_success() -> None:
    state = ImageState(running_since=2)
    delays = []
    for attempt in range(4):
        state = on_result(state, Outcome.FAILED, 100.0 * attempt, RULE)
        delays.append(state.retry_at - 100.0 * attempt)
    assert delays == [10, 20, 40, 40]
    assert state.failures == 4
    _, decisions = count([301, 302, 303], state)
    assert decisions == [False, False, False], "inside the back-off: counted, never asked"
    _, decisions = count([341, 342, 343], state)
    assert decisions == [False, False, True]
    assert on_result(state, Outcome.DONE, 500, RULE) == ImageState()


@pytest.mark.parametrize("image, expected", [
    pytest.param({"stores": "web,fs2"}, ("web", "fs2"), id="stores"),
    pytest.param({"stores": "web", "locations": [{"url": "x", "metadata": {"store": "ceph1"}}]}, ("web", "ceph1"),
                 id="locations too"),
    pytest.param({"locations": "junk"}, (), id="junk"),
])
def test_stores_of(image: dict, expected: tuple) -> None:
    assert stores_of(image) == expected
    assert locality(expected, ["fs2"]) is ("fs2" in expected)


@pytest.mark.parametrize("status, image, expected", [
    pytest.param(202, None, Answer.STARTED, id="202"),
    pytest.param(403, None, Answer.REFUSED, id="policy"),
    pytest.param(404, None, Answer.REFUSED, id="404: not visible to the service identity"),
    pytest.param(409, LOCKED, Answer.IN_PROGRESS, id="409 lock"),
    pytest.param(409, {**ACTIVE, "os_glance_importing_to_stores": "fs2"}, Answer.IN_PROGRESS, id="409 importing"),
    pytest.param(409, {**ACTIVE, "status": "deactivated"}, Answer.GONE, id="409 deactivated"),
    pytest.param(409, ACTIVE, Answer.FAILED, id="409 other"),
    pytest.param(400, LISTED, Answer.ALREADY, id="400 already there"),
    pytest.param(400, ACTIVE, Answer.FAILED, id="400 other"),
    pytest.param(413, None, Answer.FAILED, id="quota"),
])
def test_import_answer(status: int, image: dict | None, expected: Answer) -> None:
    assert import_answer(status, b"", image, "fs2") is expected


@pytest.mark.parametrize("image, expected", [
    pytest.param(None, Outcome.GONE, id="404"),
    pytest.param({**ACTIVE, "status": "deactivated"}, Outcome.GONE, id="deactivated"),
    pytest.param(LISTED, Outcome.DONE, id="listed"),
    pytest.param({**ACTIVE, "os_glance_import_task": "t", "os_glance_failed_import": "fs2"}, None,
                 id="running despite an earlier failure"),
    pytest.param({**ACTIVE, "os_glance_failed_import": "fs2"}, Outcome.FAILED, id="failed"),
    pytest.param(ACTIVE, Outcome.FAILED, id="lock gone, not listed"),
])
def test_watch_verdict(image: dict | None, expected: Outcome | None) -> None:
    assert watch_verdict(image, "fs2") is expected


def _count_in_child(path: str, image_id: str, queue: multiprocessing.Queue) -> None:
    ledger = Ledger(path, Rule(after=20, window=100.0))
    queue.put(sum(ledger.download(image_id) for _ in range(10)))


def test_ledger_counts_across_processes_and_one_of_them_asks(tmp_path: Path) -> None:
    path = str(tmp_path / "metrics.sqlite")
    Ledger(path, RULE)  # schema
    context = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue = context.Queue()
    children = [context.Process(target=_count_in_child, args=(path, "i1", queue)) for _ in range(2)]
    for child in children:
        child.start()
    results = [queue.get(timeout=60) for _ in children]
    for child in children:
        child.join(timeout=30)
    assert sorted(results) == [0, 1], "20 downloads from two processes: exactly one asks for the copy"


def test_ledger_falls_back_to_memory_when_the_file_fails(tmp_path: Path) -> None:
    path = tmp_path / "metrics.sqlite"
    ledger = Ledger(str(path), RULE)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # a stopped worker holding the lock
    try:
        assert [ledger.download("i1") for _ in range(3)] == [False, False, True]
        assert ledger.degraded
    finally:
        holder.execute("ROLLBACK")
        holder.close()


class Scripted:
    """An image API that answers from a script: (method, path) -> list of (status, body)."""

    def __init__(self, script: dict[tuple[str, str], list[tuple[int, object]]]) -> None:
        self.script, self.calls = script, []

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        self.calls.append((method, path, body))
        answers = self.script[(method, path)]
        status, document = answers.pop(0) if len(answers) > 1 else answers[0]
        return status, document if isinstance(document, bytes) else json.dumps(document).encode()


def run_copy(script: dict, timeout: float = 5.0) -> tuple[Outcome, str, Scripted]:
    api = Scripted(script)
    outcome, why = copy_image(api, "i1", "fs2", poll_interval=0.01, timeout=timeout, wait=lambda s: False)
    return outcome, why, api


def test_copy_image_started_then_watched_until_listed() -> None:
    outcome, _, api = run_copy({
        ("POST", "/v2/images/i1/import"): [(202, b"")],
        ("GET", "/v2/images/i1"): [(200, LOCKED), (200, {**ACTIVE, "os_glance_importing_to_stores": "fs2"}),
                                   (200, LISTED)],
    })
    assert outcome is Outcome.DONE
    assert api.calls[0] == ("POST", "/v2/images/i1/import",
                            {"method": {"name": "copy-image"}, "stores": ["fs2"], "all_stores_must_succeed": True})
    assert len(api.calls) == 4


def test_copy_image_409_is_watched_not_an_error() -> None:
    outcome, _, _ = run_copy({
        ("POST", "/v2/images/i1/import"): [(409, b"Image has active task")],
        ("GET", "/v2/images/i1"): [(200, LOCKED), (200, LOCKED), (200, LISTED)],
    })
    assert outcome is Outcome.DONE


class Unanswered(Scripted):
    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        if method == "POST":
            self.calls.append((method, path, body))
            raise OSError("ReadTimeout")
        return super().call(method, path, body)


def test_copy_image_unanswered_but_taken_is_watched() -> None:
    api = Unanswered({("GET", "/v2/images/i1"): [(200, LOCKED), (200, LISTED)]})
    assert copy_image(api, "i1", "fs2", poll_interval=0.01, timeout=5, wait=lambda s: False)[0] is Outcome.DONE
    api = Unanswered({("GET", "/v2/images/i1"): [(200, ACTIVE)]})
    outcome, why = copy_image(api, "i1", "fs2", poll_interval=0.01, timeout=5, wait=lambda s: False)
    assert outcome is Outcome.FAILED and why == "the import could not be asked (ReadTimeout)"


def test_copy_image_refused_says_why() -> None:
    outcome, why, api = run_copy({("POST", "/v2/images/i1/import"): [
        (403, b"<html><h1>403 Forbidden</h1>Policy doesn't allow copy_image</html>")]})
    assert outcome is Outcome.FAILED and len(api.calls) == 1
    assert why == "HTTP 403: 403 Forbidden Policy doesn't allow copy_image"


def test_copy_image_times_out() -> None:
    outcome, why, _ = run_copy({("POST", "/v2/images/i1/import"): [(202, b"")],
                                ("GET", "/v2/images/i1"): [(200, LOCKED)]},
                               timeout=0.05)
    assert outcome is Outcome.FAILED and "promote_timeout" in why


def test_promoter_backs_off_after_a_refusal_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    api = Scripted({("POST", "/v2/images/i1/import"): [(403, b"no")]})
    settings = PromotionSettings(local_stores=("fs2",), mode="auto", after=2)
    promoter = Promoter(settings, Ledger(None, Rule(after=2, backoff=300.0, max_backoff=600.0)), api)
    for _ in range(6):
        promoter.served("i1")
        for thread in promoter.threads:
            thread.join(timeout=10)
    assert [call[0] for call in api.calls] == ["POST"], "one ask, then the back-off"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "image i1: copy into store fs2 failed (HTTP 403: no)" in warnings[0]
    assert promoter.ledger.state("i1").failures == 1


@pytest.mark.parametrize("conf, error", [
    pytest.param({"promote": "auto"}, "promote: auto needs local_stores", id="no local store"),
    pytest.param({"promote": "auto", "local_stores": "fs2"}, "promote: auto needs a service identity",
                 id="no identity"),
    pytest.param({"promote": "sometimes"}, "promote", id="bad mode"),
    pytest.param({"promote_after": "0"}, "promote_after", id="bad count"),
    pytest.param({"promote_window": "soon"}, "promote_window", id="bad window"),
    pytest.param({"promote": "auto", "local_stores": "fs2", "service_auth_type": "admin_token",
                  "service_endpoint": "http://127.0.0.1:1", "service_token": "t", "promote_backoff": "600",
                  "promote_max_backoff": "60"}, "promote_max_backoff", id="max below backoff"),
])
def test_bad_options_fail_at_load_naming_the_option(conf: dict, error: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_filter_settings({}, conf)
    assert str(raised.value).startswith(error)


def test_options_load() -> None:
    settings = load_filter_settings({}, {"promote": "auto", "local_stores": "ceph1, fs2", "promote_after": "2",
                                         "service_auth_type": "admin_token", "service_endpoint": "http://127.0.0.1:1",
                                         "service_token": "t"}).promotion
    assert (settings.target, settings.after, settings.enabled) == ("ceph1", 2, True)
    assert message(409, b"<p>Image has\n active task</p>") == "HTTP 409: Image has active task"


# -- the seam: which downloads count (LocationFilter over the demo image API) --

class Counted:
    def __init__(self) -> None:
        self.images: list[str] = []

    def served(self, image_id: str) -> None:
        self.images.append(image_id)


def counting_filter(roots: Path, **options: str) -> tuple[Any, Any, Counted, Any]:
    """(demo image API, the filter over it with ``promote = auto`` and
    ``local_stores = site``, what it counted, a webtest app of it)."""
    from webtest import TestApp

    from locproxy.demo import DemoImageAPI
    from locproxy.middleware import LocationFilter

    api = DemoImageAPI(file_roots=(str(roots),))
    settings = load_filter_settings({}, {"file_roots": str(roots), "promote": "auto", "local_stores": "site",
                                         "service_auth_type": "admin_token", "service_endpoint": "http://127.0.0.1:9",
                                         "service_token": "t", **options})
    lp = LocationFilter(api, settings)
    counted = Counted()
    lp.services.promoter = counted  # type: ignore[assignment]
    return api, lp, counted, TestApp(lp, lint=True)


def test_only_whole_served_downloads_from_non_local_copies_count(tmp_path: Path) -> None:
    from locproxy.demo import location

    data = b"promotion" * 10000
    (tmp_path / "remote").write_bytes(data)
    (tmp_path / "local").write_bytes(data)
    api, _, counted, app = counting_filter(tmp_path)
    remote = api.add_image(data=data, locations=[location(f"file://{tmp_path}/remote", "far")])
    local = api.add_image(data=data, locations=[location(f"file://{tmp_path}/local", "site"),
                                                location(f"file://{tmp_path}/remote", "far")])
    unreadable = api.add_image(data=data, locations=[location("rbd://a/b/c/d", "far")])
    assert app.get(f"/v2/images/{remote}/file").body == data
    assert counted.images == [remote]
    app.get(f"/v2/images/{remote}/file", headers={"Range": "bytes=0-9"}, status=206)
    app.head(f"/v2/images/{remote}/file")
    app.get(f"/v2/images/{local}/file")
    assert counted.images == [remote], "ranges, HEADs and images with a local copy never count"
    assert app.get(f"/v2/images/{unreadable}/file").body == data  # the upstream's own /file serves it
    assert counted.images == [remote, unreadable]
    api.set_status(remote, "deactivated")
    app.get(f"/v2/images/{remote}/file", status="*")
    app.get("/v2/images/00000000-0000-0000-0000-000000000000/file", status=404)
    assert counted.images == [remote, unreadable], "deactivated and unknown images never count"


def test_promote_command_needs_a_url_and_a_token_never_from_argv(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from locproxy.cli import main

    monkeypatch.delenv("OS_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("OS_IMAGE_URL", raising=False)
    assert main(["promote", "i1", "--to", "fs2", "--url", "http://127.0.0.1:9"]) == 2
    assert "a token (--token-file or OS_AUTH_TOKEN)" in capsys.readouterr().err
    assert main(["promote", "i1", "--to", "fs2", "--url", "http://127.0.0.1:9", "--token-file",
                 str(tmp_path / "missing")]) == 2
    with pytest.raises(SystemExit):
        main(["promote", "i1", "--to", "fs2", "--token", "secret"])  # no such option
    monkeypatch.setenv("OS_AUTH_TOKEN", "t")
    assert main(["promote", "i1", "--to", "fs2", "--url", "http://127.0.0.1:9", "--timeout", "1"]) == 1
    assert "i1: NOT in store fs2 (the import could not be asked" in capsys.readouterr().err


def test_with_a_site_cache_hits_and_followers_count_too(tmp_path: Path) -> None:
    """The realistic deployment: a cache per node. Its fill, its hits and a
    download following a fill all count (the site still lacks its copy), so
    the threshold is reached; ranges and HEADs of the cached image do not."""
    import threading

    from locproxy import observability
    from locproxy.cache import Fill, cache_key
    from locproxy.demo import location
    from locproxy.download.plan import expected_digest
    from tests.support.download_fakes import fingerprint_of

    data = b"promoted" * 20000
    roots = tmp_path / "roots"
    roots.mkdir()
    (roots / "remote").write_bytes(data)
    (tmp_path / "cache").mkdir()
    api, lp, counted, app = counting_filter(roots, cache_dir=str(tmp_path / "cache"), cache_max_size="1G")
    first, second = (api.add_image(data=data, locations=[location(f"file://{roots}/remote", "far")])
                     for _ in range(2))
    hits = observability.CACHE_REQUESTS.labels("hit")._value.get()
    for _ in range(3):  # a fill, then two hits
        assert app.get(f"/v2/images/{first}/file").body == data
    assert observability.CACHE_REQUESTS.labels("hit")._value.get() - hits == 2, "two were cache hits"
    assert counted.images == [first] * 3
    app.get(f"/v2/images/{first}/file", headers={"Range": "bytes=0-9"}, status=206)
    app.head(f"/v2/images/{first}/file")
    assert counted.images == [first] * 3, "ranges and HEADs of a cached image never count"

    # A fill in progress (another worker's, here held by the test) is followed.
    cache = lp.services.cache
    assert cache is not None
    digest = expected_digest(app.get(f"/v2/images/{second}").json)
    assert digest is not None
    fill = cache.begin(cache_key(second, digest), second, len(data), digest, whole=True)
    assert isinstance(fill, Fill)

    def write() -> None:
        fill.write(data)
        assert fill.commit(fingerprint_of(data))

    follows = observability.CACHE_REQUESTS.labels("follow")._value.get()
    writer = threading.Timer(0.3, write)
    writer.start()
    assert app.get(f"/v2/images/{second}/file").body == data
    writer.join()
    assert observability.CACHE_REQUESTS.labels("follow")._value.get() - follows == 1, "it followed the fill"
    assert counted.images == [first] * 3 + [second]
    api.set_status(first, "deactivated")  # its entry is still in the cache
    app.get(f"/v2/images/{first}/file", status="*")
    assert counted.images == [first] * 3 + [second], "a deactivated image never counts, cached or not"
