"""What the tests and the benchmarks share (never a test module itself).

* ``processes``: start a server in its own session, wait for it, stop it by
  process group (``locproxy.sidecar.stop_process``); ``free_port``.
* ``servers``: gunicorn in a subprocess (``run_gunicorn``, ``sidecar_ini``)
  and raw HTTP servers in a thread (``serve_raw_http_in_thread``).
* ``faultserver``: a loopback HTTP backend with selectable faults
  (``FaultServer``), a refusing port, a stalled listener.
* ``unprivileged``: run a function as a user who may not write the test's files.
* ``glance``: the real-Glance lab of the integration tests (cached venv,
  config, server process, HTTP helpers); ``python -m tests.support.glance``.

Test modules import from here and from ``locproxy``, never from each other.
"""
