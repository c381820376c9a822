"""locproxy's service identity (``locproxy.identity``): options refused at
load naming the option (keystoneauth1's own plugin loader), secrets kept out
of reprs and logs, and a Keystone nobody answers on (a closed loopback
port): no token, one WARNING, the metric, ``failing``, a pause before the
next try. The real Keystone is in ``tests/integration/test_keystone_*``."""

from __future__ import annotations

import logging

import pytest

from locproxy import identity
from locproxy.options import ConfigError
from tests.support.processes import free_port

PASSWORD = {"locations_from": "service_token", "service_auth_type": "password",
            "service_auth_url": "http://127.0.0.1:5000", "service_username": "locproxy",
            "service_password": "s3cret-not-logged", "service_project_name": "service",
            "service_user_domain_name": "Default", "service_project_domain_name": "Default"}


def refused(conf: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as error:
        identity.load_settings(conf)
    return str(error.value)


def test_the_default_reads_nothing_and_needs_no_identity() -> None:
    settings = identity.load_settings({})
    assert settings.locations_from == "response" and not settings.enabled


def test_password_options_load() -> None:
    settings = identity.load_settings(PASSWORD)
    assert settings.enabled and settings.auth_type == "password" and settings.interface == "internal"
    assert dict(settings.auth_options)["username"] == "locproxy"
    assert "s3cret" not in repr(settings)


def test_application_credential_options_load() -> None:
    settings = identity.load_settings({"locations_from": "service", "service_auth_type": "v3applicationcredential",
                                       "service_auth_url": "http://127.0.0.1:5000",
                                       "service_application_credential_id": "abc",
                                       "service_application_credential_secret": "s3cret"})
    assert dict(settings.auth_options)["application_credential_id"] == "abc" and "s3cret" not in repr(settings)


@pytest.mark.parametrize(("conf", "named"), [
    ({"locations_from": "everything"}, "locations_from: unknown value"),
    ({"locations_from": "service"}, "locations_from: service needs a service identity"),
    ({"service_username": "x"}, "service_username: needs service_auth_type"),
    ({**PASSWORD, "service_auth_type": "kerberos-ish"}, "service_auth_type: unknown value"),
    ({**PASSWORD, "service_pasword": "typo"}, "service_pasword: unknown option for service_auth_type = password"),
    ({**PASSWORD, "service_auth_url": ""}, "service_auth_url: required with service_auth_type = password"),
    ({**PASSWORD, "service_interface": "private"}, "service_interface: unknown value"),
    ({**PASSWORD, "service_timeout": "soon"}, "service_timeout"),
    ({**PASSWORD, "locations_ttl": "-1"}, "locations_ttl"),
    ({**PASSWORD, "service_endpoint_override": "ftp://x"}, "service_endpoint_override"),
])
def test_bad_options_are_refused_naming_the_option(conf: dict[str, str], named: str) -> None:
    message = refused(conf)
    assert message.startswith(named), message
    assert "s3cret" not in message


def test_an_unreachable_keystone_gives_no_token_one_warning_and_a_pause(caplog: pytest.LogCaptureFixture) -> None:
    conf = {**PASSWORD, "service_auth_url": f"http://127.0.0.1:{free_port()}", "service_timeout": "2"}
    service = identity.ServiceIdentity(identity.load_settings(conf))
    before = identity.ERRORS.labels("unreachable")._value.get()
    with caplog.at_level(logging.DEBUG):
        assert service.token() is None
        assert service.failing
        assert service.token() is None  # within RETRY_AFTER: not tried again
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING
                and record.name == "locproxy.identity"]
    assert len(warnings) == 1 and "cannot reach Keystone" in warnings[0].getMessage(), caplog.text
    assert identity.ERRORS.labels("unreachable")._value.get() == before + 1
    assert "s3cret" not in caplog.text
