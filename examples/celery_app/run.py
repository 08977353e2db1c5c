"""One command: start a Celery worker, place an order through the Flask view (which enqueues
`orders.send_receipt`), wait for the worker to run it, and print both timelines — the request
with its `apply_async orders.send_receipt` stage, and the task's job timeline in the same trace.

    python examples/celery_app/run.py        # needs Redis on 127.0.0.1:6379
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = Path(tempfile.gettempdir()) / "stagetrace-celery-example.jsonl"


def main() -> int:
    OUT.unlink(missing_ok=True)
    os.environ["STAGETRACE_JSONL"] = str(OUT)
    env = {**os.environ, "STAGETRACE_SERVICE": "receipts-worker"}
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "proj",
            "worker",
            "--pool=solo",
            "--loglevel=WARNING",
        ],
        cwd=HERE,
        env=env,
    )
    try:
        sys.path.insert(0, str(HERE))
        from web import app

        import stagetrace

        stagetrace.configure(service="shop-web")
        reply = app.test_client().post("/orders/42").get_json()
        print("enqueued:", reply)
        stagetrace.flush()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            lines = OUT.read_text().splitlines() if OUT.exists() else []
            if any(json.loads(line)["protocol"] == "job" for line in lines):
                break
            time.sleep(0.2)
        else:
            print("the worker did not record the task (is Redis running?)", file=sys.stderr)
            return 1
    finally:
        worker.terminate()
        worker.wait(30)
    return subprocess.call([sys.executable, "-m", "stagetrace", "show", str(OUT)])


if __name__ == "__main__":
    raise SystemExit(main())
