"""tests/djapp's settings for a Celery worker process: a SQLite file the test prepares
(``STAGETRACE_TEST_DB``) instead of the in-memory test database."""

import os

from .settings import *  # noqa: F403

DATABASES = {
    "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["STAGETRACE_TEST_DB"]},
}
