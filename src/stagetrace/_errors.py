"""What a stage keeps of an exception's message.

An exception's message is the application's own text and is kept as it is — except for the
exceptions whose messages systematically carry what privacy by default keeps out:

* a database error quotes the values of the statement that failed (`_sql.db_error_message`),
  unless SQL parameter values are recorded (``record_sql_params``);
* a validation error (pydantic's, FastAPI's request and response validation, Django's) quotes
  the input it refused — a request body's fields, a form's values: the message keeps where and
  why, never the input;
* Django's ``Resolver404`` carries the whole URL configuration it tried (kilobytes, with module
  paths, on every 404 a scanner provokes): the message is that no pattern matched.

Exception classes are recognized by name along their MRO, so nothing here imports a framework.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from ._sql import db_error_message, is_db_error

#: At most this many errors of a validation error are described.
MAX_VALIDATION_ERRORS = 10


def _validation(exc: BaseException, message: str, cfg: Any) -> str:
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
        loc = ".".join(str(p) for p in e.get("loc", ()) or ())
        msg = str(e.get("msg", "invalid"))
        parts.append(f"{loc}: {msg}" if loc else msg)
    n = len(errors)
    head = f"{n} validation error{'' if n == 1 else 's'}"
    more = " …" if n > MAX_VALIDATION_ERRORS else ""
    return f"{head}: {'; '.join(parts)}{more}" if parts else head


_PARAM = re.compile(r"%\((\w+)\)[a-z]")


def _django_validation(exc: BaseException, message: str, cfg: Any) -> str:
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


def _resolver404(exc: BaseException, message: str, cfg: Any) -> str:
    return "no URL pattern matched the path"


def _database(exc: BaseException, message: str, cfg: Any) -> str:
    if cfg is not None and cfg.record_sql_params:
        return message
    return db_error_message(message)


#: By ``module.QualifiedName`` of a class in the exception's MRO.
_BY_NAME: dict[str, Callable[[BaseException, str, Any], str]] = {
    "pydantic_core._pydantic_core.ValidationError": _validation,
    "fastapi.exceptions.RequestValidationError": _validation,
    "fastapi.exceptions.ResponseValidationError": _validation,
    "fastapi.exceptions.WebSocketRequestValidationError": _validation,
    "django.core.exceptions.ValidationError": _django_validation,
    "django.urls.exceptions.Resolver404": _resolver404,
}

_found: dict[type, Callable[[BaseException, str, Any], str] | None] = {}


def _rewriter(exc_type: type) -> Callable[[BaseException, str, Any], str] | None:
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


def message(exc: BaseException, cfg: Any) -> str:
    """The message a stage keeps of `exc` under the settings `cfg` (None: the defaults). May
    raise (an exception whose ``__str__`` fails): the caller handles it."""
    text = str(exc)
    rewrite = _rewriter(type(exc))
    if rewrite is None:
        return text
    try:
        return rewrite(exc, text, cfg)
    except Exception:  # an unexpected shape: keep nothing of it rather than everything
        return type(exc).__name__
