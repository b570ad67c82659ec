"""The measured systems behind one small protocol: nori-wal's writer processes and the peers.

The run loop knows nothing of any one system: for each slice it asks the
cell's ``System`` where the producers connect (``task``), which process serves
them (``server_pid``, whose CPU counts with theirs) and what the writer has
committed so far (``counts``); after a slice and after a cell it lets the
system tidy up (``after_slice``: nori-wal's segment GC; ``after_cell``: the
yardstick's file, SQLite's database). ``close`` tears everything down and
returns what failed, so one failure never leaves the rest running.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Callable

from .peers import RedisPeer, Yardstick, sqlite_create
from .plan import CLIENT_TIMEOUT, REDIS_FSYNC, YARD_FSYNC, Cell, LoadReport, Task


def close_each(closers: Sequence[Callable[[], Any]]) -> list[str]:
    """Call every closer, even when one fails; the failures, one line each."""
    notes = []
    for close in closers:
        try:
            close()
        except Exception as exc:  # noqa: BLE001 -- tear down the rest regardless
            notes.append(f"teardown: {type(exc).__name__}: {exc}")
    return notes


class System:
    """The protocol every measured system follows; the defaults are "nothing to do"."""

    def task(self, cell: Cell) -> Task:
        """Ready the server for one slice of ``cell``; what its producers need to reach it."""
        return {}

    def server_pid(self, cell: Cell) -> int | None:
        """The process serving ``cell`` (its CPU counts with the producers'); None: in the producers."""
        return None

    def counts(self, cell: Cell) -> tuple[int, ...]:
        """The writer's commit counters so far (see ``plan.group_size``); () when not known."""
        return ()

    def after_slice(self, cell: Cell) -> str:
        """Keep the disk bounded between slices; a note for the report, or ''."""
        return ""

    def after_cell(self, cell: Cell) -> None:
        """The cell is done: drop what it left on disk."""

    def close(self) -> list[str]:
        """Stop every server; what failed to stop, one line each."""
        return []


class NoriSystem(System):
    """One nori-wal writer process per fsync policy, and a control client for its counters and GC."""

    def __init__(self, policies: Sequence[str], run_dir: str):
        from ..client import WalClient
        from ..config import FsyncPolicy, WalConfig
        from ..writer_proc import WriterProcess

        self.writers: dict[str, Any] = {}
        self.controls: dict[str, Any] = {}
        try:
            for policy in policies:
                cfg = WalConfig(dir=os.path.join(run_dir, f"wal-{policy}"), fsync_policy=FsyncPolicy.parse(policy))
                self.writers[policy] = WriterProcess.spawn(cfg)
                self.controls[policy] = WalClient(self.writers[policy].endpoint, timeout=CLIENT_TIMEOUT)
        except BaseException:
            self.close()
            raise

    def task(self, cell: Cell) -> Task:
        return {"endpoint": self.writers[cell.policy].endpoint}

    def server_pid(self, cell: Cell) -> int | None:
        return int(self.writers[cell.policy].pid)

    def counts(self, cell: Cell) -> tuple[int, ...]:
        """(records, writes, fsyncs), from the writer's INFO."""
        info = self.controls[cell.policy].info()
        return info.get("records", 0), info.get("writes", 0), info.get("fsyncs", 0)

    def after_slice(self, cell: Cell) -> str:
        ctl = self.controls[cell.policy]
        try:
            ctl.delete_segments_before(ctl.current_position())
        except Exception as exc:  # noqa: BLE001 -- a failed GC must not lose the run's numbers
            return f"segment GC between {cell.policy} cells failed: {type(exc).__name__}: {exc}"
        return ""

    def close(self) -> list[str]:
        return close_each([c.close for c in self.controls.values()] + [w.stop for w in self.writers.values()])


class YardstickSystem(System):
    """The yardstick writers: one per fsync (``always``, ``none``) the cells need."""

    def __init__(self, fsyncs: Sequence[str], run_dir: str, sock_dir: str):
        self.yards: dict[str, Yardstick] = {}
        try:
            for fs in fsyncs:
                self.yards[fs] = Yardstick(fs, run_dir, sock_dir)
        except BaseException:
            self.close()
            raise

    def _yard(self, cell: Cell) -> Yardstick:
        return self.yards[YARD_FSYNC[cell.policy]]

    def task(self, cell: Cell) -> Task:
        return {"endpoint": self._yard(cell).endpoint}

    def server_pid(self, cell: Cell) -> int | None:
        return self._yard(cell).pid

    def counts(self, cell: Cell) -> tuple[int, ...]:
        """(groups, messages) the writer has written."""
        return self._yard(cell).counts()

    def after_cell(self, cell: Cell) -> None:
        self._yard(cell).reset()  # its file grows across a cell's slices, as in the original

    def close(self) -> list[str]:
        return close_each([y.close for y in self.yards.values()])


class RedisSystem(System):
    """A private redis-server with AOF; each slice empties the stream and sets the cell's appendfsync."""

    def __init__(self, run_dir: str):
        self.peer = RedisPeer(os.path.join(run_dir, "redis"))

    def task(self, cell: Cell) -> Task:
        self.peer.prepare(REDIS_FSYNC[cell.policy])
        return {"port": self.peer.port}

    def server_pid(self, cell: Cell) -> int | None:
        return self.peer.pid

    def close(self) -> list[str]:
        return close_each([self.peer.close])


class SqliteSystem(System):
    """SQLite runs in the producers: one fresh database per cell, removed when the cell is done."""

    def __init__(self, run_dir: str):
        self._run_dir = run_dir
        self._paths: dict[Cell, str] = {}

    def task(self, cell: Cell) -> Task:
        path = self._paths.get(cell)
        if path is None:
            path = self._paths[cell] = os.path.join(self._run_dir, f"sqlite-{cell.producers}.db")
            sqlite_create(path)
        return {"path": path}

    def after_cell(self, cell: Cell) -> None:
        path = self._paths.pop(cell, None)
        for suffix in ("", "-wal", "-shm") if path else ():
            if os.path.exists(f"{path}{suffix}"):
                os.unlink(f"{path}{suffix}")


def start_systems(
    cells: list[Cell], policies: Sequence[str], run_dir: str, sock_dir: str, rep: LoadReport, opened: list[System]
) -> tuple[dict[str, System], list[Cell]]:
    """Start the servers ``cells`` need, appending each to ``opened`` (the caller closes them).

    Returns the systems by name and the cells that can run: when redis-server
    does not start, its cells are dropped and the report says why.
    """
    systems: dict[str, System] = {}
    wanted = {c.system for c in cells}
    if "nori" in wanted:
        systems["nori"] = NoriSystem(policies, run_dir)
        opened.append(systems["nori"])
    if "yardstick" in wanted:
        fsyncs = list(dict.fromkeys(YARD_FSYNC[c.policy] for c in cells if c.system == "yardstick"))
        systems["yardstick"] = YardstickSystem(fsyncs, run_dir, sock_dir)
        opened.append(systems["yardstick"])
    if "redis" in wanted:
        try:
            redis = RedisSystem(run_dir)
        except RuntimeError as exc:
            rep.notes.append(f"{exc}: Redis AOF peer skipped")
            cells = [c for c in cells if c.system != "redis"]
        else:
            rep.settings["redis"] = redis.peer.version
            systems["redis"] = redis
            opened.append(redis)
    if "sqlite" in wanted:
        systems["sqlite"] = SqliteSystem(run_dir)
    return systems, cells
