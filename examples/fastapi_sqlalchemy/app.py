"""FastAPI with async SQLAlchemy: a session dependency, an N+1 endpoint and its fix.

Run it (from the repository root; SQLite by default, tables created and filled at start-up):

    pip install -e '.[starlette]' fastapi uvicorn 'sqlalchemy[asyncio]' aiosqlite
    STAGETRACE_SINKS=console uvicorn --app-dir examples/fastapi_sqlalchemy app:app

then open http://127.0.0.1:8000/authors/n-plus-one and http://127.0.0.1:8000/authors (the fix).
On PostgreSQL: ``DATABASE_URL=postgresql+asyncpg://user@host/db`` (and ``pip install asyncpg``).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import stagetrace.sqlalchemy
import stagetrace.starlette

stagetrace.starlette.instrument()  # every FastAPI app in the process
stagetrace.sqlalchemy.instrument()  # every SQLAlchemy engine

from fastapi import Depends, FastAPI, HTTPException  # noqa: E402
from sqlalchemy import ForeignKey, func, select  # noqa: E402
from sqlalchemy.ext.asyncio import (  # noqa: E402
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import (  # noqa: E402
    DeclarativeBase,
    Mapped,
    mapped_column,
    relationship,
    selectinload,
)

DATABASE_URL = os.environ.get("DATABASE_URL", "sqlite+aiosqlite:///./fastapi_sqlalchemy.db")


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "example_author"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    books: Mapped[list[Book]] = relationship(back_populates="author", order_by="Book.id")


class Book(Base):
    __tablename__ = "example_book"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str]
    author_id: Mapped[int] = mapped_column(ForeignKey("example_author.id"))
    author: Mapped[Author] = relationship(back_populates="books")


engine = create_async_engine(DATABASE_URL)
Session = async_sessionmaker(engine, expire_on_commit=False)


async def seed() -> None:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
        await conn.run_sync(Base.metadata.create_all)
    async with Session() as session:
        session.add_all(
            Author(name=f"Author {a}", books=[Book(title=f"Book {a}.{b}") for b in range(3)])
            for a in range(1, 9)
        )
        await session.commit()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    await seed()
    yield
    await engine.dispose()


app = FastAPI(title="stagetrace FastAPI + SQLAlchemy example", lifespan=lifespan)


async def get_session() -> AsyncIterator[AsyncSession]:
    """One session per request, closed after the response."""
    async with Session() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


@app.get("/authors/n-plus-one")
async def authors_n_plus_one(session: SessionDep) -> list[dict[str, object]]:
    """One query for the authors, then one more per author: the N+1 pattern."""
    authors = (await session.scalars(select(Author).order_by(Author.id))).all()
    out = []
    for author in authors:
        books = (await session.scalars(select(Book).where(Book.author_id == author.id))).all()
        out.append({"author": author.name, "books": [b.title for b in books]})
    return out


@app.get("/authors")
async def authors(session: SessionDep) -> list[dict[str, object]]:
    """The fix: the books of all authors in one more query (selectinload)."""
    query = select(Author).options(selectinload(Author.books)).order_by(Author.id)
    authors = (await session.scalars(query)).all()
    return [{"author": a.name, "books": [b.title for b in a.books]} for a in authors]


@app.post("/authors/{author_id}/books", status_code=201)
async def add_book(author_id: int, title: str, session: SessionDep) -> dict[str, object]:
    """A write in a transaction (begin, insert, commit)."""
    async with session.begin():
        author = await session.get(Author, author_id)
        if author is None:
            raise HTTPException(404, "no such author")
        book = Book(title=title, author=author)
        session.add(book)
    count = await session.scalar(select(func.count()).where(Book.author_id == author_id))
    return {"id": book.id, "books_by_author": count}
