"""The demo image API: a small in-memory image API that speaks Glance v2's
JSON and ``/file`` contract (a WSGI app), its data set, and its runner.

This is a *demo and test upstream* for locproxy, not a Glance replacement. It
exists so that ``locproxy demo`` has something realistic to sit in front of,
and so that tests can run locproxy against an upstream whose behaviour matches
Glance's and whose traffic they can count (``api.calls``, ``api.served_from``).

What it implements (Glance v2 semantics unless noted):

* ``GET /v2/images`` -- listing in insertion order (Glance sorts by
  ``created_at`` desc), ``limit``/``marker`` pagination with ``first`` and a
  ``next`` link only while more images remain, equality filters on ``name``,
  ``status``, ``visibility`` and ``owner``.
* ``POST /v2/images`` -- create a queued image (201).
* ``GET``/``PATCH``/``DELETE /v2/images/{id}`` -- show, JSON-patch
  (``application/openstack-images-v2.1-json-patch``: add/replace/remove of
  properties and Glance's location operations), delete.
* ``GET``/``HEAD``/``PUT /v2/images/{id}/file`` -- download with Glance's
  headers, one ``Range`` (206/416), 204 without data, 403 when deactivated
  (unless admin); upload of a queued image (204).
* ``POST /v2/images/{id}/actions/deactivate|reactivate``; ``GET /versions``.
* Keystone-style headers: ``X-Auth-Token`` (401 without it when
  ``require_auth``), ``X-Project-Id`` (owner of created images; private and
  shared images are visible only to their owner), ``X-Roles`` (``admin`` sees
  and downloads everything). There is no membership or write policy.

Deliberate differences from modern Glance: ``replace /locations`` accepts any
list (Icehouse-era behaviour; an empty list empties the image again), and
``next`` is omitted when a page is exactly full but nothing follows. Like
Glance, a location index such as ``01`` is read as a number.

The parts: ``model.py`` (images, their JSON and validation, JSON-patch
parsing), ``patching.py`` (applying it), ``stores.py`` (where the bytes
live), ``api.py`` (the WSGI app), ``serving.py`` (loopback servers for a WSGI
app or a directory), ``data.py`` (the demo data set) and ``runner.py``
(``locproxy demo``). Tests and benchmarks use the same parts.
"""

from locproxy.demo.api import DemoImageAPI
from locproxy.demo.data import DEMO_IMAGE_IDS, DemoSetup, build_demo, demo_bytes, web_dir_of
from locproxy.demo.model import location
from locproxy.demo.serving import LocalServer, serve_static, serve_wsgi

__all__ = [
    "DEMO_IMAGE_IDS",
    "DemoImageAPI",
    "DemoSetup",
    "LocalServer",
    "build_demo",
    "demo_bytes",
    "location",
    "serve_static",
    "serve_wsgi",
    "web_dir_of",
]
