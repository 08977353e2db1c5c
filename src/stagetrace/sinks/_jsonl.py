from __future__ import annotations

import errno
import gzip
import io
import json
import math
import os
import re
import sys
import unicodedata
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from .._model import SchemaError, Timeline
from .._options import ConfigurationError

try:  # POSIX advisory locks keep lines whole when several processes append to one file.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


#: Lone surrogates: what Python makes of bytes that are not UTF-8 (``surrogateescape``).
_SURROGATE = re.compile("[\ud800-\udfff]")


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
        data = timeline.to_dict()
        try:
            line = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except ValueError:  # a NaN or infinite number (an analyzer's 0/0 ratio)
            line = json.dumps(finite_json(data), separators=(",", ":"), ensure_ascii=False)
        try:
            raw = (line + "\n").encode("utf-8")
        except UnicodeEncodeError:
            # A lone surrogate (a file name from os.fsdecode, an environment value) cannot be
            # UTF-8: written as U+FFFD, as readers show undecodable bytes, not the line lost.
            raw = (replace_surrogates(line) + "\n").encode("utf-8")
        fd = self._open()
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        view = memoryview(raw)
        try:
            while view:
                written = os.write(fd, view)
                view = view[written:]
        except OSError:
            _take_back(fd, len(raw) - len(view))
            raise
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
        """In a forked child: write through an open file of its own. The inherited descriptor
        is the parent's open file, and an flock belongs to the open file, so the child would
        share the parent's lock instead of being excluded by it (lines could interleave, and a
        failed write's repair cut the other's line). Reopened at the next write."""
        self.close()  # the child's copy only: the parent's descriptor and lock are untouched

    def __repr__(self) -> str:
        return f"JsonlSink({self.path!r})"


def replace_surrogates(text: str) -> str:
    """`text` with each lone surrogate (what Python makes of bytes that are not UTF-8, in a file
    name or the environment) as U+FFFD, as a UTF-8 reader shows undecodable bytes."""
    return _SURROGATE.sub("\ufffd", text)


def finite_json(value: Any) -> Any:
    """JSON data with each NaN or infinite float as the string ``"NaN"``, ``"Infinity"`` or
    ``"-Infinity"``: JSON has no such numbers, and readers other than Python's refuse the bare
    tokens `json.dumps` writes for them."""
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def _take_back(fd: int, written: int) -> None:
    """Remove the `written` bytes of a line whose write was cut short (disk full, file size
    limit): left there, the next line would be appended to them and be unreadable too. Under
    the lock no other writer appended after them, so they are the end of the file."""
    if written:
        try:
            os.ftruncate(fd, max(0, os.fstat(fd).st_size - written))
        except OSError:
            pass  # the write's own error is the one to report


@dataclass(frozen=True)
class BadLine:
    """A line of a JSON lines file that is not a timeline, and why."""

    lineno: int
    reason: str


def text_of(raw: IO[bytes], owned: bool = True) -> IO[str]:
    """`raw`, a buffered binary stream (a file, a pipe, standard input), as text: gunzipped
    when it starts with gzip's magic bytes — peeked at, never read, since a pipe cannot seek
    back — and undecodable bytes replaced. Closing the text closes `raw` when `owned`."""
    peek = getattr(raw, "peek", None)
    gzipped = peek is not None and _gzip_first(peek)
    binary: Any = _Gunzip(raw, owned) if gzipped else raw
    return io.TextIOWrapper(binary, encoding="utf-8", errors="replace", newline=None)


def _gzip_first(peek: Any) -> bool:
    """Whether a stream starts as gzip does. Its first byte only: a pipe's writer may have
    written just that one yet, and ``peek`` returns what one read gives (0x1f starts no line
    of JSON, and a stream that is not gzip after all fails in one line as a bad gzip file)."""
    return peek(1)[:1] == b"\x1f"  # type: ignore[no-any-return]


class _Gunzip(gzip.GzipFile):
    """A gzip stream over an open binary stream, closing that stream too when `owned`."""

    def __init__(self, raw: IO[bytes], owned: bool) -> None:
        super().__init__(fileobj=raw, mode="rb")
        self._raw = raw if owned else None

    def close(self) -> None:
        try:
            super().close()
        finally:
            raw, self._raw = self._raw, None
            if raw is not None:
                raw.close()


def open_text(path: str | os.PathLike[str]) -> IO[str]:
    """A text stream of a JSON lines file, plain or gzip-compressed (told by its first bytes,
    not its name); undecodable bytes are replaced rather than fatal. Opened once and never
    seeked: a named pipe (``<(zcat app.jsonl.gz)``) reads as a file does."""
    raw = open(path, "rb")  # noqa: SIM115 - closed with the returned stream
    try:
        return text_of(raw)
    except BaseException:
        raw.close()
        raise


class StdinClosed(OSError):
    """`open_stdin` with no standard input (the process started with it closed: ``<&-``)."""

    def __init__(self) -> None:
        super().__init__(errno.EBADF, "standard input is closed")


def open_stdin() -> IO[str]:
    """Standard input as `open_text` reads a file: plain or gzip-compressed (told by its first
    bytes), undecodable bytes replaced. Standard input replaced by a text stream without
    bytes underneath (a test's) is read as it is. `StdinClosed` when there is none."""
    if sys.stdin is None:
        raise StdinClosed
    binary: Any = getattr(sys.stdin, "buffer", None)
    if getattr(binary, "peek", None) is None:
        return sys.stdin
    return text_of(binary, owned=False)  # `done_with_stdin` detaches it: stdin stays open


#: Characters that would make a path invisible or ambiguous in a one-line message: control
#: characters (a line break splits the message), bidi controls, line and paragraph separators.
_UNSHOWABLE = frozenset(("Cc", "Cf", "Zl", "Zp"))


def path_label(path: str) -> str:
    """How the command line names an input (or output) path in its one-line messages:
    ``<stdin>`` for ``-``; the path as it is, unless that would not show it — empty (an unset
    shell variable), blank at either end, or with a control character, a line break or a bidi
    control in it — then quoted, with escapes (``''``, ``'a\\nb.jsonl'``)."""
    if path == "-":
        return "<stdin>"
    if (
        path
        and path.strip() == path
        and not any(unicodedata.category(c) in _UNSHOWABLE for c in path)
    ):
        return path
    return repr(path)


def done_with_stdin(stream: IO[str]) -> None:
    """Let go of what `open_stdin` returned without closing standard input: the wrapper is
    detached, so collecting it later closes nothing (a second command in the same process,
    an embedding tool, a REPL keep their standard input)."""
    if stream is not sys.stdin and isinstance(stream, io.TextIOWrapper):
        try:
            stream.detach()
        except (ValueError, OSError):
            pass


#: The first bytes of files compressed by tools other than gzip, as the reader (which replaces
#: undecodable bytes with U+FFFD) sees them: one clear problem, rather than "not valid JSON"
#: for every line break among the compressed bytes.
_OTHER_COMPRESSION = (
    (re.compile("\ufffd7zXZ\x00"), "xz"),
    (re.compile("BZh[1-9]1AY&SY"), "bzip2"),
    (re.compile("\\(\ufffd/\ufffd"), "zstd"),
)

#: What reading a compressed file that ends early or is corrupt raises, line by line.
_READ_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)


def read_jsonl(source: IO[str] | str | os.PathLike[str]) -> Iterator[Timeline | BadLine]:
    """Parse what `JsonlSink` wrote: a `Timeline` per good line, a `BadLine` for each line
    that is not valid JSON or not a timeline (blank lines skipped). `source` is a text stream
    (whose read errors reach the caller; see `read_to_end`), or the path of a file — plain or
    gzip-compressed — opened when reading starts and closed at the end, read as `read_to_end`
    reads."""
    if isinstance(source, (str, os.PathLike)):
        return _read_file(source)
    return _read(source, to_end=False)


def read_to_end(stream: IO[str]) -> Iterator[Timeline | BadLine]:
    """`read_jsonl` of a stream, where a compressed file that ends early or is corrupt gives a
    last `BadLine` saying so instead of raising."""
    return _read(stream, to_end=True)


def _read_file(path: str | os.PathLike[str]) -> Iterator[Timeline | BadLine]:
    with open_text(path) as stream:
        yield from _read(stream, to_end=True)


def _read(stream: IO[str], to_end: bool) -> Iterator[Timeline | BadLine]:
    lineno = 0
    try:
        for lineno, line in enumerate(stream, 1):
            if lineno == 1:
                tool = next((t for magic, t in _OTHER_COMPRESSION if magic.match(line)), None)
                if tool is not None:
                    yield BadLine(
                        1,
                        f"compressed with {tool}, which stagetrace does not read "
                        "(gzip it, or decompress it into standard input: -)",
                    )
                    return
            item = _parse(lineno, line)
            if item is not None:
                yield item
    except _READ_ERRORS as exc:
        if not to_end:
            raise
        yield BadLine(lineno + 1, f"the compressed file ends early or is corrupt ({exc})")


def _parse(lineno: int, line: str) -> Timeline | BadLine | None:
    if not line.strip():
        return None
    try:
        data = json.loads(line)
    except ValueError as exc:
        return BadLine(lineno, f"not valid JSON ({exc})")
    try:
        return Timeline.from_dict(data)
    except SchemaError as exc:
        return BadLine(lineno, f"not a stagetrace timeline ({exc})")
