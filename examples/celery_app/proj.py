"""The Celery side of the example: one task, `orders.send_receipt`, on the Redis broker.

The worker: ``celery --workdir examples/celery_app -A proj worker`` (run.py starts it).
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from celery import Celery

import stagetrace
import stagetrace.celery

stagetrace.celery.instrument()  # in the web process and in the worker

DATABASE = Path(__file__).with_name("orders.sqlite3")
app = Celery("proj", broker=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/13"))
app.conf.update(task_ignore_result=True, broker_connection_retry_on_startup=True)


@app.task(name="orders.send_receipt")
def send_receipt(order_id: int) -> None:
    """Look the order up, render and 'send' the receipt."""
    with sqlite3.connect(DATABASE) as conn:
        conn.execute("create table if not exists receipt (order_id integer, sent real)")
        with stagetrace.stage("render receipt"):
            time.sleep(0.01)
        with stagetrace.stage("send mail", kind="http.client"):
            time.sleep(0.02)
        conn.execute("insert into receipt values (?, ?)", (order_id, time.time()))
