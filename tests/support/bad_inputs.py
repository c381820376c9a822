"""The bad-input battery: malformed requests (paths, ids, Range, prefer,
headers, methods, JSON-patch) sent as raw bytes to the security lab's
sidecar, each with the answers that keep its promise (a clear 4xx, or a
harmless 2xx; never a 5xx of locproxy's own). ``tests/test_security.py``
asserts each; ``run_bad_inputs`` counts them for ``bench/reliability.py``.
"""

from __future__ import annotations

import http.client
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from locproxy.demo import location
from tests.support.security import SecurityLab, run_escapes, security_lab


@dataclass
class BadInput:
    name: str
    raw: str  # request bytes as latin-1 text; {id} is a good image's id
    allowed: tuple[int, ...]
    bug: str | None = None


def _get(target: str, *headers: str) -> str:
    lines = [f"GET {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close", *headers]
    return "\r\n".join(lines) + "\r\n\r\n"


def _patch(target: str, body: str, content_type: str = "application/openstack-images-v2.1-json-patch") -> str:
    data = body.encode("utf-8").decode("latin-1")
    return (f"PATCH {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(data)}\r\n\r\n{data}")


# wsgiref's answer when the demo upstream itself raises (its webob decodes
# paths as UTF-8): a 500 locproxy passes through, not one of its own.
UPSTREAM_CRASH_BODY = b"A server error occurred.  Please contact the administrator."
NOT_FOUND = (404,)
REFUSED = (400, 404, 414, 431)  # the server (gunicorn) may refuse it before any app sees it
UNSATISFIABLE = (416,)
HARMLESS = (200, 206)
PATCH_REFUSED = (400, 403, 404, 409, 413, 415)
F = "/v2/images/{id}/file"

BAD_INPUTS = [
    # paths and ids
    BadInput("dot-dot id", _get("/v2/images/../file"), NOT_FOUND),
    BadInput("encoded dot-dot id", _get("/v2/images/%2e%2e/file"), NOT_FOUND),
    BadInput("dot-dot walk", _get("/v2/images/{id}/../../../etc/passwd"), NOT_FOUND),
    BadInput("encoded slashes in id", _get("/v2/images/..%2F..%2Fetc%2Fpasswd/file"), NOT_FOUND),
    # PATH_INFO is decoded (PEP 3333): the upstream sees /v2/images/{id}/file as well.
    BadInput("encoded slash inside id", _get("/v2/images/{id}%2Ffile"), NOT_FOUND + HARMLESS),
    BadInput("id of 3000 characters", _get("/v2/images/" + "a" * 3000 + "/file"), NOT_FOUND),
    BadInput("id of 9000 characters", _get("/v2/images/" + "a" * 9000 + "/file"), REFUSED),
    BadInput("encoded NUL id", _get("/v2/images/%00/file"), NOT_FOUND),
    BadInput("encoded NUL after id", _get("/v2/images/{id}%00/file"), NOT_FOUND),
    BadInput("raw NUL in the path", _get("/v2/images/\x00/file"), REFUSED),
    BadInput("UTF-8 id", _get("/v2/images/%C3%A9t%C3%A9%E2%82%AC/file"), NOT_FOUND),
    BadInput("invalid UTF-8 id", _get("/v2/images/%FF%FE%C3/file"), NOT_FOUND + (500,)),  # demo upstream's 500
    BadInput("raw non-ASCII id", _get("/v2/images/\xe9\xff/file"), REFUSED),
    BadInput("id with a query char", _get("/v2/images/{id}%3Fx=1/file"), NOT_FOUND),
    BadInput("id with CR LF", _get("/v2/images/a%0D%0AX-Evil:%201/file"), NOT_FOUND),
    BadInput("absolute-form target elsewhere", _get("http://127.0.0.1:1/v2/images/{id}"), HARMLESS + NOT_FOUND),
    # Range
    BadInput("Range start overflowing int64", _get(F, "Range: bytes=99999999999999999999-"), UNSATISFIABLE),
    BadInput("Range end overflowing int64", _get(F, "Range: bytes=0-99999999999999999999"), (206,)),
    BadInput("Range suffix overflowing int64", _get(F, "Range: bytes=-99999999999999999999"), (206,)),
    BadInput("Range of 5000 digits", _get(F, "Range: bytes=" + "9" * 5000 + "-"), UNSATISFIABLE),
    BadInput("Range of 4300 digits", _get(F, "Range: bytes=" + "9" * 4300 + "-"), UNSATISFIABLE),
    BadInput("two ranges", _get(F, "Range: bytes=0-1,5-6"), (400,)),  # as Glance
    BadInput("two Range headers", _get(F, "Range: bytes=0-1", "Range: bytes=5-6"), (400,)),  # joined: two ranges
    BadInput("empty Range", _get(F, "Range: "), UNSATISFIABLE),
    BadInput("Range bytes=-0", _get(F, "Range: bytes=-0"), UNSATISFIABLE),
    BadInput("Range end before start", _get(F, "Range: bytes=10-5"), UNSATISFIABLE),
    BadInput("Range negative start", _get(F, "Range: bytes=--5"), UNSATISFIABLE),
    BadInput("Range other unit", _get(F, "Range: items=0-5"), UNSATISFIABLE),
    BadInput("Range garbage", _get(F, "Range: \xff\xfe garbage"), UNSATISFIABLE),
    BadInput("Range with Unicode digits", _get(F, "Range: bytes=\xb9-\xb2"), UNSATISFIABLE),
    # prefer
    BadInput("empty prefer", _get(F.replace("file", "file?prefer=")), HARMLESS),
    BadInput("prefer of commas", _get(F.replace("file", "file?prefer=,,,")), HARMLESS),
    BadInput("unknown prefer", _get(F.replace("file", "file?prefer=nowhere&prefer=nothing")), HARMLESS),
    BadInput("NUL prefer", _get(F.replace("file", "file?prefer=%00")), HARMLESS),
    BadInput("long prefer", _get(F.replace("file", "file?prefer=" + "x," * 1500)), HARMLESS),
    BadInput("UTF-8 prefer", _get(F.replace("file", "file?prefer=%C3%A9")), HARMLESS),
    BadInput("invalid UTF-8 prefer (download)", _get(F.replace("file", "file?prefer=%FF")), HARMLESS + (400,)),
    BadInput("invalid UTF-8 prefer (show)", _get("/v2/images/{id}?prefer=%FF"), HARMLESS + (400,)),
    # headers
    BadInput("header of 10000 bytes", _get(F, "X-Big: " + "b" * 10000), REFUSED),
    BadInput("150 headers", _get(F, *[f"X-H{n}: {n}" for n in range(150)]), REFUSED),
    BadInput("token of 8000 bytes", _get(F, "X-Auth-Token: " + "t" * 8000), HARMLESS),
    BadInput("Content-Length -1 on GET", _get(F, "Content-Length: -1"), (400,)),
    BadInput("Content-Length and chunked", _get(F, "Content-Length: 5", "Transfer-Encoding: chunked"), (400,)),
    BadInput("header with obs-fold", _get(F, "X-Folded: a", " b"), (400,) + HARMLESS),
    # methods
    BadInput("DELETE on /file", _get(F).replace("GET", "DELETE", 1), (405,)),
    BadInput("POST on /file", _get(F).replace("GET", "POST", 1), (405, 411)),
    # JSON-patch through the filter (the upstream refuses; locproxy never 500s)
    BadInput("patch index out of range", _patch("/v2/images/{id}", '[{"op":"remove","path":"/locations/99"}]'),
             PATCH_REFUSED),
    BadInput("patch negative index", _patch("/v2/images/{id}", '[{"op":"remove","path":"/locations/-1"}]'),
             PATCH_REFUSED),
    BadInput("patch index not a number", _patch("/v2/images/{id}", '[{"op":"remove","path":"/locations/abc"}]'),
             PATCH_REFUSED),
    # Accepted by Glance and the demo as index 1 (see test_patch_index_glance_reads_as_a_number...).
    BadInput("patch leading zero index", _patch("/v2/images/{id}", '[{"op":"remove","path":"/locations/01"}]'),
             PATCH_REFUSED + (200,)),
    BadInput("patch location not an object",
             _patch("/v2/images/{id}", '[{"op":"add","path":"/locations/0","value":"file:///etc/passwd"}]'),
             PATCH_REFUSED),
    BadInput("patch locations not a list", _patch("/v2/images/{id}", '[{"op":"replace","path":"/locations","value":{}}]'),
             PATCH_REFUSED),
    BadInput("patch not a list", _patch("/v2/images/{id}", '{"op":"remove","path":"/locations/0"}'), PATCH_REFUSED),
    BadInput("patch of numbers", _patch("/v2/images/{id}", "[1, 2, 3]"), PATCH_REFUSED),
    BadInput("patch not JSON", _patch("/v2/images/{id}", '[{"op": "remove", '), PATCH_REFUSED),
    BadInput("patch op null", _patch("/v2/images/{id}", '[{"op":null,"path":"/locations/0"}]'), PATCH_REFUSED),
    BadInput("patch move", _patch("/v2/images/{id}", '[{"op":"move","from":"/locations/0","path":"/locations/1"}]'),
             PATCH_REFUSED),
    BadInput("patch with a wrong media type", _patch("/v2/images/{id}", '[{"op":"remove","path":"/locations/0"}]',
                                                     "application/json"), PATCH_REFUSED),
    BadInput("patch with a BOM", _patch("/v2/images/{id}", '\ufeff[]'), PATCH_REFUSED + (200,)),
    BadInput("patch path not a string",
             _patch("/v2/images/{id}", '[{"op":"remove","path":"/locations/0"},{"op":"remove","path":5}]'),
             PATCH_REFUSED),
    BadInput("patch index of 5000 digits",
             _patch("/v2/images/{id}", '[{"op":"remove","path":"/locations/' + "1" * 5000 + '"}]'),
             (400,)),  # locproxy refuses an index the upstream might misread
]


def raw_request(port: int, raw: bytes, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        response = http.client.HTTPResponse(sock, method=raw.split(b" ", 1)[0].decode("latin-1"))
        try:
            response.begin()
            body = response.read()
        finally:
            response.close()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body


@dataclass
class BadResult:
    case: BadInput
    status: int
    body: bytes

    @property
    def from_upstream(self) -> bool:
        """A 5xx the (demo) upstream produced and locproxy passed through."""
        return self.status >= 500 and self.body == UPSTREAM_CRASH_BODY

    @property
    def ok(self) -> bool:
        return self.status in self.case.allowed and (self.status < 500 or self.from_upstream)


def send_bad_input(lab: SecurityLab, case: BadInput, image_id: str) -> BadResult:
    raw = case.raw.replace("{id}", image_id).encode("latin-1")
    status, _, body = raw_request(lab.sidecar.port, raw)
    return BadResult(case, status, body)


def bad_input_image(lab: SecurityLab) -> str:
    return lab.image(location(f"file://{lab.root}/image", "disk"), location(lab.web.url("/img"), "web"))


def run_bad_inputs(base: Path) -> dict[str, Any]:
    """For bench/reliability.py: the battery once; counts by outcome."""
    with security_lab(base) as the_lab:
        image_id = bad_input_image(the_lab)
        results = [send_bad_input(the_lab, case, image_id) for case in BAD_INPUTS]
        escapes = run_escapes(the_lab)
    return {
        "sent": len(results),
        "4xx": sum(1 for r in results if 400 <= r.status < 500),
        "2xx (harmless)": sum(1 for r in results if 200 <= r.status < 300),
        "5xx from locproxy": sum(1 for r in results if r.status >= 500 and not r.from_upstream),
        "5xx of the demo upstream, passed through": sum(1 for r in results if r.from_upstream),
        "as promised": sum(1 for r in results if r.ok),
        "broken promises": [(r.case.name, r.status, bool(r.case.bug)) for r in results if not r.ok],
        "location escapes": escapes,
    }
