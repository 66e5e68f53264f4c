"""Progress of a grading run: a bar on a terminal, a plain line every few seconds elsewhere.

A terminal gets one line redrawn in place (count, rate, time left, failures so far); a log file
or CI gets a line every `interval` seconds and a last one at the end, so it never floods and
never goes quiet for long.
"""
from __future__ import annotations

import os
import sys
import time


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Progress:
    def __init__(self, label: str, stream=None, interval: float = 5.0, width: int = 28,
                 terminal: bool | None = None, clock=time.monotonic, columns=None):
        self.label, self.interval, self.width, self.clock = label, interval, width, clock
        self.stream = stream if stream is not None else sys.stderr
        self.terminal = self.stream.isatty() if terminal is None else terminal
        self.columns = columns or self._terminal_columns
        self.total = self.done = self.failed = self.already = 0
        self.slowest: tuple[str, float] | None = None  # (student, seconds) of a long-running submission
        self.slow_after = 15.0
        self.started = self.last_shown = 0.0

    def start(self, total: int, already: int = 0) -> None:
        self.total, self.already = total, already
        self.started = self.last_shown = self.clock()
        if already:
            self._write(f"{self.label}: {already} unchanged since the last grading, {total} to grade", True)
        self._show(force=True)

    def advance(self, failed: bool = False) -> None:
        self.done += 1
        self.failed += bool(failed)
        self._show(force=self.terminal)

    def tick(self, running: dict[str, float] | None = None) -> None:
        """`running`: seconds each submission being run has taken so far. One that takes long
        (a loop running into its time limit) is named, so that a stalled count and time left
        are explained."""
        slowest = max((running or {}).items(), key=lambda item: item[1], default=None)
        self.slowest = slowest if slowest is not None and slowest[1] >= self.slow_after else None
        if self.done < self.total:  # the last line is finish()'s
            self._show(force=False)

    def finish(self) -> None:
        self._show(force=True, final=True)

    def line(self) -> str:
        elapsed = max(self.clock() - self.started, 1e-9)
        rate = self.done / elapsed
        parts = [f"{self.done}/{self.total} graded"]
        if self.done:
            parts.append(f"{rate * 60:.1f}/min")
            if self.done < self.total:
                parts.append(f"ETA {_duration((self.total - self.done) / rate)}")
        parts.append(f"{self.failed} did not run as handed in" if self.failed else "no failures")
        if self.slowest is not None and self.done < self.total:
            parts.append(f"{self.slowest[0]} running for {_duration(self.slowest[1])}")
        text = ", ".join(parts)
        if self.terminal:
            # One row: a line wider than the terminal wraps, and \r redraws only its last row.
            room = self.columns() - 1
            width = min(self.width, room - len(self.label) - len(text) - 4)
            if width < 5:
                return (f"{self.label}: {text}")[:room]
            filled = int(width * self.done / self.total) if self.total else width
            return f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {text}"
        return f"{self.label}: {text} ({_duration(elapsed)} elapsed)"

    def _terminal_columns(self) -> int:
        try:
            return os.get_terminal_size(self.stream.fileno()).columns or 80
        except (AttributeError, OSError, ValueError):  # not a real terminal (a test's StringIO)
            return 80

    def _show(self, force: bool, final: bool = False) -> None:
        now = self.clock()
        if not self.total:
            return
        if not force and now - self.last_shown < (0.2 if self.terminal else self.interval):
            return
        self.last_shown = now
        self._write(self.line(), final or not self.terminal)

    def _write(self, text: str, newline: bool) -> None:
        if self.terminal:
            self.stream.write("\r\x1b[2K" + text + ("\n" if newline else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
