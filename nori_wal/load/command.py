"""The command line of ``nori-wal load`` and ``scripts/load.py``: flags, their defaults, the printed run."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable

from .plan import (
    DEFAULT_MODES,
    DEFAULT_PRODUCERS,
    DEFAULT_SECONDS,
    DEFAULT_SLICES,
    FULL_SECONDS,
    MODES,
    PEERS,
    POLICIES,
    QUICK_PRODUCERS,
    QUICK_SECONDS,
    parse_counts,
    parse_list,
)
from .plot import DEFAULT_PLOT, INSTALL_HINT, plot_note
from .report import render, report_json
from .run import run_load

DESCRIPTION = "The contention load benchmark: the main job (``nori-wal load``, ``scripts/load.py``)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dir",
        default=None,
        help="where to put the logs (a fresh subdirectory is made and removed after; "
        "default: the system temp dir). Measure the disk you care about.",
    )
    p.add_argument(
        "--producers", default=None, help=f"producer counts (default {','.join(map(str, DEFAULT_PRODUCERS))})"
    )
    p.add_argument("--policies", default=None, help="fsync policies: always,batch,os (default all)")
    p.add_argument(
        "--modes", default=None, help="sync,pipelined,submit,batch (default sync,pipelined,batch; --full: all four)"
    )
    p.add_argument(
        "--seconds",
        type=float,
        default=None,
        help=f"seconds per cell (default {DEFAULT_SECONDS:g}; --quick {QUICK_SECONDS:g}; --full {FULL_SECONDS:g})",
    )
    p.add_argument(
        "--slices",
        type=int,
        default=DEFAULT_SLICES,
        help=f"interleaved slices per cell: the cells at one producer count take turns, in order "
        f"then in reverse (default {DEFAULT_SLICES}; 1: one after the other)",
    )
    p.add_argument("--depth", type=int, default=32, help="appends in flight per producer in pipelined mode")
    p.add_argument("--batch-size", type=int, default=100, help="records per append_batch in batch mode")
    p.add_argument("--peers", default=",".join(PEERS), help="peers to run beside: sqlite,yardstick,redis")
    p.add_argument("--no-peers", action="store_true", help="run no peers (F is still measured)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="a ~30 s run: producers 1,8, policies always,os")
    g.add_argument(
        "--full",
        action="store_true",
        help="the whole matrix: every policy and mode, every peer beside every policy, 3 s cells",
    )
    p.add_argument("--f-seconds", type=float, default=1.0, help="length of each raw fdatasync probe (s)")
    p.add_argument(
        "--plot",
        default=DEFAULT_PLOT,
        help=f"PNG of throughput against producers per mode, the peers beside (needs matplotlib: "
        f"{INSTALL_HINT}; default ./{DEFAULT_PLOT})",
    )
    p.add_argument("--no-plot", action="store_true", help="write no PNG")
    p.add_argument("--json", default=None, help="also write the results as JSON to this path")
    p.add_argument("--keep", action="store_true", help="keep the run directory (for inspection)")


def resolve(args: argparse.Namespace) -> None:
    """Fill the derived settings (lists, defaults per --quick/--full) into ``args``; ValueError if bad."""
    prod: tuple[int, ...]
    pols: tuple[str, ...]
    if args.quick:
        prod, pols, secs = QUICK_PRODUCERS, ("always", "os"), QUICK_SECONDS
    elif args.full:
        prod, pols, secs = DEFAULT_PRODUCERS, POLICIES, FULL_SECONDS
    else:
        prod, pols, secs = DEFAULT_PRODUCERS, POLICIES, DEFAULT_SECONDS
    args.producers_list = parse_counts(args.producers) if args.producers else list(prod)
    args.policies_list = parse_list(args.policies, POLICIES, "policy") if args.policies else list(pols)
    default_modes = MODES if args.full else DEFAULT_MODES
    args.modes_list = parse_list(args.modes, MODES, "mode") if args.modes else list(default_modes)
    args.peers_list = [] if args.no_peers else (parse_list(args.peers, PEERS, "peer") if args.peers.strip() else [])
    args.seconds = secs if args.seconds is None else args.seconds
    if not args.seconds > 0:
        raise ValueError(f"--seconds must be > 0, got {args.seconds}")
    if args.depth < 1 or args.batch_size < 1 or args.slices < 1:
        raise ValueError("--depth, --batch-size and --slices must be >= 1")
    if not args.f_seconds > 0:
        raise ValueError(f"--f-seconds must be > 0, got {args.f_seconds}")


def run(args: argparse.Namespace) -> int:
    """``nori-wal load``: run, print the tables and ratios; 0 on success, 2 bad usage, 1 a cell failed."""
    try:
        resolve(args)
    except ValueError as exc:
        print(f"nori-wal load: {exc}", file=sys.stderr)
        return 2
    try:
        rep = run_load(args)
    except KeyboardInterrupt:
        print("nori-wal load: interrupted", file=sys.stderr)
        return 130
    if not args.no_plot:
        rep.notes.append(plot_note(rep, args.plot, args.depth, args.batch_size))
    print(render(rep, args.depth, args.batch_size), flush=True)  # first: a failed --json write loses nothing
    if args.json:
        try:
            with open(args.json, "w") as fh:
                json.dump(report_json(rep), fh, indent=1)
        except OSError as exc:
            print(f"nori-wal load: error: writing {args.json}: {exc.strerror or exc}", file=sys.stderr)
            return 4
    return 1 if any(r.error for r in rep.results) else 0


def main(argv: Iterable[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="load", description=DESCRIPTION)
    add_arguments(p)
    return run(p.parse_args(None if argv is None else list(argv)))
