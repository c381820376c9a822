"""Fault table rows: the upstream (image API) broken, on the show and on the download's metadata fetch."""

from __future__ import annotations

from typing import Callable

from tests.support.client import fetch
from tests.support.faults.lab import (
    DATA,
    MAX_REWRITE,
    UPSTREAM_READ_TIMEOUT,
    FaultLab,
    Scenarios,
    check_download,
    verified,
)

ROWS = Scenarios()
scenario = ROWS.row


# -- upstream faults -------------------------------------------------------------

def show_passes_through(prefix: str, status: int = 200) -> Callable[[FaultLab], tuple[str, str]]:
    """Row: the image show with an upstream fault comes back byte for byte."""
    def run(lab: FaultLab) -> tuple[str, str]:
        image_id = lab.image(lab.file_copy(), lab.web(lab.backend()))
        path = f"{prefix}/v2/images/{image_id}"
        direct = lab.upstream_get(path)
        result = lab.get(path)
        assert (result.status, result.body) == (status, direct.body), result.describe()
        assert result.headers.get("content-type") == direct.headers.get("content-type")
        return f"{status}, the upstream's body passed through byte for byte", "n/a (metadata)"
    return run


for _prefix, _fault, _status in [
    ("/badjson", "invalid JSON", 200),
    ("/huge", f"huge JSON (> max_rewrite_size {MAX_REWRITE // 1024} KiB)", 200),
    ("/html500", "HTML error page (500)", 500),
    ("/html200", "HTML page with 200", 200),
    ("/notobject", "JSON that is not an object", 200),
]:
    scenario("upstream", _fault, "show")(show_passes_through(_prefix, _status))


@scenario("upstream", "JSON passed through (invalid, not an object, nothing to reorder)", "show: Content-Length")
def _passthrough_content_length(lab: FaultLab) -> tuple[str, str]:
    """DESIGN: "Content-Length kept when known". A body the filter read and
    then passes through unchanged must keep the upstream's Content-Length."""
    image_id = lab.image(lab.file_copy(), lab.web(lab.backend()))  # weights already in upstream order
    for prefix in ("/badjson", "/notobject", ""):
        path = f"{prefix}/v2/images/{image_id}"
        direct, result = lab.upstream_get(path), lab.get(path)
        assert result.body == direct.body
        assert result.headers.get("content-length") == direct.headers["content-length"], \
            f"{path}: {result.headers}"
    return "200, byte for byte, Content-Length kept", "n/a (metadata)"


@scenario("upstream", "gzip JSON (ignores Accept-Encoding: identity)", "show")
def _gzip_show(lab: FaultLab) -> tuple[str, str]:
    first, second = lab.file_copy(), lab.web(lab.backend())
    image_id = lab.api.add_image(data=DATA, locations=[{**first, "metadata": {"weight": 1}},
                                                       {**second, "metadata": {"weight": 9}}])
    result = lab.get(f"/gzip/v2/images/{image_id}", headers={"Accept-Encoding": "gzip"})
    assert result.status == 200, result.describe()
    assert result.headers.get("content-encoding") in (None, "identity")
    document = result.json()
    assert [item["url"] for item in document["locations"]] == [second["url"], first["url"]], "rewritten"
    assert result.headers["content-length"] == str(len(result.body))
    return "200, decoded and rewritten (weight order), Content-Length recomputed", "n/a (metadata)"


@scenario("upstream", "truncated JSON body", "show")
def _truncated_show(lab: FaultLab) -> tuple[str, str]:
    image_id = lab.image(lab.file_copy())
    result = lab.get(f"/truncjson/v2/images/{image_id}")
    assert result.status == 502 and result.json()["error"]["code"] == 502, result.describe()
    return "502 JSON error", "n/a (metadata)"


@scenario("upstream", "slow upstream (no answer within read_timeout)", "show")
def _slow_show(lab: FaultLab) -> tuple[str, str]:
    image_id = lab.image(lab.file_copy())
    result = lab.get(f"/slow/v2/images/{image_id}")
    assert result.status == 504, result.describe()
    error = result.json()["error"]
    assert error["code"] == 504 and f"did not answer within {UPSTREAM_READ_TIMEOUT:g}s" in error["message"]
    return "504 JSON error", "n/a (metadata)"


@scenario("upstream", "upstream down (connection refused)", "show")
def _down_show(lab: FaultLab) -> tuple[str, str]:
    result = fetch(lab.down_sidecar().port, "/v2/images/5f0a6c1e-0000-4000-8000-000000000001")
    assert result.status == 502, result.describe()
    assert "refused the connection" in result.json()["error"]["message"]
    return "502 JSON error", "n/a (metadata)"


# The same upstream faults on the download path's metadata fetch: no image
# bytes from a backend on unusable metadata; the upstream's answer, or its /file.

def download_metadata_fault(prefix: str, expect: str | int, via: str | None,
                            backend_contacted: bool = False) -> Callable[[FaultLab], tuple[str, str]]:
    def run(lab: FaultLab) -> tuple[str, str]:
        good = lab.backend()
        image_id = lab.image(lab.web(good), lab.file_copy())
        outcome, checked = check_download(lab, image_id, expect, prefix=prefix, via=via,
                                          untouched=() if backend_contacted else (good,))
        if not backend_contacted:
            outcome += "; no backend contacted"
        return outcome, checked
    return run


for _prefix, _fault, _expect, _via, _contacted in [
    ("/badjson", "invalid JSON", "served", "upstream", False),
    ("/huge", "huge JSON (over max_rewrite_size: not read)", "served", "upstream", False),
    ("/gzip", "gzip JSON", "served", "backend", True),
    # The show failed: the client's own /file request goes to the upstream, which decides.
    ("/html500", "HTML error page (500) on the show", "served", "upstream", False),
    ("/html200", "HTML page with 200", "served", "upstream", False),
    ("/notobject", "JSON that is not an object", "served", "upstream", False),
    ("/wrongsize", "metadata size 1 byte too large", "served", "upstream", True),
    ("/authreq", "401 Unauthorized", 401, None, False),
]:
    scenario("upstream", _fault, "download")(download_metadata_fault(_prefix, _expect, _via, _contacted))


@scenario("upstream", "metadata digest does not match the bytes", "download")
def _wrong_digest(lab: FaultLab) -> tuple[str, str]:
    image_id = lab.image(lab.file_copy())
    return check_download(lab, image_id, "aborted", prefix="/wrongdigest")


def upstream_error(prefix: str, status: int) -> Callable[[FaultLab], tuple[str, str]]:
    """Row: the upstream's metadata fetch fails; its error is the answer
    and the image's only backend is never contacted."""
    def run(lab: FaultLab) -> tuple[str, str]:
        good = lab.backend()
        image_id = lab.image(lab.web(good))
        return check_download(lab, image_id, status, prefix=prefix, untouched=(good,))
    return run


scenario("upstream", "slow upstream (no answer within read_timeout)", "download")(upstream_error("/slow", 504))


@scenario("upstream", "upstream down (connection refused)", "download")
def _down_download(lab: FaultLab) -> tuple[str, str]:
    result = fetch(lab.down_sidecar().port, "/v2/images/5f0a6c1e-0000-4000-8000-000000000001/file")
    assert result.status == 502, result.describe()
    assert "refused the connection" in result.json()["error"]["message"]
    return "502 JSON error", verified(result)


scenario("upstream", "truncated JSON body", "download")(upstream_error("/truncjson", 502))


@scenario("upstream", "os_hash_algo shake_128 (an extendable-output hash)", "download")
def _shake(lab: FaultLab) -> tuple[str, str]:
    image_id = lab.image(lab.web(lab.backend()))
    mark = lab.log_mark()
    outcome, checked = check_download(lab, image_id, "served", prefix="/shake", via="backend")
    assert "(shake_128 verified)" in lab.log_since(mark, until=r"\(shake_128 verified\)")
    return outcome + ", shake_128 verified", checked
