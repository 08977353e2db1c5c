"""Packaging: what `pip install stagetrace` gives a user.

Builds the sdist and the wheel with `python -m build`, checks them with `twine check`, installs
the wheel — not editable — into a fresh virtualenv with every extra, and there runs
`stagetrace demo`, `stagetrace --version` and an import of every public module, from a directory
outside the checkout so nothing can come from the source tree. Marked `packaging`: slow (it
builds and installs from the package index), so CI runs it once, in the main run; the version
matrix cells leave it out (`-m "not packaging"`).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.packaging
tomllib = pytest.importorskip("tomllib")  # Python 3.11+; this module runs in the main run only

SRC = ROOT / "src" / "stagetrace"


def _public_names() -> list[str]:
    """Every module a user may import by name: the package and each subpackage or module with
    no leading underscore anywhere in its dotted name."""
    names = set()
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if not any(part.startswith("_") for part in parts):
            names.add(".".join(("stagetrace", *parts)))
    return sorted(names)


def source_version() -> str:
    text = (ROOT / "src" / "stagetrace" / "__init__.py").read_text(encoding="utf-8")
    m = re.search(r'^__version__ = "([^"]+)"$', text, re.M)
    assert m, "src/stagetrace/__init__.py has no __version__ line"
    return m[1]


def run(cmd: list[str], cwd: Path, timeout: int = 600, **kw: object) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload]
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc.stdout


def test_version_lives_in_one_place() -> None:
    """pyproject.toml takes the version from `stagetrace.__version__` (hatch's dynamic version),
    and the installed metadata agrees with the import."""
    import importlib.metadata

    import stagetrace

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert project["project"]["dynamic"] == ["version"]
    assert project["tool"]["hatch"]["version"]["path"] == "src/stagetrace/__init__.py"
    assert stagetrace.__version__ == source_version()
    assert importlib.metadata.version("stagetrace") == stagetrace.__version__


def test_metadata_is_complete() -> None:
    """Classifiers exist (trove), and name every supported Python and Django version; project
    URLs, keywords, readme and licence are set."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    classifiers = set(project["classifiers"])
    for v in ("3.10", "3.11", "3.12", "3.13"):
        assert f"Programming Language :: Python :: {v}" in classifiers
    for v in ("4.2", "5.2", "6", "6.1"):
        assert f"Framework :: Django :: {v}" in classifiers
    assert {"Framework :: FastAPI", "Framework :: Flask", "Typing :: Typed"} <= classifiers
    trove = pytest.importorskip("trove_classifiers")
    assert classifiers <= set(trove.classifiers), classifiers - set(trove.classifiers)
    assert {"Homepage", "Documentation", "Source", "Issues", "Changelog"} <= set(project["urls"])
    assert project["readme"] == "README.md" and project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"] and project["keywords"]


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist and wheel, built from this checkout."""
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], cwd=out)
    return out


def test_build_makes_sdist_and_wheel_that_twine_accepts(dist: Path) -> None:
    """`python -m build` makes exactly one sdist and one wheel of this version; `twine check
    --strict` passes (the README renders as the long description)."""
    version = source_version()
    names = sorted(p.name for p in dist.iterdir())
    assert names == [f"stagetrace-{version}-py3-none-any.whl", f"stagetrace-{version}.tar.gz"]
    out = run(
        [sys.executable, "-m", "twine", "check", "--strict", *map(str, dist.iterdir())], cwd=dist
    )
    assert out.count("PASSED") == 2


def test_wheel_contents(dist: Path) -> None:
    """The wheel holds the JSON Schema, py.typed, the licence, the report's assets, the demo's
    example site, every public module — and no tests, caches or databases."""
    (wheel,) = dist.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    info = f"stagetrace-{source_version()}.dist-info"
    for needed in (
        "stagetrace/timeline.schema.json",
        "stagetrace/py.typed",
        "stagetrace/report/assets/report.css",
        "stagetrace/report/assets/report.js",
        "stagetrace/_examples/django_site/manage.py",
        "stagetrace/_examples/django_site/shop/templates/shop/base.html",
        f"{info}/licenses/LICENSE",
        f"{info}/entry_points.txt",
    ):
        assert needed in names, needed
    for module in _public_names():
        path = module.replace(".", "/")
        assert f"{path}.py" in names or f"{path}/__init__.py" in names, module
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".sqlite3"))]
    assert not [n for n in names if n.startswith("tests/")]
    meta = zipfile.ZipFile(wheel).read(f"{info}/METADATA").decode()
    assert f"\nVersion: {source_version()}\n" in meta
    assert "Classifier: Framework :: Django :: 6.1" in meta
    assert "# stagetrace" in meta  # the README is the long description


@pytest.fixture(scope="module")
def installed(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the wheel (and all its extras) installed, not editable; pytest
    too, which loads the pytest plugin."""
    venv = tmp_path_factory.mktemp("venv") / "v"
    run([sys.executable, "-m", "venv", str(venv)], cwd=venv.parent)
    (wheel,) = dist.glob("*.whl")
    run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"{wheel}[all]", "pytest"],
        cwd=venv.parent,
        timeout=900,
    )
    return venv


def _clean_env(tmp: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("STAGETRACE_", "PYTHON", "DJANGO_", "OTEL_"))
    }
    env.update(COLUMNS="100", NO_COLOR="1", HOME=str(tmp))
    return env


def test_installed_wheel_runs_the_demo(installed: Path, tmp_path: Path) -> None:
    """`stagetrace demo` from the installed wheel runs the shipped example through its requests
    and prints their waterfalls, N+1 finding included; `--version` prints the version."""
    bin_ = installed / "bin"
    out = run(
        [str(bin_ / "stagetrace"), "demo"], cwd=tmp_path, env=_clean_env(tmp_path), timeout=300
    )
    assert "GET /api/books/ → 200" in out
    assert "n_plus_one" in out
    version = run([str(bin_ / "stagetrace"), "--version"], cwd=tmp_path, env=_clean_env(tmp_path))
    assert version.strip() == f"stagetrace {source_version()}"


def test_installed_wheel_imports_every_public_module(installed: Path, tmp_path: Path) -> None:
    """Each public module imports from the installed wheel (not from this checkout), the package
    is not an editable install, and its data files are found through importlib.resources."""
    script = f"""
import importlib, importlib.metadata, importlib.resources, json, sys
failed = {{}}
for name in {_public_names()!r}:
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed[name] = f"{{type(exc).__name__}}: {{exc}}"
import stagetrace
files = importlib.resources.files("stagetrace")
print(json.dumps({{
    "failed": failed,
    "file": stagetrace.__file__,
    "version": stagetrace.__version__,
    "metadata": importlib.metadata.version("stagetrace"),
    "schema": json.loads(files.joinpath("timeline.schema.json").read_text())["title"],
    "typed": files.joinpath("py.typed").is_file(),
    "direct_url": importlib.metadata.distribution("stagetrace").read_text("direct_url.json"),
}}))
"""
    out = json.loads(
        run(
            [str(installed / "bin" / "python"), "-c", script],
            cwd=tmp_path,
            env=_clean_env(tmp_path),
        )
    )
    assert out["failed"] == {}
    assert str(installed) in out["file"] and str(ROOT) not in out["file"]
    assert out["version"] == out["metadata"] == source_version()
    assert out["schema"].startswith("stagetrace/timeline@")
    assert out["typed"] is True
    assert '"editable"' not in (out["direct_url"] or "")
