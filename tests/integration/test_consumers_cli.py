"""``nori-wal consumers`` and ``nori-wal gc`` with consumers, run as the console script runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from nori_wal import FsyncPolicy, Record, Wal, WalConfig, open_consumer


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nori_wal.cli", *args], capture_output=True, text=True, timeout=60)


def make_log(path, n=60):
    with Wal.open(WalConfig(dir=path, max_segment_size=8192, fsync_policy=FsyncPolicy.always()))[0] as wal:
        pos = wal.append_batch([Record.put(b"k%d" % i, os.urandom(500)) for i in range(n)])
    with open_consumer(path, "indexer") as c:
        for _, p in c:
            if p == pos[9]:
                c.commit(p)
                break
    open_consumer(path, "fresh", start="latest").close()
    return pos


def test_consumers_lists_a_table_and_json(tmp_path):
    pos = make_log(tmp_path)
    out = cli("consumers", str(tmp_path))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["NAME", "COMMITTED", "NEXT"]
    assert lines[1].split()[0] == "fresh" and lines[2].split()[:2] == ["indexer", str(pos[9])]
    assert lines[2].split()[3] == "50"  # lag in records
    js = cli("consumers", str(tmp_path), "--json")
    data = {c["name"]: c for c in json.loads(js.stdout)}
    assert data["indexer"]["committed"] == str(pos[9]) and data["indexer"]["lag_records"] == 50
    assert data["fresh"]["committed"] is None and data["fresh"]["lag_records"] == 0
    assert not data["indexer"]["expired"] and data["indexer"]["last_commit"]


def test_consumers_drop(tmp_path):
    make_log(tmp_path)
    out = cli("consumers", str(tmp_path), "--drop", "fresh")
    assert out.returncode == 0 and "dropped consumer 'fresh'" in out.stdout
    assert cli("consumers", str(tmp_path), "--drop", "fresh").returncode == 2  # unknown now
    assert cli("consumers", str(tmp_path), "--drop", "../x").returncode == 2  # bad name
    with open_consumer(tmp_path, "indexer"):
        held = cli("consumers", str(tmp_path), "--drop", "indexer")
        assert held.returncode == 3 and "open in another process" in held.stderr
    assert [c["name"] for c in json.loads(cli("consumers", str(tmp_path), "--json").stdout)] == ["indexer"]


def test_consumers_on_an_empty_or_missing_dir(tmp_path):
    assert cli("consumers", str(tmp_path)).stdout.strip() == "no consumers"
    assert cli("consumers", str(tmp_path / "missing")).returncode == 2


def test_gc_says_which_consumer_held_it_back(tmp_path):
    pos = make_log(tmp_path)
    out = cli("gc", str(tmp_path), "--before", str(pos[-1]))
    assert out.returncode == 0, out.stderr
    assert "held back by consumer 'indexer'" in out.stdout
    assert "deleted 0 segments" in out.stdout  # 'fresh' registered at the end, 'indexer' in segment 0


def test_a_damaged_cursor_file_makes_consumers_exit_1(tmp_path):
    make_log(tmp_path)
    (tmp_path / "consumers" / "indexer.cursor").write_bytes(b"garbage")
    out = cli("consumers", str(tmp_path))
    assert out.returncode == 1 and "damaged" in out.stdout and "indexer.cursor is damaged" in out.stderr
