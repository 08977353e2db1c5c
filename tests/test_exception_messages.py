"""What a stage keeps of an exception's message: the application's own text, except where a
library's message systematically quotes what privacy by default keeps out — the input a
validation error refused (a request body's fields), the URL configuration Django tried on a
404."""

from __future__ import annotations

import json

import pytest

import stagetrace

SECRET = "pw-SECRETPW"


def exported(tl) -> str:
    return json.dumps(tl.to_dict())


def test_fastapi_request_validation_keeps_where_and_why_not_the_input(captured):
    """A body FastAPI refuses: the error says which field and why, never the value sent."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    import stagetrace.starlette

    from .asgi.login_app import app

    stagetrace.starlette.instrument()
    try:
        with TestClient(app) as client:
            response = client.post("/login", json={"password": SECRET, "pin": "x1234"})
    finally:
        stagetrace.starlette.uninstrument()
    assert response.status_code == 422
    assert SECRET in response.text  # FastAPI's own answer is untouched
    (tl,) = captured
    assert SECRET not in exported(tl) and "x1234" not in exported(tl)
    errors = {s.error.message for s in tl.stages if s.error is not None}
    assert errors == {
        "2 validation errors: body.password: String should have at least 12 characters; "
        "body.pin: Input should be a valid integer, unable to parse string as an integer"
    }


def test_a_pydantic_validation_error_raised_in_a_stage_keeps_no_input(captured):
    """Validating data in the application's own code: the same, for pydantic's error."""
    from pydantic import BaseModel, ValidationError

    class Card(BaseModel):
        number: int

    with pytest.raises(ValidationError), stagetrace.timeline("import"):
        Card(number="4242-SECRET")
    (tl,) = captured
    assert tl.stages[0].error.type == "pydantic_core._pydantic_core.ValidationError"
    assert tl.stages[0].error.message == (
        "1 validation error: number: Input should be a valid integer, unable to parse string"
        " as an integer"
    )


def test_keys_and_tags_from_the_input_are_not_kept_either(captured):
    """Where a validation error is can itself be input (a dictionary's keys, a key the model
    forbids), and some messages quote it (a union's tag): those parts are ``?`` and ``…``."""
    from typing import Literal, Union

    from pydantic import BaseModel, ConfigDict, Field, ValidationError

    email = "ann.secret@example.com"

    class Scores(BaseModel):
        by_user: dict[str, int]

    class Strict(BaseModel):
        model_config = ConfigDict(extra="forbid")
        name: str

    class Cat(BaseModel):
        kind: Literal["cat"]

    class Dog(BaseModel):
        kind: Literal["dog"]

    class Pet(BaseModel):
        pet: Union[Cat, Dog] = Field(discriminator="kind")  # noqa: UP007

    for build in (
        lambda: Scores(by_user={email: "many"}),
        lambda: Strict(name="x", **{email: 1}),
        lambda: Pet(pet={"kind": email}),
    ):
        with pytest.raises(ValidationError), stagetrace.timeline("import"):
            build()
    messages = [tl.stages[0].error.message for tl in captured]
    assert not any(email in m for m in messages), messages
    assert messages[0].startswith("1 validation error: by_user.?: Input should be a valid integer")
    assert messages[1] == "1 validation error: ?: Extra inputs are not permitted"
    assert messages[2].startswith("1 validation error: pet: Input tag '…' found using 'kind'")


def test_django_validation_error_keeps_its_templates_not_the_values(captured):
    """Django fills the refused value into its messages: the stage keeps the message before
    that, naming the parameter instead."""
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError), stagetrace.timeline("save"):
        raise ValidationError(
            {
                "age": ValidationError(
                    "“%(value)s” value must be an integer.", params={"value": "SECRET-AGE"}
                ),
                "email": ValidationError("Enter a valid email address."),
            }
        )
    (tl,) = captured
    assert tl.stages[0].error.message == (
        "age: “<value>” value must be an integer.; email: Enter a valid email address."
    )


def test_a_message_of_the_application_is_kept_as_it_is(captured):
    """Other exceptions keep their message (cut to 1,000 characters)."""
    with pytest.raises(ValueError), stagetrace.timeline("job"):
        raise ValueError("rate table for 2026-11 is missing")
    (tl,) = captured
    assert tl.stages[0].error.message == "rate table for 2026-11 is missing"


def test_an_unexpected_shape_keeps_nothing_rather_than_everything(captured):
    """A class named like FastAPI's whose ``errors()`` misbehaves: the type, no message."""
    import stagetrace._errors as errors

    class RequestValidationError(Exception):
        def errors(self) -> list[object]:
            raise RuntimeError("no")

    RequestValidationError.__module__ = "fastapi.exceptions"
    RequestValidationError.__qualname__ = "RequestValidationError"
    errors._found.clear()
    with pytest.raises(RequestValidationError), stagetrace.timeline("job"):
        raise RequestValidationError(f"body: {SECRET}")
    (tl,) = captured
    assert tl.stages[0].error.message == "RequestValidationError"


def test_an_http_clients_error_keeps_no_credentials_or_query_values(captured):
    """requests' connection error (urllib3 quotes the path and query it tried), httpx's status
    error (it quotes the whole URL, ``user:password@`` included) — against a closed port and
    a real server on loopback — and an application's own message quoting a URL: the stages
    keep the URLs with their credentials and query values redacted, the rest as it was."""
    import socket

    httpx = pytest.importorskip("httpx")
    requests = pytest.importorskip("requests")
    from stagetrace import httpclients
    from tests.servers import http_target

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    httpclients.install()
    try:
        with http_target() as url, stagetrace.timeline("job"):
            try:
                requests.get(f"http://127.0.0.1:{closed}/reset?token={SECRET}", timeout=5)
            except requests.ConnectionError:
                pass
            authed = url.replace("http://", f"http://ann:{SECRET}@")
            try:
                with stagetrace.stage("calling"):
                    httpx.get(f"{authed}/missing?token={SECRET}&page=2").raise_for_status()
            except httpx.HTTPStatusError:
                pass
            try:
                with stagetrace.stage("quoting"):
                    raise RuntimeError(f"see {url}/docs?lang=en for help")
            except RuntimeError:
                pass
            try:  # an OAuth implicit flow's redirect carries its token in the fragment
                with stagetrace.stage("fragment"):
                    raise RuntimeError(f"bad redirect to {url}/cb#access_token={SECRET}")
            except RuntimeError:
                pass
    finally:
        httpclients.uninstall()
    (tl,) = captured
    assert SECRET not in exported(tl)
    errors = [s.error.message for s in tl.stages if s.error is not None]
    refused = next(m for m in errors if "Max retries exceeded" in m)
    assert "with url: /reset?token=REDACTED (Caused by" in refused
    status = next(m for m in errors if "404" in m)
    host = url.removeprefix("http://")
    assert f"'http://REDACTED@{host}/missing?token=REDACTED&page=REDACTED'" in status
    assert f"see {url}/docs?lang=REDACTED for help" in errors
    assert f"bad redirect to {url}/cb#REDACTED" in errors
