"""Configuration parsing: every option validated at load, errors name it."""

from __future__ import annotations

import pytest

from locproxy.config import ConfigError, FilterSettings, SelectionSettings, load_filter_settings
from locproxy.guards import AllowedHosts
from locproxy.options import parse_size
from locproxy.tracker import Tracker
from tests.support.unprivileged import make_read_only, run_unprivileged, shared_dir


def test_defaults():
    settings = load_filter_settings({}, {})
    assert settings == FilterSettings()
    assert settings.selection == SelectionSettings("location_order", ())


def test_full_filter_section(tmp_path):
    settings = load_filter_settings(
        {"here": str(tmp_path), "__file__": str(tmp_path / "paste.ini"), "unrelated_glance_option": "x"},
        {
            "location_strategy": "weight",
            "store_weights": "fast:100, slow:10",
            "store_type_preference": "file",  # kept for a later switch, unused by weight
            "add_direct_url": "yes",
            "scrub_credentials": "true",
            "locations_visible_to_roles": "admin, service",
            "hidden_fields": "locations",
            "roles_header": "X-Roles",
            "max_rewrite_size": "4M",
            "file_roots": f"{tmp_path}, {tmp_path}/",
            "allowed_hosts": "127.0.0.1:8080, Store.Example, [::1]:9000",
            "chunk_size": "256K",
            "backend_connect_timeout": "0.5",
            "backend_read_timeout": "10",
            "verify_checksums": "off",
        },
    )
    selection, security, backends = settings.selection, settings.security, settings.backends
    assert selection.strategy == "weight"
    assert selection.strategy_options == (("store_weights", "fast:100, slow:10"),)
    assert selection.selector().options == {"store_weights": "fast:100, slow:10"}
    assert selection.add_direct_url and security.scrub_credentials and backends.verify_checksums == "off"
    assert security.locations_visible_to_roles == ("admin", "service")
    assert security.hidden_fields == ("locations",)
    assert selection.max_rewrite_size == 4 * 1024 * 1024
    readers = dict(settings.readers)
    assert readers["file"].roots.roots == (str(tmp_path), str(tmp_path))
    assert readers["http"].allowed_hosts == AllowedHosts(frozenset({("127.0.0.1", 8080), ("store.example", None),
                                                             ("::1", 9000)}))
    assert backends.chunk_size == 256 * 1024
    assert backends.connect_timeout == 0.5


@pytest.mark.parametrize(
    "local_conf, message",
    [
        pytest.param({"location_strategy": "fastest"}, "location_strategy: unknown strategy 'fastest'",
                     id="unknown-strategy"),
        pytest.param({"location_strategy": "store_type", "store_type_preference": "rbd, tape"},
                     "store_type_preference: unknown store type 'tape'; valid choices: cinder, file",
                     id="unknown-store"),
        pytest.param({"location_strategy": "weight", "store_weights": "a:b"},
                     "store_weights: weight of 'a' must be a number", id="bad-weight"),
        pytest.param({"locaton_strategy": "weight"}, "locaton_strategy: unknown option; valid options:",
                     id="typo-in-option-name"),
        pytest.param({"add_direct_url": "maybe"}, "add_direct_url: expected one of true/false", id="bad-bool"),
        pytest.param({"chunk_size": "lots"}, "chunk_size: expected a size in bytes", id="bad-size"),
        pytest.param({"chunk_size": "0"}, "chunk_size: must be between 1 bytes and 256T", id="zero-size"),
        pytest.param({"backend_read_timeout": "-1"}, "backend_read_timeout: expected a number of seconds",
                     id="negative-timeout"),
        pytest.param({"file_roots": "relative/dir"}, "file_roots: 'relative/dir' is not an absolute path",
                     id="relative-root"),
        pytest.param({"file_roots": "/nonexistent/locproxy"}, "file_roots: '/nonexistent/locproxy' is not a "
                     "directory", id="missing-root"),
        pytest.param({"allowed_hosts": "http://a.example/"}, "allowed_hosts: 'http://a.example/' is not host",
                     id="host-with-scheme"),
        pytest.param({"hidden_fields": "locations, checksum"}, "hidden_fields: unknown value 'checksum'; "
                     "valid choices: locations, direct_url", id="bad-hidden-field"),
        pytest.param({"roles_header": "X Roles"}, "roles_header: 'X Roles' is not an HTTP header name",
                     id="bad-header"),
        pytest.param({"backend_ca_file": "/nonexistent/ca.pem"}, "backend_ca_file: '/nonexistent/ca.pem' is not "
                     "a readable file", id="missing-ca-file"),
        pytest.param({"metrics_file": "/nonexistent/dir/m.sqlite"}, "metrics_file: the directory of",
                     id="metrics-file-dir-missing"),
        pytest.param({"healthcheck_path": "/v2/images/hc"}, "healthcheck_path: '/v2/images/hc' is not a URL path",
                     id="healthcheck-inside-api"),
        pytest.param({"probe_interval": "-1"}, "probe_interval: expected a number of seconds", id="bad-probe"),
    ],
)
def test_bad_filter_options(local_conf, message):
    with pytest.raises(ConfigError) as error:
        load_filter_settings({}, local_conf)
    assert message in str(error.value)


def test_unknown_global_options_are_ignored():
    """Glance's own [DEFAULT] options reach every section's global_conf."""
    assert load_filter_settings({"bind_port": "9292"}, {}).selection.strategy == "location_order"


@pytest.mark.parametrize("text, expected", [("1", 1), ("64k", 65536), ("1MiB", 1 << 20), ("2 GB", 2 << 30)])
def test_parse_size(text, expected):
    assert parse_size("x", text) == expected


def test_options_of_other_strategies_are_validated_too():
    with pytest.raises(ConfigError, match="store_type_preference: unknown store type 'tape'"):
        load_filter_settings({}, {"location_strategy": "weight", "store_type_preference": "tape"})


def _load_error(path: str) -> str:
    try:
        load_filter_settings({}, {"metrics_file": path})
    except ConfigError as error:
        return str(error)
    return "loaded"


@pytest.mark.parametrize("read_only", ["file", "directory"])
def test_metrics_file_that_cannot_be_written_fails_at_load(read_only):
    """Refused at load, naming the option, rather than failing downloads later."""
    with shared_dir() as directory:
        path = directory / "metrics.sqlite"
        Tracker(str(path)).close()
        if read_only == "file":
            directory.chmod(0o777)  # the directory is writable, the file is not
            make_read_only(path)
        else:
            make_read_only(directory)
        message = run_unprivileged(_load_error, str(path))
    assert message.startswith("metrics_file: "), message
    assert "not writable" in message
