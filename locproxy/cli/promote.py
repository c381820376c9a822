"""``locproxy promote``: copy images into a store with Glance's copy-image
and wait until the image lists it (a pre-warm before a known boot storm)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from locproxy.cli.common import command, read_token


def add(commands: Any) -> None:
    promote = command(
        commands, "promote", run, "copy images into a store (Glance's copy-image), e.g. before a boot storm",
        "Ask the image API to copy each image into STORE (POST /v2/images/{id}/import, copy-image) "
        "and wait until the image lists it. A copy already in progress (Glance's 409) is waited for. Exits 0 "
        "when every image is in STORE. The token is read from --token-file or OS_AUTH_TOKEN, never from the "
        "command line; copy_image is an admin action under Glance's default policy.",
        allow_abbrev=False)  # no --token for --token-file: a secret never goes on the command line
    promote.add_argument("image_ids", nargs="+", metavar="IMAGE_ID")
    promote.add_argument("--to", required=True, metavar="STORE", help="the Glance store to copy into")
    promote.add_argument("--url", default=None, help="the image API (default: OS_IMAGE_URL)")
    promote.add_argument("--token-file", default=None, help="a file holding the token (default: OS_AUTH_TOKEN)")
    promote.add_argument("--poll-interval", type=float, default=2.0, help="seconds between looks (default 2)")
    promote.add_argument("--timeout", type=float, default=3600.0, help="seconds per image (default 3600)")


def run(args: argparse.Namespace) -> int:
    import os
    import time

    from locproxy.promoter import TokenImageAPI, copy_image
    from locproxy.promotion import Outcome

    url = args.url or os.environ.get("OS_IMAGE_URL", "")
    token = read_token("promote", args.token_file)
    if token is None:
        return 2
    if not url or not token:
        print("locproxy promote: needs the image API (--url or OS_IMAGE_URL) and a token (--token-file or "
              "OS_AUTH_TOKEN)", file=sys.stderr)
        return 2
    api, failed = TokenImageAPI(url, token), 0
    for image_id in args.image_ids:
        started = time.monotonic()
        outcome, why = copy_image(api, image_id, args.to, poll_interval=args.poll_interval, timeout=args.timeout,
                                  progress=_progress(image_id, args.to, started))
        if sys.stderr.isatty():
            sys.stderr.write("\r\033[K")
        ok = outcome is Outcome.DONE
        failed += not ok
        print(f"{image_id}: {'in' if ok else 'NOT in'} store {args.to} ({why}, {time.monotonic() - started:.0f} s)",
              file=sys.stdout if ok else sys.stderr)
    return 1 if failed else 0


def _progress(image_id: str, store: str, started: float) -> Any:
    """Progress on a terminal: one line rewritten while Glance copies."""
    import time

    def show(answer: Any, image: dict | None) -> None:
        if not sys.stderr.isatty():
            return
        importing = (image or {}).get("os_glance_importing_to_stores") or "-"
        whose = "another client's copy" if answer.value == "in_progress" else "copying"
        sys.stderr.write(f"\r\033[K{image_id}: {whose} into {store}, {time.monotonic() - started:.0f} s "
                         f"(importing to: {importing}, stores: {(image or {}).get('stores', '?')})")
        sys.stderr.flush()

    return show
