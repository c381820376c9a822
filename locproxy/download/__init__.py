"""``GET /v2/images/{id}/file`` served from the preferred backend.

The parts, from the pure core outwards:

* ``plan.py``: what the download will be (status, span, headers, digest,
  sources in order), decided without I/O;
* ``backends/``: the table of readers, one per scheme, and their guards;
* ``sources.py``: the candidates tried in order, then the upstream's ``/file``;
* ``body.py``: the streamed body, with resume and verification;
* ``handler.py``: the WSGI shell that asks the upstream and renders the plan.
"""
