"""What a stage keeps of an exception's message.

An exception's message is the application's own text and is kept as it is — except for the
exceptions whose messages systematically carry what privacy by default keeps out:

* a database error quotes the values of the statement that failed (`db_error_message`),
  unless SQL parameter values are recorded (``record_sql_params``);
* a validation error (pydantic's, FastAPI's request and response validation, Django's) quotes
  the input it refused — a request body's fields, a form's values: the message keeps where and
  why, never the input;
* Django's ``Resolver404`` carries the whole URL configuration it tried (kilobytes, with module
  paths, on every 404 a scanner provokes): the message is that no pattern matched;
* any message quoting a URL (an HTTP client's connection or status error quotes the URL it
  called, with its query string and any ``user:password@``): the URL's credentials and query
  values are redacted as the ``url.query`` attribute's are.

Exception classes are recognized by name along their MRO, so nothing here imports a framework.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from ._http.headers import redact_url

# --- database errors -------------------------------------------------------------------------
#
# A database error's message can quote the values of the statement that failed: PostgreSQL's
# ``DETAIL:  Key (email)=(ann@example.com) already exists.``, MySQL's ``Duplicate entry
# 'ann@example.com'``, and SQLAlchemy appends ``[parameters: (...)]`` to every error it wraps.
# Unless parameter values are recorded (`record_sql_params`), a stage keeps such a message
# only as far as it can without them.

#: PEP 249's base classes, which every DB-API driver (and Django) defines under these names,
#: SQLAlchemy's wrapper of errors raised while running a statement, and asyncpg's base.
_DB_ERROR_NAMES = frozenset(("DatabaseError", "InterfaceError", "StatementError", "PostgresError"))
_db_error_types: dict[type, bool] = {}

#: A quoted name that follows one of these words is a schema object's, not a value.
_NAMED_BY = re.compile(
    r"\b(?:constraint|column|relation|table|index|key|database|schema|function|sequence|"
    r"field|trigger|view|savepoint|collation|extension|role)\s*$",
    re.I,
)
#: asyncpg's refusal of an argument prints its ``repr``, unquoted (``... $1: 4111111111111111
#: (value out of int32 range)``): nothing after the argument's number is kept.
_ARGUMENT = re.compile(r"(.*?\bquery argument \$\d+):")
#: MySQL drivers' ``(1062, "Duplicate entry ...")``.
_CODE_AND_MESSAGE = re.compile(r"^\((\d+), (['\"])(.*)\2\)$", re.S)


def is_db_error(exc_type: type) -> bool:
    """Whether an exception class is a database's (a DB-API driver's, Django's, SQLAlchemy's
    statement errors, asyncpg's)."""
    found = _db_error_types.get(exc_type)
    if found is None:
        found = any(
            k.__name__ in _DB_ERROR_NAMES and k.__module__ != "builtins" for k in exc_type.__mro__
        )
        if len(_db_error_types) < 512:
            _db_error_types[exc_type] = found
    return found


def db_error_message(message: str) -> str:
    """A database error's message without the values it may quote: its first line only (the
    ``DETAIL``, ``LINE``, SQL and parameters that drivers and SQLAlchemy add follow it), cut
    with ``…`` at the first quote that does not name a schema object (``constraint
    "users_email_key"``, ``column 'email'`` are kept)."""
    line = message.split("\n", 1)[0].rstrip()
    m = _CODE_AND_MESSAGE.match(line)
    if m:
        line = f"{m.group(1)}: {m.group(3)}"
    m = _ARGUMENT.match(line)
    if m:
        return f"{m.group(1)}: …"
    pos = 0
    while True:
        m = _QUOTE.search(line, pos)
        if m is None:
            break
        i = m.start()
        if line[i] == "'" and line[i - 1 : i].isalpha() and line[i + 1 : i + 2].isalpha():
            pos = i + 1  # an apostrophe: "can't adapt type"
            continue
        end = line.find(_CLOSING[line[i]], i + 1)
        if end < 0 or not _NAMED_BY.search(line, pos, i):
            return line[:i].rstrip() + " …"
        pos = end + 1
    return line if line == message else line + " …"


#: Opening quotes and their closing ones — PostgreSQL's translated messages quote with the
#: language's own (German ``»users_email_key«``, French ``« … »``).
_CLOSING = {"'": "'", '"': '"', "»": "«", "«": "»", "„": "“", "“": "”", "‘": "’", "‚": "‘"}
_QUOTE = re.compile("[" + re.escape("".join(_CLOSING)) + "]")


# --- validation errors ---------------------------------------------------------------------

#: At most this many errors of a validation error are described.
MAX_VALIDATION_ERRORS = 10


def _validation(exc: BaseException, cfg: Any) -> str:
    """``N validation errors: body.password: String should have at least 12 characters; ...``
    from pydantic's structured errors (FastAPI's validation errors hold the same), without
    the refused input."""
    errors = exc.errors()  # type: ignore[attr-defined]
    if not isinstance(errors, (list, tuple)):
        return type(exc).__name__
    parts = []
    for e in errors[:MAX_VALIDATION_ERRORS]:
        if not isinstance(e, dict):
            continue
        where = [_loc_part(p) for p in e.get("loc", ()) or ()]
        if where and e.get("type") == "extra_forbidden":
            where[-1] = "?"  # the key the client sent
        loc = ".".join(where)
        msg = _without_input(str(e.get("msg", "invalid")), e.get("input"))
        parts.append(f"{loc}: {msg}" if loc else msg)
    n = len(errors)
    head = f"{n} validation error{'' if n == 1 else 's'}"
    more = " …" if n > MAX_VALIDATION_ERRORS else ""
    return f"{head}: {'; '.join(parts)}{more}" if parts else head


_SCALARS = (str, int, float)


def _without_input(msg: str, value: Any) -> str:
    """A message that quotes its input (``Input tag 'x' found using 'kind' ...``, the tag
    taken from the input's dictionary) with the input's values replaced by ``…``: quoted,
    whatever their length; bare, from three characters on."""
    if type(value) in _SCALARS:
        values = [value]
    elif isinstance(value, dict):
        values = [v for v in list(value.values())[:20] if type(v) in _SCALARS]
    elif isinstance(value, (list, tuple)):
        values = [v for v in value[:20] if type(v) in _SCALARS]
    else:
        return msg
    for v in values:
        text = str(v)
        for quoted in (f"'{text}'", f'"{text}"'):
            msg = msg.replace(quoted, "'…'")
        if len(text) >= 3:
            msg = msg.replace(text, "…")
    return msg


def _loc_part(part: Any) -> str:
    """One step of where a validation error is: a field's name or a list index as it is; a
    dictionary's key — the input's own, such as an e-mail address — as ``?`` unless it reads
    like a name."""
    if type(part) is int:
        return str(part)
    text = str(part)
    return text if text.isidentifier() and len(text) <= 40 else "?"


_PARAM = re.compile(r"%\((\w+)\)[a-z]")


def _django_validation(exc: BaseException, cfg: Any) -> str:
    """Django's messages before their parameters are filled in (``“%(value)s” value must be an
    integer.`` names the parameter, ``<value>``, instead of quoting it), by field."""

    def templates(error: Any) -> list[str]:
        out = []
        for e in getattr(error, "error_list", [error])[:MAX_VALIDATION_ERRORS]:
            template = getattr(e, "message", None)
            out.append(_PARAM.sub(r"<\1>", str(template)) if template is not None else "invalid")
        return out

    by_field = getattr(exc, "error_dict", None)
    if isinstance(by_field, dict):
        parts = [
            f"{field}: {' '.join(msgs)}"
            for field, errors in list(by_field.items())[:MAX_VALIDATION_ERRORS]
            for msgs in [[m for err in errors for m in templates(err)]]
        ]
        return "; ".join(parts)
    return " ".join(templates(exc))


def _resolver404(exc: BaseException, cfg: Any) -> str:
    return "no URL pattern matched the path"


def _database(exc: BaseException, cfg: Any) -> str:
    message = str(exc)
    if cfg is not None and cfg.record_sql_params:
        return message
    return db_error_message(message)


#: By ``module.QualifiedName`` of a class in the exception's MRO.
_BY_NAME: dict[str, Callable[[BaseException, Any], str]] = {
    "pydantic_core._pydantic_core.ValidationError": _validation,
    "fastapi.exceptions.RequestValidationError": _validation,
    "fastapi.exceptions.ResponseValidationError": _validation,
    "fastapi.exceptions.WebSocketRequestValidationError": _validation,
    "django.core.exceptions.ValidationError": _django_validation,
    "django.urls.exceptions.Resolver404": _resolver404,
}

_found: dict[type, Callable[[BaseException, Any], str] | None] = {}


def _rewriter(exc_type: type) -> Callable[[BaseException, Any], str] | None:
    try:
        return _found[exc_type]
    except KeyError:
        pass
    rewrite = None
    for k in exc_type.__mro__:
        rewrite = _BY_NAME.get(f"{k.__module__}.{k.__qualname__}")
        if rewrite is not None:
            break
    if rewrite is None and is_db_error(exc_type):
        rewrite = _database
    if len(_found) < 512:
        _found[exc_type] = rewrite
    return rewrite


# --- URLs ------------------------------------------------------------------------------------

#: A URL quoted in a message — its scheme, then credentials, host, path, query and fragment
#: (an OAuth ``#access_token=``), up to a space, a quote or a bracket; `redact_url` takes it
#: apart — or a path after ``url:`` (urllib3's ``Max retries exceeded with url:
#: /reset?token=...``, which requests' connection errors quote).
_URL = re.compile(r"""(?:\b[A-Za-z][A-Za-z0-9+.-]{0,31}://|\burl: (?=/))[^\s'"<>()\[\]]*""")


def _redact_url(m: re.Match[str]) -> str:
    return redact_url(m.group(0))


def without_url_secrets(text: str) -> str:
    """`text` with every URL it quotes stripped of its credentials and query values."""
    return _URL.sub(_redact_url, text) if "://" in text or "url: /" in text else text


def message(exc: BaseException, cfg: Any) -> str:
    """The message a stage keeps of `exc` under the settings `cfg` (None: the defaults). May
    raise (an exception whose ``__str__`` fails): the caller handles it."""
    rewrite = _rewriter(type(exc))
    if rewrite is None:
        text = str(exc)
    else:
        try:  # without str(exc) first: Resolver404's is the whole URL configuration, rendered
            text = rewrite(exc, cfg)
        except Exception:  # an unexpected shape: keep nothing of it rather than everything
            return type(exc).__name__
    return without_url_secrets(text)
