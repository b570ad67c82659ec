"""Read-back equality of everything a record can be, appended through the clients to a real writer.

LZ4/Zstd values, TTLs, tombstones, empty and 1 MiB values, keys and values at
the varint length boundaries 0x80 and 0x4000, TTLs at those boundaries, the
zero-copy size: appended through ``WalClient`` (append, append_batch, submit)
and ``AsyncWalClient`` (append, append_batch), read from the segment files by
``open_reader``; a hypothesis test draws more such records.
"""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta
from typing import Any, Optional, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from writer_support import MS, assert_read_back_equal, read_log

from nori_wal import Compression, FsyncPolicy, Position, Record, WalConfig, open_reader
from nori_wal.client import AsyncWalClient, WalClient

LENGTHS = [0, 1, 127, 128, 129, 16383, 16384, 16385]  # around the varint steps 0x80 and 0x4000
BIG = 1 << 20


def payload(n: int, kind: str, seed: int) -> bytes:
    if kind == "random":  # incompressible: stored larger when compressed
        return random.Random(seed).randbytes(n)
    if kind == "zeros":
        return bytes(n)
    return (b"the quick brown fox %d " % seed * (n // 20 + 1))[:n]


def boundary_records() -> list[tuple[Record, bytes]]:
    """(record, its original value): every kind of record, lengths and TTLs at the varint boundaries."""
    out: list[tuple[Record, bytes]] = []
    seed = 0
    for n in LENGTHS + [65535, 65536, BIG]:  # 64 KiB: the reader's zero-copy threshold
        for kind in ("random", "text"):
            for comp in (Compression.NONE, Compression.LZ4, Compression.ZSTD):
                seed += 1
                value = payload(n, kind, seed)
                r = Record.put(b"v%d-%s-%d" % (n, kind.encode(), comp), value)
                out.append((r.with_compression(comp) if comp else r, value))
    for n in LENGTHS:
        seed += 1
        key = payload(n, "random", seed)
        out.append((Record.put(key, b"value of a %d-byte key" % n), b"value of a %d-byte key" % n))
        out.append((Record.delete(key), b""))
    ttls = [
        timedelta(0),
        timedelta(microseconds=1500),
        127 * MS,
        128 * MS,
        16383 * MS,
        16384 * MS,
        timedelta(minutes=5),
        timedelta(days=3650, microseconds=999),
        timedelta.max,
    ]
    for i, ttl in enumerate(ttls):
        for comp in (Compression.NONE, Compression.LZ4, Compression.ZSTD):
            seed += 1
            value = payload(i * 40, "text", seed)
            r = Record.put_with_ttl(b"ttl%d-%d" % (i, comp), value, ttl)
            assert r.ttl is not None and abs(r.ttl - ttl) < MS
            out.append((r.with_compression(comp) if comp else r, value))
    for comp in (Compression.LZ4, Compression.ZSTD):
        out.append((Record.delete(b"tomb-%d" % comp).with_compression(comp), b""))
        out.append((Record.put(b"empty-%d" % comp, b"").with_compression(comp), b""))
    big = payload(BIG, "random", 7)
    out.append((Record.put(bytearray(b"bytes-like"), memoryview(big)), big))
    out.append(
        (
            Record.put_with_ttl(memoryview(b"k" * 128), bytearray(b"x" * 16384), 16384 * MS).with_compression(
                Compression.LZ4
            ),
            b"x" * 16384,
        )
    )
    return out


def check_appended(directory: str, pairs: Sequence[tuple[Record, bytes]], positions: Sequence[Position]) -> None:
    log = read_log(directory)
    assert len(set(positions)) == len(positions)
    for (record, value), pos in zip(pairs, positions):
        got = log[pos]
        assert bytes(got.value) == value
        assert_read_back_equal(got, record)


@pytest.mark.timeout(60)
def test_every_kind_of_record_reads_back_equal_through_the_sync_client(spawn_writer: Any, tmp_path: Any) -> None:
    d = str(tmp_path / "wal")
    spawn_writer(WalConfig(dir=d, max_segment_size=4 << 20, fsync_policy=FsyncPolicy.always()))
    pairs = boundary_records()
    records = [r for r, _ in pairs]
    with WalClient.for_dir(d, timeout=20) as c:
        one_by_one = [c.append(r) for r in records]
        batch = c.append_batch(records)
        pending = [c.submit(r) for r in records]
        pipelined = [p.result() for p in pending]
    assert one_by_one == sorted(one_by_one) and batch == sorted(batch) and pipelined == sorted(pipelined)
    assert one_by_one[-1] < batch[0] and batch[-1] < pipelined[0]
    check_appended(d, pairs * 3, one_by_one + batch + pipelined)
    assert len(read_log(d)) == 3 * len(pairs)
    assert max(one_by_one + batch + pipelined).segment_id >= 3  # read across several segments


@pytest.mark.timeout(60)
def test_every_kind_of_record_reads_back_equal_through_the_async_client(spawn_writer: Any, tmp_path: Any) -> None:
    d = str(tmp_path / "wal")
    spawn_writer(WalConfig(dir=d, max_segment_size=4 << 20, fsync_policy=FsyncPolicy.always()))
    pairs = boundary_records()
    records = [r for r, _ in pairs]

    async def main() -> tuple[list[Position], list[Position], list[Position]]:
        async with AsyncWalClient.for_dir(d, timeout=20) as a:
            one_by_one = [await a.append(r) for r in records]
            together = list(await asyncio.gather(*[a.append(r) for r in records]))
            batch = await a.append_batch(records)
            return one_by_one, together, batch

    one_by_one, together, batch = asyncio.run(main())
    for positions in (one_by_one, together, batch):
        assert positions == sorted(positions)
    check_appended(d, pairs * 3, one_by_one + together + batch)
    assert len(read_log(d)) == 3 * len(pairs)


# The hypothesis version: records drawn with lengths at (and between) the boundaries, through every way of appending.

KEY_SIZES = st.one_of(st.sampled_from(LENGTHS[:5]), st.integers(0, 200))
VALUE_SIZES = st.one_of(st.sampled_from(LENGTHS + [65535, 65536]), st.integers(0, 300), st.just(BIG))


@st.composite
def drawn_records(draw: Any) -> tuple[Record, bytes, Optional[timedelta]]:
    """(record, original value, the TTL asked for)."""
    key = payload(draw(KEY_SIZES), "random", draw(st.integers(0, 2**32)))
    kind = draw(st.sampled_from(["put", "ttl", "delete"]))
    comp = draw(st.sampled_from(list(Compression)))
    ttl: Optional[timedelta] = None
    if kind == "delete":
        value = b""
        record = Record.delete(key)
    else:
        value = payload(
            draw(VALUE_SIZES), draw(st.sampled_from(["random", "zeros", "text"])), draw(st.integers(0, 2**32))
        )
        if kind == "ttl":
            ttl = draw(
                st.one_of(
                    st.sampled_from([timedelta(0), 127 * MS, 128 * MS, 16383 * MS, 16384 * MS]),
                    st.timedeltas(min_value=timedelta(0)),
                )
            )
            record = Record.put_with_ttl(key, value, ttl)
        else:
            record = Record.put(key, value)
    return (record.with_compression(comp) if comp else record), value, ttl


def append_via(directory: str, via: str, records: list[Record]) -> list[Position]:
    if via.startswith("async"):

        async def main() -> list[Position]:
            async with AsyncWalClient.for_dir(directory, timeout=20) as a:
                if via == "async append_batch":
                    return await a.append_batch(records)
                return list(await asyncio.gather(*[a.append(r) for r in records]))

        return asyncio.run(main())
    with WalClient.for_dir(directory, timeout=20) as c:
        if via == "append":
            return [c.append(r) for r in records]
        if via == "append_batch":
            return c.append_batch(records)
        pending = [c.submit(r) for r in records]
        return [p.result() for p in pending]


EXAMPLES = max(25, settings().max_examples // 5)  # 40 by default, more under NORI_HYPOTHESIS=thorough


@pytest.mark.timeout(120)
def test_drawn_records_read_back_equal_through_either_client(spawn_writer: Any, tmp_path: Any) -> None:
    d = str(tmp_path / "wal")
    spawn_writer(WalConfig(dir=d, max_segment_size=3 << 20, fsync_policy=FsyncPolicy.always()))

    @settings(max_examples=EXAMPLES, deadline=None)
    @given(
        st.lists(drawn_records(), min_size=1, max_size=6),
        st.sampled_from(["append", "append_batch", "submit", "async append", "async append_batch"]),
    )
    def appended_then_read(drawn: list[tuple[Record, bytes, Optional[timedelta]]], via: str) -> None:
        records = [r for r, _, _ in drawn]
        positions = append_via(d, via, records)
        assert len(positions) == len(records) and positions == sorted(positions)
        assert len(set(positions)) == len(positions)
        got: dict[Position, Record] = {}
        with open_reader(d, start=positions[0]) as reader:
            for record, pos in reader:
                got[pos] = record
                if pos == positions[-1]:
                    break
        for (record, value, ttl), pos in zip(drawn, positions):
            assert_read_back_equal(got[pos], record)
            assert bytes(got[pos].value) == value
            if ttl is not None:
                got_ttl = got[pos].ttl
                assert got_ttl is not None and timedelta(0) <= ttl - got_ttl < MS

    appended_then_read()
