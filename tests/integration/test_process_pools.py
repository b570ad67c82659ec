"""``ProcessPoolExecutor`` under fork and forkserver, its workers appending to a real writer process.

The workers append through a client passed to them (pickled), inherited (a pool
initializer: under fork the parent's very object, already connected) or made
from ``WalClient.for_dir``: every acknowledged position is unique and every
record reads back equal at its position, and nothing else is in the log.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
from concurrent.futures import ProcessPoolExecutor
from datetime import timedelta
from typing import Any, Optional

import pytest
from writer_support import Appended, assert_log_is

from nori_wal import Compression, Record
from nori_wal.client import WalClient


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
