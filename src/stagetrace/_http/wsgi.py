"""The WSGI environ, parsed once for every adapter that serves WSGI (Django's handler and test
client, the generic WSGI middleware)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .._state import STATE
from .gateway import Request, wanted_headers

if TYPE_CHECKING:
    from .._options import Settings

_keys: dict[frozenset[str], tuple[tuple[str, str], ...]] = {}


def _environ_keys(wanted: frozenset[str]) -> tuple[tuple[str, str], ...]:
    found = _keys.get(wanted)
    if found is None:
        pairs = []
        for name in wanted:
            key = name.upper().replace("-", "_")
            if key not in ("CONTENT_LENGTH", "CONTENT_TYPE"):
                key = "HTTP_" + key
            pairs.append((name, key))
        found = _keys[wanted] = tuple(pairs)
    return found


def text(environ: Mapping[str, Any], key: str, default: str = "") -> str:
    """A WSGI string (latin-1 decoded bytes, by the spec) as the UTF-8 text it encodes."""
    raw = environ.get(key, default)
    if type(raw) is str and raw.isascii():
        return raw
    if not isinstance(raw, str):
        return default
    try:
        return raw.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return raw.encode("latin-1", "replace").decode("utf-8", "replace")


def path(environ: Mapping[str, Any]) -> str:
    """The request path: ``SCRIPT_NAME`` + ``PATH_INFO``."""
    return text(environ, "SCRIPT_NAME") + (text(environ, "PATH_INFO") or "/")


def request(environ: Mapping[str, Any], cfg: Settings, path_: str | None = None) -> Request:
    """What a gateway records of a WSGI request (`path_`: its `path`, if known already)."""
    found: dict[str, Any] = {}
    for name, key in _environ_keys(wanted_headers(cfg)):
        value = environ.get(key)
        if value is not None:
            found[name] = value
    method = environ.get("REQUEST_METHOD")
    protocol = environ.get("SERVER_PROTOCOL")
    version = None
    if isinstance(protocol, str) and protocol.startswith("HTTP/"):
        version = protocol[5:]
    client = environ.get("REMOTE_ADDR")
    scheme = environ.get("wsgi.url_scheme")
    carrier = _carrier(environ) if STATE.propagation is not None else None
    return Request(
        method if isinstance(method, str) else None,
        path(environ) if path_ is None else path_,
        environ.get("QUERY_STRING"),
        scheme if isinstance(scheme, str) else None,
        found,
        client if isinstance(client, str) and client else None,
        version,
        carrier,
    )


def _carrier(environ: Mapping[str, Any]) -> dict[str, str]:
    """Every HTTP header of the environ, by lower-case name (for a propagator)."""
    out: dict[str, str] = {}
    for key, value in environ.items():
        if type(key) is str and key.startswith("HTTP_") and type(value) is str:
            out[key[5:].lower().replace("_", "-")] = value
    return out
