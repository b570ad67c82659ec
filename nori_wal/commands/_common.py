"""Helpers shared by the command modules: one-line errors, positions, numbers."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, NoReturn

# The commands take the exit codes from here (re-exported: defined once, in nori_wal.exit_codes).
from ..exit_codes import EXIT_FAILED as EXIT_FAILED
from ..exit_codes import EXIT_IO as EXIT_IO
from ..exit_codes import EXIT_LOCKED as EXIT_LOCKED
from ..exit_codes import EXIT_OK as EXIT_OK
from ..exit_codes import EXIT_USAGE as EXIT_USAGE
from ..position import Position

Run = Callable[[argparse.Namespace], int]


class CommandError(Exception):
    """A clean failure of a command: printed as one line, exits with ``code``."""

    def __init__(self, message: str, code: int = EXIT_USAGE):
        super().__init__(message)
        self.code = code


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    raise CommandError(message, code)


def error(command: str, message: str) -> None:
    """Print ``nori-wal COMMAND: error: MESSAGE`` on stderr (one line)."""
    print(f"nori-wal {command}: error: {message}", file=sys.stderr, flush=True)


def warn(command: str, message: str) -> None:
    print(f"nori-wal {command}: warning: {message}", file=sys.stderr, flush=True)


def parse_position(text: str) -> Position:
    """``SEG:OFF`` or fail with exit 2."""
    try:
        return Position.parse(text)
    except ValueError as exc:
        fail(str(exc))


def count_arg(text: str) -> int:
    """An argparse type: a whole number, 0 or more (a negative count or size is bad usage, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def check_dir(path: str) -> str:
    """The path of an existing directory, or fail with exit 2."""
    if not os.path.exists(path):
        fail(f"{path}: no such directory")
    if not os.path.isdir(path):
        fail(f"{path}: not a directory")
    return path


def dir_path_problem(path: str) -> str | None:
    """Why ``path`` can never be a directory (a file on it or above it), or None.

    For commands that create their directory: a file in the way is a wrong path
    (exit 2), not an I/O error. Only the path's shape is judged; permissions and
    full disks are left to the real open, which reports them as I/O errors.
    """
    probe = path.rstrip(os.sep) or os.sep
    while not os.path.lexists(probe):
        parent = os.path.dirname(probe) or os.curdir
        if parent == probe:
            return None
        probe = parent
    if os.path.isdir(probe):
        return None
    if probe == (path.rstrip(os.sep) or os.sep):
        return f"{path}: not a directory"
    return f"{path}: {probe} is not a directory"


def n(value: float) -> str:
    """A number with thousands separators (``12,345``)."""
    return f"{value:,}" if isinstance(value, int) else f"{value:,.2f}"


def human_bytes(size: float) -> str:
    """``1.5 MiB``-style size."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def guarded(command: str) -> Callable[[Run], Run]:
    """Decorate ``run(args)``: CommandError becomes one line + its exit code, a closed pipe exits quietly."""

    def wrap(run: Run) -> Run:
        def guarded_run(args: argparse.Namespace) -> int:
            try:
                return int(run(args) or 0)
            except CommandError as exc:
                error(command, str(exc))
                return exc.code
            except BrokenPipeError:
                # ``nori-wal dump DIR | head``: the reader went away; stop quietly.
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                os.close(devnull)
                return EXIT_OK

        guarded_run.__doc__ = run.__doc__
        return guarded_run

    return wrap
