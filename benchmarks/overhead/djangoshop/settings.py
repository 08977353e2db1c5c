"""Settings of the benchmark shop: the seven standard middleware, DEBUG off, persistent
database connections (as production runs them).

Read from the environment, set by the benchmark: ``BENCH_DB`` is ``sqlite:<path>`` or
``postgres:<database>`` (127.0.0.1:5432, user postgres, trust auth); ``BENCH_STAGETRACE=1``
installs stagetrace's Django app.
"""

import os

SECRET_KEY = "benchmark-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "benchmarks.overhead.djangoshop.urls"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "benchmarks.overhead.djangoshop",
]
if os.environ.get("BENCH_STAGETRACE") == "1":
    INSTALLED_APPS.append("stagetrace.django")

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]


def _database() -> dict:
    kind, _, name = os.environ.get("BENCH_DB", "sqlite::memory:").partition(":")
    if kind == "postgres":
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": name,
            "USER": "postgres",
            "HOST": "127.0.0.1",
            "PORT": "5432",
            "CONN_MAX_AGE": None,
        }
    return {"ENGINE": "django.db.backends.sqlite3", "NAME": name, "CONN_MAX_AGE": None}


DATABASES = {"default": _database()}
