"""Swift location URLs as Glance's swift store writes them, and the swift
references file they may name (pure).

Three forms (``parse_swift_url``, after glance_store's swift
``StoreLocation.parse_uri``):

* ``swift+config://<reference>/<container>/<object>``: the credentials and
  the Keystone URL are in section ``<reference>`` of a references file, the
  same file as Glance's ``swift_store_config_file`` (``SwiftReferences``);
* ``swift+http(s)://<user>:<key>@<keystone URL>/<container>/<object>``:
  inline credentials (the user quoted, ``service%3Aglance``) and the
  *Keystone* URL (``swift://`` means https);
* ``swift+http(s)://<storage URL>/<container>/<object>``: no credentials,
  a multi-tenant copy in the owner's own account, the *storage* URL.

Location URLs are hostile input and may hold a key: errors here never quote
them; keys are kept out of every ``repr``.
"""

from __future__ import annotations

import configparser
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from locproxy.options import ConfigError, parse_http_url

#: Scheme -> transport of the URL's host.
SWIFT_SCHEMES = {"swift": "https", "swift+http": "http", "swift+https": "https", "swift+config": None}


@dataclass(frozen=True)
class SwiftURL:
    """One swift location. ``reference`` for ``swift+config``; ``auth_url``
    (with its user and key) for inline credentials; ``storage_url`` for a
    multi-tenant copy."""

    container: str
    obj: str
    reference: str = ""
    auth_url: str = ""
    storage_url: str = ""
    user: str = ""
    key: str = field(default="", repr=False)

    @property
    def form(self) -> str:
        return "config" if self.reference else ("inline" if self.auth_url else "tenant")


def parse_swift_url(url: str) -> SwiftURL:
    """Split a swift location (see the module docstring); ValueError, never
    quoting the URL, if it is none of the three forms."""
    if not isinstance(url, str) or url.count("://") != 1:
        raise ValueError("not a single-scheme URL")
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    if scheme not in SWIFT_SCHEMES:
        raise ValueError("not a swift, swift+http, swift+https or swift+config URL")
    if "?" in rest or "#" in rest or "\x00" in rest or "\\" in rest:
        raise ValueError("query, fragment, backslash or NUL in URL")
    netloc, _, path = rest.partition("/")
    creds = ""
    if "@" in netloc:
        if netloc.count("@") != 1:
            raise ValueError("more than one '@'")
        creds, _, netloc = netloc.partition("@")
    parts = path.strip("/").split("/")
    if not netloc or len(parts) < 2 or not all(parts):
        raise ValueError("expected host/container/object")
    container, obj, base = unquote(parts[-2]), unquote(parts[-1]), "/".join(parts[:-2])
    if scheme == "swift+config":
        if creds or base:
            raise ValueError("swift+config takes reference/container/object only")
        return SwiftURL(container, obj, reference=unquote(netloc))
    _check_netloc(netloc)
    prefix = f"{SWIFT_SCHEMES[scheme]}://{netloc}" + (f"/{base}" if base else "")
    if not creds:
        return SwiftURL(container, obj, storage_url=prefix)
    # As glance_store: unquote the whole userinfo, then split at its last ':'.
    user, sep, key = unquote(creds).rpartition(":")
    if not sep or not user or not key:
        raise ValueError("credentials not of the form user:key")
    return SwiftURL(container, obj, auth_url=prefix, user=user, key=key)


def _check_netloc(netloc: str) -> None:
    try:
        split = urlsplit("//" + netloc)
        host, _ = split.hostname, split.port
    except ValueError:
        raise ValueError("invalid host or port") from None
    if not host:
        raise ValueError("invalid host")


def keystone_v3(auth_url: str) -> str:
    """The Keystone v3 URL of an auth address (glance_store 5 speaks v3 only;
    keystoneauth appends ``/v3`` where it is missing, so do the same)."""
    url = auth_url.rstrip("/")
    return url if url.endswith("/v3") else url + "/v3"


def split_user(user: str) -> tuple[str, str]:
    """``project:user`` as glance_store splits it; ValueError otherwise."""
    project, sep, name = user.partition(":")
    if not sep or not project or not name or ":" in name:
        raise ValueError("user is not project:user")
    return project, name


# -- the references file --------------------------------------------------------


@dataclass(frozen=True)
class Login:
    """Who logs in where: a reference's or a location's credentials."""

    auth_url: str  # Keystone v3
    project: str
    user: str
    key: str = field(repr=False)
    user_domain_id: str = "default"
    user_domain_name: str = ""
    project_domain_id: str = "default"
    project_domain_name: str = ""


@dataclass(frozen=True)
class SwiftReference:
    """One section of a swift references file: its name and its login."""

    name: str
    login: Login


@dataclass(frozen=True)
class SwiftReferences:
    """The references of ``swift_store_config_file``, by section name."""

    path: str = ""
    references: tuple[SwiftReference, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.references)

    def get(self, name: str) -> SwiftReference | None:
        return next((ref for ref in self.references if ref.name == name), None)

    @classmethod
    def parse(cls, option: str, value: Any) -> SwiftReferences:
        """Read and check the file now: a bad one fails at load, naming
        ``option`` and the section (never a key)."""
        path = str(value).strip()
        parser = configparser.RawConfigParser(default_section="__none__")
        try:
            with open(path, encoding="utf-8") as handle:
                parser.read_file(handle)
        except (OSError, UnicodeDecodeError, configparser.Error) as error:
            raise ConfigError(f"{option}: cannot read {path!r} as a swift references file "
                              f"({type(error).__name__})") from None
        references = tuple(_reference(option, name, dict(parser.items(name))) for name in parser.sections())
        if not references:
            raise ConfigError(f"{option}: {path!r} has no reference section")
        return cls(path, references)


def _value(section: dict[str, str], name: str) -> str:
    """As glance_store: one pair of surrounding quotes is stripped."""
    text = section.get(name, "").strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1]
    return text


def _reference(option: str, name: str, section: dict[str, str]) -> SwiftReference:
    where = f"{option}: section [{name}]"
    for needed in ("auth_address", "user", "key"):
        if not _value(section, needed):
            raise ConfigError(f"{where}: {needed} is required")
    try:
        project, user = split_user(_value(section, "user"))
    except ValueError:
        raise ConfigError(f"{where}: user must be project:user") from None
    auth_url = keystone_v3(parse_http_url(f"{where}: auth_address", _value(section, "auth_address")))
    version = _value(section, "auth_version")
    if version not in ("", "3"):
        raise ConfigError(f"{where}: auth_version {version!r}: only Keystone v3 is spoken (as glance_store 5)")
    domains = {name: _value(section, name) for name in
               ("user_domain_id", "user_domain_name", "project_domain_id", "project_domain_name")}
    for kind in ("user", "project"):
        if not domains[f"{kind}_domain_id"] and not domains[f"{kind}_domain_name"]:
            domains[f"{kind}_domain_id"] = "default"
    return SwiftReference(name, Login(auth_url, project, user, _value(section, "key"), **domains))
