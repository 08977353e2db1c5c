"""Django adapter: every stage of Django's request flow, on by adding one app.

Add ``"stagetrace.django"`` to ``INSTALLED_APPS`` — nothing else, no middleware to place. Options
come from the ``STAGETRACE = {...}`` setting (see `stagetrace.configure` for the names). For
programmatic use, `instrument()` and `uninstrument()`; both are idempotent and may be called
before or after ``django.setup()``.
"""

from __future__ import annotations

try:
    import django  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised without Django installed
    raise ImportError('stagetrace.django needs Django: pip install "stagetrace[django]"') from exc

from ._install import instrument, is_instrumented, uninstrument

__all__ = ["instrument", "is_instrumented", "uninstrument"]
