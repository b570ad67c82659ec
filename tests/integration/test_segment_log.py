"""SegmentLog.append_in_place: the writer's one-write path for a group that fits the active segment."""

from nori_wal import FsyncPolicy, Position, Record, WalConfig, open_reader
from nori_wal.codec import encode_record
from nori_wal.segment import HEADER_SIZE
from nori_wal.segment_log import SegmentLog


def _frames(tag: str, count: int, size: int) -> list[bytes]:
    return [encode_record(Record.put(f"{tag}{i}".encode(), bytes([i % 251]) * size)) for i in range(count)]


def test_append_in_place_writes_a_group_in_one_run_or_nothing_when_a_roll_is_due(tmp_path):
    config = WalConfig(dir=tmp_path, max_segment_size=64 * 1024, fsync_policy=FsyncPolicy.always())
    log, _ = SegmentLog.open(config)
    first = _frames("a", 3, 100)
    start = log.append_in_place(first, 3, sum(map(len, first)))
    assert start == HEADER_SIZE
    assert log.position == Position(log.active_id, HEADER_SIZE + sum(map(len, first)))

    too_big = _frames("b", 70, 1000)            # ~70 KB: more than the rest of a 64 KiB segment
    before = log.position
    assert log.append_in_place(too_big, len(too_big), sum(map(len, too_big))) is None
    assert log.position == before               # nothing written
    positions = log.append_frames(too_big)      # the caller's fallback rolls where needed
    assert positions[0] == before and positions[-1].segment_id > before.segment_id
    log.sync()
    log.close()

    with open_reader(tmp_path) as reader:
        keys = [rec.key for rec, _pos in reader]
    assert keys == [f"a{i}".encode() for i in range(3)] + [f"b{i}".encode() for i in range(70)]
