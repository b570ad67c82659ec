"""What the run measures besides the cells: the disk's raw fdatasync rate (F), the disk's name, CPU from /proc."""

from __future__ import annotations

import os
import time

from .plan import RECORD_BYTES


def measure_f(directory: str, seconds: float = 1.0) -> float:
    """F: 1 KB ``os.write`` + ``os.fdatasync`` per second on this disk, one writer, a ``seconds`` loop."""
    path = os.path.join(directory, "f.probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o644)
    try:
        rec, n = os.urandom(RECORD_BYTES), 0
        start = time.perf_counter()
        end = start + seconds
        now = start
        while now < end:
            os.write(fd, rec)
            os.fdatasync(fd)
            n += 1
            now = time.perf_counter()
        return n / (now - start)
    finally:
        os.close(fd)
        os.unlink(path)


def describe_disk(directory: str) -> str:
    """``ext4 on /dev/vda`` for the mount holding ``directory`` (best effort, Linux)."""
    try:
        real = os.path.realpath(directory)
        best = ("", "?", "?")
        with open("/proc/mounts") as fh:
            for line in fh:
                dev, mnt, fstype = line.split()[:3]
                if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best[0]):
                    best = (mnt, fstype, dev)
        return f"{best[1]} on {best[2]}"
    except OSError:
        return "unknown filesystem"


def process_cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds process ``pid`` (all its threads) has used, from /proc; None if unknown."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
