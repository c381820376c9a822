"""``locproxy cache``: list, evict and clear a site cache on its node, or
fill it with ``prefetch`` through a running locproxy, as an authorised client."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from locproxy.cli.common import command, read_token


def add(commands: Any) -> None:
    cache = command(
        commands, "cache", run, "the site cache: list, prefetch, evict, clear",
        "Operate on a site cache (cache_dir). list, evict and clear work on the directory (entries "
        "being read are never removed); prefetch downloads images through a running locproxy, as a client "
        "the image API authorises, which fills the cache.")
    actions = cache.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="the entries, most recently used first")
    listing.add_argument("cache_dir")
    evict = actions.add_parser("evict", help="remove the entries of images")
    evict.add_argument("cache_dir")
    evict.add_argument("image_ids", nargs="+")
    clear = actions.add_parser("clear", help="remove every entry")
    clear.add_argument("cache_dir")
    prefetch = actions.add_parser("prefetch", help="fill the cache by downloading images through locproxy",
                                  allow_abbrev=False)  # no --token for --token-file: no secret in argv
    prefetch.add_argument("url", help="locproxy's URL, e.g. http://127.0.0.1:9393")
    prefetch.add_argument("image_ids", nargs="+")
    prefetch.add_argument("--token-file", help="a file holding the client's token (default: $OS_AUTH_TOKEN)")
    prefetch.add_argument("--header", action="append", default=[], metavar="NAME:VALUE",
                          help="another request header (repeatable); never a token: the process list shows it")


def run(args: argparse.Namespace) -> int:
    if args.action == "prefetch":
        headers = _prefetch_headers(args.header, args.token_file)
        return 2 if headers is None else _prefetch(args.url, args.image_ids, headers)
    from locproxy.cache import SiteCache, is_site_cache

    if not is_site_cache(args.cache_dir):  # never create a cache, or delete files, at a mistyped path
        print(f"locproxy cache: {args.cache_dir}: not a site cache (no index.sqlite and entries/ of "
              "its own); give the filter's cache_dir", file=sys.stderr)
        return 2
    cache = SiteCache(args.cache_dir, max_size=1 << 62, on_event=None)
    if cache.degraded:
        print(f"locproxy cache: {args.cache_dir}: {cache.degraded}", file=sys.stderr)
        return 2
    if args.action == "list":
        for entry in cache.list():
            print(f"{entry['image']}  {entry['size']:>14,} B  key {entry['key']}")
        used, count = cache.usage()
        print(f"{count} entries, {used:,} bytes")
        return 0
    removed, busy = cache.clear() if args.action == "clear" else map(sum, zip(
        *(cache.evict_image(image_id) for image_id in args.image_ids)))
    print(f"removed {removed} entries" + (f"; {busy} being read, kept" if busy else ""))
    return 0 if not busy else 1


_SECRET_HEADERS = frozenset({"x-auth-token", "x-service-token", "authorization"})


def _prefetch_headers(items: Sequence[str], token_file: str | None) -> dict[str, str] | None:
    """The request headers, the token read from a file or ``$OS_AUTH_TOKEN``
    (argv is readable by every local user, in ``ps``)."""
    headers: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            print(f"locproxy cache prefetch: --header {item[:40]!r}: expected NAME:VALUE", file=sys.stderr)
            return None
        if name.strip().lower() in _SECRET_HEADERS:
            print(f"locproxy cache prefetch: --header {name.strip()}: a secret on the command line is seen by "
                  "every local user; use --token-file or OS_AUTH_TOKEN", file=sys.stderr)
            return None
        headers[name.strip()] = value.strip()
    token = read_token("cache prefetch", token_file)
    if token is None:
        return None
    if token:
        headers["X-Auth-Token"] = token
    return headers


def _prefetch(url: str, image_ids: Sequence[str], headers: dict[str, str]) -> int:
    """Download each image through locproxy; non-zero if any failed or came short."""
    import http.client
    import urllib.request

    failed = 0
    for image_id in image_ids:
        request = urllib.request.Request(f"{url.rstrip('/')}/v2/images/{image_id}/file", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                size, length = _read_all(image_id, response, response.headers.get("Content-Length"))
            if length is not None and size != length:
                raise OSError(f"short body: {size:,} of {length:,} bytes")
            print(f"{image_id}: {size:,} bytes")
        except (OSError, http.client.HTTPException) as error:
            failed += 1
            print(f"{image_id}: {error!r}" if not str(error) else f"{image_id}: {error}", file=sys.stderr)
    return 1 if failed else 0


def _read_all(image_id: str, response: Any, content_length: str | None) -> tuple[int, int | None]:
    """Read the body to its end, showing progress on a terminal."""
    import time

    length = int(content_length) if content_length and content_length.isdigit() else None
    progress, shown, size = sys.stderr.isatty(), 0.0, 0
    while chunk := response.read(1 << 20):
        size += len(chunk)
        if progress and time.monotonic() - shown > 0.5:
            shown = time.monotonic()
            of = f" of {length >> 20:,} MiB ({100 * size // length}%)" if length else " MiB"
            print(f"\r{image_id}: {size >> 20:,}{of}", end="", file=sys.stderr, flush=True)
    if progress and shown:
        print(file=sys.stderr)
    return size, length
