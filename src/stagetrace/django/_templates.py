"""``template`` and ``serialize`` stages.

Django templates render through ``Template._render``: top-level renders, ``{% include %}``,
inclusion tags (via ``Template.render``) and ``{% extends %}`` parents (which call ``_render``
directly) all pass there, so each is one stage, nested as rendered. Jinja2 (Django's Jinja2
backend) is shared with the Starlette adapter (`stagetrace.jinja2`).
"""

from __future__ import annotations

from typing import Any

from .. import _recorder
from .. import jinja2 as _jinja2
from .._patching import leave, timed
from ._common import patcher, qualname
from ._common import thread_wait as _thread_wait

_DTL = {"template.engine": "django"}


def _template_response_name(response: Any) -> str:
    renderer = getattr(response, "accepted_renderer", None)
    if renderer is not None:  # Django REST framework's Response
        return f"{type(response).__name__} {qualname(type(renderer))}"
    template = getattr(response, "template_name", None)
    cls = type(response).__name__
    if isinstance(template, str):
        return f"{cls} {template}"
    if isinstance(template, (list, tuple)) and template and isinstance(template[0], str):
        return f"{cls} {template[0]}"
    return cls


def _timed_render(orig: Any) -> Any:
    def _render(self: Any, context: Any) -> Any:
        if _recorder.current() is None:
            return orig(self, context)
        try:
            name = self.name or "<string>"
            # `{% include %}` names are SafeString, whose str() is itself: keep a plain str
            name = name if type(name) is str else str.__str__(str(name))
            rec = _recorder.enter("template", name, _DTL)
        except Exception as exc:
            _recorder.internal_error("django.template", exc)
            rec = None
        try:
            result = orig(self, context)
        except BaseException as exc:
            leave("django.template", rec, exc)
            raise
        leave("django.template", rec)
        return result

    return _render


def install_test_utils(module: Any) -> None:
    """Django's test environment replaces ``Template._render`` with its own
    ``instrumented_test_render`` (which skips the original): time that one as well."""
    patcher.wrap(module, "instrumented_test_render", _timed_render)


def install() -> None:
    from django.http import response as http_response
    from django.template import base
    from django.template.response import SimpleTemplateResponse

    patcher.wrap(base.Template, "_render", _timed_render)

    def render(orig: Any) -> Any:
        def render(self: Any) -> Any:
            if _recorder.current() is None or self._is_rendered:
                return orig(self)
            try:
                rec = _recorder.enter("serialize", _template_response_name(self))
            except Exception as exc:
                _recorder.internal_error("django.serialize", exc)
                rec = None
            _thread_wait(rec)
            try:
                result = orig(self)
            except BaseException as exc:
                leave("django.serialize", rec, exc)
                raise
            leave("django.serialize", rec)
            return result

        return render

    patcher.wrap(SimpleTemplateResponse, "render", render)

    patcher.wrap(
        http_response.JsonResponse,
        "__init__",
        timed("serialize", "JsonResponse", site="django.serialize"),
    )


def install_jinja2() -> None:
    _jinja2.install()


def uninstall_jinja2() -> None:
    _jinja2.uninstall()
