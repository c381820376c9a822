"""Why a backend or the upstream failed: one small, fixed set of kinds.

Logs and client messages are built from the kind, and metrics use its value
as their ``reason`` label directly, so labels stay bounded. Standard library
only (``locproxy.transport`` maps urllib3's errors onto it).
"""

from __future__ import annotations

import enum


class Failure(str, enum.Enum):
    """Why a backend or the upstream failed (the value is a metric label)."""

    # Reaching the peer.
    NAME_RESOLUTION = "name_resolution"
    REFUSED = "refused"
    UNREACHABLE = "unreachable"
    CONNECT_TIMEOUT = "connect_timeout"
    POOL_EXHAUSTED = "pool_exhausted"
    TLS = "tls"
    INVALID_URL = "invalid_url"
    # Exchanging with it.
    TIMEOUT = "timeout"  # no byte within the read timeout
    SEND_TIMEOUT = "send_timeout"  # the peer stopped reading what we sent
    RESET = "reset"
    CLOSED = "closed"  # before any status line
    TRUNCATED = "truncated"  # the body ended early
    BAD_RESPONSE = "bad_response"
    # What a backend answered or held.
    NOT_ALLOWED = "not_allowed"  # file roots, allowed hosts, schemes
    MISSING = "missing"
    HTTP_STATUS = "http_status"
    SIZE_MISMATCH = "size_mismatch"
    TOO_SLOW = "too_slow"
    CHECKSUM_MISMATCH = "checksum_mismatch"
    # The client's own credentials refused, by a backend read as the client:
    # the client's answer, not the backend's fault (no health record).
    DENIED = "denied"
    OTHER = "other"


# Short, credential-free text for the kinds a network error can have.
_TEXT = {
    Failure.NAME_RESOLUTION: "name resolution failed",
    Failure.REFUSED: "connection refused",
    Failure.UNREACHABLE: "connection failed",
    Failure.CONNECT_TIMEOUT: "connect timeout",
    Failure.POOL_EXHAUSTED: "connection pool exhausted",
    Failure.TLS: "TLS error",
    Failure.INVALID_URL: "invalid URL",
    Failure.TIMEOUT: "read timeout",
    Failure.SEND_TIMEOUT: "send timeout",
    Failure.RESET: "connection reset",
    Failure.CLOSED: "connection closed",
    Failure.TRUNCATED: "ended early",
}


def text_of(kind: Failure, error_name: str = "") -> str:
    """Short, credential-free text for ``kind``."""
    return _TEXT.get(kind) or f"{kind.value.replace('_', ' ')}" + (f" ({error_name})" if error_name else "")
