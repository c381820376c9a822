"""The Keystone lab: a real OpenStack Keystone (from PyPI, cached) and a
Glance 33 behind keystonemiddleware, for locproxy's integration tests and
benchmarks, on loopback only.

* ``venv``: Keystone 30 and gunicorn in a cached virtualenv under
  ``~/.cache/locproxy`` (pinned by ``tests/integration/glance-constraints.txt``).
* ``config``: ``keystone.conf`` and ``gunicorn.conf.py``; Glance's
  ``[keystone_authtoken]`` overrides, its own keystone paste file and the
  one policy line of ``locations_from = service_token`` (pure text).
* ``server``: ``KeystoneServer``, the gunicorn process (bootstrap, start,
  stop by process group, restart with other options).
* ``identities``: ``Identities``, the projects, users, roles and catalog the
  tests use, made by REST, and tokens for each identity.
* ``lab``: ``keystone_lab()`` (Keystone with its identities) and
  ``keystone_glance()`` (a Glance 33 lab server in ``flavor = keystone``
  mode in front of it), as context managers.
* ``seed``: images with an http copy and file copies under the defaults.
* ``fronts``: locproxy as a sidecar or inside Glance's keystone pipeline
  (``open_front``), and which copy or API served (web, access logs).
* ``clients``: python-glanceclient, openstacksdk and ``openstack image
  save`` from the Glance venv, as a Keystone user.

From a shell: ``python -m tests.support.keystone --selfcheck``. Trust:
passwords and keys here are for loopback test servers only.
"""
