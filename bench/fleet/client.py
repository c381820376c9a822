"""One node's workload: download a sequence of images through its own sidecar.

Run inside a node namespace::

    python -m bench.fleet.client --base http://127.0.0.1:8080 --plan plan.json --out events.jsonl

``plan.json``: ``{"downloads": [{"id", "size", "sha512"}, ...], "pause": s,
"start_file": path, "hold": {"download": n, "at": bytes, "release_file": path} | null}``.

Waits (bounded) until the sidecar answers and can reach the image API,
writes ``{"event": "ready"}``, waits for ``start_file`` (so every node starts
together), then downloads each image in turn and writes one
``{"event": "download", ...}`` line per download: its number, start, first
byte and end times (epoch seconds), bytes, status, and whether length and
sha512 were exact. At the end it saves the sidecar's ``/metrics`` to
``metrics_file`` if the plan names one. With ``hold``, download ``n`` stops reading after ``at``
bytes, writes ``{"event": "held"}`` and waits for ``release_file``: the
bench cuts a backend's links at that moment, so the cut lands mid-transfer
whatever the timing (the bytes already in socket buffers are far fewer than
those left).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

CHUNK = 1024 * 1024
READY_TIMEOUT = 60.0
START_TIMEOUT = 300.0
HOLD_TIMEOUT = 60.0
READ_TIMEOUT = 120.0  # socket timeout of one download's reads


def wait_for_file(path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not Path(path).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout:g}s")
        time.sleep(0.02)


def get_status(host: str, port: int, path: str) -> int:
    connection = http.client.HTTPConnection(host, port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def wait_until_ready(host: str, port: int, image_id: str) -> None:
    """The sidecar answers its health check and the image's metadata (so
    the upstream is up and reachable from this node)."""
    deadline = time.monotonic() + READY_TIMEOUT
    last: Any = None
    while time.monotonic() < deadline:
        try:
            if (get_status(host, port, "/healthcheck") == 200
                    and get_status(host, port, f"/v2/images/{image_id}") == 200):
                return
            last = "not 200"
        except OSError as error:
            last = error
        time.sleep(0.1)
    raise TimeoutError(f"sidecar {host}:{port} not ready within {READY_TIMEOUT:g}s: {last}")


def download(host: str, port: int, image: dict[str, Any], hold_at: int | None,
             on_hold: Callable[[int], None]) -> dict[str, Any]:
    """One ``GET /v2/images/{id}/file``, hashed as it arrives."""
    started = time.time()
    first_byte = None
    received = 0
    status = None
    error = None
    hasher = hashlib.sha512()
    connection = http.client.HTTPConnection(host, port, timeout=READ_TIMEOUT)
    try:
        connection.request("GET", f"/v2/images/{image['id']}/file")
        response = connection.getresponse()
        status = response.status
        while True:
            wanted = CHUNK if hold_at is None or received >= hold_at else min(CHUNK, hold_at - received)
            chunk = response.read(wanted)
            if not chunk:
                break
            if first_byte is None:
                first_byte = time.time()
            hasher.update(chunk)
            received += len(chunk)
            if hold_at is not None and received >= hold_at:
                on_hold(received)
                hold_at = None
    except (OSError, http.client.HTTPException) as exc:
        error = f"{type(exc).__name__}: {exc}"
    finally:
        connection.close()
    ended = time.time()
    ok = status == 200 and received == image["size"] and hasher.hexdigest() == image["sha512"]
    return {"event": "download", "image": image["id"], "started": started, "first_byte": first_byte,
            "ended": ended, "seconds": ended - started, "bytes": received, "status": status, "ok": ok,
            "error": error}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the sidecar, http://host:port")
    parser.add_argument("--plan", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    plan = json.loads(args.plan.read_text())
    base = urlsplit(args.base)
    host, port = base.hostname or "127.0.0.1", base.port or 80
    hold = plan.get("hold")
    with open(args.out, "a", encoding="utf-8") as out:
        def emit(record: dict[str, Any]) -> None:
            out.write(json.dumps(record) + "\n")
            out.flush()

        wait_until_ready(host, port, plan["downloads"][0]["id"])
        emit({"event": "ready", "t": time.time()})
        wait_for_file(plan["start_file"], START_TIMEOUT)
        for number, image in enumerate(plan["downloads"], start=1):
            held = hold is not None and hold["download"] == number

            def on_hold(received: int, number: int = number) -> None:
                emit({"event": "held", "n": number, "bytes": received, "t": time.time()})
                wait_for_file(hold["release_file"], HOLD_TIMEOUT)

            record = download(host, port, image, hold["at"] if held else None, on_hold)
            emit({"n": number, **record})
            if plan.get("pause"):
                time.sleep(plan["pause"])
        if plan.get("metrics_file"):
            # What this node's Prometheus endpoint exposes after the workload (series count).
            connection = http.client.HTTPConnection(host, port, timeout=10)
            try:
                connection.request("GET", "/metrics")
                Path(plan["metrics_file"]).write_bytes(connection.getresponse().read())
            finally:
                connection.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
