"""The ORM models of the SQLAlchemy tests: users with posts."""

from __future__ import annotations

from sqlalchemy import ForeignKey
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "st_user"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    posts: Mapped[list[Post]] = relationship(back_populates="user", order_by="Post.id")


class Post(Base):
    __tablename__ = "st_post"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str]
    user_id: Mapped[int] = mapped_column(ForeignKey("st_user.id"))
    user: Mapped[User] = relationship(back_populates="posts")


def seed_rows() -> list[User]:
    return [
        User(name=f"user {u}", posts=[Post(title=f"post {u}.{p}") for p in range(2)])
        for u in range(1, 7)
    ]
