"""The producer pool: spawned processes started once, reused by every cell, started together per slice."""

from __future__ import annotations

import multiprocessing as mp
import queue
import signal
import time
from typing import Any, Callable

from .cells import RUNNERS, Gate
from .plan import SETUP_TIMEOUT, Numbers, Task


def _worker_main(index: int, commands: Any, results: Any, go: Any, deadline: Any) -> None:
    """A pooled producer process: run each task it is given, report ready, wait for go, report numbers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    gate = Gate(go, deadline)
    while True:
        task = commands.get()
        if task is None:
            return
        readied: list[float] = []  # the process's CPU seconds when it reported ready
        try:
            acked, start, end, lat = RUNNERS[task["system"]](task, _ready_callback(results, index, readied), gate)
            cpu = time.process_time() - readied[0] if readied else 0.0  # all threads (ZeroMQ's I/O too)
            results.put(("done", index, (acked, start, end, lat.tobytes(), cpu)))
        except BaseException as exc:  # noqa: BLE001 -- reported, not raised: the pool must keep serving
            results.put(("failed" if readied else "setup-failed", index, f"{type(exc).__name__}: {exc}"))


def _ready_callback(results: Any, index: int, readied: list[float]) -> Callable[[], None]:
    def ready() -> None:
        readied.append(time.process_time())
        results.put(("ready", index, None))

    return ready


class ProducerPool:
    """``size`` spawned producer processes, started once, synchronised per slice with one Event."""

    def __init__(self, size: int):
        self._ctx = mp.get_context("spawn")
        self._go = self._ctx.Event()
        self._deadline: Any = self._ctx.RawValue("d", 0.0)  # the slice's end, time.monotonic(); set before go
        self._results: Any = self._ctx.Queue()
        self._commands: list[Any] = []
        self._procs: list[Any] = []
        self.grow(size)

    def grow(self, size: int) -> None:
        while len(self._procs) < size:
            i = len(self._procs)
            q = self._ctx.Queue()
            p = self._ctx.Process(
                target=_worker_main,
                args=(i, q, self._results, self._go, self._deadline),
                name=f"nori-load-producer-{i}",
                daemon=True,
            )
            p.start()
            self._commands.append(q)
            self._procs.append(p)

    def _get(self, deadline: float) -> tuple[str, int, Any]:
        while True:
            try:
                msg: tuple[str, int, Any] = self._results.get(timeout=0.5)
                return msg
            except queue.Empty:
                dead = [p.name for p in self._procs if not p.is_alive()]
                if dead:
                    raise RuntimeError(f"producer process died: {', '.join(dead)}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError("producers did not answer in time") from None

    def run(self, tasks: list[Task], seconds: float) -> tuple[list[Numbers], list[str]]:
        """Run one slice of a cell: ``tasks[i]`` on producer i, all starting together; (numbers, errors)."""
        self.grow(len(tasks))
        self._go.clear()
        for i, task in enumerate(tasks):
            self._commands[i].put({**task, "index": i})
        readied, errors = 0, []
        deadline = time.monotonic() + SETUP_TIMEOUT
        for _ in tasks:
            kind, i, payload = self._get(deadline)
            if kind == "ready":
                readied += 1
            else:
                errors.append(f"producer {i}: {payload}")
        # One window for all: CLOCK_MONOTONIC is the same clock in every process of the machine,
        # so a producer that wakes late stops with the others instead of running on alone.
        self._deadline.value = time.monotonic() + seconds
        self._go.set()
        numbers = []
        deadline = time.monotonic() + seconds + SETUP_TIMEOUT
        for _ in range(readied):
            kind, i, payload = self._get(deadline)
            if kind == "done":
                numbers.append(payload)
            else:
                errors.append(f"producer {i}: {payload}")
        self._go.clear()
        return numbers, errors

    def close(self) -> None:
        """Stop every producer: release any waiting on go, ask each to exit, kill what lingers."""
        self._go.set()
        for q in self._commands:
            try:
                q.put(None)
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + 10
        for p in self._procs:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(5)
        for q in [*self._commands, self._results]:
            q.close()
            q.join_thread()
