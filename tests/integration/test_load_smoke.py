"""Smoke run of ``nori-wal load``: a tiny matrix prints a full table and draws its PNG (no timing asserts).

Also the benchmark's small I/O parts on their own: the PNG note and the per-process CPU probe (/proc).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from nori_wal.load.plan import Cell, CellResult, LoadReport
from nori_wal.load.probes import process_cpu_seconds

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROW = re.compile(
    r"^\s+(\d+)\s{2}(sync|pipe x\d+|submit x\d+|batch\(\d+\))\s+(.+?)\s{2,}([\d,]+)\s+([\d.]+)"
    r"\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+|-)\s+([\d.]+|-)\s+([\d.]+|-)$"
)


def _run(args: list[str], tmp_path) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return subprocess.run(
        [sys.executable, *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
        env={**os.environ, "PYTHONPATH": ROOT},
    )


@pytest.mark.timeout(120)
def test_load_prints_a_row_with_numbers_for_every_cell(tmp_path):
    out_json = tmp_path / "load.json"
    proc = _run(
        [
            "-m",
            "nori_wal.cli",
            "load",
            "--producers",
            "1,2",
            "--seconds",
            "0.3",
            "--policies",
            "always",
            "--peers",
            "sqlite,yardstick",
            "--f-seconds",
            "0.2",
            "--dir",
            str(tmp_path / "data"),
            "--json",
            str(out_json),
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [m for m in map(ROW.match, proc.stdout.splitlines()) if m]
    # 2 counts x 3 modes of nori-wal, SQLite at 2 counts, the yardstick beside Always sync at 2 counts
    assert len(rows) == 2 * 3 + 2 + 2, proc.stdout
    for m in rows:
        assert float(m.group(4).replace(",", "")) > 0, m.group(0)  # every producer acks at least one call
        if "sqlite" not in m.group(3):  # records per group commit, from the writers' own counts
            assert float(m.group(10)) >= 1, m.group(0)
        assert float(m.group(11)) > 0, m.group(0)  # CPU per record: producers (and the server) did work
    assert "error" not in proc.stdout
    assert "F = " in proc.stdout and "Ratios (same run):" in proc.stdout
    assert "Always sync N=8 / SQLite FULL N=8: n/a" in proc.stdout  # N=8 not run: said, not invented
    data = json.loads(out_json.read_text())
    assert {r["system"] for r in data["results"]} == {"nori", "sqlite", "yardstick"}
    assert all(r["records_per_s"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0 for r in data["results"])
    assert all((r["records_per_group"] or 0) >= 1 for r in data["results"] if r["system"] != "sqlite")
    assert os.listdir(tmp_path / "data") == []  # the run directory is removed after
    # the picture, by default in the working directory, and the run says where it is
    png = tmp_path / "nori-wal-load.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"note: wrote {png}" in proc.stdout


@pytest.mark.timeout(60)
def test_load_script_wraps_the_same_engine(tmp_path):
    proc = _run([os.path.join(ROOT, "scripts", "load.py"), "--help"], tmp_path)
    assert proc.returncode == 0 and "--quick" in proc.stdout and "--producers" in proc.stdout


@pytest.mark.timeout(60)
def test_load_rejects_a_bad_argument(tmp_path):
    proc = _run(["-m", "nori_wal.cli", "load", "--modes", "sync,warp"], tmp_path)
    assert proc.returncode == 2 and "warp" in proc.stderr


@pytest.mark.timeout(120)
def test_sync_ladder_prints_every_system_with_a_ratio_and_its_cpu(tmp_path):
    proc = _run(
        [
            os.path.join(ROOT, "scripts", "sync_ladder.py"),
            "--producers",
            "1",
            "--slices",
            "2",
            "--slice-seconds",
            "0.2",
            "--cpu",
            "--dir",
            str(tmp_path),
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = re.findall(
        r"^\s+1\s{2}(nori|bare|yardstick)\s+([\d,]+)\s+([\d.]+)x\s+([\d.]+)((?:\s+\d+){4})$", proc.stdout, re.M
    )
    assert [r[0] for r in rows] == ["nori", "bare", "yardstick"], proc.stdout
    assert all(int(r[1].replace(",", "")) > 0 and float(r[3]) >= 1 for r in rows), proc.stdout
    assert rows[2][2] == "1.00"
    # CPU per record, four whole numbers per system (clock ticks are coarse: a slow disk's few records may
    # show 0 for one process, but the three systems' slices kept the machine busy).
    assert sum(int(r[4].split()[0]) for r in rows) > 0, proc.stdout
    assert os.listdir(tmp_path) == []  # logs and the F probe are removed after


def test_process_cpu_seconds_reads_this_process_and_knows_when_it_cannot():
    assert process_cpu_seconds(os.getpid()) is not None and process_cpu_seconds(os.getpid()) >= 0
    assert process_cpu_seconds(None) is None
    assert process_cpu_seconds(2**22 + 12345) is None  # no such process


def test_without_matplotlib_the_run_says_how_to_get_its_picture(monkeypatch, tmp_path):
    from nori_wal.load.plot import plot_note

    rep = LoadReport(f_start=1000.0, results=[CellResult(Cell("nori", "always", "sync", 1), 900.0)])
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    note = plot_note(rep, str(tmp_path / "x.png"), 32, 100)
    assert "matplotlib is not installed" in note and "pip install nori-wal[plot]" in note
    assert not (tmp_path / "x.png").exists()


def test_the_plot_note_says_where_the_png_is_or_why_there_is_none(tmp_path):
    pytest.importorskip("matplotlib")
    from nori_wal.load.plot import plot_note

    rep = LoadReport(f_start=1000.0, results=[CellResult(Cell("nori", "always", "sync", 1), 900.0)])
    png = tmp_path / "load.png"
    assert plot_note(rep, str(png), 32, 100) == f"wrote {png} (throughput against producers)"
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert plot_note(LoadReport(), str(tmp_path / "none.png"), 32, 100) == "no nori-wal cell measured: no PNG"
    assert "failed" in plot_note(rep, str(tmp_path / "no-such-dir" / "x.png"), 32, 100)
