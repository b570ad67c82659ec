"""The load benchmark's pure parts: argument lists, the cell plan, percentiles, the ratio lines."""

from __future__ import annotations

import pytest

from nori_wal.load.plan import (
    Cell,
    CellResult,
    CellRun,
    LoadReport,
    group_size,
    parse_counts,
    parse_list,
    percentile_ms,
    plan_cells,
    slice_order,
    slice_rate,
    summarize,
)
from nori_wal.load.report import ratio_lines


def test_parse_lists_and_counts():
    assert parse_list("Always, os,always", ("always", "batch", "os"), "policy") == ["always", "os"]
    with pytest.raises(ValueError, match="warp"):
        parse_list("sync,warp", ("sync",), "mode")
    assert parse_counts("1,2, 8") == [1, 2, 8]
    for bad in ("0", "x", "-1", ""):
        with pytest.raises(ValueError):
            parse_counts(bad)


def test_percentiles_nearest_rank_in_ms():
    lat = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    assert percentile_ms(lat, 0.5) == pytest.approx(51)
    assert percentile_ms(lat, 0.99) == pytest.approx(100)
    assert percentile_ms([], 0.5) == 0.0


def test_plan_groups_by_producer_count_and_places_the_peers():
    cells = plan_cells(
        [1, 8],
        ["always", "batch", "os"],
        ["sync", "pipelined", "batch"],
        ["sqlite", "yardstick", "redis"],
        full=False,
        redis_ok=True,
    )
    assert [c.producers for c in cells] == sorted(c.producers for c in cells)
    at8 = [c for c in cells if c.producers == 8]
    assert sum(c.system == "nori" for c in at8) == 9
    assert {(c.policy, c.mode) for c in at8 if c.system == "yardstick"} == {("always", "sync"), ("os", "batch")}
    assert {c.policy for c in at8 if c.system == "redis"} == {"always"}
    assert sum(c.system == "sqlite" for c in at8) == 1
    full = plan_cells(
        [8], ["always", "os"], ["sync", "submit", "batch"], ["redis", "yardstick"], full=True, redis_ok=True
    )
    assert {(c.policy, c.mode) for c in full if c.system == "redis"} == {
        (p, m) for p in ("always", "os") for m in ("sync", "batch")
    }
    assert {(c.policy, c.mode) for c in full if c.system == "yardstick"} == {
        (p, m) for p in ("always", "os") for m in ("sync", "batch")
    }
    none = plan_cells([1], ["os"], ["sync"], [], full=True, redis_ok=False)
    assert none == [Cell("nori", "os", "sync", 1)]


def test_summarize_rates_over_the_shared_window_and_merges_latencies():
    from array import array

    a, b = array("d", [0.001] * 99 + [0.010]), array("d", [0.002] * 100)
    r = summarize(
        Cell("nori", "always", "sync", 2),
        [[(100, 10.0, 10.5, a.tobytes(), 0.01), (100, 10.0, 11.0, b.tobytes(), 0.02)]],
        [],
        server_cpu=0.01,
    )
    assert r.records_per_s == pytest.approx(200) and r.calls == 200  # 200 records in the 1 s they shared
    assert r.cpu_us == pytest.approx(200)  # 0.04 CPU seconds for 200 records, producers and server
    assert r.p50_ms == pytest.approx(2) and r.p99_ms == pytest.approx(2)
    assert summarize(Cell("nori", "os", "sync", 1), [], ["producer 0: boom"]).error == "producer 0: boom"


def test_a_cell_in_slices_is_the_mean_of_its_slices_and_its_counters_add_up():
    from array import array

    lat = array("d", [0.001] * 10).tobytes()
    run = CellRun()
    run.add([(100, 5.0, 6.0, lat, 0.1), (300, 5.0, 6.0, lat, 0.1)], [], 0.2, (1000, 10, 50), (1400, 12, 60))  # 400/s
    run.add([(200, 7.0, 8.0, lat, 0.1), (0, 7.0, 8.0, b"", 0.1)], [], 0.2, (1400, 12, 60), (1600, 13, 70))  # 200/s
    r = summarize(Cell("nori", "always", "sync", 2), run.slices, run.errors, run.server_cpu)
    assert r.records_per_s == pytest.approx(300) and r.calls == 30
    assert r.cpu_us == pytest.approx(0.8 / 600 * 1e6)  # 4 x 0.1 s in producers, 2 x 0.2 s in the server
    assert run.counts == [600, 3, 20]
    assert group_size(Cell("nori", "always", "sync", 2), (0, 0, 0), tuple(run.counts), 100) == pytest.approx(30)
    run.add([], [], 0.0, (), (1, 2, 3))  # a counter read failed: the group size is unknown, not wrong
    run.add([], [], 0.0, (1, 2, 3), (2, 3, 4))
    assert run.counts == []


def test_a_slice_rate_is_its_records_over_the_window_its_producers_shared():
    """r10 (audit 8): staggered wake-ups. Summing each producer's acked / own elapsed overstated the total."""
    # Two producers of a 1 s slice against a server that acks 1000 records/s in all. The second wakes
    # 0.5 s late, so for the first half second the first one runs alone and gets everything.
    early = (750, 0.0, 1.0, b"", 0.0)  # 500 alone + 250 shared
    late = (250, 0.5, 1.0, b"", 0.0)  # 250 shared
    assert slice_rate([early, late]) == pytest.approx(1000)
    assert 750 / 1.0 + 250 / 0.5 == pytest.approx(1250)  # the old sum of rates: 1.25x the truth
    # each producer's own window, even non-overlapping ones, lies inside [first start, last end]
    assert slice_rate([(100, 3.0, 4.0, b"", 0.0), (100, 4.0, 5.0, b"", 0.0)]) == pytest.approx(100)
    # with no stagger both ways agree
    assert slice_rate([(300, 2.0, 3.0, b"", 0.0), (500, 2.0, 3.0, b"", 0.0)]) == pytest.approx(800)
    assert slice_rate([]) == 0.0
    assert slice_rate([(0, 1.0, 1.0, b"", 0.0)]) == 0.0  # no window: no rate, no ZeroDivisionError


def test_every_system_is_timed_to_the_same_shared_deadline():
    """The runners all stop at the deadline the parent set, not at their own wake-up + seconds."""
    import time

    from nori_wal.load.cells import submit_loop, timed_loop

    end = time.monotonic() + 0.05
    acked, start, stop, lat = timed_loop(lambda _: None, None, 3, end)
    assert start < end <= stop and acked == 3 * len(lat) > 0
    assert timed_loop(lambda _: None, None, 1, start - 1.0)[0] == 0  # woke after the deadline: no calls

    class _Done:
        def result(self):
            return None

        def done(self):
            return True

    class _Client:
        def submit(self, rec):
            return _Done()

    acked, start, stop, lat = submit_loop(_Client(), None, 4, time.monotonic() + 0.05)
    assert start < stop and acked == len(lat) > 0


def test_slices_interleave_the_cells_at_one_producer_count_forward_then_back():
    a, b, c = Cell("sqlite", "-", "sync", 1), Cell("nori", "always", "sync", 1), Cell("yardstick", "always", "sync", 1)
    d, e = Cell("sqlite", "-", "sync", 8), Cell("nori", "always", "sync", 8)
    assert slice_order([a, b, c, d, e], 3) == [
        (a, 0),
        (b, 0),
        (c, 0),
        (c, 1),
        (b, 1),
        (a, 1),
        (a, 2),
        (b, 2),
        (c, 2),
        (d, 0),
        (e, 0),
        (e, 1),
        (d, 1),
        (d, 2),
        (e, 2),
    ]
    assert slice_order([a, b], 1) == [(a, 0), (b, 0)]
    assert slice_order([], 2) == []


def test_ratio_lines_say_met_missed_and_not_measured():
    rep = LoadReport(f_start=1000.0)
    rep.results = [
        CellResult(Cell("sqlite", "-", "sync", 8, ""), 1000.0),
        CellResult(Cell("nori", "always", "sync", 8), 2500.0),
        CellResult(Cell("yardstick", "always", "sync", 8), 2000.0),
        CellResult(Cell("nori", "always", "pipelined", 8), 9000.0),
        CellResult(Cell("nori", "os", "batch", 8), 160 * 1024.0),
        CellResult(Cell("yardstick", "os", "batch", 8), 400 * 1024.0),
    ]
    text = "\n".join(ratio_lines(rep, 32, 100))
    assert "N=8 1.25x" in text
    assert "Always sync N=8 / SQLite FULL N=8: 2.50x  (target >= 2x: met)" in text
    assert "pipe x32 N=8 / SQLite FULL N=8: 9.00x  (target >= 10x: MISSED)" in text
    assert "Always batch(100) N=8 / SQLite FULL N=8: n/a" in text
    assert "160 MiB/s (target >= 150: met)" in text and "40%" in text and "MISSED" in text


def test_group_size_is_records_per_fsync_or_per_write_under_os():
    # nori counters: (records, writes, fsyncs); the yardstick's: (groups, messages)
    assert group_size(Cell("nori", "always", "sync", 8), (10, 5, 4), (310, 105, 104), 100) == pytest.approx(3.0)
    assert group_size(Cell("nori", "os", "sync", 8), (0, 0, 1), (400, 200, 1), 100) == pytest.approx(2.0)
    assert group_size(Cell("yardstick", "always", "batch", 8), (0, 0), (10, 30), 100) == pytest.approx(300.0)
    assert group_size(Cell("nori", "always", "sync", 8), (), (1, 1, 1), 100) == 0.0  # not measured
    assert group_size(Cell("nori", "always", "sync", 8), (5, 5, 5), (5, 5, 5), 100) == 0.0


def test_the_progress_line_counts_slices_and_estimates_the_time_left():
    from nori_wal.load.progress import progress_line

    assert progress_line(0, 40, 0.0) == "slice 0/40 (0%), estimating time left"
    assert progress_line(10, 40, 30.0, "N=8 nori always sync") == (
        "slice 10/40 (25%), about 1:30 left: N=8 nori always sync"
    )
    assert progress_line(40, 40, 120.0) == "slice 40/40 (100%), about 0:00 left"


def test_progress_is_drawn_only_on_a_terminal_and_messages_stay_above_it():
    import io

    from nori_wal.load.progress import Progress

    class _Tty(io.StringIO):
        def isatty(self):
            return True

    piped = io.StringIO()
    p = Progress(stream=piped)
    p.start(2)
    p.step("a")
    p.say("[1/2] done")
    p.close()
    assert piped.getvalue() == "[1/2] done\n"  # not a terminal: the messages alone, as before

    tty, now = _Tty(), [0.0]
    p = Progress(stream=tty, clock=lambda: now[0])
    p.start(2)
    p.step("a")
    now[0] = 5.0
    p.step("b")
    p.say("[1/2] done")
    p.close()
    out = tty.getvalue()
    assert "slice 1/2 (50%), about 0:05 left: b" in out
    assert "\r\x1b[K[1/2] done\n" in out  # the line is cleared before a message and redrawn after it
    assert out.endswith("\r\x1b[K")  # and removed at the end
