"""A FastAPI app whose body model refuses short passwords (tests/test_exception_messages.py)."""

from fastapi import FastAPI
from pydantic import BaseModel, Field


class Login(BaseModel):
    password: str = Field(min_length=12)
    pin: int


app = FastAPI()


@app.post("/login")
def login(body: Login) -> dict[str, bool]:
    return {"ok": True}
