"""The one place a download's response is built: headers only, the
server's sendfile, or a checked body (``ImageBody``), read and checked one
block ahead of the server's sends (``wire.ReadAhead``). Only here and in
``wire.py`` are ``wsgi.file_wrapper`` and the client socket touched.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from webob import Response

from locproxy.download.ahead import ACTIVITY
from locproxy.download.backends import BackendError
from locproxy.download.body import ImageBody
from locproxy.download.choose import Source, Upstream, opened
from locproxy.download.digests import file_digest_matches, submit
from locproxy.download.plan import Candidate, DownloadPlan
from locproxy.download.policy import BodyPolicy
from locproxy.download.sources import Opened, Sources
from locproxy.download.verify import Check, ChecksumMismatch, Verdict, Verifier, judge
from locproxy.download.wire import ReadAhead, corked
from locproxy.fingerprints import FingerprintBuilder, Fingerprints
from locproxy.observability import Recorder
from locproxy.responses import json_error
from locproxy.upstream import ImageRequests

LOG = logging.getLogger(__package__)  # one logger for the whole download path


def serve(plan: DownloadPlan, source: Source, policy: BodyPolicy, sources: Sources, fingerprints: Fingerprints,
          image_requests: ImageRequests, environ: dict[str, Any], chunk_size: int) -> Response | None:
    """The response for ``plan`` from ``source``; None: the client's own
    request goes to the upstream unchanged."""
    recorder = sources.recorder
    if isinstance(source, Upstream):
        LOG.debug("image %s: no copy locproxy may read opened; the upstream serves it", plan.image_id)
        recorder.outcome(plan.candidates[0].label if plan.candidates else "upstream", "upstream")
        return image_requests.as_sent()
    first = opened(source, plan, policy, chunk_size)
    file_wrapper = environ.get("wsgi.file_wrapper")
    if policy.sendfile and first[1].fileobj is not None and file_wrapper is not None:
        return Response(status=plan.status, headerlist=list(plan.headers),
                        app_iter=ACTIVITY.track(_sendfile(plan, first, policy, sources, fingerprints,
                                                          file_wrapper, environ, chunk_size)))
    body = ImageBody(plan, sources, first, Verifier(policy.check, plan.digest, policy.fingerprint), fingerprints)
    try:
        body.prime()
    except (BackendError, ChecksumMismatch) as error:
        body.close()
        return _not_started(plan, body, error, image_requests)
    return Response(status=plan.status, headerlist=list(plan.headers),
                    app_iter=ACTIVITY.track(ReadAhead(body, first=body.take_primed())))


def _not_started(plan: DownloadPlan, body: ImageBody, error: Exception,
                 image_requests: ImageRequests) -> Response | None:
    """No source could start the body, and nothing was sent. Where only
    faults stopped it (none of its bytes was refused as wrong), the client's
    own request goes to the upstream, which answers it in its own words, as
    it would without locproxy; bytes known to be wrong are never passed on:
    a JSON 502 says why."""
    if not body.refused:
        LOG.warning("image %s: no source could start the download (%s); the image API answers it",
                    plan.image_id, error)
        return image_requests.as_sent()
    LOG.warning("image %s: no source could start the download: %s", plan.image_id, error)
    return json_error(502, f"No copy of image {plan.image_id} holds its bytes as recorded ({error}).")


def _sendfile(plan: DownloadPlan, first: Opened, policy: BodyPolicy, sources: Sources,
              fingerprints: Fingerprints, file_wrapper: Any, environ: dict[str, Any], chunk_size: int) -> Any:
    candidate, stream = first
    recorder = sources.recorder
    if policy.check is Check.BESIDE:
        assert plan.digest is not None
        _check_beside(stream.fileobj, plan, candidate, recorder, fingerprints)
    LOG.info("image %s: bytes %d-%d sent from %s (sendfile%s)", plan.image_id, plan.start, plan.end - 1,
             candidate.label, ", checked beside" if policy.check is Check.BESIDE else "")
    recorder.outcome(candidate.label, "served" if sources.failures == 0 else "fell_back")
    if candidate.backend:
        recorder.read_from(candidate.store, plan.end - plan.start)
    return corked(file_wrapper(stream.fileobj, chunk_size), environ)


def _check_beside(fileobj: Any, plan: DownloadPlan, candidate: Candidate, recorder: Recorder,
                  fingerprints: Fingerprints) -> None:
    """Hash and fingerprint a file being sent with sendfile, on a digest
    thread, from a descriptor of its own (the response closes the other one
    whenever it ends): ``verify_checksums = background``."""
    fd, digest = os.dup(fileobj.fileno()), plan.digest
    assert digest is not None

    def check() -> None:
        built = FingerprintBuilder()
        with os.fdopen(fd, "rb", buffering=0) as copy:
            good = file_digest_matches(copy, digest, blocks=built)
        judge(Verdict(plan.image_id, digest, (candidate,), good), built.fingerprint(plan.size), fingerprints,
              recorder, "the body was sent (verify_checksums = background)")

    submit(check)
