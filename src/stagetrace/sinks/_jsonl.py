from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from .._model import SchemaError, Timeline
from .._options import ConfigurationError

try:  # POSIX advisory locks keep lines whole when several processes append to one file.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class JsonlSink:
    """Appends one timeline per line (schema ``stagetrace/timeline@3``) to a file.

    Safe with several processes writing the same file (gunicorn workers): each line is written
    with one ``O_APPEND`` write under an exclusive ``flock``, so lines never interleave. The file
    is reopened when it is moved or deleted (log rotation) and after ``fork()``.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        parent = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(parent):
            raise ConfigurationError(
                f"stagetrace option 'jsonl': directory {parent!r} does not exist"
            )
        if os.path.isdir(self.path):
            raise ConfigurationError(f"stagetrace option 'jsonl': {self.path!r} is a directory")
        self._fd: int | None = None
        self._ino: tuple[int, int] | None = None
        try:  # can we write it? Say so now, at start-up, not at the first request.
            self._open()
        except OSError as exc:
            raise ConfigurationError(
                f"stagetrace option 'jsonl': cannot write {self.path!r} ({exc.strerror})"
            ) from None

    def _open(self) -> int:
        fd = self._fd
        if fd is not None:
            try:
                st = os.stat(self.path)
                if (st.st_dev, st.st_ino) == self._ino:
                    return fd
            except FileNotFoundError:
                pass
            self.close()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        st = os.fstat(fd)
        self._fd, self._ino = fd, (st.st_dev, st.st_ino)
        return fd

    def emit(self, timeline: Timeline) -> None:
        line = json.dumps(timeline.to_dict(), separators=(",", ":"), ensure_ascii=False)
        data = (line + "\n").encode("utf-8")
        fd = self._open()
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        finally:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def close(self) -> None:
        fd, self._fd, self._ino = self._fd, None, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def after_fork(self) -> None:
        # The descriptor is shared with the parent; keep it (O_APPEND makes that safe) but let
        # the child reopen it on rotation independently.
        pass

    def __repr__(self) -> str:
        return f"JsonlSink({self.path!r})"


@dataclass(frozen=True)
class BadLine:
    """A line of a JSON lines file that is not a timeline, and why."""

    lineno: int
    reason: str


def read_jsonl(stream: IO[str]) -> Iterator[Timeline | BadLine]:
    """Parse a JSON lines stream written by `JsonlSink`: a `Timeline` per good line, a
    `BadLine` for each line that is not valid JSON or not a timeline (blank lines skipped)."""
    for lineno, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except ValueError as exc:
            yield BadLine(lineno, f"not valid JSON ({exc})")
            continue
        try:
            yield Timeline.from_dict(data)
        except SchemaError as exc:
            yield BadLine(lineno, f"not a stagetrace timeline ({exc})")
