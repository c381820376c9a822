"""``python -m tests.support.keystone --selfcheck``: start Keystone and a
Glance behind it, seed one image as alice (an http copy, then copy-image to
fs1 and fs2 as admin) and print what each identity sees, with timings.
Run it from the repository root."""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time

from tests.support.keystone.lab import keystone_glance, keystone_lab
from tests.support.keystone.seed import seed_image


def selfcheck() -> int:
    started = time.monotonic()
    with keystone_lab() as lab:
        print(f"keystone: {lab.url} (gunicorn up in {lab.server.start_seconds:.1f}s, "
              f"lab ready {time.monotonic() - started:.1f}s)")
        with keystone_glance(lab) as glance:
            print(f"glance: {glance.url} up in {glance.start_seconds:.1f}s")
            data = os.urandom(1 << 20)
            image = seed_image(glance, data, owner="alice", copies=("fs1", "fs2"))
            for name in ("alice", "bob", "admin", "locproxy", "locproxy-admin"):
                shown = glance.request("GET", f"/v2/images/{image.id}", identity=glance.as_user(name),
                                       headers={"Accept": "application/json"})
                locations = glance.request("GET", f"/v2/images/{image.id}/locations",
                                           identity=glance.as_user(name), headers={"Accept": "application/json"})
                body = shown.json() if shown.status == 200 else {}
                print(f"{name:15} show {shown.status} locations-field={'locations' in body} "
                      f"direct_url={body.get('direct_url')} | GET /locations {locations.status}")
            file = glance.request("GET", f"/v2/images/{image.id}/file", identity=glance.as_user("alice"))
            print("alice /file:", file.status, hashlib.sha512(file.body).hexdigest() == image.sha512)
    print(f"total {time.monotonic() - started:.1f}s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.keystone")
    parser.add_argument("--selfcheck", action="store_true", required=True)
    parser.parse_args(argv)
    return selfcheck()


if __name__ == "__main__":
    sys.exit(main())
