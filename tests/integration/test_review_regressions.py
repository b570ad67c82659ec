"""Regressions found by the correctness review (each test failed before its fix)."""

import pathlib
import sys
import threading

from nori_wal import FsyncPolicy, Record, Wal, WalConfig
from nori_wal import segment_log


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
    gap_line = next(i for i, line in enumerate(pathlib.Path(segment_log.__file__).read_text().splitlines(), 1)
                    if line.strip() == "self.end = HEADER_SIZE")

    def tracer(frame, event, arg):
        if frame.f_code is not code:
            return None
        if event == "line" and frame.f_lineno == gap_line:
            # Between "active_id = new" and "end = HEADER_SIZE": ask from another thread.
            q = threading.Thread(target=lambda: seen.append(wal.current_position()))
            q.start()
            q.join(1.0)                           # with the fix it blocks on the lock until the roll ends
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
