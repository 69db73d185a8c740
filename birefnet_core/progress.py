"""A console progress bar for long loops outside ComfyUI (CLI, scripts)."""

from __future__ import annotations

import sys
import time
from typing import Optional, TextIO


class ConsoleProgress:
    """``bar = ConsoleProgress(total, "predict"); bar.update(1, "name.png")``; one line, redrawn
    at most ten times a second, finished with a newline by ``close()``. Silent when ``total`` is 0
    and when the stream is not a terminal (a log file or a pipe gets no carriage-return debris;
    errors and results stay the only lines there)."""

    def __init__(self, total: int, description: str = "", stream: Optional[TextIO] = None, width: int = 30) -> None:
        self.total = total
        self.description = description
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.done = 0
        self._start = time.monotonic()
        self._drawn = 0.0
        isatty = getattr(self.stream, "isatty", None)
        self.interactive = bool(isatty is not None and isatty())

    def update(self, steps: int = 1, note: str = "") -> None:
        self.done = min(self.total, self.done + steps)
        now = time.monotonic()
        if self.done == self.total or now - self._drawn >= 0.1:
            self._drawn = now
            self._draw(note)

    def _draw(self, note: str) -> None:
        if not self.total or not self.interactive:
            return
        filled = int(self.width * self.done / self.total)
        elapsed = time.monotonic() - self._start
        line = (f"\r{self.description} [{'#' * filled}{'.' * (self.width - filled)}] "
                f"{self.done}/{self.total} {elapsed:.1f}s {note}")
        self.stream.write(line[:160].ljust(80))
        self.stream.flush()

    def close(self) -> None:
        if self.total and self.interactive:
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> "ConsoleProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
