"""Repeated and duplicate queries are told apart by their whole SQL, not by the text recorded
for them: with a lowered ``max_sql_length``, Django's long column lists make two different
statements on one table share everything that is recorded."""

from __future__ import annotations

from django.test import Client

import stagetrace

from .conftest import by_kind

LIMIT = 100


def test_statements_sharing_their_recorded_text_are_not_taken_for_one(captured):
    """``/similar/`` runs ``... WHERE "djapp_book"."id" = %s`` six times (five ids, then the
    first again) and ``... WHERE "djapp_book"."author_id" = %s`` three times: both are cut to
    the same recorded text. Only the repeat of the first statement is a duplicate, only the
    first statement is an N+1; the recorded text stays cut."""
    stagetrace.configure(max_sql_length=LIMIT)
    assert Client().get("/similar/").status_code == 200
    (tl,) = captured
    queries = by_kind(tl, "db.query")[1:]  # the ids first
    assert len(queries) == 9
    by_pk, by_author, again = queries[:5], queries[5:8], queries[8]
    texts = {q.attrs["db.query.text"] for q in queries}
    assert len(texts) == 1  # what is recorded cannot tell them apart
    (text,) = texts
    assert len(text) == LIMIT + 1 and text.endswith("…")
    hashes = {q.attrs["stagetrace.db.query.hash"] for q in [*by_pk, again]}
    assert len(hashes) == 1
    assert {q.attrs["stagetrace.db.query.hash"] for q in by_author}.isdisjoint(hashes)

    # no query of the second statement is a duplicate of one of the first
    assert [q for q in by_author if "stagetrace.duplicate_of" in q.attrs] == []
    # the same statement with the same parameters still is
    assert again.attrs["stagetrace.duplicate_of"] == by_pk[0].id
    assert [q for q in by_pk if "stagetrace.duplicate_of" in q.attrs] == []

    n_plus_one = [f for f in tl.findings if f.kind == "n_plus_one"]
    assert len(n_plus_one) == 1, [f.message for f in n_plus_one]
    assert set(n_plus_one[0].stages) == {q.id for q in [*by_pk, again]}
    assert n_plus_one[0].attrs["count"] == 6
    duplicates = [f for f in tl.findings if f.kind == "duplicate_query"]
    assert len(duplicates) == 1, [f.message for f in duplicates]
    assert set(duplicates[0].stages) == {by_pk[0].id, again.id}
    assert duplicates[0].attrs["count"] == 2


def test_the_same_statements_are_one_when_their_text_is_recorded_whole(captured):
    """With the default limit nothing is cut: the two statements have different texts (and the
    analyzers see it as before)."""
    assert Client().get("/similar/").status_code == 200
    (tl,) = captured
    queries = by_kind(tl, "db.query")[1:]
    assert len({q.attrs["db.query.text"] for q in queries}) == 2
    assert all("…" not in q.attrs["db.query.text"] for q in queries)
    assert all("stagetrace.db.query.hash" not in q.attrs for q in queries)
    assert [f.attrs["count"] for f in tl.findings if f.kind == "n_plus_one"] == [6]
    assert [f.attrs["count"] for f in tl.findings if f.kind == "duplicate_query"] == [2]
