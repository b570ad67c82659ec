"""A steady one-line progress report with an ETA on stderr, drawn only when stderr is a terminal.

A long ``nori-wal load`` runs for minutes; on a terminal one line, rewritten in
place, says how far it is and how long is left. Piped or captured (CI, tests,
``2> file``) nothing extra is written, so the output stays what it always was.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO


def progress_line(done: int, total: int, elapsed: float, label: str = "") -> str:
    """``slice 12/40 (30%), about 1:05 left: N=8 nori always sync``; the ETA assumes the pace so far."""
    share = done / total if total else 1.0
    if done <= 0 or elapsed <= 0:
        left = "estimating time left"
    else:
        secs = round(elapsed / done * (total - done))
        left = f"about {secs // 60}:{secs % 60:02d} left"
    return f"slice {done}/{total} ({share:.0%}), {left}" + (f": {label}" if label else "")


class Progress:
    """The progress line and the messages printed above it (``say``), on one stream."""

    def __init__(
        self,
        total: int = 0,
        stream: TextIO | None = None,
        enabled: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._stream = stream if stream is not None else sys.stderr
        self.enabled = self._stream.isatty() if enabled is None else enabled
        self._clock = clock
        self._total, self._done, self._start = total, 0, clock()
        self._shown = ""

    def start(self, total: int) -> None:
        """Count ``total`` steps from now."""
        self._total, self._done, self._start = total, 0, self._clock()

    def step(self, label: str = "") -> None:
        """One more step is starting: redraw the line (the last step's pace sets the ETA)."""
        if self.enabled:
            self._draw(progress_line(self._done, self._total, self._clock() - self._start, label))
        self._done += 1

    def say(self, text: str) -> None:
        """Print one message line (always), keeping the progress line below it."""
        shown = self._shown
        self._clear()
        print(text, file=self._stream, flush=True)
        if shown:
            self._draw(shown)

    def close(self) -> None:
        """Remove the line; the stream is as if it had never been drawn."""
        self._clear()

    def _draw(self, line: str) -> None:
        self._stream.write("\r\x1b[K" + line)
        self._stream.flush()
        self._shown = line

    def _clear(self) -> None:
        if self._shown:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._shown = ""
