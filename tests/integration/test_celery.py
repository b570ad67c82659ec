"""A real Celery worker appends to the log through a module-level WalClient, in every pool (issue 22).

The worker is ``celery -A celery_app worker`` run as a subprocess against a real
writer process; kombu's ``filesystem://`` transport needs no broker server.
``celery_worker(pool)`` gives a running writer and worker (stopped at teardown,
with bounded waits), so other tests can reuse it (retries, writer kills ...).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from nori_wal import Position, open_reader
from nori_wal.writer_proc import WriterProcess

celery = pytest.importorskip("celery")

HERE = Path(__file__).resolve().parent
RESULT_TIMEOUT = 60.0  # seconds for one task's result (includes the worker's start on a busy machine)
STOP_TIMEOUT = 20.0


@dataclass
class CeleryWorker:
    """A running ``celery worker`` (its own process group) and the writer its tasks append through."""

    pool: str
    proc: subprocess.Popen[bytes]
    writer: WriterProcess
    wal_dir: str
    app: Any  # a Celery app configured like the worker's, to send tasks and read results
    log_path: Path
    sent: list[Any] = field(default_factory=list)

    def send(self, name: str, *args: Any) -> Any:
        result = self.app.send_task(f"celery_app.{name}", args=args)
        self.sent.append(result)
        return result

    def result(self, async_result: Any) -> Any:
        try:
            return async_result.get(timeout=RESULT_TIMEOUT, interval=0.05)
        except Exception as exc:
            raise AssertionError(f"task failed or timed out ({exc!r}); worker log:\n{self.log()}") from exc

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> int:
        """Warm shutdown (SIGTERM: finish running tasks), then kill the group if it lingers."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # prefork children left behind, if any
        except ProcessLookupError:
            pass
        return self.proc.returncode


@pytest.fixture
def celery_worker(tmp_path: Path, spawn_writer: Callable[..., WriterProcess]) -> Iterator[Callable[..., CeleryWorker]]:
    """``celery_worker(pool, concurrency=2)``: a writer serving tmp_path/wal and a worker of celery_app."""
    started: list[CeleryWorker] = []

    def start(pool: str, concurrency: int = 2) -> CeleryWorker:
        from celery_config import configure

        wal_dir = str(tmp_path / f"wal-{pool}")
        celery_dir = str(tmp_path / f"celery-{pool}")
        writer = spawn_writer(wal_dir)
        env = dict(os.environ, NORI_WAL_DIR=wal_dir, NORI_CELERY_DIR=celery_dir)
        env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        log_path = tmp_path / f"worker-{pool}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "celery_app", "worker", f"--pool={pool}", "-c", str(concurrency)]
                + ["--loglevel=INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"],
                cwd=str(HERE),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own group: teardown reaches prefork children too
            )
        app = configure(celery.Celery("celery-test-producer"), celery_dir)
        worker = CeleryWorker(pool, proc, writer, wal_dir, app, log_path)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()
        worker.app.close()


@pytest.mark.timeout(150)
@pytest.mark.parametrize("pool", ["prefork", "threads", "solo"])
def test_tasks_append_through_a_module_level_client_in_every_pool(celery_worker, pool):
    worker = celery_worker(pool)
    as_text = [worker.send("append_order", n) for n in range(12)]
    as_list = [worker.send("append_order_position", n) for n in range(12, 16)]
    texts = [worker.result(r) for r in as_text]
    lists = [worker.result(r) for r in as_list]
    pids = {worker.result(worker.send("worker_pid")) for _ in range(4)}
    assert worker.stop() == 0, worker.log()  # a warm shutdown exits 0

    positions = [Position.parse(t) for t in texts]
    assert all(type(lst) is list and len(lst) == 2 for lst in lists)  # a Position arrives as [seg, off]
    positions += [Position(*lst) for lst in lists]
    with open_reader(worker.wal_dir) as reader:
        on_disk = {bytes(r.key): p for r, p in reader}
    assert on_disk == {b"order:%d" % n: p for n, p in enumerate(positions)}  # every record, where the task said
    if pool == "prefork":
        assert worker.proc.pid not in pids  # the tasks ran in forked children
    else:
        assert pids == {worker.proc.pid}  # threads and solo run in the worker's own process


@pytest.mark.timeout(240)
def test_autoretried_tasks_keyed_by_task_id_append_once_across_writer_sigkills(celery_worker, spawn_writer):
    """docs/RETRIES.md: ``autoretry_for=(WriterUnavailableError,)`` and the task id as the key."""
    import time

    from nori_wal import WalConfig

    worker = celery_worker("prefork")
    assert worker.result(worker.send("append_order_once", -1))  # the worker is up
    config = WalConfig(worker.wal_dir)
    results = [worker.send("append_order_once", n) for n in range(24)]
    writer = worker.writer
    for _ in range(3):  # SIGKILL the writer while tasks run; it stays down a moment, then comes back
        time.sleep(0.3)
        writer.kill()
        time.sleep(0.3)
        writer = spawn_writer(config)
    positions = [Position.parse(worker.result(r)) for r in results]
    with open_reader(worker.wal_dir) as reader:
        on_disk = [(bytes(r.key), p) for r, p in reader]
    keys = [k for k, _ in on_disk]
    assert sorted(keys) == sorted([b"order:-1"] + [b"order:%d" % n for n in range(24)])  # each exactly once
    assert positions == [dict(on_disk)[b"order:%d" % n] for n in range(24)]
