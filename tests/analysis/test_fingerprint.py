"""SQL fingerprints: what is folded, what is kept, and that it never fails."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stagetrace.analyzers import fingerprint, short_sql
from stagetrace.analyzers._fingerprint import CACHE_SIZE

CASES = [
    # (input, fingerprint) — literals
    ("SELECT * FROM t WHERE id = 42", "SELECT * FROM t WHERE id = ?"),
    (
        "SELECT * FROM t WHERE x = 1.5 AND y = .5 AND z = 1e-3",
        "SELECT * FROM t WHERE x = ? AND y = ? AND z = ?",
    ),
    ("SELECT * FROM t WHERE x = -1", "SELECT * FROM t WHERE x = ?"),
    ("SELECT a - 1 FROM t", "SELECT a - ? FROM t"),
    ("SELECT f(x) - 1, (-2) FROM t", "SELECT f(x) - ?, (?) FROM t"),
    ("SELECT * FROM t WHERE name = 'O''Brien'", "SELECT * FROM t WHERE name = ?"),
    (
        "SELECT * FROM t WHERE name = E'it\\'s' AND n = N'x'",
        "SELECT * FROM t WHERE name = ? AND n = ?",
    ),
    (
        "SELECT * FROM t WHERE h = 0xFF AND b = X'0A' AND c = B'101'",
        "SELECT * FROM t WHERE h = ? AND b = ? AND c = ?",
    ),
    (
        "SELECT * FROM t WHERE flag = TRUE OR flag = false",
        "SELECT * FROM t WHERE flag = ? OR flag = ?",
    ),
    ("SELECT * FROM t WHERE x IS NULL", "SELECT * FROM t WHERE x IS NULL"),
    ("SELECT $$a 'quoted' body$$, $fn$x$fn$", "SELECT ?, ?"),
    # placeholders of every DB-API paramstyle
    ("SELECT * FROM t WHERE a = %s AND b = %(name)s", "SELECT * FROM t WHERE a = ? AND b = ?"),
    (
        "SELECT * FROM t WHERE a = ? AND b = $1 AND c = :name AND d = :1 AND e = @p",
        "SELECT * FROM t WHERE a = ? AND b = ? AND c = ? AND d = ? AND e = ?",
    ),
    # lists collapse
    ("SELECT * FROM t WHERE id IN (1, 2, 3)", "SELECT * FROM t WHERE id IN (...)"),
    ("SELECT * FROM t WHERE id IN (%s)", "SELECT * FROM t WHERE id IN (...)"),
    ("SELECT * FROM t WHERE id NOT IN (%s, %s, %s, %s)", "SELECT * FROM t WHERE id NOT IN (...)"),
    (
        "SELECT * FROM t WHERE id IN (SELECT id FROM u)",
        "SELECT * FROM t WHERE id IN (SELECT id FROM u)",
    ),
    (
        "INSERT INTO t (a, b) VALUES (%s, %s), (%s, %s), (3, 'x')",
        "INSERT INTO t(a, b) VALUES (...)",
    ),
    ("INSERT INTO t (a) VALUES (%s) RETURNING id", "INSERT INTO t(a) VALUES (...) RETURNING id"),
    ("SELECT * FROM t WHERE id = ANY(%s)", "SELECT * FROM t WHERE id = ANY (...)"),
    ("SELECT ARRAY[1, 2, 3]", "SELECT ARRAY[...]"),
    # whitespace, case, comments
    ("select  *\n\tfrom   T\nwhere ID=1", "SELECT * FROM t WHERE id = ?"),
    ("SELECT 1 /* traceparent='00-abc-def-01' */", "SELECT ?"),
    ("SELECT 1 -- a comment\nFROM t", "SELECT ? FROM t"),
    # quoted identifiers are kept exactly, casts and qualified names keep their shape
    (
        'SELECT "Shop"."ID" FROM "Shop" WHERE "Shop"."ID" = %s LIMIT 21',
        'SELECT "Shop"."ID" FROM "Shop" WHERE "Shop"."ID" = ? LIMIT ?',
    ),
    ("SELECT `a` FROM `t`", "SELECT `a` FROM `t`"),
    ("SELECT x::text FROM s.t", "SELECT x :: text FROM s.t"),
    ("SELECT count(*) FROM t", "SELECT count(*) FROM t"),
    ("SELECT t1.c2 FROM table2 t1", "SELECT t1.c2 FROM table2 t1"),
    # broken input still gives a fingerprint
    ("SELECT 'unterminated", "SELECT ?"),
    ('SELECT "unterminated', 'SELECT "unterminated'),
    ("SELECT 1 /* unterminated", "SELECT ?"),
    ("", ""),
]


@pytest.mark.parametrize(("sql", "expected"), CASES)
def test_fingerprint_table(sql: str, expected: str) -> None:
    """Each statement folds to the documented fingerprint, and folding it again changes nothing."""
    assert fingerprint(sql) == expected
    assert fingerprint(expected) == expected


def test_statements_differing_only_in_values_share_a_fingerprint() -> None:
    """An ORM's repeated lookups, written with different values, list lengths, spacing and
    comments, all fold to one fingerprint; a different column does not."""
    same = {
        fingerprint("SELECT * FROM a WHERE id = 1"),
        fingerprint("select * from a where id=2 /* c */"),
        fingerprint("SELECT *\nFROM a\nWHERE id = %s"),
        fingerprint("SELECT * FROM a WHERE id = :id"),
    }
    assert len(same) == 1
    assert fingerprint("SELECT * FROM a WHERE id IN (1,2)") == fingerprint(
        "SELECT * FROM a WHERE id IN (%s, %s, %s, %s, %s)"
    )
    assert fingerprint("SELECT * FROM a WHERE name = 1") not in same


def test_fingerprint_is_cached_by_exact_text() -> None:
    """Repeated texts are answered from a bounded LRU cache."""
    fingerprint.cache_clear()
    for i in range(3):
        fingerprint(f"SELECT {i}")
    for _ in range(5):
        fingerprint("SELECT 0")
    info = fingerprint.cache_info()
    assert info.hits == 5
    assert info.currsize == 3
    assert info.maxsize == CACHE_SIZE


def test_short_sql_abbreviates_the_column_list() -> None:
    """Messages show ``SELECT ... FROM`` without identifier quotes, cut to the width given."""
    fp = fingerprint(
        'SELECT "shop_author"."id", "shop_author"."name" FROM "shop_author" '
        'WHERE "shop_author"."id" = %s LIMIT 21'
    )
    assert short_sql(fp) == "SELECT ... FROM shop_author WHERE shop_author.id = ? LIMIT ?"
    assert short_sql(fp, width=20) == "SELECT ... FROM sho…"
    sub = fingerprint("SELECT (SELECT x FROM b) AS y FROM a")
    assert short_sql(sub) == "SELECT ... FROM a"
    assert short_sql("SELECT a FROM t") == "SELECT a FROM t"


PIECES = [
    *"abcEeNxX01239 .,()[]'\"`$%?:@-+*/=<>!|#\n\t;_",
    *("--", "/*", "*/", "$$", "$a$", "%s", "%(a)s", "IN", "VALUES", "ARRAY", "ANY", "TRUE"),
    *("::", "select", "from", "é", "\x00", "\u2028"),
]
SQLISH = st.lists(
    st.sampled_from(PIECES),
    max_size=60,
).map("".join)


@settings(max_examples=1500, deadline=None)
@given(st.one_of(SQLISH, st.text(max_size=200)))
def test_fingerprint_never_raises_and_is_idempotent(sql: str) -> None:
    """Any text has a fingerprint, and a fingerprint is its own fingerprint."""
    fp = fingerprint(sql)
    assert isinstance(fp, str)
    assert fingerprint(fp) == fp
    assert isinstance(short_sql(fp), str)
