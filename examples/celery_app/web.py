"""The web side of the example: a Flask view that enqueues the task."""

from __future__ import annotations

import flask
import stagetrace.flask

stagetrace.flask.instrument()

from proj import send_receipt  # noqa: E402

app = flask.Flask(__name__)


@app.post("/orders/<int:order_id>")
def place_order(order_id: int):
    result = send_receipt.delay(order_id)
    return {"order": order_id, "receipt_task": result.id}, 202
