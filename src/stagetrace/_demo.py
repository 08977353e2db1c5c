"""``stagetrace demo``: a small job recorded with the public API and printed as waterfalls."""

from __future__ import annotations

import time
from typing import IO

from . import _api
from .sinks._console import render_waterfall


def run_demo(out: IO[str], *, color: bool, width: int) -> int:
    @_api.stage("fetch rates", kind="http.client", host="rates.example")
    def fetch_rates() -> dict[str, float]:
        time.sleep(0.004)
        return {"EUR": 0.92}

    with _api.capture() as timelines:
        for n in (2, 5):
            with _api.timeline("price-basket", items=n):
                rates = fetch_rates()
                for i in range(n):
                    with _api.stage("price item", index=i):
                        time.sleep(0.001 * rates["EUR"])
                with _api.stage("render receipt", kind="template"):
                    time.sleep(0.002)
    for i, tl in enumerate(timelines):
        if i:
            out.write("\n")
        out.write(render_waterfall(tl, width=width, color=color))
    return 0
