"""SQL text as stages show it: a short name, the operation, and where in the application's
code a query was issued (for repeated queries only)."""

from __future__ import annotations

import hashlib
import os
import re
import sys
import sysconfig
from typing import Any

# Leading comments are skipped by a pattern that matches each of them in exactly one way (a
# block comment's body cannot run past its first ``*/``): with ``/\*.*?\*/`` a run of comments
# followed by no keyword (``/* a */ /* b */ (SELECT 1) UNION ...``) could be split in
# exponentially many ways, and the regex took seconds on the request path before giving up.
_WORD = re.compile(r"\s*(?:/\*(?:[^*]|\*(?!/))*\*/\s*|--[^\n]*\n\s*)*([A-Za-z]+)")
_TABLE = {
    "SELECT": re.compile(r"\bFROM\s+([`\"\[]?[\w.$]+[`\"\]]?)", re.I),
    "DELETE": re.compile(r"\bFROM\s+([`\"\[]?[\w.$]+[`\"\]]?)", re.I),
    "INSERT": re.compile(r"\bINTO\s+([`\"\[]?[\w.$]+[`\"\]]?)", re.I),
    "UPDATE": re.compile(r"^\s*UPDATE\s+([`\"\[]?[\w.$]+[`\"\]]?)", re.I),
}

_QUOTES = '`"[]'


def operation(sql: str) -> str:
    """The statement's first keyword, upper-cased (``SELECT``, ``INSERT``, ``SAVEPOINT``...)."""
    m = _WORD.match(sql, 0, 2000)
    return m.group(1).upper() if m else "SQL"


def statement_name(sql: str) -> str:
    """A short name for a statement: operation and first table, ``SELECT shop_book``."""
    return describe(sql)[0]


_described: dict[str, tuple[str, str]] = {}


def describe(sql: str) -> tuple[str, str]:
    """(short name, operation) of a statement; cached by text (applications repeat theirs)."""
    found = _described.get(sql)
    if found is not None:
        return found
    op = operation(sql)
    pattern = _TABLE.get("SELECT" if op == "WITH" else op)
    name = op
    if pattern is not None:
        m = pattern.search(sql, 0, 8192)
        if m:
            name = f"{op} {m.group(1).strip(_QUOTES)}"
    found = (name, op)
    if len(sql) <= MAX_CACHED_TEXT:  # callers cut texts to `max_sql_length`: this is a backstop
        if len(_described) >= 2048:
            _described.clear()
        _described[sql] = found
    return found


#: The longest SQL text `describe` keeps as a key of its cache.
MAX_CACHED_TEXT = 16384

_hashes: dict[tuple[int, int, bool], str] = {}


def statement_hash(sql: str, cut: bool = False) -> str:
    """16 hex digits identifying a statement up to its values: a BLAKE2b hash of its
    fingerprint (`stagetrace.analyzers.fingerprint`), the same in every process. Recorded for
    a statement whose text was cut at ``max_sql_length`` (``stagetrace.db.query.hash``), so
    that the analyzers tell apart statements sharing their recorded text. Holds nothing the
    text does not: the fingerprint folds literal values. With `cut`, `sql` is the statement's
    beginning only: a list of values it ends inside (``IN (1, 22, 333, …``, a multi-row
    ``VALUES``), whose length there depends on the values' widths, is left out, as the
    fingerprint folds a whole one. Run when a timeline is sealed, off the request path; cached
    by the text's (64-bit) hash and length, keeping no text."""
    key = (hash(sql), len(sql), cut)
    found = _hashes.get(key)
    if found is None:
        from .analyzers._fingerprint import fingerprint

        # Not through its cache, which is sized for recorded texts: these are longer.
        fp = fingerprint.__wrapped__(sql)
        if cut:
            fp = _OPEN_LIST_END.sub("", fp)
        found = hashlib.blake2b(fp.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
        if len(_hashes) >= 2048:
            _hashes.clear()
        _hashes[key] = found
    return found


#: The end of a fingerprint inside a list of values: placeholders, commas, parentheses.
_OPEN_LIST_END = re.compile(r"[?,()\s]+$")


def params_key(params: Any) -> Any:
    """A hash of a statement's parameters, to tell repeated identical queries apart (never
    stored); None when they cannot be hashed — unhashable, or an application's ``__hash__``
    or ``__lt__`` that raises."""
    try:
        if type(params) is tuple:
            return hash(params)
        if type(params) is list:
            return hash(tuple(params))
        if isinstance(params, dict):
            return hash(tuple(sorted(params.items())))
        if params is None:
            return 0
    except Exception:
        pass
    return None


def params_text(params: Any, limit: int) -> str:
    """The ``repr`` of a statement's parameters (``record_sql_params``), at most `limit`
    characters, made in time bounded by `limit` rather than by the parameters' size: an
    ``executemany`` of 100,000 rows or a megabyte blob is not turned into text whole, on the
    request path, only to be cut. Containers are followed four levels deep (the rows of an
    ``executemany``, an array parameter in a row); one deeper shows as ``[…]``, never as its
    whole ``repr``. Long strings and bytes (subclasses too) are cut before their ``repr``;
    what is left out shows as ``…``."""
    return _bounded_repr(params, limit, _PARAMS_DEPTH)[:limit]


#: Container levels of a statement's parameters followed by `params_text`.
_PARAMS_DEPTH = 4


def _brackets(value: Any) -> tuple[str, str] | None:
    """How `value` opens and closes if it is a container `params_text` follows (subclasses
    too: a subclass's own ``repr`` would be made whole)."""
    if isinstance(value, list):
        return "[", "]"
    if isinstance(value, tuple):
        return "(", ")"
    if isinstance(value, (dict, set, frozenset)):
        return "{", "}"
    return None


def _bounded_repr(value: Any, limit: int, depth: int) -> str:
    if isinstance(value, (str, bytes, bytearray)):
        # a subclass's slice is a plain str or bytes: its repr is as bounded as the cut
        return repr(value[:limit]) + ("…" if len(value) > limit else "")
    brackets = _brackets(value)
    if brackets is None:
        return repr(value)
    if not depth:  # a container this deep: not turned into text whole
        return f"{brackets[0]}…{brackets[1]}" if len(value) else repr(value)
    is_dict = isinstance(value, dict)
    items = value.items() if is_dict else value
    parts: list[str] = []
    size = 0
    for item in items:
        if size > limit:
            parts.append("…")
            break
        if is_dict and type(item) is tuple:
            k, v = item
            part = f"{_bounded_repr(k, limit, 0)}: {_bounded_repr(v, limit, depth - 1)}"
        else:
            part = _bounded_repr(item, limit, depth - 1)
        parts.append(part)
        size += len(part) + 2
    inner = ", ".join(parts)
    if brackets[0] == "(" and len(parts) == 1 and len(value) == 1:
        inner += ","
    return brackets[0] + inner + brackets[1]


# --- call sites ------------------------------------------------------------------------------

_LIBRARY_DIRS = tuple(
    {
        os.path.normcase(os.path.realpath(p)) + os.sep
        for p in (
            sysconfig.get_paths().get("stdlib"),
            sysconfig.get_paths().get("platstdlib"),
            sysconfig.get_paths().get("purelib"),
            sysconfig.get_paths().get("platlib"),
            os.path.dirname(os.path.abspath(__file__)),  # stagetrace itself
        )
        if p
    }
)
_user_code: dict[Any, bool] = {}


def _is_user_code(code: Any) -> bool:
    found = _user_code.get(code)
    if found is None:
        filename = code.co_filename
        if (
            filename.startswith("<")
            or "/site-packages/" in filename
            or "/dist-packages/" in filename
        ):
            found = False
        else:
            path = os.path.normcase(os.path.realpath(filename))
            found = not path.startswith(_LIBRARY_DIRS)
        if len(_user_code) >= 4096:
            _user_code.clear()
        _user_code[code] = found
    return found


def _greenlet_parents() -> Any:
    """The frames at which the current greenlet's ancestors are suspended, innermost first.

    Code run through a greenlet (SQLAlchemy's asyncio layer runs the ORM's sync code in one)
    has a frame stack that ends where the greenlet started; the application's ``await`` that
    started it is in the parent greenlet's stack."""
    module = sys.modules.get("greenlet")
    if module is None:
        return
    try:
        g = module.getcurrent().parent
    except Exception:
        return
    while g is not None:
        frame = getattr(g, "gr_frame", None)
        if frame is not None:
            yield frame
        g = g.parent


def call_site(depth: int = 2, limit: int = 200) -> dict[str, Any]:
    """``code.file.path``, ``code.line.number`` and ``code.function.name`` of the first frame
    in the application's own code (outside the standard library, installed packages and
    stagetrace), looking up from the caller — and on into the parent greenlets' stacks when
    the caller runs in a greenlet; empty when there is none."""
    try:
        frame: Any = sys._getframe(depth)
    except ValueError:
        return {}
    parents = None
    for _ in range(limit):
        if frame is None:
            if parents is None:
                parents = _greenlet_parents()
            frame = next(parents, None)
            if frame is None:
                return {}
        code = frame.f_code
        if _is_user_code(code):
            template = frame.f_globals.get("__jinja_template__")
            if template is not None:
                return _template_site(template, frame)
            return {
                "code.file.path": code.co_filename,
                "code.line.number": frame.f_lineno,
                "code.function.name": _frame_function(frame),
            }
        frame = frame.f_back
    return {}


def _template_site(template: Any, frame: Any) -> dict[str, Any]:
    """The call site in a Jinja2 template: its code is Python compiled under the template's
    file name, whose line numbers are the generated code's; Jinja2 maps them back to the
    template's lines (as it does for tracebacks). The generated functions (``root``,
    ``block_body``) mean nothing to the reader: a block is named, the body not."""
    code = frame.f_code
    site: dict[str, Any] = {"code.file.path": code.co_filename}
    try:
        site["code.line.number"] = int(template.get_corresponding_lineno(frame.f_lineno))
    except Exception:  # not Jinja2's Template after all: the file alone is still right
        pass
    name = code.co_name
    if name.startswith("block_"):
        site["code.function.name"] = f"block {name[6:]}"
    return site


def _frame_function(frame: Any) -> str:
    """The frame's function as a qualified name. Python 3.11+ has it on the code object; on 3.10
    a comprehension, generator expression or lambda (``<listcomp>``) is named after the frames
    that run it, ``api_books.<locals>.<listcomp>``, as 3.11 would name it (functions nested in
    functions keep their plain name there: 3.10 cannot tell where they were defined)."""
    code = frame.f_code
    qualname = getattr(code, "co_qualname", None)
    if qualname is not None:
        return str(qualname)
    name = str(code.co_name)
    outer = frame.f_back
    if not name.startswith("<"):
        return name
    while outer is not None and outer.f_code.co_name != "<module>":
        if not outer.f_code.co_name.startswith("<"):
            return f"{outer.f_code.co_name}.<locals>.{name}"
        name = f"{outer.f_code.co_name}.{name}"
        outer = outer.f_back
    return name
