"""Importing stagetrace is free of side effects."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import stagetrace

CHECK = textwrap.dedent(
    """
    import sys, threading
    before = set(sys.modules)
    import stagetrace, stagetrace.sinks
    heavy = [m for m in sys.modules if m.split('.')[0] in
             ('django', 'starlette', 'fastapi', 'rich', 'jinja2')
             or m.startswith('opentelemetry.sdk')]
    print(repr((heavy, threading.active_count())))
    """
)


def test_import_pulls_in_no_framework_sdk_or_thread():
    """`import stagetrace` imports no web framework nor the OpenTelemetry SDK, starts no thread."""
    out = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    heavy, threads = eval(out)
    assert heavy == []
    assert threads == 1


def test_public_api_is_exactly_all():
    """Everything in __all__ exists and has a docstring when it is callable."""
    for name in stagetrace.__all__:
        obj = getattr(stagetrace, name)
        if callable(obj):
            assert obj.__doc__, name
