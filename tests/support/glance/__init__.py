"""The Glance lab: a reproducible, real OpenStack Glance for locproxy's
integration tests (and the benchmarks' Glance peer), on loopback only.

* ``venv``: the cached virtualenv (Glance, python-glanceclient, gunicorn from
  PyPI, pinned by ``tests/integration/glance-constraints.txt``; locproxy
  installed editable), built once under ``~/.cache/locproxy``.
* ``config``: ``glance-api.conf``, ``glance-api-paste.ini`` and
  ``policy.yaml`` rendered as text; ``locproxy_paste_ini``.
* ``server``: ``GlanceServer``, the gunicorn process (start, stop by process
  group, restart with other config), speaking HTTP through ``api.GlanceAPI``.
* ``web``: ``StaticHTTPServer``, the loopback server behind the ``web`` store.
* ``tokenauth``: the test-only paste filter that turns a token into identity
  headers (Glance runs it; standard library only).
* ``lab``: ``glance_server()``, all of the above as one context manager.

From a shell: ``python -m tests.support.glance --selfcheck`` (``--freeze``,
``--venv-path``). This ``__init__`` imports nothing: Glance's own processes
import ``tests.support.glance.tokenauth``.
"""
