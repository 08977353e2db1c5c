"""stagetrace's version, for the OTLP User-Agent, the instrumentation scope and the resource,
read without importing the ``stagetrace`` package (which imports the sinks, which import this)."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def version() -> str:
    """The installed stagetrace distribution's version, or ``"unknown"``."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("stagetrace")
    except PackageNotFoundError:
        return "unknown"
