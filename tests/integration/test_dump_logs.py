"""``nori-wal dump --logs``: WalHandler's records as log lines, every other record as usual."""

from __future__ import annotations

import logging
import subprocess
import sys

from nori_wal import FsyncPolicy, Record, Wal, WalConfig
from nori_wal.log_handler import encode_log_record


def _dump(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nori_wal.cli", "dump", *args], capture_output=True, text=True, timeout=60
    )


def test_logs_shows_log_records_readably_and_others_as_usual(tmp_path):
    directory = str(tmp_path / "wal")
    rec = logging.LogRecord("app.db", logging.WARNING, __file__, 1, "slow query %s", ("q1",), None)
    rec.ms = 812
    with Wal.open(WalConfig(dir=directory, fsync_policy=FsyncPolicy.always()))[0] as wal:
        wal.append(Record.put(b"log", encode_log_record(rec)))
        wal.append(Record.put(b"user:1", b"alice"))
        wal.append(Record.put(b"odd", b'{"not": "a log record"}'))
    out = _dump(directory, "--logs")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("0:32\tLOG\t") and "WARNING" in lines[0] and "app.db" in lines[0]
    assert "slow query q1" in lines[0] and "ms=812" in lines[0]
    assert lines[1].endswith("PUT\tkey=b'user:1'\tvalue=b'alice'")
    assert "\tPUT\tkey=b'odd'" in lines[2]
    plain = _dump(directory)
    assert "LOG" not in plain.stdout and plain.stdout.count("PUT") == 3


def test_logs_and_json_exclude_each_other(tmp_path):
    out = _dump(str(tmp_path), "--logs", "--json")
    assert out.returncode == 2 and "not allowed with" in out.stderr
