"""The ASGI scope, parsed once for every adapter that serves ASGI (the generic middleware, the
Starlette adapter, Django's ASGI handler)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .._state import STATE
from .gateway import Request, wanted_headers

if TYPE_CHECKING:
    from .._options import Settings

_wanted_bytes: dict[frozenset[str], frozenset[bytes]] = {}


def headers(scope: Mapping[str, Any], wanted: frozenset[str]) -> dict[str, bytes]:
    """The first value of each wanted header in ``scope["headers"]`` (lower-case str keys)."""
    wanted_b = _wanted_bytes.get(wanted)
    if wanted_b is None:
        wanted_b = _wanted_bytes[wanted] = frozenset(w.encode("latin-1") for w in wanted)
    found: dict[str, bytes] = {}
    try:
        for name, value in scope.get("headers") or ():
            if name not in wanted_b:
                name = bytes(name).lower()  # servers send lower case already; be lenient
                if name not in wanted_b:
                    continue
            key = name.decode("latin-1")
            if key not in found:
                found[key] = value
    except (TypeError, ValueError):  # not a list of (bytes, bytes) pairs
        pass
    return found


def path(scope: Mapping[str, Any]) -> str:
    """The request path. Current servers put the mount point (``root_path``) inside ``path``
    already, as Starlette expects; older ones did not, and then it is prepended."""
    p = scope.get("path")
    if not isinstance(p, str) or not p:
        p = "/"
    root = scope.get("root_path")
    if root and isinstance(root, str) and not p.startswith(root):
        p = root.rstrip("/") + p
    return p


def request(scope: Mapping[str, Any], cfg: Settings, path_: str | None = None) -> Request:
    """What a gateway records of an HTTP or websocket scope (`path_`: its `path`, if known
    already)."""
    client = scope.get("client")
    host = None
    if isinstance(client, (list, tuple)) and client and isinstance(client[0], str):
        host = client[0]
    version = scope.get("http_version")
    method = scope.get("method") if scope.get("type") == "http" else None
    return Request(
        method if isinstance(method, str) else None,
        path(scope) if path_ is None else path_,
        scope.get("query_string"),
        scope.get("scheme") if isinstance(scope.get("scheme"), str) else None,
        headers(scope, wanted_headers(cfg)),
        host,
        version if isinstance(version, str) else None,
        _carrier(scope) if STATE.propagation is not None else None,
    )


def _carrier(scope: Mapping[str, Any]) -> dict[str, str]:
    """Every header of the scope, by lower-case name, decoded (for a propagator); repeated
    headers joined with commas, as HTTP allows."""
    out: dict[str, str] = {}
    try:
        for name, value in scope.get("headers") or ():
            key = bytes(name).decode("latin-1").lower()
            text = bytes(value).decode("latin-1")
            out[key] = f"{out[key]},{text}" if key in out else text
    except (TypeError, ValueError):
        pass
    return out
