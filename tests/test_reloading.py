"""Hot reloading of the filter's settings from config_file."""

from __future__ import annotations

import logging
import os
import signal

import pytest
from webtest import TestApp

from locproxy.config import ConfigError, load_filter_settings
from locproxy.middleware import LocationFilter, filter_factory
from locproxy.reloading import Reloading, read_options
from tests.support.upstreams import IMAGE_ID, Upstream, image_json, json_response


def write(path, text):
    path.write_text(text)


def stores_seen(app):
    response = app.get(f"/v2/images/{IMAGE_ID}")
    return [location["metadata"]["store"] for location in response.json["locations"]]


@pytest.fixture
def upstream():
    upstream = Upstream()
    upstream.route("GET", f"/v2/images/{IMAGE_ID}", lambda req: json_response(image_json()))
    return upstream


def make_filter(upstream, config_file, interval=0.0):
    reloading = Reloading(str(config_file), lambda options, previous: load_filter_settings({}, options), interval=interval)
    return TestApp(LocationFilter(upstream, reloading), lint=True)


def test_edit_switches_strategy_and_invalid_edit_keeps_it(tmp_path, upstream, caplog):
    config = tmp_path / "locproxy.ini"
    write(config, "[locproxy]\nlocation_strategy = location_order\n")
    app = make_filter(upstream, config)
    assert stores_seen(app) == ["disk", "web", "ceph"]

    write(config, "[locproxy]\nlocation_strategy = store_type\nstore_type_preference = rbd, http\n")
    assert stores_seen(app) == ["ceph", "web", "disk"]

    with caplog.at_level(logging.ERROR, logger="locproxy.reloading"):
        write(config, "[locproxy]\nlocation_strategy = store_type\nstore_type_preference = tape\n")
        assert stores_seen(app) == ["ceph", "web", "disk"], "an invalid edit keeps the previous settings"
        assert stores_seen(app) == ["ceph", "web", "disk"]
    errors = [record.getMessage() for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 1, "each bad version of the file is reported once"
    assert "store_type_preference: unknown store type 'tape'" in errors[0]

    write(config, "garbage without sections")
    assert stores_seen(app) == ["ceph", "web", "disk"]
    config.unlink()
    assert stores_seen(app) == ["ceph", "web", "disk"], "a deleted file keeps the previous settings"


def test_same_size_edits_within_one_timestamp_are_seen(tmp_path, upstream):
    """Two edits of the same size, the second with the first's mtime (as
    within the file system's timestamp resolution): stat() cannot tell them
    apart, the content can. Each edit is seen, and stays seen."""
    config = tmp_path / "locproxy.ini"
    write(config, "[locproxy]\nlocation_strategy = store_type\nstore_type_preference = rbd, file\n")
    app = make_filter(upstream, config)
    assert stores_seen(app) == ["ceph", "disk", "web"]
    before = config.stat()
    for preference, expected in [("rbd, http", ["ceph", "web", "disk"]), ("http, rbd", ["web", "ceph", "disk"])]:
        with open(config, "r+") as stream:  # in place: same inode
            stream.write(f"[locproxy]\nlocation_strategy = store_type\nstore_type_preference = {preference}\n")
        os.utime(config, ns=(before.st_atime_ns, before.st_mtime_ns))
        after = config.stat()
        assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)
        assert stores_seen(app) == expected
        assert stores_seen(app) == expected


def test_checks_at_most_once_per_interval(tmp_path, upstream):
    config = tmp_path / "locproxy.ini"
    write(config, "[locproxy]\nlocation_strategy = location_order\n")
    app = make_filter(upstream, config, interval=3600)
    write(config, "[locproxy]\nlocation_strategy = store_type\nstore_type_preference = rbd\n")
    assert stores_seen(app) == ["disk", "web", "ceph"]


def test_sighup_requests_a_reload(tmp_path, upstream):
    config = tmp_path / "locproxy.ini"
    write(config, "[locproxy]\nlocation_strategy = location_order\n")
    reloading = Reloading(str(config), lambda options, previous: load_filter_settings({}, options), interval=3600)
    app = TestApp(LocationFilter(upstream, reloading), lint=True)
    write(config, "[locproxy]\nlocation_strategy = store_type\nstore_type_preference = rbd\n")
    previous = signal.signal(signal.SIGHUP, lambda signum, frame: reloading.request_reload())
    try:
        os.kill(os.getpid(), signal.SIGHUP)
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert stores_seen(app) == ["ceph", "disk", "web"]


def test_factory_config_file_overrides_paste_options(tmp_path, upstream):
    config = tmp_path / "locproxy.ini"
    write(config, "[locproxy]\nlocation_strategy = store_type\n")
    make = filter_factory({}, config_file=str(config), store_type_preference="http")
    app = TestApp(make(upstream), lint=True)
    assert app.app.settings.selection.strategy == "store_type"
    assert stores_seen(app) == ["web", "disk", "ceph"]


@pytest.mark.parametrize(
    "text, message",
    [
        pytest.param(None, "config_file: cannot read", id="missing"),
        pytest.param("[other]\nx = 1\n", "has no [locproxy] section", id="no-section"),
        pytest.param("[locproxy]\nlocation_strategy = fastest\n", "location_strategy: unknown strategy",
                     id="bad-value"),
        pytest.param("[locproxy]\nconfig_file = /x\n", "config_file: unknown option", id="nested"),
    ],
)
def test_bad_config_file_fails_at_load(tmp_path, text, message):
    config = tmp_path / "locproxy.ini"
    if text is not None:
        write(config, text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        filter_factory({}, config_file=str(config))


def test_read_options(tmp_path):
    config = tmp_path / "locproxy.ini"
    write(config, "[locproxy]\nLocation_Strategy = weight\nstore_weights = a:1, b:%2\n")
    assert read_options(str(config)) == {"location_strategy": "weight", "store_weights": "a:1, b:%2"}
