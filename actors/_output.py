"""Whole-line output: the driver and every actor write to one terminal or pipe, and no line may land inside another.

A pipe keeps a write of at most PIPE_BUF bytes in one piece, so lines go out whole, in writes of at most PIPE_BUF
bytes each (a longer line goes alone, in as many writes as it takes). Actors' output reaches `write_lines` through
their prefixing pumps (actors/_runtime/worker.py); the driver's `print`s through `whole_lines`, which holds back a partial
line until its end arrives: unbuffered, `print` is two writes, and a buffered stream flushes wherever it is full.
"""
from __future__ import annotations

import contextlib
import os
import select
import sys


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_lines(fd: int, lines: list[bytes]) -> None:
    """Write `lines` (each ending in a newline) to `fd` in as few writes as keep every line whole."""
    batch = b""
    for line in lines:
        if batch and len(batch) + len(line) > select.PIPE_BUF:
            _write_all(fd, batch)
            batch = b""
        batch += line
    if batch:
        _write_all(fd, batch)


class WholeLines:
    """A text stream that passes only whole lines on to `stream`, each batch in one write to its file descriptor."""

    def __init__(self, stream):
        self.stream = stream
        self.pending = ""

    def write(self, text: str) -> int:
        self.pending += text
        cut = self.pending.rfind("\n") + 1
        if cut:
            head, self.pending = self.pending[:cut], self.pending[cut:]
            self._send(head)
        return len(text)

    def flush(self) -> None:
        if self.pending:
            head, self.pending = self.pending, ""
            self._send(head)
        self.stream.flush()

    def _send(self, text: str) -> None:
        try:
            fd = self.stream.fileno()
            data = text.encode(self.stream.encoding or "utf-8", self.stream.errors or "strict")
        except (AttributeError, OSError, ValueError):
            self.stream.write(text)         # not backed by a file (an in-memory capture, say): no one to splice
            return
        self.stream.flush()                 # what was written to it before us goes first
        write_lines(fd, data.splitlines(keepends=True))

    def fileno(self) -> int:
        return self.stream.fileno()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def __getattr__(self, name):
        return getattr(self.stream, name)   # encoding, errors, buffer, reconfigure...


@contextlib.contextmanager
def whole_lines():
    """sys.stdout and sys.stderr write whole lines while this lasts (the driver, while its system runs)."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = (None if s is None else WholeLines(s) for s in saved)
    try:
        yield
    finally:
        for name, original in zip(("stdout", "stderr"), saved):
            ours = getattr(sys, name)
            if isinstance(ours, WholeLines) and ours.stream is original:
                setattr(sys, name, original)
                with contextlib.suppress(ValueError, OSError):     # closed meanwhile: nothing to flush
                    ours.flush()
