"""A reader parked at a torn tail keeps going when a restarted writer cuts the tail and appends again.

Found by the SIGKILL torture: a writer killed mid-write leaves part of a frame
at the end of the last segment; the reader reports "not yet" there. The next
writer's recovery truncates those bytes and appends new records at the same
offset, so the bytes the reader had buffered are no longer the file's bytes.
"""

import pytest

from nori_wal import FsyncPolicy, Record, Wal, WalConfig
from nori_wal.codec import encode_record
from nori_wal.reader import WalReader
from nori_wal.segment import segment_name
from nori_wal.testing import FaultFS


def rec(i, size=100):
    return Record.put(b"k%04d" % i, bytes([65 + i % 26]) * size)


@pytest.mark.parametrize("torn", [1, 4, 6, 9, 50, 106])
@pytest.mark.parametrize("roll", [False, True])
def test_reader_continues_after_recovery_rewrites_the_torn_tail(tmp_path, torn, roll):
    d = str(tmp_path)
    cfg = WalConfig(dir=d, max_segment_size=4096, fsync_policy=FsyncPolicy.always())
    fs = FaultFS()
    wal, _ = Wal.open(cfg, layer=fs)
    wal.append_batch([rec(i) for i in range(3)])
    killed = fs.process_crash()  # SIGKILL: no seal, the lock is gone
    wal.close()
    frame = encode_record(rec(3))
    killed.open_append(f"{d}/{segment_name(0)}").append(frame[:torn])  # the write the kill tore

    reader = WalReader(d, layer=killed)
    got = [reader.next_record() for _ in range(3)]
    assert [r.key for r, _ in got] == [b"k0000", b"k0001", b"k0002"]
    assert reader.next_record() is None  # a torn tail is "not yet"

    wal2, info = Wal.open(cfg, layer=killed)  # the restarted writer
    assert info.bytes_truncated == torn
    more = [rec(i, 2000 if roll else 100) for i in range(10, 13)]
    positions = [wal2.append(r) for r in more]
    wal2.close()
    assert (positions[-1].segment_id > 0) == roll

    after = []
    while (item := reader.next_record()) is not None:
        after.append(item)
    reader.close()
    assert [(r.key, p) for r, p in after] == [(r.key, p) for r, p in zip(more, positions)]


class _FilteredReads:
    """The real files, with every ``pread`` passed through ``filter(file, size, offset)``."""

    def __init__(self, inner, filter):
        self._inner, self._filter = inner, filter

    def open_read(self, path):
        return _FilteredFile(self._inner.open_read(path), self._filter)

    def __getattr__(self, name):
        return getattr(self._inner, name)


class _FilteredFile:
    def __init__(self, inner, filter):
        self._inner, self._filter = inner, filter

    def pread(self, size, offset):
        return self._filter(self._inner, size, offset)

    def __getattr__(self, name):
        return getattr(self._inner, name)


class _Landing:
    """The first read over ``hole`` sees those bytes still zero.

    Over durable zeros a writer preallocated, a read can catch a write half-copied:
    the frame's tail is still zeros while later frames are already there.
    """

    def __init__(self, hole):
        self.hole, self.landed = hole, False

    def __call__(self, f, size, offset):
        data = f.pread(size, offset)
        start, end = self.hole
        if not self.landed and offset <= start and offset + len(data) >= end:
            self.landed = True
            data = data[: start - offset] + bytes(end - start) + data[end - offset :]
        return data


def test_a_record_read_while_it_lands_over_zeros_is_read_again_not_called_corrupt(tmp_path):
    from nori_wal.fs import OS

    cfg = WalConfig(dir=str(tmp_path), fsync_policy=FsyncPolicy.always())
    recs = [rec(i) for i in range(3)]
    with Wal.open(cfg)[0] as wal:
        positions = [wal.append(r) for r in recs]
        mid = positions[1].offset + len(encode_record(recs[1])) // 2
        landing = _Landing((mid, mid + 20))
        with WalReader(str(tmp_path), layer=_FilteredReads(OS, landing)) as reader:
            got = [reader.next_record() for _ in recs]
    assert landing.landed and got == list(zip(recs, positions))


class _SealLands:
    """Until a read of the seal, the bytes from ``start`` on read as zeros.

    A reader can stop at a frame a live writer is still copying, and then find the seal the
    writer appended once those records were written and fsynced: the records landed first.
    """

    def __init__(self, start):
        self.start, self.landed = start, False

    def __call__(self, f, size, offset):
        from nori_wal.codec import SEAL_FRAME_SIZE

        if offset == f.size() - SEAL_FRAME_SIZE:
            self.landed = True  # the reader looks for a seal: it is there, and all before it
        data = f.pread(size, offset)
        cut = self.start - offset
        if not self.landed and cut < len(data):
            data = data[: max(cut, 0)] + bytes(len(data) - max(cut, 0))
        return data


def test_a_seal_seen_after_a_stop_mid_write_means_read_again_not_corrupt(tmp_path):
    from nori_wal.fs import OS

    cfg = WalConfig(dir=str(tmp_path), fsync_policy=FsyncPolicy.always())
    recs = [rec(i) for i in range(3)]
    with Wal.open(cfg)[0] as wal:
        positions = [wal.append(r) for r in recs]
    seal = _SealLands(positions[1].offset + 10)
    with WalReader(str(tmp_path), layer=_FilteredReads(OS, seal)) as reader:
        got = list(reader)
    assert seal.landed and got == list(zip(recs, positions))


def test_verify_reads_a_last_segment_again_once_it_finds_it_sealed(tmp_path):
    """verify's scan stopped at a frame still being copied; the seal it then finds vouches for it."""
    from nori_wal.fs import OS
    from nori_wal.inspect_log import inspect_log

    cfg = WalConfig(dir=str(tmp_path), fsync_policy=FsyncPolicy.always())
    with Wal.open(cfg)[0] as wal:
        positions = [wal.append(rec(i)) for i in range(3)]
    seal = _SealLands(positions[1].offset + 10)
    report = inspect_log(str(tmp_path), layer=_FilteredReads(OS, seal))
    assert seal.landed and report.problems == [] and report.records == 3 and report.segments[0].sealed
