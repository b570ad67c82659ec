"""SIGKILL torture with real processes: 8 producers under Always, the writer killed and restarted every round.

Every acknowledged record must survive at the position its append returned,
none may appear twice, and a reader following the log through the kills must
never see a torn or corrupt record. ``NORI_TORTURE_ROUNDS=200`` runs more
rounds (the suite runs 20); ``NORI_TORTURE_SEED`` replays a kill schedule.
"""

import os

import pytest

from nori_wal.testing.torture import TortureOptions, run_torture

ROUNDS = int(os.environ.get("NORI_TORTURE_ROUNDS", "20"))
SEED = int(os.environ["NORI_TORTURE_SEED"]) if os.environ.get("NORI_TORTURE_SEED") else None


def count(crash_counts, report):
    crash_counts["kills"] += report.kills
    crash_counts["torture_acked"] += report.acked
    crash_counts["reader_records"] += report.reader_records
    crash_counts["lost"] += report.lost


@pytest.mark.timeout(120 + 6 * ROUNDS)
def test_sigkill_torture_always_8_producers(tmp_path, crash_counts):
    report = run_torture(
        TortureOptions(
            directory=str(tmp_path / "wal"),
            producers=8,
            rounds=ROUNDS,
            fsync="always",
            max_acks_per_round=200,
            seed=SEED,
        )
    )
    count(crash_counts, report)
    print(report.summary())
    assert report.ok, report.summary()
    assert report.kills == ROUNDS and report.lost == 0 and report.duplicated == 0 and not report.reader_errors
    assert report.final_exit_code == 0


@pytest.mark.timeout(120 + 6 * ROUNDS)
def test_sigkill_torture_large_batches_tear_writes(tmp_path, crash_counts):
    """Large batch writes (so a kill can tear one) under Os: the kernel keeps what was acknowledged."""
    rounds = max(ROUNDS // 2, 5)
    report = run_torture(
        TortureOptions(
            directory=str(tmp_path / "wal"),
            producers=4,
            rounds=rounds,
            fsync="os",
            batch=40,
            value_size=3000,
            max_segment_size=256 * 1024,
            max_acks_per_round=2000,
            seed=SEED,
        )
    )
    count(crash_counts, report)
    print(report.summary())
    assert report.ok, report.summary()
    assert report.kills == rounds and report.final_exit_code == 0


@pytest.mark.timeout(120 + 6 * ROUNDS)
def test_sigkill_torture_with_retrying_producers(tmp_path, crash_counts):
    """Producers resend (delivery_timeout, each record keyed): acknowledged, duplicated 0, lost 0."""
    rounds = max(ROUNDS // 2, 5)
    report = run_torture(
        TortureOptions(
            directory=str(tmp_path / "wal"),
            producers=4,
            rounds=rounds,
            fsync="always",
            batch=3,
            max_acks_per_round=200,
            retry=30.0,
            seed=SEED,
        )
    )
    count(crash_counts, report)
    print(report.summary())
    assert report.ok, report.summary()
    assert report.acked > 0 and report.duplicated == 0 and report.lost == 0
    assert report.unknown_outcome == 0  # every call was delivered within its delivery_timeout
    assert report.kills == rounds and report.final_exit_code == 0


@pytest.mark.timeout(120)
def test_torture_command_reports_on_a_users_disk(tmp_path):
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "nori_wal.cli",
            "torture",
            "--dir",
            str(tmp_path),
            "--rounds",
            "3",
            "--producers",
            "2",
            "--json",
            "--quiet",
        ],
        capture_output=True,
        timeout=100,
        check=False,
    )
    assert out.returncode == 0, out.stderr.decode()
    report = json.loads(out.stdout)
    assert report["ok"] and report["kills"] == 3 and report["lost"] == 0 and report["acked"] > 0
    assert len(report["restart_s"]) == 4 and os.listdir(tmp_path) == []  # its work directory is gone
    bad = subprocess.run(
        [sys.executable, "-m", "nori_wal.cli", "torture", "--dir", str(tmp_path), "--rounds", "0"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2 and b"--rounds" in bad.stderr


def test_the_final_check_calls_a_record_with_a_changed_flag_damaged(tmp_path):
    """The kit's own teeth: the right key and value with a tombstone, TTL or compression flag set is not
    what the producer appended."""
    from datetime import timedelta

    from nori_wal import Compression, Record, Wal, WalConfig
    from nori_wal.testing.torture import _Log, torture_key, torture_value

    keys = [torture_key(0, i) for i in range(4)]
    values = [torture_value(k, i, 64) for i, k in enumerate(keys)]
    with Wal.open(WalConfig(dir=tmp_path))[0] as wal:
        wal.append(Record.put(keys[0], values[0]))  # intact
        wal.append(Record(keys[1], values[1], True, None, Compression.NONE))  # tombstone
        wal.append(Record.put_with_ttl(keys[2], values[2], timedelta(seconds=60)))  # TTL
        wal.append(Record.put(keys[3], values[3]).with_compression(Compression.LZ4))  # compressed
    log = _Log(str(tmp_path))
    log.catch_up(64)
    assert log.order == [keys[0]] and len(log.invented) == 3
