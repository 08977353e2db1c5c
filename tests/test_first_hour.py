"""What a new user hits in their first hour (issue 8): each of these failed before its fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import stagetrace
from stagetrace.sinks import ConsoleSink, JsonlSink

ROOT = Path(__file__).resolve().parents[1]


def test_a_jsonl_path_always_writes_the_file_whatever_sinks_are_chosen(monkeypatch, tmp_path):
    """STAGETRACE_SINKS=console with STAGETRACE_JSONL=tl.jsonl used to write no file, silently."""
    path = tmp_path / "tl.jsonl"
    monkeypatch.setenv("STAGETRACE_SINKS", "console")
    monkeypatch.setenv("STAGETRACE_JSONL", str(path))
    sinks = stagetrace.configure(color="never").sinks
    assert [type(s) for s in sinks] == [ConsoleSink, JsonlSink]
    stagetrace.configure(sinks=[sinks[1]])  # keep the test's output quiet
    with stagetrace.timeline("job"):
        pass
    assert stagetrace.flush(5)
    assert '"name":"job"' in path.read_text()


@pytest.mark.skipif(not os.path.isdir("/sys/kernel"), reason="needs Linux's /sys")
def test_an_unwritable_jsonl_path_fails_at_configuration():
    """An unwritable file was found only at the first request (then only counted); now
    configuration says so, in one line, like a missing directory."""
    with pytest.raises(stagetrace.ConfigurationError, match=r"cannot write .*Permission denied"):
        stagetrace.configure(jsonl="/sys/kernel/stagetrace.jsonl")


def test_by_kind_reads_zero_for_a_kind_that_did_not_run(captured):
    """The README's `timelines[0].by_kind["db.query"].count` raised KeyError on a request
    without queries."""
    with stagetrace.timeline("job"):
        pass
    (tl,) = captured
    assert tl.by_kind["db.query"].count == 0 and "db.query" not in tl.by_kind
    with pytest.raises(KeyError):
        tl.by_kind["not a kind"]


def _django_check(
    installed_app: str, debug: bool = False, after: str = "", **env_vars: str
) -> subprocess.CompletedProcess[str]:
    script = f"""
import django, sys
from django.conf import settings
settings.configure(DEBUG={debug}, SECRET_KEY="x", INSTALLED_APPS=[{installed_app!r}])
django.setup()
from django.core.management import call_command
import stagetrace
print("sinks:", [type(s).__name__ for s in stagetrace.settings().sinks])
call_command("check")
"""
    script += after
    env = {k: v for k, v in os.environ.items() if not k.startswith("STAGETRACE_")}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env["PYTHONPATH"] = str(ROOT / "src")
    env.update(env_vars)
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )


def test_installed_apps_with_stagetrace_instead_of_stagetrace_django_is_a_check_error():
    """INSTALLED_APPS += ["stagetrace"] passed `manage.py check` and recorded nothing."""
    pytest.importorskip("django")
    done = _django_check("stagetrace")
    assert done.returncode != 0
    assert "stagetrace.E001" in done.stderr and 'Write "stagetrace.django" instead' in done.stderr


def test_django_under_debug_shows_waterfalls_by_default():
    """With DEBUG on and no sink chosen anywhere, the console sink is on: the README's first
    snippet shows something."""
    pytest.importorskip("django")
    on = _django_check("stagetrace.django", debug=True)
    off = _django_check("stagetrace.django", debug=False)
    assert on.returncode == 0 and off.returncode == 0, on.stderr + off.stderr
    assert "sinks: ['ConsoleSink']" in on.stdout
    assert "sinks: []" in off.stdout


def test_django_tests_run_without_the_waterfalls_debug_turned_on():
    """Django's test environment (``manage.py test``, pytest-django) turns ``DEBUG`` off after
    the apps are ready: the console sink and Server-Timing header that ``DEBUG`` proposed
    follow it off — no waterfall printed for every request of a test suite — and come back
    when the environment is torn down. A sink chosen explicitly stays."""
    pytest.importorskip("django")
    script = """
from django.test.utils import setup_test_environment, teardown_test_environment
def show(when):
    s = stagetrace.settings()
    print(when, [type(k).__name__ for k in s.sinks], s.server_timing)
show("before")
setup_test_environment(debug=False)  # as the test runner and pytest-django call it
show("testing")
teardown_test_environment()
show("after")
"""
    done = _django_check("stagetrace.django", debug=True, after=script)
    assert done.returncode == 0, done.stderr
    assert "before ['ConsoleSink'] True" in done.stdout
    assert "testing [] False" in done.stdout
    assert "after ['ConsoleSink'] True" in done.stdout
    chosen = _django_check(
        "stagetrace.django", debug=True, after=script, STAGETRACE_SINKS="console"
    )
    assert chosen.returncode == 0, chosen.stderr
    assert "testing ['ConsoleSink'] False" in chosen.stdout


def test_a_jsonl_path_under_debug_keeps_the_console(tmp_path):
    """STAGETRACE_JSONL under DEBUG writes the file *and* keeps the waterfalls: setting a path
    used to replace the console sink DEBUG turns on, silently."""
    pytest.importorskip("django")
    path = str(tmp_path / "t.jsonl")
    on = _django_check("stagetrace.django", debug=True, STAGETRACE_JSONL=path)
    assert on.returncode == 0, on.stderr
    assert "sinks: ['ConsoleSink', 'JsonlSink']" in on.stdout
