"""Hot reloading of the filter's settings from an operator-edited ini file.

The paste section may name ``config_file``: an ini file whose ``[locproxy]``
section holds any filter option (strategy, weights, roots...). Its values
override the paste section's. The file is read at most once a second, on
the request path (no thread: safe in every server and after fork), and a
change of its content (not of its stat) is parsed and validated in full before it replaces the running settings, so
an invalid edit is logged as an ERROR and the previous settings stay.
Requests already running keep the settings they started with.
"""

from __future__ import annotations

import configparser
import logging
import threading
import time
from typing import Any, Callable, Generic, Mapping, Optional, TypeVar

from locproxy.options import ConfigError

LOG = logging.getLogger(__name__)

SECTION = "locproxy"
T = TypeVar("T")


def read_options(path: str, content: bytes | None = None) -> dict[str, str]:
    """The ``[locproxy]`` section of ``path`` (or of its ``content`` as read
    already); ConfigError if unreadable."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        if content is None:
            content = _read(path)
        if len(content) > MAX_SIZE:
            raise ConfigError(f"config_file: {path} is larger than {MAX_SIZE} bytes")
        parser.read_string(content.decode("utf-8"), source=path)
    except (OSError, UnicodeDecodeError, configparser.Error) as error:
        raise ConfigError(f"config_file: cannot read {path}: {error}") from None
    if not parser.has_section(SECTION):
        raise ConfigError(f"config_file: {path} has no [{SECTION}] section")
    return dict(parser.items(SECTION))


def _read(path: str) -> bytes:
    with open(path, "rb") as stream:
        return stream.read(MAX_SIZE + 1)


#: A config file is a few lines; anything this large is a mistake.
MAX_SIZE = 1024 * 1024
_UNREAD = object()  # compares unequal to any content: the next check reloads


class Reloading(Generic[T]):
    """Holds the current value built from a file, rebuilt when the file changes.

    ``build(options, previous)`` turns the file's options into the value
    (validating them; ``previous`` is the value it replaces, None at first);
    it is called once at start (errors propagate: bad config fails at load)
    and after each change (errors are logged; the old value stays).
    """

    def __init__(
        self, path: str, build: Callable[[Mapping[str, str], Optional[T]], T], interval: float = 1.0
    ) -> None:
        self.path = path
        self.build = build
        self.interval = interval
        self._lock = threading.Lock()
        self._content: bytes | None | object = self._contents()
        self._value = build(read_options(path, self._content), None)
        self._checked = time.monotonic()

    def _contents(self) -> bytes | None:
        try:
            return _read(self.path)
        except OSError:
            return None

    def current(self) -> T:
        """The value, after reloading the file if it changed (checked ≤ once per interval)."""
        now = time.monotonic()
        if now - self._checked >= self.interval and self._lock.acquire(blocking=False):
            try:
                self._checked = now
                self._reload_if_changed()
            finally:
                self._lock.release()
        return self._value

    def request_reload(self) -> None:
        """Re-read the file on the next ``current()`` (safe in a signal handler:
        no lock, no I/O)."""
        self._content = _UNREAD
        self._checked = float("-inf")

    def _reload_if_changed(self) -> bool:
        # Judged by content, not by stat: two same-size edits within the
        # file system's timestamp resolution look the same to stat(). A few
        # lines read once a second cost next to nothing.
        content = self._contents()
        if content == self._content:
            return False
        self._content = content  # judged once per version of the file
        try:
            if content is None:
                raise ConfigError(f"config_file: cannot read {self.path}")
            value = self.build(read_options(self.path, content), self._value)
        except Exception as error:  # noqa: BLE001 - any failure keeps the running settings
            LOG.error("config_file %s rejected, keeping the previous settings: %s", self.path, error)
            return False
        self._value = value
        LOG.warning("config_file %s reloaded", self.path)
        return True


def install_sighup(reloadings: list[Reloading[Any]]) -> None:
    """Reload on SIGHUP where this process owns the signal (not under servers
    such as gunicorn, whose master uses SIGHUP to restart workers: that
    re-reads everything anyway)."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGHUP) not in (signal.SIG_DFL, None):
        return
    signal.signal(signal.SIGHUP, lambda signum, frame: [item.request_reload() for item in reloadings])
