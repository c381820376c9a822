"""A running Glance lab with the stores of a Ceph lab: ``ceph1`` (rbd) and
``s3`` (radosgw) beside its file and http stores, for the duration."""

from __future__ import annotations

import contextlib
from typing import Iterator

from tests.support import ceph
from tests.support.ceph import CephCluster
from tests.support.glance.config import ceph_store_overrides
from tests.support.glance.server import GlanceServer


@contextlib.contextmanager
def ceph_stores(glance: GlanceServer, lab: CephCluster, *, policy: str = "") -> Iterator[GlanceServer]:
    """Restart ``glance`` with the rbd and s3 stores on ``lab`` (and the
    rados/rbd bindings on its path), then restore it. ``policy`` lines are
    added to policy.yaml for the time; they go before the restart that
    restores the config, so that restart reads the original policy."""
    access, secret = lab.s3_keys()
    overrides = ceph_store_overrides(ceph_conf=lab.conf, pool=lab.pool, rgw_endpoint=lab.rgw_endpoint,
                                     access_key=access, secret_key=secret)
    glance.extra_pythonpath = [str(ceph.bindings_dir())]
    original = glance.policy_path.read_text()
    if policy:
        glance.policy_path.write_text(original + policy)
    try:
        with glance.config_overrides(overrides):
            try:
                yield glance
            finally:
                if policy:
                    glance.policy_path.write_text(original)
    finally:
        glance.extra_pythonpath = []
