"""Fixtures that own writer processes (spawned or ``nori-wal serve``) and tear them down with bounded waits."""

from __future__ import annotations

import signal
import subprocess
import sys
from typing import Any

import pytest

from nori_wal import FsyncPolicy, WalConfig, WalError
from nori_wal.writer_proc import WriterProcess

STOP_TIMEOUT = 15.0  # seconds a writer gets to stop gracefully before it is killed


@pytest.fixture
def wal_dir(tmp_path) -> str:
    return str(tmp_path / "wal")


@pytest.fixture
def spawn_writer() -> Any:
    """``spawn_writer(config_or_dir, **kw)`` -> WriterProcess; every writer is stopped (or killed) at teardown."""
    started: list[WriterProcess] = []

    def spawn(config: WalConfig | str, policy: str = "always", **kw: Any) -> WriterProcess:
        if not isinstance(config, WalConfig):
            config = WalConfig(dir=config, fsync_policy=FsyncPolicy.parse(policy))
        w = WriterProcess.spawn(config, timeout=30.0, **kw)
        started.append(w)
        return w

    yield spawn
    for w in started:
        if w.is_alive():
            try:
                w.stop(timeout=STOP_TIMEOUT)
            except WalError:
                pass  # stop() killed it after the timeout
        else:
            w.wait(5.0)


@pytest.fixture
def serve_process() -> Any:
    """``serve_process(*args)`` -> Popen of ``nori-wal serve ARGS`` (stdout/stderr piped); killed at teardown."""
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str) -> subprocess.Popen[str]:
        p = subprocess.Popen(
            [sys.executable, "-m", "nori_wal.cli", "serve", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for f in (p.stdout, p.stderr):
            if f is not None:
                f.close()
