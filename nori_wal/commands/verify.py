"""``nori-wal verify DIR``: check every segment's header, records, CRCs and seal, read-only.

Never modifies a file and needs no lock (safe beside a running writer). Judges
damage as recovery would (see ``nori_wal.inspect_log``): damage inside a sealed
segment (a cleanly closed last one included), garbage in the last one, or a
stop below the writer's durable mark is corruption; a torn or zero-filled tail
of the last segment past that mark is what a crash legally leaves (a warning).
A progress bar goes to stderr when it is a terminal (or with ``--progress``).

Exit codes: 0 no corruption (warnings allowed; ``--strict`` makes them fail);
1 corruption, each problem printed as ``segment N offset X: ...``; 2 a wrong path
or no segments; 4 an I/O error.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TextIO

from ..inspect_log import LogReport, NotAWalDirectory, inspect_log
from ..segment import segment_name
from ._common import EXIT_FAILED, EXIT_IO, EXIT_OK, check_dir, error, fail, guarded, human_bytes, n

HELP = "check every segment's header, records, CRCs and seal (read-only; exit 1 on corruption)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="the log directory")
    parser.add_argument(
        "--progress",
        action="store_true",
        default=None,
        help="show a progress bar on stderr even when it is not a terminal",
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="never show a progress bar")
    parser.add_argument(
        "--deep", action="store_true", help="accepted for scripts: every compressed value is always decompressed"
    )
    parser.add_argument(
        "--strict", action="store_true", help="fail (exit 1) on warnings too, e.g. a torn tail recovery would cut off"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="print one line per segment")


class ProgressBar:
    """A one-line progress bar on a stream, redrawn at most every ``interval`` seconds."""

    WIDTH = 30

    def __init__(
        self,
        stream: TextIO,
        label: str = "verify",
        interval: float = 0.1,
        delay: float = 0.0,
    ) -> None:
        self.stream, self.label, self.interval = stream, label, interval
        self._start = time.monotonic()
        self._next = self._start + delay
        self._shown = False
        self._final_drawn = False

    def __call__(self, done: int, total: int, segment_id: int) -> None:
        now = time.monotonic()
        final = done >= total
        if self._final_drawn or (now < self._next and not (final and self._shown)):
            return
        self._final_drawn = final
        self._next = now + self.interval
        frac = done / total if total else 1.0
        fill = int(frac * self.WIDTH)
        bar = "#" * fill + "." * (self.WIDTH - fill)
        self.stream.write(
            f"\r{self.label} [{bar}] {frac:4.0%}  {human_bytes(done)} / {human_bytes(total)}"
            f"  {segment_name(segment_id)}  "
        )
        self.stream.flush()
        self._shown = True

    def finish(self) -> None:
        if self._shown:
            self.stream.write("\n")
            self.stream.flush()


def _progress_bar(wanted: bool | None) -> ProgressBar | None:
    if wanted is False:
        return None
    if wanted:
        return ProgressBar(sys.stderr)
    if sys.stderr.isatty():
        return ProgressBar(sys.stderr, delay=0.5)  # small logs finish before it would flash
    return None


def report_lines(report: LogReport, verbose: bool) -> list[str]:
    """What verify prints: per-segment lines (verbose), then every problem."""
    lines = []
    if verbose:
        for s in report.segments:
            state = "sealed" if s.sealed else ("bad header" if s.header_problem else "open")
            lines.append(f"{segment_name(s.segment_id)}  {state:<10} {n(s.size):>15} bytes {n(s.records):>12} records")
    for p in report.problems:
        lines.append(f"{'corrupt' if p.fatal else 'warning'}: {p}")
    return lines


@guarded("verify")
def run(args: argparse.Namespace) -> int:
    directory = check_dir(args.dir)
    bar = _progress_bar(args.progress)
    t0 = time.perf_counter()
    try:
        report = inspect_log(directory, deep=args.deep, progress=bar)
    except NotAWalDirectory as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"reading {directory}: {exc}", EXIT_IO)
    finally:
        if bar is not None:
            bar.finish()
    elapsed = time.perf_counter() - t0
    for line in report_lines(report, args.verbose):
        print(line)
    fatal = [p for p in report.problems if p.fatal]
    warnings = len(report.problems) - len(fatal)
    summary = (
        f"{n(len(report.segments))} segments, {n(report.records)} records, "
        f"{human_bytes(report.bytes)} checked in {elapsed:.2f} s"
    )
    if fatal or (args.strict and warnings):
        print(f"FAILED: {len(fatal)} corrupt, {warnings} warnings; {summary}")
        sys.stdout.flush()
        first = fatal[0] if fatal else report.problems[0]
        error("verify", f"{'corruption' if fatal else 'warning (--strict)'} in {directory}: {first}")
        return EXIT_FAILED
    live = " (a live writer holds the directory: its last segment is still growing)" if report.live_writer else ""
    print(f"OK: {summary}" + (f" ({warnings} warnings)" if warnings else "") + live)
    return EXIT_OK
