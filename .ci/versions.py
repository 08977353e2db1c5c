"""Print the versions a CI cell runs with (Python and the frameworks stagetrace adapts to)."""

import sys
from importlib.metadata import PackageNotFoundError, version

parts = [f"Python {sys.version.split()[0]}"]
for dist in ("django", "starlette", "fastapi", "flask", "sqlalchemy", "celery",
             "opentelemetry-api", "opentelemetry-sdk"):
    try:
        parts.append(f"{dist} {version(dist)}")
    except PackageNotFoundError:
        parts.append(f"{dist} -")
print(", ".join(parts))
