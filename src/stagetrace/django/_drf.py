"""Django REST framework: serializer ``.data`` as a ``serialize`` stage.

DRF views are ordinary Django views to the view stage (named ``Class.action``), and DRF's
``Response`` renders through ``SimpleTemplateResponse.render``, which is a ``serialize`` stage
named after the renderer. What remains is the serializer's own work: ``.data``.
"""

from __future__ import annotations

from typing import Any

from .. import _recorder
from .._patching import leave
from ._common import patcher


def _serializer_name(serializer: Any) -> str:
    child = getattr(serializer, "child", None)
    if child is not None:  # ListSerializer(many=True)
        return f"{type(child).__name__}(many=True).data"
    return f"{type(serializer).__name__}.data"


def _data_getter(fget: Any) -> Any:
    def data(self: Any) -> Any:
        if _recorder.current() is None:
            return fget(self)
        try:
            rec = _recorder.enter_owned("serialize", _serializer_name(self), self, once=True)
        except Exception as exc:
            _recorder.internal_error("django.drf", exc)
            rec = None
        try:
            result = fget(self)
        except BaseException as exc:
            leave("django.drf", rec, exc)
            raise
        leave("django.drf", rec)
        return result

    return data


def install(module: Any) -> None:
    """Patch ``rest_framework.serializers`` (called when that module is imported)."""
    for cls in (module.BaseSerializer, module.Serializer, module.ListSerializer):
        if "data" in vars(cls):
            patcher.wrap_property(cls, "data", _data_getter)
