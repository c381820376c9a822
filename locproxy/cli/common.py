"""What the subcommands share: declaring one, and reading a token."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable


def command(commands: Any, name: str, run: Callable[[argparse.Namespace], int], help: str,
            description: str | None = None, **options: Any) -> argparse.ArgumentParser:
    """The parser of one subcommand, which runs ``run(args)``."""
    parser = commands.add_parser(name, help=help, description=description or help, **options)
    parser.set_defaults(run=run)
    return parser


def read_token(what: str, token_file: str | None) -> str | None:
    """The token in ``token_file``, else ``$OS_AUTH_TOKEN`` ('' if neither);
    None, once the reason is printed, if the file cannot be read. Never from
    the command line: every local user sees it in ``ps``."""
    if not token_file:
        return os.environ.get("OS_AUTH_TOKEN", "")
    try:
        with open(token_file, encoding="utf-8") as stream:
            return stream.read().strip()
    except OSError as error:
        print(f"locproxy {what}: --token-file: {error.strerror}", file=sys.stderr)
        return None
