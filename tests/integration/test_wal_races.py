"""The embedded Wal while threads race it: a roll under ``current_position``, an append under ``close``.

Each test pauses one thread at a chosen line (``sys.settrace``, waits on events
with timeouts, never sleeps) so the other runs in the window a race needs.
"""

import pathlib
import sys
import threading

from nori_wal import FsyncPolicy, Record, Wal, WalConfig, segment_log


def test_current_position_is_never_ahead_of_the_next_append_during_a_roll(tmp_path):
    """Wal.current_position read (new segment id, old offset) while another thread rolled.

    The roll sets ``active_id`` and ``end`` in two steps; an unlocked reader in
    between saw a position past where the next append goes (API.md: <=).
    """
    wal, _ = Wal.open(WalConfig(dir=tmp_path / "wal", max_segment_size=4096, fsync_policy=FsyncPolicy.os()))
    rec = Record.put(b"k", b"v" * 200)
    first = wal.current_position().segment_id

    seen: list = []
    code = segment_log.SegmentLog._create_segment.__code__
    gap_line = next(
        i
        for i, line in enumerate(pathlib.Path(segment_log.__file__).read_text().splitlines(), 1)
        if line.strip() == "self.end = HEADER_SIZE"
    )

    def tracer(frame, event, arg):
        if frame.f_code is not code:
            return None
        if event == "line" and frame.f_lineno == gap_line:
            # Between "active_id = new" and "end = HEADER_SIZE": ask from another thread.
            q = threading.Thread(target=lambda: seen.append(wal.current_position()))
            q.start()
            q.join(1.0)  # with the fix it blocks on the lock until the roll ends
            seen.append(q)
        return tracer

    def roller():
        sys.settrace(tracer)
        try:
            while wal.current_position().segment_id == first:
                wal.append(rec)
        finally:
            sys.settrace(None)

    t = threading.Thread(target=roller)
    t.start()
    t.join(30)
    q = seen[-1] if seen and isinstance(seen[-1], threading.Thread) else None
    if q is not None:
        q.join(30)
    positions = [p for p in seen if not isinstance(p, threading.Thread)]
    assert positions, "the roll was not observed"
    nxt = wal.append(rec)
    wal.close()
    assert all(p <= nxt for p in positions), (positions, nxt)


def _line_of(func, text):
    src, first = __import__("inspect").getsourcelines(func)
    return first + next(i for i, line in enumerate(src) if line.strip() == text)


def _pause_at(code, lineno, reached, go):
    def tracer(frame, event, arg):
        if frame.f_code is not code:
            return None
        if event == "line" and frame.f_lineno == lineno and not reached.is_set():
            reached.set()
            go.wait(30)
        return tracer

    return tracer


def test_append_racing_close_is_not_reported_failed_when_close_made_it_durable(tmp_path):
    """An append written before close() must not raise WalClosedError once close's fsync covered it.

    The appender became the syncer, close() (past its wait for the syncer) sealed
    and closed the log, then the appender's sync raised WalClosedError: the
    record is in the log but the caller was told the append failed (and retries
    would duplicate it).
    """
    from nori_wal.wal import Wal as W

    wal, _ = Wal.open(WalConfig(dir=tmp_path / "wal", fsync_policy=FsyncPolicy.always()))
    ev = {k: threading.Event() for k in ("w_in", "w_go", "w_sync", "w_go2", "c_in", "c_go")}
    result: list = []

    def appender():
        t1 = _pause_at(
            W._await_durable.__code__, _line_of(W._await_durable, "cond = self._sync_cond"), ev["w_in"], ev["w_go"]
        )
        t2 = _pause_at(
            W._await_durable.__code__, _line_of(W._await_durable, "self._log.sync()"), ev["w_sync"], ev["w_go2"]
        )

        def both(frame, event, arg):
            a = t1(frame, event, arg)
            b = t2(frame, event, arg)
            return both if (a or b) else None

        sys.settrace(both)
        try:
            result.append(wal.append(Record.put(b"k", b"v")))
        except Exception as exc:  # noqa: BLE001  recorded for the assert
            result.append(exc)
        finally:
            sys.settrace(None)

    def closer():
        sys.settrace(_pause_at(W.close.__code__, _line_of(W.close, "self._log.close()"), ev["c_in"], ev["c_go"]))
        try:
            wal.close()
        finally:
            sys.settrace(None)

    a = threading.Thread(target=appender)
    a.start()
    assert ev["w_in"].wait(30)  # written, not yet waiting for durability
    c = threading.Thread(target=closer)
    c.start()
    assert ev["c_in"].wait(30)  # close is past its wait for a syncer
    ev["w_go"].set()
    assert ev["w_sync"].wait(30)  # the appender is the syncer, about to sync
    ev["c_go"].set()
    c.join(30)  # close seals and fsyncs everything
    ev["w_go2"].set()
    a.join(30)
    assert len(result) == 1 and not isinstance(result[0], Exception), result
