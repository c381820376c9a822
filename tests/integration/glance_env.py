"""Compatibility: the Glance lab moved to ``tests/support/glance``.

``bench/main.py`` still imports ``glance_env`` (with this directory on
``sys.path``), and the pins' header names ``python
tests/integration/glance_env.py --freeze``: both keep working through this
module. New code imports ``tests.support.glance.*``; run the lab with
``python -m tests.support.glance --selfcheck``. Remove this module once
nothing imports it.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.support.client import Fetched as Response  # noqa: E402,F401
from tests.support.client import http_request  # noqa: E402,F401
from tests.support.glance.__main__ import main  # noqa: E402
from tests.support.glance.config import DEFAULT_PIPELINE, locproxy_paste_ini, render_paste_ini  # noqa: E402,F401
from tests.support.glance.lab import ENV_KEEP, ENV_SKIP, glance_server  # noqa: E402,F401
from tests.support.glance.server import GlanceServer  # noqa: E402,F401
from tests.support.glance.venv import (  # noqa: E402,F401
    READY_MARKER,
    GlanceEnvError,
    VenvInfo,
    ensure_venv,
    glance_versions,
    venv_dir,
)

if __name__ == "__main__":
    sys.exit(main())
