"""Names for SQL statements, computed after the request from the recorded text."""

from __future__ import annotations

import re

_WORD = re.compile(r"\s*(?:/\*.*?\*/\s*|--[^\n]*\n\s*)*([A-Za-z]+)", re.S)
_TABLE = {
    "SELECT": re.compile(r"\bFROM\s+([`\"\[]?[\w.$]+[`\"\]]?)", re.I),
    "DELETE": re.compile(r"\bFROM\s+([`\"\[]?[\w.$]+[`\"\]]?)", re.I),
    "INSERT": re.compile(r"\bINTO\s+([`\"\[]?[\w.$]+[`\"\]]?)", re.I),
    "UPDATE": re.compile(r"^\s*UPDATE\s+([`\"\[]?[\w.$]+[`\"\]]?)", re.I),
}


_QUOTES = '`"[]'


def operation(sql: str) -> str:
    """The statement's first keyword, upper-cased (``SELECT``, ``INSERT``, ``SAVEPOINT``...)."""
    m = _WORD.match(sql)
    return m.group(1).upper() if m else "SQL"


def statement_name(sql: str) -> str:
    """A short name for a statement: operation and first table, ``SELECT shop_book``."""
    op = operation(sql)
    pattern = _TABLE.get(op)
    if op == "WITH":
        pattern = _TABLE["SELECT"]
    if pattern is not None:
        m = pattern.search(sql)
        if m:
            table = m.group(1).strip(_QUOTES)
            return f"{op} {table}"
    return op
