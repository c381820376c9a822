"""The ``locproxy`` command.

``locproxy order``   reorders image JSON read on stdin with the same functions
                     the server uses (no server, no webob).
``locproxy stats``   prints what a node learnt about each backend.
``locproxy config``  prints the sidecar's paste ini, to copy and edit.
``locproxy serve``   runs the sidecar (gunicorn) in front of an image API.
``locproxy cache``   lists, fills, evicts or clears a site cache.
``locproxy promote`` asks the image API to copy images into a store
                     (copy-image) and waits until it holds them.
``locproxy demo``    starts a demo image API on loopback with locproxy in
                     front, and prints commands to try.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from locproxy import rewrite
from locproxy.options import parse_list
from locproxy.strategies import Selector, strategy_names


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="locproxy", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for add in (_add_order, _add_stats, _add_config, _add_serve, _add_cache, _add_demo, _add_promote):
        add(commands)
    args = parser.parse_args(argv)
    return args.run(args)


def _add_order(commands: Any) -> None:
    order = commands.add_parser(
        "order",
        help="reorder image JSON from stdin",
        description="Read an image, an image list page or a location list as JSON on stdin; "
        "print it with locations, direct_url and stores in the strategy's order.",
    )
    order.add_argument("--strategy", default="location_order", help=f"one of: {', '.join(strategy_names())}")
    order.add_argument("--store-type-preference", help="for store_type, e.g. 'rbd, file, http'")
    order.add_argument("--store-weights", help="for weight/node_weight, e.g. 'fast:100, slow:10'")
    order.add_argument("--node-name", help="for node_weight; default: this host's name")
    order.add_argument("--prefer", default="", help="stores to put first, e.g. 'fast-disk,web'")
    order.add_argument("--add-direct-url", action="store_true", help="set direct_url even if absent")
    order.add_argument("--scrub-credentials", action="store_true", help="remove user:password@ from urls")
    order.set_defaults(run=_order)


def _add_stats(commands: Any) -> None:
    stats = commands.add_parser(
        "stats",
        help="what this node learnt about each backend",
        description="Print the speed and health locproxy measured per backend (from its metrics_file).",
    )
    stats.add_argument("metrics_file", nargs="?", help="the filter's metrics_file (an sqlite file); default: "
                       "metrics.sqlite in the state directory (metrics_file = auto)")
    stats.set_defaults(run=_stats)


def _add_config(commands: Any) -> None:
    config = commands.add_parser(
        "config",
        help="print the sidecar's paste ini",
        description="Print the paste ini the sidecar runs (locproxy filter + proxy app), "
        "to copy, edit and run with gunicorn --paste.",
    )
    config.add_argument("--path", action="store_true", help="print where the packaged file is instead")
    config.set_defaults(run=_config)


def _add_serve(commands: Any) -> None:
    serve = commands.add_parser(
        "serve",
        help="run the sidecar in front of an image API (gunicorn)",
        description="Run gunicorn with the packaged sidecar configuration. Options after -- go to gunicorn "
        "(e.g. -- --bind 0.0.0.0:9393 --workers 4). The workers share what they verify and learn in "
        "metrics.sqlite in the state directory ($STATE_DIRECTORY, /var/lib/locproxy as root, else "
        "$XDG_STATE_HOME/locproxy); --set metrics_file= keeps it per worker.",
    )
    serve.add_argument("--upstream", required=True, help="the image API, e.g. http://127.0.0.1:9292")
    serve.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE",
                       help="a filter option (as in the ini's [DEFAULT]), e.g. file_roots=/var/lib/glance/images")
    serve.add_argument("--paste", help="another paste ini to run instead of the packaged one")
    serve.add_argument("gunicorn_args", nargs=argparse.REMAINDER, help="-- then options for gunicorn")
    serve.set_defaults(run=_serve)


def _add_cache(commands: Any) -> None:
    cache = commands.add_parser(
        "cache",
        help="the site cache: list, prefetch, evict, clear",
        description="Operate on a site cache (cache_dir). list, evict and clear work on the directory (entries "
        "being read are never removed); prefetch downloads images through a running locproxy, as a client "
        "the image API authorises, which fills the cache.",
    )
    actions = cache.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="the entries, most recently used first")
    listing.add_argument("cache_dir")
    evict = actions.add_parser("evict", help="remove the entries of images")
    evict.add_argument("cache_dir")
    evict.add_argument("image_ids", nargs="+")
    clear = actions.add_parser("clear", help="remove every entry")
    clear.add_argument("cache_dir")
    prefetch = actions.add_parser("prefetch", help="fill the cache by downloading images through locproxy")
    prefetch.add_argument("url", help="locproxy's URL, e.g. http://127.0.0.1:9393")
    prefetch.add_argument("image_ids", nargs="+")
    prefetch.add_argument("--token-file", help="a file holding the client's token (default: $OS_AUTH_TOKEN)")
    prefetch.add_argument("--header", action="append", default=[], metavar="NAME:VALUE",
                          help="another request header (repeatable); never a token: the process list shows it")
    cache.set_defaults(run=_cache)


def _add_demo(commands: Any) -> None:
    demo = commands.add_parser("demo", help="run a demo image API with locproxy in front (loopback)")
    demo.add_argument("--port", type=int, default=8080, help="locproxy's port (default 8080)")
    demo.add_argument("--workdir", help="where to put the demo images (default: a temporary directory)")
    demo.add_argument("--check", action="store_true",
                      help="run the demo requests, print what they show, and exit (0 if all as expected)")
    demo.set_defaults(run=_demo)


def _order(args: argparse.Namespace) -> int:
    options = {
        name: value
        for name, value in (
            ("store_type_preference", args.store_type_preference),
            ("store_weights", args.store_weights),
            ("node_name", args.node_name),
        )
        if value is not None
    }
    try:
        policy = rewrite.RewritePolicy(
            selector=Selector(args.strategy, **options),
            prefer=parse_list("--prefer", args.prefer),
            add_direct_url=args.add_direct_url,
            scrub_credentials=args.scrub_credentials,
        )
    except ValueError as error:
        print(f"locproxy order: {error}", file=sys.stderr)
        return 2
    try:
        document = json.load(sys.stdin)
    except ValueError as error:
        print(f"locproxy order: stdin is not JSON: {error}", file=sys.stderr)
        return 2
    if isinstance(document, list):
        kind = rewrite.LOCATIONS
    elif isinstance(document, dict) and isinstance(document.get("images"), list):
        kind = rewrite.IMAGES
    else:
        kind = rewrite.IMAGE
    result = rewrite.rewrite_document(document, kind, policy)
    json.dump(result, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0


def _stats(args: argparse.Namespace) -> int:
    import os

    from locproxy.state import METRICS_NAME, state_directory
    from locproxy.tracker import read_table

    args.metrics_file = args.metrics_file or str(state_directory() / METRICS_NAME)
    if not os.path.isfile(args.metrics_file):
        print(f"locproxy stats: {args.metrics_file}: no such file", file=sys.stderr)
        return 2
    print(read_table(args.metrics_file))  # read-only: a read-only file is fine
    return 0


def _config(args: argparse.Namespace) -> int:
    from locproxy.sidecar import PASTE_INI

    print(PASTE_INI if args.path else PASTE_INI.read_text(), end="\n" if args.path else "")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from locproxy.sidecar import PASTE_INI, sidecar_command

    options = {"upstream": args.upstream}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            print(f"locproxy serve: --set {item!r}: expected OPTION=VALUE", file=sys.stderr)
            return 2
        options[name.strip()] = value.strip()
    extra = args.gunicorn_args[1:] if args.gunicorn_args[:1] == ["--"] else args.gunicorn_args
    command = sidecar_command(options, extra, Path(args.paste) if args.paste else PASTE_INI)
    os.execv(command[0], command)  # gunicorn takes over this process: its signals, its exit status
    return 0  # pragma: no cover - not reached


def _cache(args: argparse.Namespace) -> int:
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
    import os

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
    try:
        token = open(token_file).read().strip() if token_file else os.environ.get("OS_AUTH_TOKEN", "")
    except OSError as error:
        print(f"locproxy cache prefetch: --token-file: {error}", file=sys.stderr)
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


def _demo(args: argparse.Namespace) -> int:
    from locproxy.demo.runner import run_demo

    return run_demo(port=args.port, workdir=args.workdir, check=args.check)


def _add_promote(commands: Any) -> None:
    promote = commands.add_parser(
        "promote", allow_abbrev=False,  # no --token for --token-file: a secret never goes on the command line
        help="copy images into a store (Glance's copy-image), e.g. before a boot storm",
        description="Ask the image API to copy each image into STORE (POST /v2/images/{id}/import, copy-image) "
        "and wait until the image lists it. A copy already in progress (Glance's 409) is waited for. Exits 0 "
        "when every image is in STORE. The token is read from --token-file or OS_AUTH_TOKEN, never from the "
        "command line; copy_image is an admin action under Glance's default policy.",
    )
    promote.add_argument("image_ids", nargs="+", metavar="IMAGE_ID")
    promote.add_argument("--to", required=True, metavar="STORE", help="the Glance store to copy into")
    promote.add_argument("--url", default=None, help="the image API (default: OS_IMAGE_URL)")
    promote.add_argument("--token-file", default=None, help="a file holding the token (default: OS_AUTH_TOKEN)")
    promote.add_argument("--poll-interval", type=float, default=2.0, help="seconds between looks (default 2)")
    promote.add_argument("--timeout", type=float, default=3600.0, help="seconds per image (default 3600)")
    promote.set_defaults(run=_promote)


def _promote(args: argparse.Namespace) -> int:
    import os
    import time

    from locproxy.promoter import TokenImageAPI, copy_image
    from locproxy.promotion import Outcome

    url = args.url or os.environ.get("OS_IMAGE_URL", "")
    token = os.environ.get("OS_AUTH_TOKEN", "")
    if args.token_file:
        try:
            with open(args.token_file, encoding="utf-8") as stream:
                token = stream.read().strip()
        except OSError as error:
            print(f"locproxy promote: --token-file: {error.strerror}", file=sys.stderr)
            return 2
    if not url or not token:
        print("locproxy promote: needs the image API (--url or OS_IMAGE_URL) and a token (--token-file or "
              "OS_AUTH_TOKEN)", file=sys.stderr)
        return 2
    api, failed = TokenImageAPI(url, token), 0
    for image_id in args.image_ids:
        started = time.monotonic()
        outcome, why = copy_image(api, image_id, args.to, poll_interval=args.poll_interval, timeout=args.timeout,
                                  progress=_progress(image_id, args.to, started))
        if sys.stderr.isatty():
            sys.stderr.write("\r\033[K")
        ok = outcome is Outcome.DONE
        failed += not ok
        print(f"{image_id}: {'in' if ok else 'NOT in'} store {args.to} ({why}, {time.monotonic() - started:.0f} s)",
              file=sys.stdout if ok else sys.stderr)
    return 1 if failed else 0


def _progress(image_id: str, store: str, started: float) -> Any:
    """Progress on a terminal: one line rewritten while Glance copies."""
    import time

    def show(answer: Any, image: dict | None) -> None:
        if not sys.stderr.isatty():
            return
        importing = (image or {}).get("os_glance_importing_to_stores") or "-"
        whose = "another client's copy" if answer.value == "in_progress" else "copying"
        sys.stderr.write(f"\r\033[K{image_id}: {whose} into {store}, {time.monotonic() - started:.0f} s "
                         f"(importing to: {importing}, stores: {(image or {}).get('stores', '?')})")
        sys.stderr.flush()

    return show


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
