"""Parsers for request data that arrives from outside: each returns a value or None, never
raises, and bounds its work by the input's length (long inputs are refused or cut first).

Header values arrive as ``str`` (WSGI, already latin-1 decoded) or ``bytes`` (ASGI).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

#: The most characters of any header value stagetrace looks at.
MAX_HEADER = 8192
#: The most characters of a path or query string kept in a timeline.
MAX_URL_PART = 2048

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def text(value: str | bytes | None, limit: int = MAX_HEADER) -> str | None:
    """A header value as text: bytes decoded as latin-1 (what HTTP/1.1 allows), cut to
    `limit`."""
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value[:limit]).decode("latin-1")
    elif not isinstance(value, str):
        return None
    return value[:limit]


def _escape(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


def safe(value: str, limit: int = MAX_URL_PART) -> str:
    """`value` cut to `limit` (with a marker) and with control characters escaped (``\\x0a``),
    so nothing a client sent can forge log lines, headers or terminal output; lone surrogates
    (from undecodable bytes) are replaced."""
    if len(value) > limit:
        value = value[:limit] + "…"
    if _CONTROL.search(value):
        value = _CONTROL.sub(_escape, value)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


#: What an incoming request id may look like: printable, no spaces, at most 200 characters.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,200}")


def request_id(value: str | bytes | None) -> str | None:
    """The request id if it is safe to record and echo, else None (the trace id is used)."""
    value = text(value, 256)
    if not value:
        return None
    value = value.strip()
    return value if _REQUEST_ID.fullmatch(value) else None


_NUMBER = re.compile(r"(?:t=)?\s*(\d{1,20}(?:\.\d{1,9})?)\s*")


def queue_time_ns(header: str | bytes | None, now_unix_ns: int) -> int | None:
    """Time the request waited before the app saw it, from ``X-Request-Start``/``X-Queue-Start``.

    Accepts what nginx (``t=1700000000.123``, seconds), Heroku (milliseconds) and others
    (microseconds, nanoseconds) send, with or without ``t=``; the unit is told by the
    magnitude. None for anything unparseable or implausible (negative beyond a second of clock
    skew, or more than an hour). Only plain decimal numbers are read: no exponents, infinities,
    signs or digit separators.
    """
    value = text(header, 64)
    if not value:
        return None
    m = _NUMBER.fullmatch(value)
    if m is None:
        return None
    whole, _, frac = m.group(1).partition(".")
    number = int(whole)
    if number <= 0 and not frac.strip("0"):
        return None
    if number > 10**17:  # nanoseconds
        start_ns = number
    elif number > 10**14:  # microseconds
        start_ns = number * 1_000 + int((frac + "000")[:3])
    elif number > 10**11:  # milliseconds
        start_ns = number * 1_000_000 + int((frac + "000000")[:6])
    else:  # seconds
        start_ns = number * 1_000_000_000 + int((frac + "000000000")[:9])
    waited = now_unix_ns - start_ns
    if waited < -1_000_000_000 or waited > 3600 * 1_000_000_000:
        return None
    return max(0, waited)


_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")


def traceparent(value: str | bytes | None) -> tuple[int, int, int] | None:
    """A W3C ``traceparent`` header as (trace id, parent span id, flags), or None when it is
    missing or invalid (version ``ff``, an all-zero id, extra fields on version 00, ...), in
    which case it is ignored as the spec says. Of the flags only the sampled bit is kept: the
    others are not defined, and W3C says to set them to zero rather than pass them on (as
    OpenTelemetry's SDK gives its child spans only the sampled bit)."""
    value = text(value, 512)
    if not value:
        return None
    m = _TRACEPARENT.fullmatch(value.strip())
    if m is None:
        return None
    version, trace, parent, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    trace_id, span_id = int(trace, 16), int(parent, 16)
    if not trace_id or not span_id:
        return None
    return trace_id, span_id, int(flags, 16) & 0x01


_TS_KEY = re.compile(
    r"(?:[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13})"
)
_TS_VALUE = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")


#: W3C Trace Context: what a vendor propagates of ``tracestate`` at least, commas included.
TRACESTATE_MAX = 512


def tracestate(value: str | bytes | None) -> str | None:
    """A W3C ``tracestate`` header normalized (its list members without optional white space),
    or None when there is none or it is invalid (a malformed member, a duplicate key, more
    than 32 members). Longer than 512 characters, it is cut as the spec says: whole members
    go, those over 128 characters first, then from the end — never inside a value."""
    value = text(value, MAX_HEADER)
    if not value:
        return None
    members = []
    seen = set()
    for part in value.split(","):
        part = part.strip(" \t")
        if not part:
            continue
        key, eq, val = part.partition("=")
        if not eq or not _TS_KEY.fullmatch(key) or not _TS_VALUE.fullmatch(val) or key in seen:
            return None
        seen.add(key)
        members.append(f"{key}={val}")
        if len(members) > 32:
            return None
    out = ",".join(members)
    if len(out) > TRACESTATE_MAX:
        members = [m for m in members if len(m) <= 128]
        while len(",".join(members)) > TRACESTATE_MAX:
            members.pop()
        out = ",".join(members)
    return out or None


_BAGGAGE_KEY = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def baggage(value: str | bytes | None) -> dict[str, str] | None:
    """A W3C ``baggage`` header as {key: value} (at most 64 entries, percent-decoded values,
    properties dropped), or None when there is none. Malformed entries are skipped. Of a
    header longer than `MAX_HEADER` the members that fit whole are kept: the one the limit cuts
    is dropped, never kept cut (``tenant=acme-produ``), as W3C says ("MUST NOT propagate any
    partial list-members")."""
    value = text(value, MAX_HEADER + 1)
    if not value:
        return None
    if len(value) > MAX_HEADER:
        value = value[:MAX_HEADER]
        value = value[: value.rfind(",") + 1]  # up to the last whole member ("" if none)
    out: dict[str, str] = {}
    for part in value.split(","):
        member = part.split(";", 1)[0].strip()
        key, eq, val = member.partition("=")
        key, val = key.strip(), val.strip()
        if not eq or not _BAGGAGE_KEY.fullmatch(key):
            continue
        try:
            out[key] = unquote(val, errors="strict")
        except UnicodeDecodeError:
            continue
        if len(out) >= 64:
            break
    return out or None


def content_length(value: str | bytes | None) -> int | None:
    """A ``Content-Length`` as a non-negative integer (at most 19 digits), else None."""
    value = text(value, 32)
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > 19 or not value.isdigit() or not value.isascii():
        return None
    return int(value)


def redact_query(query: str | bytes | None, keep: tuple[str, ...] = ()) -> str | None:
    """A query string with every parameter's value replaced by ``REDACTED`` except those named
    in `keep` (names are kept, in order; empty values stay empty). None for no query."""
    query = text(query, MAX_URL_PART)
    if not query:
        return None
    parts = []
    for piece in query.split("&"):
        if not piece:
            continue
        name, eq, value = piece.partition("=")
        if eq:
            if value and unquote(name) not in keep:
                value = "REDACTED"
            parts.append(f"{name}={value}")
        elif _FLAG.fullmatch(name) or unquote(name) in keep:
            parts.append(name)
        else:  # a bare value: a token in a magic link (``?eyJhbGciOi...``), a cache buster
            parts.append("REDACTED")
    if not parts:
        return None
    out = "&".join(parts)
    if len(out) > MAX_URL_PART:
        # Values grow into ``REDACTED``: cut between pieces, not inside one (a single piece
        # that long is a name, which `safe` cuts).
        cut = out.rfind("&", 0, MAX_URL_PART + 1)
        if cut > 0:
            out = out[:cut] + "&…"
    return safe(out)


def redact_url(url: str) -> str:
    """`url` fit to be shown (logs, errors, reprs, ``settings()``): a ``user:password@`` becomes
    ``REDACTED@`` and every query value ``REDACTED``, as the recorded ``url.query`` is. Works
    on text that is not a valid URL too (what an error about a bad endpoint quotes)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    else:
        scheme += sep
    if "@" in rest:
        # Up to the last "@" of the whole rest: a password pasted unencoded may hold "/", "?"
        # or "#". (An "@" further on, in a query, hides a little more than the credentials.)
        rest = "REDACTED@" + rest.rpartition("@")[2]
    rest, hash_, fragment = rest.partition("#")
    head, question, query = rest.partition("?")
    if question:
        head += "?" + (redact_query(query) or "")
    return scheme + head + (hash_ + "REDACTED" if fragment else hash_)


#: A query piece without ``=`` kept as it is: a flag's name in lower case (``?debug``,
#: ``?print-view``). Anything else — capitals, digits, dots, long — may be a value given bare
#: (a magic link's token in URL-safe base64 can be letters only), and is redacted.
_FLAG = re.compile(r"[a-z][a-z_-]{0,31}")


def host_and_port(value: str | bytes | None) -> tuple[str | None, int | None]:
    """(host, port) of a ``Host`` header (``[::1]:8000`` included); (None, None) if invalid."""
    value = text(value, 300)
    if not value:
        return None, None
    value = value.strip()
    port: int | None = None
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        if rest.startswith(":") and rest[1:].isascii() and rest[1:].isdigit() and len(rest) <= 6:
            port = int(rest[1:])
        elif rest:
            return None, None
    else:
        host, _, p = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
        if p:
            if not (p.isascii() and p.isdigit()) or len(p) > 5:
                return None, None
            port = int(p)
    if not host or _CONTROL.search(host) or " " in host:
        return None, None
    return host.lower(), port


def header_attrs(found: dict[str, Any], names: tuple[str, ...]) -> dict[str, list[str]]:
    """``http.request.header.<name>`` attributes for the allowed header names that are present
    (values escaped and cut), as OpenTelemetry's conventions name them."""
    out: dict[str, list[str]] = {}
    for name in names:
        value = text(found.get(name))
        if value is not None:
            out[f"http.request.header.{name}"] = [safe(value, 1024)]
    return out
