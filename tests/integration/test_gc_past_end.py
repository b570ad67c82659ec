"""A destructive call with a position past the log's end (a typo: 99999:32) deletes nothing, everywhere."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from nori_wal import FsyncPolicy, Position, PositionPastEndError, Record, Wal, WalConfig
from nori_wal.client import WalClient

SEGMENT = 4096


def _fill(directory: str) -> list[str]:
    wal, _ = Wal.open(WalConfig(dir=directory, max_segment_size=SEGMENT, fsync_policy=FsyncPolicy.os()))
    with wal:
        wal.append_batch([Record.put(b"k%d" % i, b"v" * 200) for i in range(100)])
    return sorted(os.listdir(directory))


@pytest.mark.parametrize("bad", [Position(99999, 0), "99999:32"])
def test_embedded_gc_past_the_end_raises_value_error_naming_the_end(tmp_path, bad):
    d = str(tmp_path / "wal")
    before = _fill(d)
    wal, _ = Wal.open(WalConfig(dir=d, max_segment_size=SEGMENT))
    with wal:
        end = wal.current_position()
        with pytest.raises(ValueError, match=f"the end is {end}") as err:
            wal.delete_segments_before(bad)
        assert isinstance(err.value, PositionPastEndError)
        # one byte past the end of the active segment is past the end too; the end itself is fine
        with pytest.raises(ValueError):
            wal.delete_segments_before(Position(end.segment_id, end.offset + 1))
        assert sorted(os.listdir(d)) == before
        assert wal.delete_segments_before(end) > 0


def test_client_gc_past_the_end_raises_value_error(tmp_path, spawn_writer):
    d = str(tmp_path / "wal")
    _fill(d)
    w = spawn_writer(WalConfig(dir=d, max_segment_size=SEGMENT))
    segments = sorted(n for n in os.listdir(d) if n.endswith(".wal"))
    with WalClient.for_dir(d, timeout=10.0) as client:
        with pytest.raises(ValueError, match="past the end") as err:
            client.delete_segments_before(Position(99999, 0))
        assert isinstance(err.value, PositionPastEndError)
        assert sorted(n for n in os.listdir(d) if n.endswith(".wal")) == segments
        client.append(Record.put(b"still", b"works"))  # the writer is untouched
    assert w.is_alive()


def _gc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nori_wal.cli", "gc", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_cli_gc_past_the_end_exits_2_and_deletes_nothing(tmp_path, spawn_writer):
    d = str(tmp_path / "wal")
    before = _fill(d)
    for extra in ([], ["--dry-run"]):
        proc = _gc(d, "--before", "99999:32", *extra)
        assert proc.returncode == 2, proc.stderr
        assert "past the end" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert sorted(os.listdir(d)) == before
    # through a live writer process too (the directory is locked by it)
    w = spawn_writer(WalConfig(dir=d, max_segment_size=SEGMENT))
    last = max(int(n[:6]) for n in before if n.endswith(".wal"))
    proc = _gc(d, "--before", f"{last}:99999999")
    assert proc.returncode == 2, proc.stderr
    assert "past the end" in proc.stderr
    assert w.is_alive()
    assert sorted(n for n in os.listdir(d) if n.endswith(".wal")) == [n for n in before if n.endswith(".wal")]
