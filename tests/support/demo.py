"""The demo image API's built-in images and callers, as the demo tests
(``tests/demo/``) use them, and small request helpers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from webtest import TestApp

from locproxy.demo import DEMO_IMAGE_IDS
from locproxy.rewrite import JSON_PATCH_TYPES

PATCH_TYPE = JSON_PATCH_TYPES[0]
CIRROS = DEMO_IMAGE_IDS["cirros-demo"]
UBUNTU = DEMO_IMAGE_IDS["ubuntu-demo"]
MOTD = DEMO_IMAGE_IDS["motd-text"]
QUEUED = DEMO_IMAGE_IDS["queued-empty"]
RETIRED = DEMO_IMAGE_IDS["retired-demo"]
PRIVATE = DEMO_IMAGE_IDS["private-demo"]
UNKNOWN = "00000000-0000-4000-8000-00000000dead"
OWNER = {"X-Project-Id": "demo-project"}
ADMIN = {"X-Project-Id": "ops", "X-Roles": "member, admin"}


def patch(app: TestApp, image_id: str, ops: list[dict[str, Any]], status: int = 200, **kwargs: Any) -> Any:
    return app.patch(f"/v2/images/{image_id}", json.dumps(ops),
                     content_type=PATCH_TYPE, status=status, **kwargs)


def urls(image: dict[str, Any]) -> list[str]:
    return [loc["url"] for loc in image["locations"]]


def file_url(directory: str, image_id: str) -> str:
    return Path(directory, image_id).resolve().as_uri()
