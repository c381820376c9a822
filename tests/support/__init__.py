"""What the tests and the benchmarks share; never a test module itself.

Test modules import from here and from ``locproxy``, never from each other.

Processes, servers and clients:

* ``processes``: start a server in its own session (``spawn``), wait for it
  (``wait_until``, ``accepts``), stop it by process group (``stop``, through
  ``locproxy.sidecar.stop_process``); ``free_port``, ``children``.
* ``servers``: gunicorn in a subprocess (``run_gunicorn``, ``sidecar_ini``)
  and raw HTTP servers in a thread (``serve_raw_http_in_thread``).
* ``client``: one request on a fresh loopback connection (``fetch``,
  ``http_request``) that tells an aborted body from a complete one.
* ``faultserver``: a loopback HTTP backend with selectable faults
  (``FaultServer``), a refusing port, a stalled listener.
* ``upstreams``: a recording image API stand-in for in-process filter tests.
* ``unprivileged``: run a function as a user who may not write the test's files.
* ``sqlite_files``: a settable clock, a lock held on a metrics file.

Labs and tables (run by the tests and by ``bench/reliability.py``):

* ``faults``: the fault lab and the fault table (``faults.table.SCENARIOS``).
* ``security``, ``bad_inputs``: the security lab, its escape tables and the
  bad-input battery.
* ``properties``: the hypothesis properties of the pure core.
* ``load``: the load harness (``run_load``, ``check``).
* ``patches``: JSON-patch on location lists, as the upstream applies it.
* ``demo``: the demo API's images and callers for ``tests/demo/``.
* ``glance``: the real-Glance lab of the integration tests (cached venv,
  config, server process, HTTP helpers); ``python -m tests.support.glance``.

Importing this package imports nothing (Glance's own processes import
``tests.support.glance.tokenauth``).
"""
