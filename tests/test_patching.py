"""The patcher's weak patches: a class of the application's, wrapped on the class, made per
app (a middleware class defined in an app factory)."""

from __future__ import annotations

import gc
import weakref
from typing import Any

from stagetrace._patching import Patcher


def _wrapping(orig: Any) -> Any:
    def __call__(self: Any) -> str:
        return "ours:" + orig(self)

    return __call__


def _make_class() -> type:
    class Layer:
        def __call__(self) -> str:
            return "theirs"

    return Layer


def test_a_weakly_patched_class_is_freed_and_undo_skips_it() -> None:
    """What the patcher keeps to undo a weak patch does not keep the class alive; undo() of a
    class that is gone does nothing."""
    patcher = Patcher("test")
    cls = _make_class()
    patcher.wrap(cls, "__call__", _wrapping, weak=True)
    assert cls()() == "ours:theirs"
    gone = weakref.ref(cls)
    del cls
    gc.collect()
    assert gone() is None
    assert patcher.patches() == []
    patcher.undo()


def test_undo_restores_a_living_class_and_leaves_one_whose_attribute_went() -> None:
    """undo() puts the original back on a class that is still there; on one whose patched
    attribute someone deleted meanwhile it does nothing — it used to set the attribute to
    None (the weak reference to our wrapper, gone with it), leaving instances uncallable."""
    patcher = Patcher("test")
    kept, emptied = _make_class(), _make_class()
    original = vars(kept)["__call__"]
    for cls in (kept, emptied):
        patcher.wrap(cls, "__call__", _wrapping, weak=True)
    del emptied.__call__
    gc.collect()
    patcher.undo()
    assert vars(kept)["__call__"] is original and kept()() == "theirs"
    assert "__call__" not in vars(emptied)


def test_the_records_of_classes_that_are_gone_are_dropped() -> None:
    """An app built per test, thousands of times: the undo records of its classes, gone with
    it, do not pile up."""
    patcher = Patcher("test")
    for _ in range(2000):
        patcher.wrap(_make_class(), "__call__", _wrapping, weak=True)
        gc.collect(0)
    assert len(patcher._undo) < 600
    assert patcher.patches() == []


def test_a_timed_wrapper_left_in_place_goes_quiet_once_its_patcher_is_undone() -> None:
    """A `timed` wrapper that someone else's wrapper on top kept in place after `undo()`
    (SQLAlchemy's transaction stages, say) records nothing once its patcher is undone, and
    records again while it is applied; the wrapped function runs either way."""
    import stagetrace
    from stagetrace._patching import timed

    patcher = Patcher("test-timed")
    wrapped = timed("transaction", "commit", patcher=patcher)(lambda: "done")

    def kinds() -> list[str]:
        with stagetrace.capture() as got, stagetrace.timeline("job"):
            assert wrapped() == "done"
        return [s.kind for s in got[0].stages]

    patcher.start()
    assert kinds() == ["task", "transaction"]
    patcher.applied = False  # as `undo()` leaves it
    assert kinds() == ["task"]
