"""Helpers for writer-process tests, and picklable FileLayers (they cross into the writer with WriterProcess.spawn).

The read-back checks at the end (``read_log``, ``assert_read_back_equal``,
``assert_log_is``) compare what producers were acknowledged with what the
segment files hold, for every test that appends through the clients.

RecordingLayer is the real file system plus a journal: after every fsync of a
segment succeeds it appends ``<segment file name> <bytes synced>`` to a journal
file, *before* the writer can send the acks that fsync allows. A producer that
reads the journal after an ack therefore sees the fsync that covered it, if
there was one: no clocks, no sleeps.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from typing import Any, Sequence, Tuple

from nori_wal import Position, Record, open_reader
from nori_wal.fs import OsFile, OsFileLayer

MS = timedelta(milliseconds=1)
Appended = Tuple[Record, Position]


class RecordingLayer(OsFileLayer):
    def __init__(self, journal: str):
        self.journal = journal

    def create(self, path: str) -> "RecordingFile":  # type: ignore[override]
        return RecordingFile(super().create(path), self.journal)

    def open_append(self, path: str) -> "RecordingFile":  # type: ignore[override]
        return RecordingFile(super().open_append(path), self.journal)


class RecordingFile:
    def __init__(self, inner: OsFile, journal: str):
        self._inner, self._journal, self.path = inner, journal, inner.path

    def sync(self) -> None:
        self._inner.sync()
        size = os.fstat(self._inner.fd).st_size
        fd = os.open(self._journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            name = os.path.basename(self.path).removesuffix(".tmp")  # created as NNNNNN.wal.tmp, renamed
            os.write(fd, f"{name} {size}\n".encode())
        finally:
            os.close(fd)

    def start_writeback(self, offset: int, nbytes: int) -> None:
        """Journal the writeback hint in ``<journal>.writeback`` (``<name> <offset> <nbytes>``), then give it."""
        self._inner.start_writeback(offset, nbytes)
        with open(self._journal + ".writeback", "a") as f:
            f.write(f"{os.path.basename(self.path)} {offset} {nbytes}\n")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def synced(journal: str) -> dict[str, int]:
    """The largest synced size per segment file name, from the journal."""
    out: dict[str, int] = {}
    try:
        with open(journal) as f:
            for line in f:
                name, size = line.split()
                out[name] = max(out.get(name, 0), int(size))
    except FileNotFoundError:
        pass
    return out


def fsync_count(journal: str) -> int:
    try:
        with open(journal) as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def read_line(proc: subprocess.Popen[str], timeout: float = 30.0) -> str:
    """The next stdout line of ``proc`` within ``timeout`` seconds (empty at EOF); never hangs."""
    import select

    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise AssertionError(f"no output from {proc.args} within {timeout} s")
    return proc.stdout.readline()


def run_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """``nori-wal ARGS`` as a user runs it (``python -m nori_wal.cli``): exit code and text output, bounded."""
    return subprocess.run(
        [sys.executable, "-m", "nori_wal.cli", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def keys_in(directory: str | os.PathLike[str]) -> list[bytes]:
    with open_reader(directory) as r:
        return [rec.key for rec, _ in r]


# -- read-back checks ----------------------------------------------------------------------------------


def read_log(directory: str) -> dict[Position, Record]:
    """Every record in the log by position, values copied out of the reader's buffers."""
    out: dict[Position, Record] = {}
    with open_reader(directory) as reader:
        for record, pos in reader:
            assert pos not in out
            out[pos] = record._replace(value=bytes(record.value))
    return out


def assert_read_back_equal(got: Record, appended: Record) -> None:
    """``got`` (read from the segment files) is ``appended``, field by field as API.md defines them."""
    assert got == appended
    assert type(got.key) is bytes and got.key == appended.key
    assert bytes(got.value) == bytes(appended.value)  # decompressed: the original value
    assert got.tombstone is appended.tombstone
    assert got.compression == appended.compression
    if appended.ttl is None:
        assert got.ttl is None
    else:
        assert got.ttl == appended.ttl and got.ttl % MS == timedelta(0)  # kept to the millisecond


def assert_log_is(directory: str, appended: Sequence[Appended]) -> None:
    """Every acknowledged position unique, every record equal at its position, and nothing else in the log."""
    positions = [pos for _, pos in appended]
    assert len(set(positions)) == len(positions), "a position was acknowledged twice"
    log = read_log(directory)
    for record, pos in appended:
        assert pos in log, f"acknowledged {pos} is not in the log"
        assert_read_back_equal(log[pos], record)
    assert sorted(log) == sorted(positions), "the log holds records nobody appended"
