"""``"stagetrace"`` in ``INSTALLED_APPS`` is a mistake for ``"stagetrace.django"``: this app
config makes Django's system checks say so instead of silently recording nothing."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.core import checks


class MisplacedStagetraceConfig(AppConfig):
    """Found by Django when ``"stagetrace"`` is listed; records nothing, reports an error."""

    name = "stagetrace"
    label = "stagetrace_misplaced"
    verbose_name = "stagetrace (misplaced)"
    default = True

    def ready(self) -> None:
        checks.register(_check_app_name)


def _check_app_name(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    return [
        checks.Error(
            '"stagetrace" is in INSTALLED_APPS, which records nothing.',
            hint='Write "stagetrace.django" instead.',
            id="stagetrace.E001",
        )
    ]
