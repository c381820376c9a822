"""Multi-tenant swift copies, read with the client's own token.

Glance's multi-tenant swift store (``swift_store_multi_tenant = True``)
writes each image into its owner's account (container
``<swift_store_container>_<image id>``) and reads it with the caller's own
token; members and public images get read ACLs. So does locproxy: the
token is the ``X-Auth-Token`` of the client's request, the one the
upstream authorised the client's show of this image with (``Caller``).
Never locproxy's own service token: that would read what the client may not.

The token serves that one download: its sources, and a site-cache fill it
starts (read for it, whose bytes later clients get only after their own
show). It is never logged, kept past them, or the key of anything shared.

Where a client's token may go (``swift_multi_tenant_hosts``): a location
URL is the image owner's to write where Glance lets owners add locations,
and its host receives the token of everyone who downloads the image. So the
storage hosts that may receive tokens are listed apart from
``allowed_hosts`` (which also names plain http hosts): the Swift endpoints
that trust the deployment's Keystone. Empty, the default: multi-tenant
copies are left to the upstream's ``/file``. The host must be in
``allowed_hosts`` too; both are checked before any byte is asked.

A 401 or 403 for the client's token is the client's answer, not a fault of
the copy or of its storage: ``Failure.DENIED``, which the health rule does
not record (``Recorder.failed``); the download goes on from the next copy
or the upstream's ``/file``, whose answer is the upstream's own. A storage
endpoint whose Keystone trust is broken refuses every client: each download
then pays one refused request (``locproxy_backend_failures_total``,
``reason="denied"``, counts them).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterator

from locproxy.download.backends.base import BackendError, BackendStream
from locproxy.failures import Failure
from locproxy.guards import AllowedHosts
from locproxy.options import ConfigError

# What the swift reader's requests say when the storage refused the token:
# a status of a GET, of the manifest's HEAD or of the segment listing.
_REFUSED = re.compile(r"\bHTTP 40[13]\b")


class TenantHosts(AllowedHosts):
    """``swift_multi_tenant_hosts``: the storage hosts a client's token may be sent to."""

    def check_within(self, allowed: AllowedHosts) -> None:
        """Each entry is one ``allowed_hosts`` allows too (ConfigError at load, not a copy never read)."""
        for host, port in sorted(self.entries, key=str):
            if not ((host, None) in allowed.entries if port is None else allowed.allows(host, port)):
                shown = host if port is None else f"{host}:{port}"
                raise ConfigError(f"swift_multi_tenant_hosts: {shown!r} is not in allowed_hosts (a client's token "
                                  "goes only to hosts locproxy may contact at all)")


def denied(error: BackendError) -> BackendError:
    """``error`` as the client's refusal when the storage refused its token."""
    if error.kind is Failure.HTTP_STATUS and _REFUSED.search(error.reason):
        return BackendError(error.label, f"the client's token was refused ({error.reason})", Failure.DENIED)
    return error


def as_caller(open_stream: Callable[[], BackendStream]) -> BackendStream:
    """``open_stream()``, its token refusals (before the first byte or later,
    e.g. a token that expires during a long read) told as ``DENIED``."""
    try:
        stream = open_stream()
    except BackendError as error:
        raise denied(error) from None
    return CallerStream(stream)


class CallerStream(BackendStream):
    """A stream read with the client's token: the same bytes, its refusals told apart."""

    def __init__(self, stream: BackendStream) -> None:
        super().__init__(stream.label, stream.start, stream.length, 0)
        self._stream = stream
        self.headers: Any = getattr(stream, "headers", {})

    def _chunks(self) -> Iterator[bytes]:
        try:
            for chunk in self._stream:
                self._sent += len(chunk)
                yield chunk
        except BackendError as error:
            raise denied(error) from None

    def close(self) -> None:
        super().close()
        self._stream.close()
