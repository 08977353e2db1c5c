"""Fixtures for the analysis tests: recordings of the example apps, made at test time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RECORDER = ROOT / "scripts" / "record_examples.py"


def record(app: str, out: Path, repeat: int = 3) -> Path:
    """Run scripts/record_examples.py for one example app in its own process."""
    pytest.importorskip("django" if app == "django" else "fastapi")
    proc = subprocess.run(
        [sys.executable, str(RECORDER), app, str(out), "--repeat", str(repeat)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size > 0, proc.stderr
    return out


def recording(factory: pytest.TempPathFactory, app: str) -> Path:
    """The example app's recording for this session, made once (several conftests share it)."""
    path = factory.getbasetemp() / "recordings" / f"{app}.jsonl"
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_suffix(".part")
        tmp.unlink(missing_ok=True)
        record(app, tmp)
        tmp.rename(path)
    return path


@pytest.fixture(scope="session")
def django_recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bookshop example (examples/django_site) recorded with the jsonl sink."""
    return recording(tmp_path_factory, "django")


@pytest.fixture(scope="session")
def fastapi_recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The FastAPI example (examples/fastapi_app) recorded with the jsonl sink."""
    return recording(tmp_path_factory, "fastapi")
