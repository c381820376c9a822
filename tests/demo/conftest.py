"""Fixtures of the demo tests: a built demo (stores on disk, the API in
memory) per test, in one directory per module, and the API under webtest."""

from __future__ import annotations

import pytest
from webtest import TestApp

from locproxy.demo import DemoSetup, build_demo


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("demo"))


@pytest.fixture
def demo(workdir: str) -> DemoSetup:
    # build_demo restores any store file an earlier test removed.
    return build_demo(workdir)


@pytest.fixture
def app(demo: DemoSetup) -> TestApp:
    return TestApp(demo.api, lint=True)
