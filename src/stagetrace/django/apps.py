from __future__ import annotations

from django.apps import AppConfig


class StagetraceConfig(AppConfig):
    """Reads ``settings.STAGETRACE`` and instruments Django when the app registry is ready."""

    name = "stagetrace.django"
    label = "stagetrace"
    verbose_name = "stagetrace"
    default = True

    def ready(self) -> None:
        from . import _install

        if _install.is_instrumented():  # instrument() ran before setup: read the settings now
            _install.load_settings()
        else:
            _install.instrument()
