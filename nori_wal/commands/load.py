"""``nori-wal load``: the contention load benchmark (the engine is nori_wal.load)."""

from __future__ import annotations

import argparse

HELP = "contention benchmark: a writer, 1..64 producer processes per fsync policy, beside F, SQLite and Redis"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..load import add_arguments as add

    add(parser)


def run(args: argparse.Namespace) -> int:
    from ..load import run as run_load
    from ._common import EXIT_USAGE, dir_path_problem, error

    problem = None if args.dir is None else dir_path_problem(args.dir)
    if problem is not None:  # a file in the way is a wrong path (exit 2), not a traceback
        error("load", problem)
        return EXIT_USAGE
    return run_load(args)
