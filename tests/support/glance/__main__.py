"""``python -m tests.support.glance``: the Glance lab from a shell.

    python -m tests.support.glance --selfcheck   # build/reuse, start, exercise, print timings
    python -m tests.support.glance --freeze      # newest versions -> rewrite the pins
    python -m tests.support.glance --venv-path   # where the cached venv is

Run it from the repository root (``tests`` and ``locproxy`` are imported from there).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Sequence

from tests.support.glance.lab import glance_server
from tests.support.glance.venv import (
    CONSTRAINTS_FILE,
    VenvInfo,
    base_python,
    build_venv,
    ensure_venv,
    glance_versions,
    log,
    pip,
    python_tag,
    venv_dir,
)


def selfcheck() -> int:
    """Build or reuse, start, exercise the main operations, print timings and versions."""
    t0 = time.monotonic()
    info = ensure_venv()
    print(f"venv: {info.path} ({'built cold' if info.built else 'reused warm'} in {info.seconds:.1f}s)")
    print("versions:", json.dumps(glance_versions(info.path)))
    t1 = time.monotonic()
    with glance_server(venv=info) as server:
        t2 = time.monotonic()
        print(f"glance: {server.url} up in {server.start_seconds:.1f}s (fixture setup {t2 - t1:.1f}s); "
              f"config {server.config_dir}")
        data = os.urandom(300_000)
        image_id = server.create_image(data, name="selfcheck")
        image = server.get_image(image_id)
        print(f"image {image_id}: status={image['status']} stores={image.get('stores')} "
              f"direct_url={image.get('direct_url')}")
        image = server.copy_to_store(image_id, "fs2")
        print("after copy-image:", [loc["url"] for loc in image["locations"]], image["stores"])
        web_url = server.web.put(f"{image_id}.raw", data)
        image = server.add_location(image_id, web_url, {})
        print("after http location:", [(loc["url"], loc["metadata"].get("store")) for loc in image["locations"]])
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "download"
            proc = server.glance_cli("image-download", "--file", str(out), image_id)
            ok = proc.returncode == 0 and out.read_bytes() == data
            print(f"glance CLI image-download: {'ok' if ok else 'FAILED'} {proc.stderr.strip()[-500:]}")
        print(f"total {time.monotonic() - t0:.1f}s")
    return 0


def freeze_constraints(constraints: Path = CONSTRAINTS_FILE) -> Path:
    """Build an unpinned venv, check it starts, write its ``pip freeze`` as the pins."""
    scratch = Path(tempfile.mkdtemp(prefix="locproxy-glance-freeze-"))
    try:
        venv = scratch / "venv"
        seconds = build_venv(venv, constraints=None)
        log(f"unpinned venv built in {seconds:.1f}s; checking that Glance starts")
        with glance_server(venv=VenvInfo(venv, True, seconds)) as server:
            server.get_json("/versions")
        frozen = pip(venv, "freeze", "--all", "--exclude-editable", what="pip freeze").stdout
        pins = [line for line in frozen.splitlines()
                if line and not line.lower().startswith(("locproxy", "pip=="))]
        header = textwrap.dedent(f"""\
            # Pins for the Glance venv of tests/support/glance ({python_tag(base_python())}).
            # Regenerate: python -m tests.support.glance --freeze
            # Changing this file changes the cached venv's name, so the next run rebuilds it.
            """)
        constraints.write_text(header + "\n".join(pins) + "\n")
        return constraints
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.glance",
                                     description="A real OpenStack Glance for locproxy's integration tests.")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--selfcheck", action="store_true", help="build or reuse the venv, start Glance, exercise it")
    group.add_argument("--freeze", action="store_true", help="build unpinned, verify, rewrite glance-constraints.txt")
    group.add_argument("--venv-path", action="store_true", help="print the venv path for the current pins")
    args = parser.parse_args(argv)
    if args.venv_path:
        print(venv_dir())
        return 0
    if args.freeze:
        print(freeze_constraints())
        return 0
    return selfcheck()


if __name__ == "__main__":
    sys.exit(main())
