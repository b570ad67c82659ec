"""The run: plan the cells, start the servers and the producer pool, run every slice, tear down.

Cells are ordered by producer count, every system at N before N+1, and within
one N they take turns slice by slice (``plan.slice_order``), so every system
sees the same disk weather. Every system is timed by the same pool, the same
loop and the same rule; the systems differ only behind ``systems.System``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sqlite3
import tempfile
from typing import Any

from .peers import redis_status
from .plan import (
    RECORD_BYTES,
    Cell,
    CellResult,
    CellRun,
    LoadReport,
    group_size,
    peer_label,
    plan_cells,
    slice_order,
    summarize,
)
from .pool import ProducerPool
from .probes import describe_disk, measure_f, process_cpu_seconds
from .progress import Progress
from .systems import System, close_each, start_systems


def _plan(args: argparse.Namespace, rep: LoadReport) -> list[Cell]:
    """The run's cells; a note in ``rep`` when the Redis peer was asked for but cannot run."""
    peers = args.peers_list
    why_no_redis = redis_status() if "redis" in peers else ""
    if why_no_redis:
        rep.notes.append(why_no_redis)
    redis_ok = "redis" in peers and not why_no_redis
    return plan_cells(args.producers_list, args.policies_list, args.modes_list, peers, args.full, redis_ok)


def _settings(args: argparse.Namespace, run_dir: str) -> dict[str, Any]:
    return {
        "seconds_per_cell": args.seconds,
        "slices": args.slices,
        "producers": args.producers_list,
        "policies": args.policies_list,
        "modes": args.modes_list,
        "peers": args.peers_list,
        "depth": args.depth,
        "batch_size": args.batch_size,
        "record_bytes": RECORD_BYTES,
        "dir": run_dir,
        "disk": describe_disk(run_dir),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
    }


def run_load(args: argparse.Namespace, progress: Progress | None = None) -> LoadReport:
    """Run the benchmark described by parsed (``resolve``d) ``args``; returns the report (prints no table).

    What it says while running (the plan, F, each finished cell) goes to
    ``progress`` (default: stderr, with a progress line when it is a terminal).
    """
    say = progress or Progress()
    rep = LoadReport()
    cells = _plan(args, rep)
    if args.dir is not None:
        os.makedirs(args.dir, exist_ok=True)
    run_dir = tempfile.mkdtemp(prefix="nori-load-", dir=args.dir)
    sock_dir = tempfile.mkdtemp(prefix="nori-load-sock-")  # short ipc paths, whatever --dir is
    rep.settings = _settings(args, run_dir)
    opened: list[System] = []
    pool: ProducerPool | None = None
    try:
        say.say(f"nori-wal load: {len(cells)} cells x {args.seconds:g} s in {run_dir} ({rep.settings['disk']})")
        rep.f_start = measure_f(run_dir, args.f_seconds)
        say.say(f"F = {rep.f_start:,.0f} appends+fdatasync/s")
        pool = ProducerPool(max(args.producers_list))
        systems, cells = start_systems(cells, args.policies_list, run_dir, sock_dir, rep, opened)
        rep.results = _run_cells(cells, systems, pool, args, rep, say)
        rep.f_end = measure_f(run_dir, args.f_seconds)
    finally:
        say.close()
        rep.notes += close_each([pool.close] if pool is not None else [])
        for system in opened:  # every one of them, even when one fails
            rep.notes += system.close()
        shutil.rmtree(sock_dir, ignore_errors=True)
        if args.keep:
            rep.notes.append(f"kept {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    return rep


def _run_cells(
    cells: list[Cell],
    systems: dict[str, System],
    pool: ProducerPool,
    args: argparse.Namespace,
    rep: LoadReport,
    say: Progress,
) -> list[CellResult]:
    """Every slice of every cell, in ``slice_order``; a cell whose slice failed is reported at once."""
    runs = {cell: CellRun() for cell in cells}
    finished: dict[Cell, CellResult] = {}
    order = slice_order(cells, args.slices)
    say.start(len(order))
    for cell, k in order:
        system = systems[cell.system]
        say.step(f"N={cell.producers} {cell.system} {_what(cell)} {cell.mode}")
        if cell in finished:  # an earlier slice failed: the cell is reported already
            continue
        errors = _run_slice(cell, system, pool, args, runs[cell], rep)
        if k < args.slices - 1 and not errors:
            continue
        system.after_cell(cell)
        result = finished[cell] = _result(cell, runs[cell], args.batch_size)
        shown = result.error or f"{result.records_per_s:,.0f} rec/s, p99 {result.p99_ms:.2f} ms"
        say.say(f"[{len(finished)}/{len(cells)}] N={cell.producers} {cell.system} {_what(cell)} {cell.mode}: {shown}")
    return [finished[c] for c in cells if c in finished]


def _what(cell: Cell) -> str:
    return cell.policy if cell.system == "nori" else peer_label(cell)


def _run_slice(
    cell: Cell, system: System, pool: ProducerPool, args: argparse.Namespace, run: CellRun, rep: LoadReport
) -> list[str]:
    """One slice of ``cell`` on every one of its producers at once; its errors (none: it ran)."""
    task = {"system": cell.system, "mode": cell.mode, "depth": args.depth, "batch_size": args.batch_size}
    task.update(system.task(cell))
    before = _counts(system, cell)
    server = system.server_pid(cell)
    cpu0 = process_cpu_seconds(server)
    numbers, errors = pool.run([task] * cell.producers, args.seconds / args.slices)
    cpu1 = process_cpu_seconds(server)
    cpu = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else 0.0
    run.add(numbers, errors, cpu, before, _counts(system, cell))
    note = system.after_slice(cell)  # keep the disk bounded between slices
    if note and note not in rep.notes:
        rep.notes.append(note)
    return errors


def _counts(system: System, cell: Cell) -> tuple[int, ...]:
    try:
        return system.counts(cell)
    except Exception:  # noqa: BLE001 -- a counter is a detail: never lose the cell's numbers for it
        return ()


def _result(cell: Cell, run: CellRun, batch_size: int) -> CellResult:
    result = summarize(cell, run.slices, run.errors, run.server_cpu)
    if run.counts:
        result.group = group_size(cell, tuple(0 for _ in run.counts), tuple(run.counts), batch_size)
    return result
