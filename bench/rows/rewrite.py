"""Row ``rewrite``: ``locproxy.rewrite.rewrite_body`` on a 1,000-image list
page (a pure function, no HTTP), against ``json.dumps(json.loads(page))``."""

from __future__ import annotations

import json
import timeit
from typing import Any, Callable

from bench import apps
from bench.context import Context
from bench.results import Result, verdict
from bench.row import Row
from locproxy import rewrite
from locproxy.strategies import Selector


def list_page(count: int = 1000) -> bytes:
    """A Glance list page of ``count`` images with three locations each."""
    page_images = []
    for n in range(count):
        image_id = f"{n:08d}-0000-4000-8000-000000000000"
        page_images.append(apps.glance_image(image_id, f"image-{n}", 1 << 30, "0" * 32, "0" * 128,
                                             apps.three_locations(image_id)))
    return json.dumps({"images": page_images, "first": f"/v2/images?limit={count}",
                       "next": f"/v2/images?marker=x&limit={count}", "schema": "/v2/schemas/images"}).encode()


def measure_rewrite(ctx: Context) -> list[Result]:
    page = list_page()
    policy = rewrite.RewritePolicy(selector=Selector("store_type", store_type_preference="file, http"))
    assert rewrite.rewrite_body(page, rewrite.IMAGES, policy) is not None, "the page must actually be rewritten"
    number, repeat = 3, ctx.sizes.rewrite_repeat

    def best(statement: Callable[[], Any]) -> float:
        return min(timeit.repeat(statement, number=number, repeat=repeat)) / number

    plain = best(lambda: json.dumps(json.loads(page)))
    plain_utf8 = best(lambda: json.dumps(json.loads(page), ensure_ascii=False).encode("utf-8"))
    cost = best(lambda: rewrite.rewrite_body(page, rewrite.IMAGES, policy))
    ratio = cost / plain
    return [Result(
        f"rewrite of a 1,000-image list page ({len(page) / 1024:.0f} KiB, 3 locations each), pure function",
        f"{cost * 1000:.1f} ms", f"json.loads + json.dumps: {plain * 1000:.1f} ms",
        f"{ratio:.2f}", "≤ 1.5 ×", verdict(ratio <= 1.5),
        [f"best of {repeat}×{number}; json round trip with ensure_ascii=False + encode (what rewrite_body "
         f"emits): {plain_utf8 * 1000:.1f} ms"])]


ROW = Row("rewrite", "json.dumps(json.loads(page))", "≤ 1.5 ×", measure_rewrite)
