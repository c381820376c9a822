"""Fixtures shared by test modules in different directories.

``ceph_lab`` (session scope): the single-node Ceph lab of
``tests/support/ceph.py`` (mon + BlueStore OSD on a sparse file + radosgw,
on loopback; as root it apt-get installs Ceph first when missing), started
once for ``tests/test_rbd_s3.py`` and the Ceph integration tests alike, with
the rados/rbd bindings importable in this process. Tests using it skip with
the lab's reason where Ceph cannot run (not root and not installed, no
package, a daemon that does not start), or when ``LOCPROXY_SKIP_CEPH=1``.

``state_directory`` (every test): ``$STATE_DIRECTORY`` is a fresh directory
of the test's own (and one of the session's while module and session
fixtures start their servers), so the shipped ini's ``metrics_file = auto`` (and every
gunicorn a test starts, which inherits the environment) never writes
``/var/lib/locproxy`` or ``~/.local/state``, and no test trusts what another
verified.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import pytest

from tests.support import ceph


@pytest.fixture(scope="session", autouse=True)
def _session_state_directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """For servers that module or session fixtures start before any test's own."""
    with pytest.MonkeyPatch.context() as patch:
        directory = str(tmp_path_factory.mktemp("state-session"))
        patch.setenv("STATE_DIRECTORY", directory)
        yield directory


@pytest.fixture(autouse=True)
def state_directory(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> str:
    directory = str(tmp_path_factory.mktemp("state"))
    monkeypatch.setenv("STATE_DIRECTORY", directory)
    return directory


@pytest.fixture(scope="session")
def ceph_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ceph.CephCluster]:
    if os.environ.get(ceph.ENV_SKIP, "").strip().lower() not in ("", "0", "false", "no"):
        pytest.skip(f"{ceph.ENV_SKIP} is set")
    with contextlib.ExitStack() as stack:
        try:
            lab = stack.enter_context(ceph.ceph_cluster(tmp_path_factory.mktemp("ceph")))
            ceph.import_bindings()
        except ceph.CephUnavailable as error:
            pytest.skip(f"no Ceph lab here: {error.reason}")
        yield lab
        # This process's cluster handles go before the cluster does.
        from locproxy.download.backends.rbd import shutdown_clusters

        shutdown_clusters()
