"""The peers' servers, run beside nori-wal in the same run: the yardstick writer, a private redis-server, SQLite.

The yardstick is the ideal group-commit toy, reimplemented here (an installed
package cannot rely on the shared script): one ROUTER writer blocks for a
message, drains what is pending, one ``os.write``, one ``fdatasync`` (or none),
acks them all.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import signal
import socket
import subprocess
import time
from typing import Any

from .plan import SETUP_TIMEOUT


def _yard_writer(endpoint: str, path: str, fsync: str, ready: Any, stop: Any, counts: Any) -> None:
    """The ideal group-commit writer: block for one message, drain, one write, one fdatasync, ack all.

    ``counts`` (shared: groups, messages) is what the original prints as group(msgs).
    """
    import zmq

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o644)
    ready.set()
    try:
        while not stop.is_set():
            if not sock.poll(100):
                continue
            group = [sock.recv_multipart()]
            while True:
                try:
                    group.append(sock.recv_multipart(zmq.NOBLOCK))
                except zmq.Again:
                    break
            os.write(fd, b"".join(m[1] for m in group))
            if fsync == "always":
                os.fdatasync(fd)
            for ident, _ in group:
                sock.send_multipart([ident, b"k"])
            counts[0] += 1
            counts[1] += len(group)
    finally:
        os.close(fd)
        sock.close()
        ctx.term()


class Yardstick:
    """One yardstick writer process (fsync ``always`` or ``none``) with its ipc endpoint."""

    def __init__(self, fsync: str, data_dir: str, sock_dir: str):
        ctx = mp.get_context("spawn")
        self.path = os.path.join(data_dir, f"yardstick-{fsync}.log")
        self.endpoint = f"ipc://{sock_dir}/yard-{fsync}.sock"
        self._stop = ctx.Event()
        self._counts = ctx.RawArray("q", 2)  # groups written, messages in them
        ready = ctx.Event()
        self._proc = ctx.Process(
            target=_yard_writer,
            args=(self.endpoint, self.path, fsync, ready, self._stop, self._counts),
            name=f"nori-load-yardstick-{fsync}",
            daemon=True,
        )
        self._proc.start()
        if not ready.wait(SETUP_TIMEOUT) or not self._proc.is_alive():
            self.close()
            raise RuntimeError("the yardstick writer did not start")

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def counts(self) -> tuple[int, int]:
        """(groups, messages) written so far."""
        return self._counts[0], self._counts[1]

    def reset(self) -> None:
        """Empty the file between cells (its writer appends with O_APPEND, so it follows)."""
        try:
            os.truncate(self.path, 0)
        except OSError:
            pass

    def close(self) -> None:
        self._stop.set()
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisPeer:
    """A private ``redis-server`` with AOF on the measured disk; ``appendfsync`` set per cell."""

    def __init__(self, workdir: str):
        import redis

        os.makedirs(workdir, exist_ok=True)
        self.port = _free_port()
        self._proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                workdir,
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--auto-aof-rewrite-percentage",
                "0",
                "--daemonize",
                "no",
                "--logfile",
                os.path.join(workdir, "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                self._client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self._proc.poll() is not None:
                    self.close()
                    raise RuntimeError(f"redis-server did not start (see {workdir}/redis.log)") from None
                time.sleep(0.05)
        self.version = str(self._client.info("server").get("redis_version", "?"))

    @property
    def pid(self) -> int:
        return self._proc.pid

    def prepare(self, appendfsync: str) -> None:
        self._client.delete("log")
        self._client.config_set("appendfsync", appendfsync)

    def close(self) -> None:
        try:
            self._client.close()
        finally:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(5)


def redis_status() -> str:
    """'' when the Redis peer can run, else why not (one line)."""
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (apt-get install redis-server): Redis AOF peer skipped"
    try:
        import redis  # noqa: F401
    except ImportError:
        return "redis-py is not installed (pip install redis): Redis AOF peer skipped"
    return ""


def sqlite_create(path: str) -> None:
    import sqlite3

    db = sqlite3.connect(path, isolation_level=None)
    try:
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode != "wal":
            raise RuntimeError(f"SQLite refused WAL mode ({mode}) in {path}")
        db.execute("CREATE TABLE log(id INTEGER PRIMARY KEY, data BLOB)")
    finally:
        db.close()
