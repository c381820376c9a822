"""Ceph baselines: raw librbd and a direct S3 GET, against locproxy's rbd/s3 readers.

::

    .venv/bin/python bench/ceph_baseline.py [--size-mib 256] [--runs 3] [--workdir DIR]

Starts the single-node lab of ``tests/support_ceph.py`` (root; installs Ceph
if missing), writes one random image of ``--size-mib`` as an rbd snapshot
(Glance's layout) and as an RGW object, then measures, interleaved, median
of ``--runs``, in MiB/s:

* ``librbd raw``: the Python ``rbd`` binding, 4 MiB sequential reads of the
  snapshot, one at a time (what a hand-written client would do);
* ``S3 GET direct``: one ranged GET over urllib3, signed with botocore's
  SigV4, read in 1 MiB pieces (no boto3, no locproxy);
* ``RbdReader`` / ``S3Reader``: locproxy's readers, whole image in one open.

Each reader's bytes are checked once against the image (sha256, untimed).
The targets that count on 2 cores (see shared notes): reader >= 0.9 x its
baseline. Expect +-20 % run-to-run noise on a shared machine.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests import support_ceph  # noqa: E402

MiB = 1024 * 1024


def _drain(chunks: Iterable[bytes], digest: "hashlib._Hash | None" = None) -> int:
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if digest is not None:
            digest.update(chunk)
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, help="parent of the lab directory (default: a temp dir)")
    args = parser.parse_args(argv)
    size = args.size_mib * MiB
    try:
        rados, rbd = support_ceph.import_bindings()
        import botocore  # noqa: F401 - checked here, used by the s3 paths
    except (support_ceph.CephUnavailable, ImportError) as error:
        print(f"ceph_baseline: cannot run: {error}", file=sys.stderr)
        return 3
    import urllib3
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from locproxy.rbd_reader import RbdCluster, RbdReader
    from locproxy.s3_reader import S3Reader

    base = args.workdir or Path(tempfile.mkdtemp(prefix="locproxy-ceph-bench-"))
    try:
        with support_ceph.ceph_cluster(base) as lab:
            data = os.urandom(size)
            expected = hashlib.sha256(data).hexdigest()
            started = time.monotonic()
            rbd_url = lab.create_rbd_image("bench", data)
            s3 = lab.put_s3_object("bench", "image", data)
            del data
            print(f"lab ready; {args.size_mib} MiB written to rbd and s3 in {time.monotonic() - started:.1f} s")
            access, secret = lab.s3_keys()

            cluster = rados.Rados(conffile=str(lab.conf))
            cluster.connect(timeout=10)
            pool = urllib3.PoolManager(maxsize=1, retries=False, timeout=urllib3.Timeout(connect=5, read=30))
            rbd_reader = RbdReader({lab.fsid: RbdCluster(str(lab.conf))})
            s3_reader = S3Reader(
                allowed_hosts={lab.rgw_host}, credentials={lab.rgw_host: (access, secret)}, plain_scheme="http"
            )

            def librbd_raw(digest: "hashlib._Hash | None" = None) -> int:
                with cluster.open_ioctx(support_ceph.POOL) as ioctx:
                    with rbd.Image(ioctx, "bench", snapshot="snap", read_only=True) as image:
                        def blocks() -> Iterable[bytes]:
                            for offset in range(0, size, 4 * MiB):
                                yield image.read(offset, min(4 * MiB, size - offset))
                        return _drain(blocks(), digest)

            def s3_direct(digest: "hashlib._Hash | None" = None) -> int:
                url = f"{lab.rgw_endpoint}/{s3.bucket}/{s3.key}"
                request = AWSRequest(method="GET", url=url, headers={"Range": f"bytes=0-{size - 1}"})
                S3SigV4Auth(Credentials(access, secret), "s3", "us-east-1").add_auth(request)
                response = pool.request(
                    "GET", url, headers=dict(request.headers.items()), preload_content=False, redirect=False
                )
                try:
                    if response.status != 206:
                        raise RuntimeError(f"direct GET: HTTP {response.status}")
                    return _drain(response.stream(MiB), digest)
                finally:
                    response.release_conn()

            def reader(opener: object, url: str) -> Callable[..., int]:
                def run(digest: "hashlib._Hash | None" = None) -> int:
                    with opener.open(url, 0, size, size) as stream:  # type: ignore[attr-defined]
                        return _drain(stream, digest)
                return run

            cases: dict[str, Callable[..., int]] = {
                "librbd raw (4 MiB reads)": librbd_raw,
                "RbdReader": reader(rbd_reader, rbd_url),
                "S3 GET direct (urllib3 + SigV4)": s3_direct,
                "S3Reader": reader(s3_reader, s3.url),
            }
            for name, case in cases.items():  # correctness once, untimed
                digest = hashlib.sha256()
                if case(digest) != size or digest.hexdigest() != expected:
                    raise RuntimeError(f"{name}: bytes differ from the image")
            samples: dict[str, list[float]] = {name: [] for name in cases}
            for _ in range(args.runs):  # interleaved, so drift hits every case alike
                for name, case in cases.items():
                    started = time.perf_counter()
                    if case() != size:
                        raise RuntimeError(f"{name}: short read")
                    samples[name].append(size / MiB / (time.perf_counter() - started))
            rbd_reader.close()
            s3_reader.clear()
            pool.clear()
            cluster.shutdown()
    except support_ceph.CephUnavailable as error:
        print(f"ceph_baseline: cannot run: {error.reason}", file=sys.stderr)
        return 3
    finally:
        if args.workdir is None:
            shutil.rmtree(base, ignore_errors=True)

    medians = {name: statistics.median(values) for name, values in samples.items()}
    baselines = {"RbdReader": "librbd raw (4 MiB reads)", "S3Reader": "S3 GET direct (urllib3 + SigV4)"}
    print(f"\n{args.size_mib} MiB, median of {args.runs} (MiB/s), {os.cpu_count()} cores")
    print(f"{'path':34} {'median':>8} {'min':>8} {'max':>8}  vs baseline")
    for name, values in samples.items():
        ratio = f"{medians[name] / medians[baselines[name]]:.2f} x" if name in baselines else ""
        print(f"{name:34} {medians[name]:8.0f} {min(values):8.0f} {max(values):8.0f}  {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
