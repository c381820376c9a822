"""``GET /v2/images/{id}/file`` served from the preferred backend.

The parts, from the pure core outwards:

* ``plan.py``: what the download will be (status, span, headers, digest,
  sources in order), decided without I/O;
* ``backends/``: the guards on what may be read, and a reader per scheme;
* ``sources.py``: the candidates tried in order, then the upstream's ``/file``;
* ``body.py``: the streamed body, with resume and verification;
* ``handler.py``: the WSGI shell that asks the upstream and renders the plan.
"""

from locproxy.download.handler import DownloadHandler

__all__ = ["DownloadHandler"]
