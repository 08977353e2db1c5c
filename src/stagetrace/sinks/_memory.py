from __future__ import annotations

from collections import deque

from .._model import Timeline


class MemorySink:
    """Keeps the last `size` timelines in memory (a ring buffer), e.g. for a debug page."""

    def __init__(self, size: int = 100) -> None:
        if size < 1:
            raise ValueError("MemorySink size must be at least 1")
        self._items: deque[Timeline] = deque(maxlen=size)

    def emit(self, timeline: Timeline) -> None:
        self._items.append(timeline)

    def timelines(self) -> list[Timeline]:
        """The kept timelines, oldest first."""
        return list(self._items)

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"MemorySink(size={self._items.maxlen})"
