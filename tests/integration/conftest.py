"""Fixtures for integration tests against a real Glance (see ``glance_env.py``).

``glance_server`` (session scope) builds or reuses the cached Glance venv and
starts one Glance for the whole run. If that fails (e.g. no PyPI for a cold
build) every test using it FAILS with the reason: CI must not pass by skipping.
``LOCPROXY_SKIP_INTEGRATION=1`` skips the ``integration`` tests instead.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterator

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # glance_env, static_http (pytest's rootdir-less "prepend" also does this)
    sys.path.insert(0, str(HERE))

import glance_env  # noqa: E402


def _skip_requested() -> bool:
    return os.environ.get(glance_env.ENV_SKIP, "").strip().lower() not in ("", "0", "false", "no")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "integration: needs the real-Glance environment of tests/integration/glance_env.py "
        "(set LOCPROXY_SKIP_INTEGRATION=1 to skip)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not _skip_requested():
        return
    skip = pytest.mark.skip(reason=f"{glance_env.ENV_SKIP} is set")
    for item in items:
        if item.get_closest_marker("integration") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def glance_server() -> Iterator[glance_env.GlanceServer]:
    """A running Glance (gunicorn, no keystone) with stores fs1, fs2 (file) and web (http)."""
    if _skip_requested():
        pytest.skip(f"{glance_env.ENV_SKIP} is set")
    context = glance_env.glance_server()
    try:
        server = context.__enter__()
    except (glance_env.GlanceEnvError, OSError, TimeoutError) as exc:
        problem = str(exc)
    else:
        problem = ""
    if problem:
        pytest.fail(
            f"could not build or start the real-Glance environment: {problem}\n"
            f"(cached venv: {glance_env.venv_dir()}; a cold build needs PyPI. "
            f"Set {glance_env.ENV_SKIP}=1 to skip the integration tests.)",
            pytrace=False,
        )
    try:
        yield server
    finally:
        context.__exit__(None, None, None)
