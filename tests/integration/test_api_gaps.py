"""Parts of the public contract (API.md) no other test pinned down, each against real writer processes.

1. One writer per directory, refused *at once*: a directory held by a live
   writer (an embedded ``Wal`` in this or another process, ``nori-wal serve``,
   ``WriterProcess.spawn``) refuses ``Wal.open`` (here and in another process)
   and ``WriterProcess.spawn`` with ``WalLockedError``, and ``nori-wal serve``
   with exit 3 and a one-line reason, leaving the live writer as it was. No
   timing is measured: the holder never lets go before the contender has
   failed, so a contender that waited for the lock would wait forever, and the
   test would fail at its timeout instead of passing.
2. ``nori-wal serve --dir D`` without ``--endpoint`` is the writer itself, in
   the foreground and in our session, on a default ``ipc://`` endpoint that it
   prints and records for ``WalClient.for_dir(D)``; SIGTERM ends it with 0.
3. ``ProcessPoolExecutor`` under fork and forkserver, its workers appending
   through a client passed to them (pickled), inherited (a pool initializer:
   under fork the parent's very object, already connected) or made from
   ``WalClient.for_dir``: every acknowledged position is unique and every
   record reads back equal at its position, and nothing else is in the log.
4. Read-back equality of everything a record can be (LZ4/Zstd values, TTLs,
   tombstones, empty and 1 MiB values, keys and values at the varint length
   boundaries 0x80 and 0x4000, TTLs at those boundaries, the zero-copy size)
   appended through ``WalClient`` (append, append_batch, submit) and
   ``AsyncWalClient`` (append, append_batch), read from the segment files by
   ``open_reader``; a hypothesis test draws more such records.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from datetime import timedelta
from typing import Any, Callable, Iterator, Optional, Sequence, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from writer_support import keys_in, read_line

from nori_wal import (
    Compression,
    FsyncPolicy,
    Position,
    Record,
    Wal,
    WalConfig,
    WalLockedError,
    open_reader,
)
from nori_wal.client import AsyncWalClient, WalClient
from nori_wal.endpoint_file import ENDPOINT_FILE, SOCKET_NAME, read_endpoint_file
from nori_wal.writer_proc import WriterProcess

MS = timedelta(milliseconds=1)
Appended = Tuple[Record, Position]


# -- shared checks ----------------------------------------------------------------------------------


def read_log(directory: str) -> dict[Position, Record]:
    """Every record in the log by position, values copied out of the reader's buffers."""
    out: dict[Position, Record] = {}
    with open_reader(directory) as reader:
        for record, pos in reader:
            assert pos not in out
            out[pos] = record._replace(value=bytes(record.value))
    return out


def assert_read_back_equal(got: Record, appended: Record) -> None:
    """``got`` (read from the segment files) is ``appended``, field by field as API.md defines them."""
    assert got == appended
    assert type(got.key) is bytes and got.key == appended.key
    assert bytes(got.value) == bytes(appended.value)  # decompressed: the original value
    assert got.tombstone is appended.tombstone
    assert got.compression == appended.compression
    if appended.ttl is None:
        assert got.ttl is None
    else:
        assert got.ttl == appended.ttl and got.ttl % MS == timedelta(0)  # kept to the millisecond


def assert_log_is(directory: str, appended: Sequence[Appended]) -> None:
    """Every acknowledged position unique, every record equal at its position, and nothing else in the log."""
    positions = [pos for _, pos in appended]
    assert len(set(positions)) == len(positions), "a position was acknowledged twice"
    log = read_log(directory)
    for record, pos in appended:
        assert pos in log, f"acknowledged {pos} is not in the log"
        assert_read_back_equal(log[pos], record)
    assert sorted(log) == sorted(positions), "the log holds records nobody appended"


# -- 1. WalLockedError at once ------------------------------------------------------------------------

# Holds DIR with an embedded Wal (one record appended) until its stdin is closed: it never lets go first.
_EMBEDDED_HOLDER = """
import sys
from nori_wal import Record, Wal, WalConfig
wal, _ = Wal.open(WalConfig(dir=sys.argv[1]))
wal.append(Record.put(b"held", b"by an embedded Wal"))
print("holding", flush=True)
sys.stdin.read()
wal.close()
"""

# Tries Wal.open(DIR) in a process of its own; prints the outcome (exit 0 only for WalLockedError).
_CONTENDER = """
import sys
from nori_wal import Wal, WalConfig, WalLockedError
try:
    wal, _ = Wal.open(WalConfig(dir=sys.argv[1]))
except WalLockedError as exc:
    print("WalLockedError", exc)
    sys.exit(0)
wal.close()
print("opened")
sys.exit(1)
"""


@pytest.fixture
def embedded_holder() -> Iterator[Callable[[str], "subprocess.Popen[str]"]]:
    """``embedded_holder(dir)``: a process holding ``dir`` with an embedded Wal until its stdin closes."""
    procs: list[subprocess.Popen[str]] = []

    def start(directory: str) -> subprocess.Popen[str]:
        p = subprocess.Popen(
            [sys.executable, "-c", _EMBEDDED_HOLDER, directory],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(p)
        assert read_line(p) == "holding\n", p.stderr.read() if p.stderr else ""
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
        for f in (p.stdin, p.stdout, p.stderr):
            if f is not None:
                f.close()


def release(holder: subprocess.Popen[str]) -> None:
    """Let an embedded holder close its Wal and exit; it must do so cleanly."""
    assert holder.stdin is not None
    holder.stdin.close()
    assert holder.wait(30) == 0, holder.stderr.read() if holder.stderr else ""


def contend_in_another_process(directory: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _CONTENDER, directory], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0 and out.stdout.startswith("WalLockedError"), (out.stdout, out.stderr)


def serve_refused(serve_process: Any, *args: str) -> str:
    """``nori-wal serve ARGS`` on a held directory: exit 3, one line on stderr saying so, no endpoint printed."""
    p = serve_process(*args)
    assert p.wait(60) == 3
    err = p.stderr.read()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "locked" in lines[0] and "Traceback" not in err, err
    assert p.stdout.read() == ""
    return str(lines[0])


def assert_every_other_writer_refused(path: str, serve_process: Any) -> None:
    """Every way to open a second writer on ``path`` fails at once: ``Wal.open`` here and in another
    process, ``WriterProcess.spawn`` (default and tcp endpoints), ``nori-wal serve`` (with and without one)."""
    with pytest.raises(WalLockedError):
        Wal.open(WalConfig(dir=path))
    contend_in_another_process(path)
    for endpoint in (None, "tcp://127.0.0.1:*"):
        with pytest.raises(WalLockedError):
            WriterProcess.spawn(WalConfig(dir=path), endpoint, timeout=60)
    serve_refused(serve_process, "--dir", path)
    serve_refused(serve_process, "--dir", path, "--endpoint", "tcp://127.0.0.1:*")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["another process", "this process"])
def test_a_directory_held_by_an_embedded_wal_refuses_every_other_writer_at_once(
    tmp_path: Any, serve_process: Any, embedded_holder: Any, where: str
) -> None:
    d = str(tmp_path / "wal")
    held: Optional[Wal] = None
    holder = None
    if where == "another process":
        holder = embedded_holder(d)
    else:
        held, _ = Wal.open(WalConfig(dir=d))
        held.append(Record.put(b"held", b"by an embedded Wal"))
    assert_every_other_writer_refused(d, serve_process)
    # Nothing was disturbed: no contender recorded an endpoint or left a socket, the holder still holds.
    assert not os.path.exists(os.path.join(d, ENDPOINT_FILE))
    assert not os.path.exists(os.path.join(d, SOCKET_NAME))
    if holder is not None:
        assert holder.poll() is None
        release(holder)
    else:
        assert held is not None
        assert held.append(Record.put(b"after", b"the contenders")) > Position(0, 0)
        held.close()
    wal, info = Wal.open(WalConfig(dir=d))  # free again; closed cleanly by its holder
    wal.close()
    assert info.bytes_truncated == 0 and not info.corruption_detected
    assert keys_in(d)[0] == b"held"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("holder_kind", ["serve", "spawn"])
def test_a_directory_held_by_a_writer_process_refuses_every_other_writer_at_once(
    tmp_path: Any, serve_process: Any, spawn_writer: Any, holder_kind: str
) -> None:
    d = str(tmp_path / "wal")
    if holder_kind == "serve":
        holder = serve_process("--dir", d, "--fsync", "always")
        endpoint = read_line(holder).strip()
        pid = holder.pid
    else:
        w = spawn_writer(d)
        endpoint, pid = w.endpoint, w.pid
    with WalClient.for_dir(d, timeout=10) as c:
        first = c.append(Record.put(b"first", b"before the contenders"))
    link = str(tmp_path / "link")
    os.symlink(d, link)
    for path in (d, link):  # the same directory by another name is the same directory
        assert_every_other_writer_refused(path, serve_process)
    # The live writer was not disturbed: its record and socket stand and it goes on serving.
    rec = read_endpoint_file(d)
    assert rec is not None and (rec.endpoint, rec.pid) == (endpoint, pid)
    with WalClient.for_dir(d, timeout=10) as c:
        assert c.endpoint == endpoint and c.info()["pid"] == pid
        assert c.append(Record.put(b"second", b"after the contenders")) > first
    if holder_kind == "serve":
        holder.send_signal(signal.SIGTERM)
        assert holder.wait(30) == 0
    else:
        assert w.stop() == 0
    assert keys_in(d) == [b"first", b"second"]


# -- 2. nori-wal serve without --endpoint ---------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("path", ["short", "long"])
def test_serve_without_an_endpoint_is_the_foreground_writer_on_its_default_ipc_endpoint(
    tmp_path: Any, serve_process: Any, monkeypatch: Any, request: Any, path: str
) -> None:
    # A long directory path cannot hold its socket (sun_path): the socket goes to a private directory of
    # XDG_RUNTIME_DIR, a fresh short directory here (the serve process inherits the environment).
    run_dir = tempfile.mkdtemp(prefix="nw-run-")
    request.addfinalizer(lambda: shutil.rmtree(run_dir, ignore_errors=True))
    monkeypatch.setenv("XDG_RUNTIME_DIR", run_dir)
    d = str(tmp_path / "wal") if path == "short" else str(tmp_path / ("d" * 60) / ("e" * 60) / "wal")
    early = WalClient.for_dir(d, timeout=10)  # made before the writer runs: the default endpoint
    p = serve_process("--dir", d, "--fsync", "always")
    endpoint = read_line(p).strip()  # printed once it serves
    assert endpoint.startswith("ipc://")
    socket_path = endpoint[len("ipc://") :]
    if path == "short":
        assert socket_path == os.path.join(os.path.realpath(d), SOCKET_NAME)
    else:
        private = os.path.dirname(socket_path)
        assert os.path.dirname(private) == run_dir and stat.S_IMODE(os.stat(private).st_mode) == 0o700
    assert os.path.exists(socket_path)
    # The process we started is the writer (nothing was forked off to serve in its place), in our session.
    rec = read_endpoint_file(d)
    assert rec is not None and (rec.endpoint, rec.pid) == (endpoint, p.pid)
    assert os.getsid(p.pid) == os.getsid(0)
    records = [Record.put(b"k%03d" % i, b"v%d" % i) for i in range(50)]
    with WalClient.for_dir(d, timeout=10) as c:
        assert c.endpoint == endpoint
        assert c.info()["pid"] == p.pid
        positions = [c.append(r) for r in records[:10]] + c.append_batch(records[10:])
    assert p.poll() is None  # serves on until it is told to stop
    with early:
        assert early.endpoint == endpoint
        records.append(Record.put(b"early", b"client"))
        positions.append(early.append(records[-1]))
        early.sync()
    p.send_signal(signal.SIGTERM)
    assert p.wait(30) == 0
    assert p.stdout.read() == ""  # stdout carried the endpoint only
    assert not os.path.exists(os.path.join(d, ENDPOINT_FILE)) and not os.path.exists(socket_path)
    assert_log_is(d, list(zip(records, positions)))
    wal, info = Wal.open(WalConfig(dir=d))
    wal.close()
    assert info.valid_records == 51 and info.bytes_truncated == 0


# -- 3. ProcessPoolExecutor under fork and forkserver ------------------------------------------------


def pool_records(tag: str) -> list[Record]:
    """A worker's records: puts, TTLs, tombstones, compressed values (one of 200 KiB), distinct keys."""
    out = []
    for i in range(24):
        key = f"{tag}-{i:03d}".encode()
        value = (f"{tag}:{i}," * (i + 1)).encode()
        kind = i % 6
        if kind == 0:
            out.append(Record.put(key, value))
        elif kind == 1:
            out.append(Record.put_with_ttl(key, value, timedelta(seconds=i, microseconds=777)))
        elif kind == 2:
            out.append(Record.delete(key))
        elif kind == 3:
            out.append(Record.put(key, value * 50).with_compression(Compression.LZ4))
        elif kind == 4:
            out.append(Record.put(key, value).with_compression(Compression.ZSTD))
        else:
            out.append(Record.put(key, random.Random(tag + str(i)).randbytes(200 * 1024 if i == 5 else i)))
    return out


def append_mix(client: WalClient, tag: str) -> list[Appended]:
    """Append ``pool_records(tag)`` one by one, as one batch and pipelined; each with its acknowledged Position."""
    recs = pool_records(tag)
    out = [(r, client.append(r)) for r in recs[:8]]
    out += list(zip(recs[8:16], client.append_batch(recs[8:16])))
    pending = [(r, client.submit(r)) for r in recs[16:]]
    out += [(r, p.result()) for r, p in pending]
    return out


_WORKER_CLIENT: Optional[WalClient] = None


def install_client(client: WalClient) -> None:
    """Pool initializer: under fork the parent's own (connected) client object, under forkserver a pickled one."""
    global _WORKER_CLIENT
    _WORKER_CLIENT = client


def task_given_a_client(args: tuple[WalClient, str]) -> tuple[int, list[Appended]]:
    client, tag = args
    return os.getpid(), append_mix(client, tag)


def task_using_for_dir(args: tuple[str, str]) -> tuple[int, list[Appended]]:
    directory, tag = args
    with WalClient.for_dir(directory, timeout=20) as client:
        return os.getpid(), append_mix(client, tag)


def task_using_the_installed_client(tag: str) -> tuple[int, list[Appended]]:
    assert _WORKER_CLIENT is not None
    return os.getpid(), append_mix(_WORKER_CLIENT, tag)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["argument", "for_dir", "initializer"])
@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_process_pool_executor_workers_append_and_every_record_reads_back(
    spawn_writer: Any, wal_dir: str, method: str, how: str
) -> None:
    spawn_writer(wal_dir)
    client = WalClient.for_dir(wal_dir, timeout=20)
    parent_first = Record.put(b"parent-first", b"before the pool")
    appended = [(parent_first, client.append(parent_first))]  # the parent's socket exists before any fork
    tags = [f"{method}-{how}-{t}" for t in range(6)]
    ctx = mp.get_context(method)
    if how == "initializer":
        with ProcessPoolExecutor(3, mp_context=ctx, initializer=install_client, initargs=(client,)) as ex:
            results = list(ex.map(task_using_the_installed_client, tags))
    elif how == "argument":
        with ProcessPoolExecutor(3, mp_context=ctx) as ex:
            results = list(ex.map(task_given_a_client, [(client, t) for t in tags]))
    else:
        with ProcessPoolExecutor(3, mp_context=ctx) as ex:
            results = list(ex.map(task_using_for_dir, [(wal_dir, t) for t in tags]))
    assert os.getpid() not in {pid for pid, _ in results}  # the appends came from the workers
    for tag, (_, chunk) in zip(tags, results):
        assert [r for r, _ in chunk] == pool_records(tag)
        appended += chunk
    parent_last = Record.put(b"parent-last", b"after the pool")
    appended.append((parent_last, client.append(parent_last)))  # still usable in the parent
    client.close()
    assert_log_is(wal_dir, appended)


# -- 4. read-back equality of every kind of record ------------------------------------------------------

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
