"""Option value parsers shared by the selection library, the filter's and the proxy's configuration.

Each parser takes the option's name (for the message) and a raw value (a
string from an ini file, or a Python value from a caller) and returns the
parsed value or raises ``ConfigError`` naming the option and the bad value.
Standard library only.
"""

from __future__ import annotations

import os
import re
import uuid
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import urlsplit

KiB = 1024
MiB = 1024 * KiB


class ConfigError(ValueError):
    """A configuration option is missing, unknown or has a bad value."""


def parse_list(option: str, value: str | Iterable[str] | None) -> tuple[str, ...]:
    """A comma string (as in an ini file) or an iterable -> stripped, non-blank items."""
    if value is None:
        return ()
    if isinstance(value, str):
        items: Iterable[Any] = value.split(",")
    else:
        try:
            items = list(value)
        except TypeError:
            raise ConfigError(
                f"{option}: expected a comma-separated string or a list, got {value!r}"
            ) from None
    result = []
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"{option}: expected strings, got {item!r}")
        item = item.strip()
        if item:
            result.append(item)
    return tuple(result)


def parse_weights(option: str, value: str | Mapping[str, Any] | None) -> dict[str, float]:
    """``"fast:100, slow:10"`` or a mapping -> ``{"fast": 100.0, "slow": 10.0}``."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        pairs = list(value.items())
    else:
        pairs = []
        for item in parse_list(option, value):
            name, sep, text = item.rpartition(":")
            if not sep or not name.strip():
                raise ConfigError(
                    f"{option}: {item!r} is not of the form name:weight "
                    f"(e.g. 'fast:100, slow:10')"
                )
            pairs.append((name.strip(), text.strip()))
    weights = {}
    for name, raw in pairs:
        weight = number(raw)
        if weight is None:
            raise ConfigError(f"{option}: weight of {name!r} must be a number, got {raw!r}")
        weights[str(name)] = weight
    return weights


def number(value: Any) -> float | None:
    """A finite float from an int, float or numeric string; None otherwise."""
    if isinstance(value, bool):
        return None
    try:
        result = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int beyond floats
        return None
    return result if result == result and abs(result) != float("inf") else None


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_bool(option: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(f"{option}: expected one of true/false/yes/no/on/off/1/0, got {value!r}")


_SIZE = re.compile(r"^\s*(\d{1,15})\s*([kmg]?)(?:i?b)?\s*$", re.IGNORECASE)
MAX_SIZE = 1 << 48  # 256 TiB: larger is a typo, and would overflow float arithmetic
_SIZE_UNITS = {"": 1, "k": KiB, "m": MiB, "g": 1024 * MiB}


def parse_size(option: str, value: Any, minimum: int = 1) -> int:
    """Bytes: ``1048576``, ``1M``, ``256KiB``, ``1GB`` (binary units)."""
    match = _SIZE.match(str(value))
    if not match:
        raise ConfigError(f"{option}: expected a size in bytes such as 262144, 256K or 1M, got {value!r}")
    size = int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    if not minimum <= size <= MAX_SIZE:
        raise ConfigError(f"{option}: must be between {minimum} bytes and 256T, got {value!r}")
    return size


def parse_seconds(option: str, value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if not 0 < seconds < 86400:
        raise ConfigError(f"{option}: expected a number of seconds > 0, got {value!r}")
    return seconds


def parse_count(option: str, value: Any, minimum: int = 1) -> int:
    try:
        count = int(str(value).strip())
    except ValueError:
        count = minimum - 1
    if count < minimum:
        raise ConfigError(f"{option}: expected an integer >= {minimum}, got {value!r}")
    return count


def parse_readable_file(option: str, value: Any) -> str:
    path = str(value).strip()
    if not os.path.isabs(path) or not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise ConfigError(f"{option}: {value!r} is not a readable file (absolute path)")
    return path


def parse_fsid(option: str, value: Any) -> str:
    try:
        return str(uuid.UUID(str(value).strip()))
    except ValueError:
        raise ConfigError(f"{option}: {value!r} is not a cluster fsid (a UUID)") from None


def parse_name(option: str, value: Any) -> str:
    text = str(value).strip()
    if not re.match(r"^[A-Za-z0-9_.-]{1,128}$", text):
        raise ConfigError(f"{option}: {value!r} is not a name (letters, digits, '_', '.', '-')")
    return text


def one_of(*valid: str) -> Callable[[str, Any], str]:
    def parse(option: str, value: Any) -> str:
        text = str(value).strip()
        if text not in valid:
            raise ConfigError(f"{option}: unknown value {text!r}; valid choices: {', '.join(valid)}")
        return text

    return parse


def some_of(*valid: str) -> Callable[[str, Any], tuple[str, ...]]:
    def parse(option: str, value: Any) -> tuple[str, ...]:
        items = parse_list(option, value)
        bad = [item for item in items if item not in valid]
        if bad:
            raise ConfigError(f"{option}: unknown value {bad[0]!r}; valid choices: {', '.join(valid)}")
        return items

    return parse


def parse_http_url(option: str, value: Any) -> str:
    """An ``http(s)://host[:port][/path]`` URL without credentials, query or fragment."""
    url = str(value).strip().rstrip("/")
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError if not a number in 0-65535
    except ValueError:
        raise ConfigError(f"{option}: {value!r} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        raise ConfigError(f"{option}: expected an http:// or https:// URL with a host, got {value!r}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigError(f"{option}: must not carry credentials, a query or a fragment")
    return url


#: Keys paste puts in every section's configuration.
PASTE_KEYS = frozenset({"here", "__file__", "__name__"})


def reject_unknown(local_conf: Mapping[str, Any], known: set[str]) -> None:
    """Unknown options in a section of our own are typos: fail, naming them."""
    unknown = sorted(set(local_conf) - known - PASTE_KEYS)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown option; valid options: {', '.join(sorted(known))}")
