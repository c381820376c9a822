"""The ``locproxy`` command.

``locproxy order``   reorders image JSON read on stdin with the same functions
                     the server uses (no server, no webob).
``locproxy stats``   prints what a node learnt about each backend.
``locproxy config``  prints the sidecar's paste ini, to copy and edit.
``locproxy serve``   runs the sidecar (gunicorn) in front of an image API.
``locproxy cache``   lists, fills, evicts or clears a site cache (``cache.py``).
``locproxy promote`` asks the image API to copy images into a store
                     (copy-image) and waits until it holds them (``promote.py``).
``locproxy demo``    starts a demo image API on loopback with locproxy in
                     front, and prints commands to try.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from locproxy import rewrite
from locproxy.cli import cache, promote
from locproxy.cli.common import command
from locproxy.options import parse_list
from locproxy.strategies import Selector, strategy_names


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="locproxy", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for add in (_add_order, _add_stats, _add_config, _add_serve, cache.add, _add_demo, promote.add):
        add(commands)
    args = parser.parse_args(argv)
    return args.run(args)


def _add_order(commands: Any) -> None:
    order = command(commands, "order", _order, "reorder image JSON from stdin",
                    "Read an image, an image list page or a location list as JSON on stdin; "
                    "print it with locations, direct_url and stores in the strategy's order.")
    order.add_argument("--strategy", default="location_order", help=f"one of: {', '.join(strategy_names())}")
    order.add_argument("--store-type-preference", help="for store_type, e.g. 'rbd, file, http'")
    order.add_argument("--store-weights", help="for weight/node_weight, e.g. 'fast:100, slow:10'")
    order.add_argument("--node-name", help="for node_weight; default: this host's name")
    order.add_argument("--prefer", default="", help="stores to put first, e.g. 'fast-disk,web'")
    order.add_argument("--add-direct-url", action="store_true", help="set direct_url even if absent")
    order.add_argument("--scrub-credentials", action="store_true", help="remove user:password@ from urls")


def _add_stats(commands: Any) -> None:
    stats = command(commands, "stats", _stats, "what this node learnt about each backend",
                    "Print the speed and health locproxy measured per backend (from its metrics_file).")
    stats.add_argument("metrics_file", nargs="?", help="the filter's metrics_file (an sqlite file); default: "
                       "metrics.sqlite in the state directory (metrics_file = auto)")


def _add_config(commands: Any) -> None:
    config = command(commands, "config", _config, "print the sidecar's paste ini",
                     "Print the paste ini the sidecar runs (locproxy filter + proxy app), "
                     "to copy, edit and run with gunicorn --paste.")
    config.add_argument("--path", action="store_true", help="print where the packaged file is instead")


def _add_serve(commands: Any) -> None:
    serve = command(commands, "serve", _serve, "run the sidecar in front of an image API (gunicorn)",
                    "Run gunicorn with the packaged sidecar configuration. Options after -- go to gunicorn "
                    "(e.g. -- --bind 0.0.0.0:9393 --workers 4). The workers share what they verify and learn in "
                    "metrics.sqlite in the state directory ($STATE_DIRECTORY, /var/lib/locproxy as root, else "
                    "$XDG_STATE_HOME/locproxy); --set metrics_file= keeps it per worker.")
    serve.add_argument("--upstream", required=True, help="the image API, e.g. http://127.0.0.1:9292")
    serve.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE",
                       help="a filter option (as in the ini's [DEFAULT]), e.g. file_roots=/var/lib/glance/images")
    serve.add_argument("--paste", help="another paste ini to run instead of the packaged one")
    serve.add_argument("gunicorn_args", nargs=argparse.REMAINDER, help="-- then options for gunicorn")


def _add_demo(commands: Any) -> None:
    demo = command(commands, "demo", _demo, "run a demo image API with locproxy in front (loopback)")
    demo.add_argument("--port", type=int, default=8080, help="locproxy's port (default 8080)")
    demo.add_argument("--workdir", help="where to put the demo images (default: a temporary directory)")
    demo.add_argument("--check", action="store_true",
                      help="run the demo requests, print what they show, and exit (0 if all as expected)")


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


def _demo(args: argparse.Namespace) -> int:
    from locproxy.demo.runner import run_demo

    return run_demo(port=args.port, workdir=args.workdir, check=args.check)
