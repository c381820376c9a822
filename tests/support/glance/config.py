"""The Glance lab's configuration files, rendered as text (pure).

Per server, Glance reads ``glance-api.conf``, ``glance-api-paste.ini`` and
``policy.yaml`` from ``OS_GLANCE_CONFIG_DIR``: the stores ``fs1``, ``fs2``
(file) and ``web`` (http), no keystone (the test-only ``tokenauth`` filter
of ``tests.support.glance.tokenauth`` before ``context``), and a policy
that opens location operations to the image's project members.
``locproxy_paste_ini(**options)`` puts locproxy in Glance's own pipeline.

Trust: for a loopback test server only; it believes whatever identity a
client claims.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Mapping, Sequence

# Base pipeline: what the brief calls "cors http_proxy_to_wsgi versionnegotiation
# context rootapp", with the test-only tokenauth filter before context.
DEFAULT_PIPELINE = ("cors", "http_proxy_to_wsgi", "versionnegotiation", "tokenauth", "context", "rootapp")

# Location operations (and the others a test may need) opened to the image's
# project members as well as admins; Glance's defaults make several admin-only
# (delete_image_location, copy_image, publicize_image) or service-only
# (fetch_image_location).
POLICY_RULES = {
    "admin_or_member": "role:admin or (role:member and project_id:%(project_id)s)",
    "get_image_location": "rule:admin_or_member",
    "set_image_location": "rule:admin_or_member",
    "delete_image_location": "rule:admin_or_member",
    "add_image_location": "rule:admin_or_member",
    "fetch_image_location": "rule:admin_or_member",
    "copy_image": "rule:admin_or_member",
    "deactivate": "rule:admin_or_member",
    "reactivate": "rule:admin_or_member",
    "publicize_image": "role:admin or role:member",
    "communitize_image": "role:admin or role:member",
}


def apply_overrides(conf: str, overrides: Mapping[str, Mapping[str, str]] | None) -> str:
    """Set ``{section: {option: value}}`` in an ini text (replacing, or adding the section)."""
    lines = conf.splitlines()
    for section, options in (overrides or {}).items():
        header = f"[{section}]"
        if header not in lines:
            lines += ["", header]
        start = lines.index(header) + 1
        end = next((i for i in range(start, len(lines)) if lines[i].startswith("[")), len(lines))
        body = [line for line in lines[start:end]
                if line.split("=", 1)[0].strip() not in options or line.lstrip().startswith("#")]
        while body and not body[-1].strip():
            body.pop()
        body += [f"{name} = {value}" for name, value in options.items()] + [""]
        lines[start:end] = body
    return "\n".join(lines).rstrip("\n") + "\n"


def render_api_conf(*, workdir: Path, port: int, web_port: int, store_dirs: Mapping[str, Path],
                    overrides: Mapping[str, Mapping[str, str]] | None = None) -> str:
    """glance-api.conf; ``overrides`` e.g. ``{"fs2": {"weight": "100"}}``."""
    return apply_overrides(textwrap.dedent(f"""\
        # Written by tests/support/glance/config.py; loopback test server only.
        [DEFAULT]
        debug = False
        log_file = {workdir / 'logs' / 'glance-api.log'}
        enabled_backends = fs1:file, fs2:file, web:http
        show_multiple_locations = True
        show_image_direct_url = True
        enabled_import_methods = [glance-direct, web-download, copy-image]
        # Imports are redirected to the worker that staged the data.
        worker_self_reference_url = http://127.0.0.1:{port}
        # Deprecated twin of [os_glance_staging_store] (single-store era).
        node_staging_uri = file://{store_dirs['staging']}
        image_location_quota = 20

        [database]
        # timeout: seconds a connection waits for a lock (sqlite3's default is 5).
        connection = sqlite:///{workdir / 'glance.sqlite'}?timeout=30

        [glance_store]
        default_backend = fs1

        [fs1]
        store_description = first file store
        filesystem_store_datadir = {store_dirs['fs1']}

        [fs2]
        store_description = second file store
        filesystem_store_datadir = {store_dirs['fs2']}

        [web]
        store_description = loopback http store (read-only)

        [os_glance_staging_store]
        filesystem_store_datadir = {store_dirs['staging']}

        [os_glance_tasks_store]
        filesystem_store_datadir = {store_dirs['tasks']}

        [import_filtering_opts]
        # Glance refuses loopback http locations unless the host is allowed
        # (bounded list options need the brackets).
        allowed_hosts = [127.0.0.1]
        allowed_ports = [{web_port}]

        [paste_deploy]
        flavor =

        [oslo_policy]
        policy_file = policy.yaml

        [oslo_concurrency]
        lock_path = {workdir / 'locks'}
        """), overrides)


CEPH_BACKENDS = "fs1:file, fs2:file, web:http, ceph1:rbd, s3:s3"


def ceph_store_overrides(*, ceph_conf: Path, pool: str, rgw_endpoint: str, access_key: str, secret_key: str,
                         bucket: str = "glance") -> dict[str, dict[str, str]]:
    """glance-api.conf overrides adding the stores ``ceph1`` (rbd) and ``s3``
    (radosgw) of a Ceph lab beside the file and http ones (see
    tests/integration/glance_ceph.md). Glance's interpreter needs the
    rados/rbd bindings on its path (``GlanceServer.extra_pythonpath``)."""
    return {
        "DEFAULT": {"enabled_backends": CEPH_BACKENDS},
        "ceph1": {"store_description": "lab rbd", "rbd_store_ceph_conf": str(ceph_conf), "rbd_store_pool": pool,
                  "rbd_store_user": "admin", "rbd_store_chunk_size": "4", "rados_connect_timeout": "10"},
        "s3": {"store_description": "lab rgw", "s3_store_host": rgw_endpoint, "s3_store_access_key": access_key,
               "s3_store_secret_key": secret_key, "s3_store_bucket": bucket,
               "s3_store_create_bucket_on_put": "True", "s3_store_bucket_url_format": "path"},
    }


SWIFT_BACKENDS = "fs1:file, fs2:file, web:http, swift1:swift, swift2:swift"


def swift_store_overrides(*, references_file: Path, inline: tuple[str, str, str], reference: str = "ref1",
                          container: str = "glance") -> dict[str, dict[str, str]]:
    """glance-api.conf overrides adding two swift stores beside the file and
    http ones: ``swift1`` with its credentials in a references file
    (``swift+config://`` locations) and ``swift2`` with ``inline`` =
    (Keystone URL, ``project:user``, key) in its own section (locations
    ``swift+http://user:key@<keystone>/...``). Objects of 32 "MB"
    (32,768,000 bytes) and more are written as DLOs of 8 "MB" segments
    (glance_store 5.7.0 cannot upload every size: the tests keep to sizes it can)."""
    sizes = {"swift_store_create_container_on_put": "True", "swift_store_large_object_size": "32",
             "swift_store_large_object_chunk_size": "8"}
    auth_address, user, key = inline
    return {
        "DEFAULT": {"enabled_backends": SWIFT_BACKENDS},
        "swift1": {"store_description": "lab swift (radosgw)", "swift_store_config_file": str(references_file),
                   "default_swift_reference": reference, "swift_store_container": container, **sizes},
        "swift2": {"store_description": "lab swift, inline credentials", "swift_store_auth_address": auth_address,
                   "swift_store_user": user, "swift_store_key": key, "swift_store_container": f"{container}-inline",
                   **sizes},
    }


def render_paste_ini(pipeline: Sequence[str] = DEFAULT_PIPELINE, extra: str = "") -> str:
    """Glance's paste file with one flavor-less pipeline, ``glance-api``.

    ``extra`` is appended verbatim (e.g. a ``[filter:locproxy]`` section).
    """
    return textwrap.dedent(f"""\
        # Written by tests/support/glance/config.py (no keystone; flavor-less).
        [pipeline:glance-api]
        pipeline = {' '.join(pipeline)}

        [composite:rootapp]
        paste.composite_factory = glance.api:root_app_factory
        /: apiversions
        /v2: apiv2app

        [app:apiversions]
        paste.app_factory = glance.api.versions:create_resource

        [app:apiv2app]
        paste.app_factory = glance.api.v2.router:API.factory

        [filter:versionnegotiation]
        paste.filter_factory = glance.api.middleware.version_negotiation:VersionNegotiationFilter.factory

        [filter:context]
        paste.filter_factory = glance.api.middleware.context:ContextMiddleware.factory

        [filter:tokenauth]
        paste.filter_factory = tests.support.glance.tokenauth:filter_factory

        [filter:cors]
        paste.filter_factory = oslo_middleware.cors:filter_factory
        oslo_config_project = glance
        oslo_config_program = glance-api

        [filter:http_proxy_to_wsgi]
        paste.filter_factory = oslo_middleware:HTTPProxyToWSGI.factory
        """) + (("\n" + textwrap.dedent(extra).strip() + "\n") if extra.strip() else "")


def locproxy_paste_ini(*, use: str = "egg:locproxy#locproxy", **options: str) -> str:
    """A paste file with locproxy in Glance's own pipeline, right before rootapp."""
    pipeline = [*DEFAULT_PIPELINE[:-1], "locproxy", DEFAULT_PIPELINE[-1]]
    key = "use" if use.startswith(("egg:", "config:", "call:")) else "paste.filter_factory"
    lines = ["[filter:locproxy]", f"{key} = {use}", *(f"{k} = {v}" for k, v in options.items())]
    return render_paste_ini(pipeline, "\n".join(lines))


def render_policy() -> str:
    return "".join(f'"{name}": "{rule}"\n' for name, rule in POLICY_RULES.items())
