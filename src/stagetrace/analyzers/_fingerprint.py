"""SQL fingerprints: one normalized text for every statement that differs only in its values.

``SELECT * FROM t WHERE id = 1`` and ``select *  from t where id = %s`` both become
``SELECT * FROM t WHERE id = ?``. Folded: string, number, hex, bit and boolean literals, every
DB-API placeholder style (``%s``, ``%(name)s``, ``?``, ``$1``, ``:name``, ``:1``, ``@name``),
lists of them (``IN (...)``, ``VALUES (...), (...)``, ``ARRAY[...]``), comments (sqlcommenter
puts a trace id in each statement), whitespace and the case of keywords and unquoted names.
Quoted identifiers are kept exactly.

`fingerprint` never raises and is idempotent (``fingerprint(fingerprint(s)) == fingerprint(s)``),
for any text; results are cached in a bounded LRU keyed by the exact text, since an application
sends the same few hundred statement texts over and over.
"""

from __future__ import annotations

import re
from functools import lru_cache

__all__ = ["fingerprint", "short_sql"]

#: Statement texts whose fingerprint is kept (LRU). Texts are at most ``max_sql_length``
#: characters (4096 by default), so the cache holds at most a few megabytes.
CACHE_SIZE = 1024

# One token per match, tried in this order at each position. Every character of the input
# belongs to exactly one token, so tokenizing cannot fail.
_TOKEN = re.compile(
    r"""
      (?P<ws>\s+)
    | (?P<comment>/\*.*?(?:\*/|\Z)|--[^\n]*|\#[^\n]*)
    | (?P<estr>[Ee]'(?:[^'\\]|\\.|'')*(?:'|\Z))
    | (?P<str>(?:[NnXxBb]|[Uu]&)?'(?:[^']|'')*(?:'|\Z))
    | (?P<dollar>\$(?P<tag>[A-Za-z_][A-Za-z_0-9]*)?\$(?:.*?\$(?P=tag)?\$|.*\Z))
    | (?P<qident>"(?:[^"]|"")*(?:"|\Z)|`(?:[^`]|``)*(?:`|\Z))
    | (?P<param>%\([^)]*\)[a-z]|%s|\$\d+|\?\d*|(?<!:):(?:[A-Za-z_][A-Za-z_0-9]*|\d+)
                |@[A-Za-z_][A-Za-z_0-9]*)
    | (?P<hex>0[xX][0-9A-Fa-f]+)
    | (?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    | (?P<word>[A-Za-z_][A-Za-z_0-9$]*)
    | (?P<dots>\.+)
    | (?P<op>::|<>|!=|<=|>=|\|\||->>|->|[-+*/%<>=~!|&^])
    | (?P<other>.)
    """,
    re.S | re.X,
)

# Keywords are written upper-case, other unquoted names lower-case (SQL folds their case).
_KEYWORDS = frozenset(
    """
    ADD ALL ALTER AND ANY ARRAY AS ASC BEGIN BETWEEN BY CASE CAST COLLATE COMMIT CONFLICT
    CONSTRAINT CREATE CROSS CURRENT_DATE CURRENT_TIME CURRENT_TIMESTAMP DEFAULT DELETE DESC
    DISTINCT DO DROP ELSE END ESCAPE EXCEPT EXISTS EXPLAIN FETCH FIRST FOR FROM FULL GROUP HAVING
    ILIKE IN INDEX INNER INSERT INTERSECT INTO IS JOIN KEY LAST LATERAL LEFT LIKE LIMIT LOCK
    NATURAL NO NOT NOTHING NOWAIT NULL NULLS OF OFFSET ON ONLY OR ORDER OUTER OVER PARTITION
    PRIMARY RECURSIVE REFERENCES RELEASE REPLACE RETURNING RIGHT ROLLBACK ROW ROWS SAVEPOINT
    SELECT SET SHARE SKIP TABLE THEN TO TRANSACTION UNION UNIQUE UPDATE USING VALUES WHEN WHERE
    WINDOW WITH
    """.split()  # noqa: SIM905 - a word list reads better than 100 quoted strings
)
_BOOLEANS = frozenset(("TRUE", "FALSE"))

# Token classes in the normalized token list.
_P, _W, _K, _Q, _D, _O, _X = range(7)  # placeholder, word, keyword, quoted, dots, op, other

_ELLIPSIS = (_D, "...")
_PH = (_P, "?")


def _tokens(sql: str) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    append = out.append
    for m in _TOKEN.finditer(sql):
        group = m.lastgroup
        text = m.group()
        if group in ("ws", "comment"):
            continue
        if group == "word":
            upper = text.upper()
            if upper in _KEYWORDS:
                append((_K, upper))
                continue
            if upper not in _BOOLEANS:
                append((_W, text.lower()))
                continue
        elif group == "qident":
            append((_Q, text))
            continue
        elif group == "dots":
            append((_D, text))
            continue
        elif group == "op":
            append((_O, text))
            continue
        elif group == "other":
            append((_X, text))
            continue
        # A value: string, number, hex, boolean or placeholder. Signs written before it belong
        # to it (`x = -1` is `x = ?`) unless they follow an operand (`a - 1` stays `a - ?`).
        while out and out[-1][0] == _O and out[-1][1] in ("-", "+"):
            if len(out) > 1:
                cls, prev = out[-2]
                if not (cls in (_O, _K) or (cls == _X and prev not in (")", "]"))):
                    break
            out.pop()
        append(_PH)
    return out


def _is_values(tokens: list[tuple[int, str]], i: int) -> bool:
    """Whether tokens[i:] is ``(`` then only placeholders, commas and ``...``, then ``)``."""
    n = len(tokens)
    j = i + 1
    seen = False
    while j < n:
        cls, text = tokens[j]
        if cls == _X and text == ")":
            return seen
        if tokens[j] == _PH or tokens[j] == _ELLIPSIS:
            seen = True
        elif not (cls == _X and text == ","):
            return False
        j += 1
    return False


def _collapse(tokens: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """``IN (?, ?)`` -> ``IN (...)``; ``VALUES (?, ?), (?, ?)`` -> ``VALUES (...)``;
    ``ARRAY[?, ?]`` -> ``ARRAY[...]``."""
    out: list[tuple[int, str]] = []
    i, n = 0, len(tokens)
    while i < n:
        tok = tokens[i]
        out.append(tok)
        i += 1
        if tok[0] != _K or i >= n:
            continue
        word = tok[1]
        if word in ("IN", "VALUES", "ANY") and tokens[i] == (_X, "(") and _is_values(tokens, i):
            out.extend(((_X, "("), _ELLIPSIS, (_X, ")")))
            i = _close(tokens, i, ")") + 1
            if word == "VALUES":  # further rows of placeholders
                while (
                    i + 1 < n
                    and tokens[i] == (_X, ",")
                    and tokens[i + 1] == (_X, "(")
                    and _is_values(tokens, i + 1)
                ):
                    i = _close(tokens, i + 1, ")") + 1
        elif word == "ARRAY" and tokens[i] == (_X, "["):
            j = i + 1
            while j < n and (tokens[j] in (_PH, _ELLIPSIS) or tokens[j] == (_X, ",")):
                j += 1
            if j < n and j > i + 1 and tokens[j] == (_X, "]"):
                out.extend(((_X, "["), _ELLIPSIS, (_X, "]")))
                i = j + 1
    return out


def _close(tokens: list[tuple[int, str]], i: int, closer: str) -> int:
    j = i + 1
    while tokens[j] != (_X, closer):
        j += 1
    return j


def _join(tokens: list[tuple[int, str]]) -> str:
    parts: list[str] = []
    prev: tuple[int, str] | None = None
    for tok in tokens:
        cls, text = tok
        if prev is not None:
            pcls, ptext = prev
            tight = (
                cls == _D
                or pcls == _D
                or (cls == _X and text in (")", ",", "]", ";"))
                or (pcls == _X and ptext in ("(", "["))
                or (cls == _X and text in ("(", "[") and pcls in (_W, _Q))
                or (text == "[" and ptext == "ARRAY")
            )
            if not tight:
                parts.append(" ")
        parts.append(text)
        prev = tok
    return "".join(parts)


@lru_cache(maxsize=CACHE_SIZE)
def fingerprint(sql: str) -> str:
    """The normalized form of a SQL statement: values and placeholders become ``?``, lists of
    them ``(...)``, comments and extra whitespace go, keywords are upper-case and unquoted
    names lower-case. Never raises; ``fingerprint(fingerprint(s)) == fingerprint(s)``."""
    if not isinstance(sql, str):
        sql = str(sql)
    return _join(_collapse(_tokens(sql)))


_QUOTED = re.compile(r'"((?:[^"]|"")*)"|`((?:[^`]|``)*)`')


def _unquote(m: re.Match[str]) -> str:
    if m.group(1) is not None:
        return m.group(1).replace('""', '"')
    return m.group(2).replace("``", "`")


@lru_cache(maxsize=CACHE_SIZE)
def short_sql(fp: str, width: int = 100) -> str:
    """A fingerprint shortened for a one-line message: identifier quotes dropped, a long column
    list of a ``SELECT`` written ``...``, at most `width` characters
    (``SELECT ... FROM shop_author WHERE shop_author.id = ? LIMIT ?``)."""
    text = _QUOTED.sub(_unquote, fp)
    if text.startswith("SELECT "):
        start = 7
        if text.startswith("DISTINCT ", start):
            start += 9
        depth = 0
        i = start
        n = len(text)
        while i < n:
            c = text[i]
            if c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
            elif depth == 0 and text.startswith(" FROM ", i):
                columns = text[start:i]
                if len(columns) > 20 or "," in columns:
                    text = text[:start] + "..." + text[i:]
                break
            i += 1
    width = max(width, 8)
    return text if len(text) <= width else text[: width - 1] + "…"
