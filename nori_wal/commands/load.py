"""``nori-wal load``: the contention load benchmark (the engine is nori_wal.loadtest)."""

from __future__ import annotations

import argparse

HELP = "contention benchmark: a writer, 1..64 producer processes per fsync policy, beside F, SQLite and Redis"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..loadtest import add_arguments as add
    add(parser)


def run(args: argparse.Namespace) -> int:
    from ..loadtest import run as run_load
    return run_load(args)
