"""SIGKILL torture: real producers, a real writer process killed at random moments, a reader watching.

The engine behind ``nori-wal torture`` and ``tests/crash/test_torture.py``:

* ``producers`` processes append through ``WalClient`` (one record or one
  batch per call). Every record carries a unique id (producer, sequence) in
  its key and a value derived from it, so any byte out of place is visible.
  A call that raises (the writer was killed: timeout, lost connection) has an
  unknown outcome: the producer does not count it and moves on with new ids;
  it never retries an id, so a duplicate in the log is always a bug.
* The writer (``WriterProcess``) is SIGKILLed at a random moment of each round
  (after a random number of acknowledgements, sometimes none: mid-recovery,
  mid-roll, mid-fsync) and restarted on the same directory.
* A reader process follows the log through every kill with ``WalReader`` and
  checks each record it gets; it must never see a torn or corrupt one.
* After each kill the engine reads the log as the kill left it (no repair):
  every record acknowledged so far must be there, at the position its append
  returned. At the end it stops everything cleanly and checks the whole log:
  no acknowledged record lost, none duplicated, nothing invented, each
  producer's acknowledged records in the order they were acknowledged, and
  every record the reader saw still in place.

A SIGKILL is a process crash: the kernel keeps what the writer wrote, so the
check holds under every fsync policy (power loss is FaultFS's department).
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import random
import statistics
import struct
import time
import traceback
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, Callable

from ..config import FsyncPolicy, WalConfig
from ..errors import CorruptionError, WalError
from ..position import Position
from ..reader import WalReader
from ..record import Record

_ACK = struct.Struct("<QQQ")  # sequence number, segment id, offset
_KEY = b"t%03d-%010d"


def torture_key(producer: int, seq: int) -> bytes:
    return _KEY % (producer, seq)


def torture_value(key: bytes, seq: int, max_size: int) -> bytes:
    """A value that is a function of its key: a torn or mixed-up value cannot pass for a good one."""
    size = (seq * 2654435761 + len(key)) % (max_size + 1)
    return (key * (size // len(key) + 1))[:size]


def intact(rec: Record, key: bytes, seq: int, max_size: int) -> bool:
    """Whether ``rec`` is exactly the put a producer made for ``key``: its value, and no flag set
    (tombstone, TTL, compression): a writer that changed a flag changed the record."""
    return (
        not rec.tombstone
        and rec.ttl is None
        and not rec.compression
        and bytes(rec.value) == torture_value(key, seq, max_size)
    )


def parse_key(key: bytes) -> tuple[int, int] | None:
    """(producer, seq) of a torture key, or None for anything else."""
    if len(key) != 15 or key[:1] != b"t" or key[4:5] != b"-" or not key[1:4].isdigit() or not key[5:].isdigit():
        return None
    return int(key[1:4]), int(key[5:])


@dataclass
class TortureOptions:
    """What to run. Defaults: the test suite's quick run."""

    directory: str
    producers: int = 8
    rounds: int = 20
    fsync: str = "always"  # always | batch[:5ms] | os
    max_segment_size: int = 1024 * 1024  # small, so rounds cross segment rolls
    value_size: int = 256  # largest value, bytes (values are 0..value_size bytes)
    batch: int = 1  # records per append call
    reader: bool = True
    max_acks_per_round: int = 300  # a round kills after a random 0..this many acks
    client_timeout: float = 2.0  # seconds; a producer's call fails (unknown outcome) after it
    round_timeout: float = 30.0  # seconds a round may wait for its acks before the kill anyway
    seed: int | None = None
    retry: float | None = None  # retrying producers: delivery_timeout seconds, each record keyed by its key


@dataclass
class TortureReport:
    """What happened, and the verdict (``ok``)."""

    rounds: int = 0
    kills: int = 0
    producers: int = 0
    fsync: str = ""
    acked: int = 0
    lost: int = 0
    duplicated: int = 0
    invented: int = 0
    misplaced: int = 0  # acknowledged at one position, found at another
    out_of_order: int = 0  # a producer's acknowledged records not in ack order
    unknown_outcome: int = 0  # calls that raised (not counted as acked)
    unacked_present: int = 0  # records whose call raised but which reached the log (allowed)
    records_in_log: int = 0
    reader_records: int = 0
    reader_errors: list[str] = field(default_factory=list)
    stalled_rounds: int = 0  # rounds that saw no ack within round_timeout
    restart_s: list[float] = field(default_factory=list)  # spawn to serving, per restart
    recovery_s: list[float] = field(default_factory=list)  # recovery alone (RecoveryInfo.duration_s)
    truncated_bytes: list[int] = field(default_factory=list)  # tail cut per restart (torn records, zeros)
    final_exit_code: int | None = None
    seed: int = 0
    duration_s: float = 0.0
    problems: list[str] = field(default_factory=list)
    retry: float | None = None  # retrying producers' delivery_timeout (None: producers never retry)

    @property
    def ok(self) -> bool:
        return (
            not (
                self.lost
                or self.duplicated
                or self.invented
                or self.misplaced
                or self.out_of_order
                or self.reader_errors
                or self.problems
            )
            and self.acked > 0
        )

    def summary(self) -> str:
        """The human-readable report ``nori-wal torture`` prints."""

        def ms(xs: list[float]) -> str:
            if not xs:
                return "-"
            q = sorted(xs)
            p90 = q[max(0, math.ceil(0.9 * len(q)) - 1)]  # nearest rank: never below the median
            return f"median {statistics.median(q) * 1e3:.0f} ms, p90 {p90 * 1e3:.0f} ms, max {q[-1] * 1e3:.0f} ms"

        lines = [
            (
                f"nori-wal torture: {self.kills} SIGKILLs in {self.rounds} rounds, {self.producers} producers, "
                f"fsync {self.fsync}, {self.duration_s:.1f} s (seed {self.seed})"
                + (f", retrying producers (delivery_timeout {self.retry:g} s)" if self.retry is not None else "")
            ),
            f"  acknowledged:     {self.acked}",
            f"  lost:             {self.lost}",
            f"  duplicated:       {self.duplicated}",
            f"  invented/damaged: {self.invented}",
            f"  misplaced:        {self.misplaced}",
            f"  out of order:     {self.out_of_order}",
            (
                f"  unknown outcome:  {self.unknown_outcome} calls raised during kills "
                f"({self.unacked_present} of their records reached the log, which is allowed)"
            ),
            f"  records in log:   {self.records_in_log}",
            (
                f"  reader:           {self.reader_records} records read during the kills, "
                f"{len(self.reader_errors)} errors"
            ),
            f"  restart (spawn to serving): {ms(self.restart_s)}",
            (
                f"  recovery alone:             {ms(self.recovery_s)}; tail bytes cut per restart "
                f"(torn records and preallocated zeros): "
                f"max {max(self.truncated_bytes, default=0)}"
            ),
        ]
        if self.stalled_rounds:
            lines.append(f"  rounds without any ack within the round timeout: {self.stalled_rounds}")
        for p in self.problems[:10] + self.reader_errors[:5]:
            lines.append(f"  PROBLEM: {p}")
        lines.append("  verdict: " + ("OK, nothing acknowledged was lost" if self.ok else "FAILED"))
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        return d


# -- the child processes ------------------------------------------------------------------------


def _producer_main(
    index: int,
    directory: str,
    conn: Connection,
    stop: Any,
    timeout: float,
    value_size: int,
    batch: int,
    retry: float | None = None,
) -> None:
    """Append until ``stop``; send each acknowledged (seq, position) up ``conn``.

    Without ``retry`` an id is never retried (a duplicate is a bug) and a failed
    call backs off 20 ms (``for_dir`` fails fast while the writer is down). With
    ``retry`` the client resends (delivery_timeout) and each record carries its
    key as its idempotency key: a duplicate is still a bug.
    """
    from ..client import WalClient

    seq = unknown = 0
    errors: dict[str, int] = {}
    client = WalClient.for_dir(directory, timeout=timeout, delivery_timeout=retry)
    try:
        while not stop.is_set():
            first = seq
            keys = [torture_key(index, s) for s in range(first, first + batch)]
            recs = [Record.put(k, torture_value(k, s, value_size)) for k, s in zip(keys, range(first, first + batch))]
            if retry is not None:
                recs = [r.with_idempotency_key(r.key) for r in recs]
            seq += batch
            try:
                positions = [client.append(recs[0])] if batch == 1 else client.append_batch(recs)
            except WalError as exc:  # unknown outcome: the writer may have written it
                unknown += 1
                name = type(exc).__name__
                errors[name] = errors.get(name, 0) + 1
                stop.wait(0.02)  # the writer is down or restarting: do not spin
                continue
            conn.send_bytes(b"".join(_ACK.pack(first + i, p.segment_id, p.offset) for i, p in enumerate(positions)))
    except BaseException:
        conn.send_bytes(b"ERR" + traceback.format_exc().encode())
        raise
    finally:
        client.close()
        try:
            conn.send_bytes(b"END" + json.dumps({"unknown": unknown, "errors": errors}).encode())
        finally:
            conn.close()


def _reader_main(directory: str, conn: Connection, stop: Any, value_size: int) -> None:
    """Follow the log through the kills; check every record; report what was seen where."""
    seen: list[tuple[bytes, int, int]] = []
    errors: list[str] = []
    reader = WalReader(directory)
    try:
        final = False
        while True:
            try:
                item = reader.next_record()
            except CorruptionError as exc:
                errors.append(f"reader: {exc}")
                break
            if item is None:
                if final:
                    break
                if stop.wait(0.005):  # poll the log's end (the writer publishes nothing to wait on)
                    final = True  # one more pass to the end after everything stopped
                continue
            rec, pos = item
            key = bytes(rec.key)
            parsed = parse_key(key)
            if parsed is None or not intact(rec, key, parsed[1], value_size):
                errors.append(f"reader: torn or foreign record {key[:40]!r} at {pos}")
                continue
            seen.append((key, pos.segment_id, pos.offset))
    except Exception:  # noqa: BLE001 - reported to the engine, which fails the run
        errors.append("reader crashed: " + traceback.format_exc())
    finally:
        reader.close()
        conn.send((seen, errors))
        conn.close()


# -- the engine ---------------------------------------------------------------------------------


class _Log:
    """The engine's incremental view of the log: records seen, in order, and where."""

    def __init__(self, directory: str):
        self.directory = directory
        self.where: dict[bytes, Position] = {}
        self.order: list[bytes] = []
        self.duplicates: list[str] = []
        self.invented: list[str] = []
        self._next = Position(0, 0)

    def catch_up(self, value_size: int) -> None:
        """Read whatever whole records were added since the last call (no repair, like any reader)."""
        with WalReader(self.directory, self._next) as reader:
            while True:
                item = reader.next_record()
                if item is None:
                    break
                rec, pos = item
                self._note(rec, pos, value_size)
            if reader.position is not None:
                self._next = reader.position

    def _note(self, rec: Record, pos: Position, value_size: int) -> None:
        key = bytes(rec.key)
        parsed = parse_key(key)
        if parsed is None or not intact(rec, key, parsed[1], value_size):
            self.invented.append(f"{key[:40]!r} at {pos}")
            return
        if key in self.where:
            if self.where[key] != pos:
                self.duplicates.append(f"{key.decode()} at {self.where[key]} and {pos}")
            return
        self.where[key] = pos
        self.order.append(key)


def run_torture(opts: TortureOptions, progress: Callable[[str], None] | None = None) -> TortureReport:
    """Run the torture in ``opts.directory`` (created; it must not hold another log) and report."""
    seed = opts.seed if opts.seed is not None else random.randrange(2**32)
    policy = FsyncPolicy.parse(opts.fsync)
    report = TortureReport(rounds=opts.rounds, producers=opts.producers, fsync=str(policy), seed=seed, retry=opts.retry)
    t_start = time.monotonic()
    os.makedirs(opts.directory, exist_ok=True)
    engine = _Engine(opts, report, policy, progress or (lambda _msg: None))
    engine.run(random.Random(seed))
    _final_check(opts, report, engine.acked, engine.seen)
    report.duration_s = time.monotonic() - t_start
    return report


class _Engine:
    """One torture run's processes and what they reported: the producers' acks, the reader's sightings."""

    def __init__(self, opts: TortureOptions, report: TortureReport, policy: FsyncPolicy, say: Callable[[str], None]):
        self.opts, self.report, self.say = opts, report, say
        self.config = WalConfig(dir=opts.directory, max_segment_size=opts.max_segment_size, fsync_policy=policy)
        self.ctx = mp.get_context("spawn")  # no fork of a process that may hold ZeroMQ state or threads
        self.stop = self.ctx.Event()
        self.acked: dict[int, list[tuple[int, Position]]] = {p: [] for p in range(opts.producers)}
        self.conns: dict[Connection, int] = {}
        self.procs: list[Any] = []
        self.reader_proc: Any = None
        self.reader_conn: Connection | None = None
        self.ended: set[int] = set()
        self.seen: list[tuple[bytes, int, int]] = []
        self.log = _Log(opts.directory)

    def run(self, rng: random.Random) -> None:
        """Start everything, kill the writer once a round, stop cleanly; every process is gone on return."""
        writer = self.spawn()
        try:
            self.start_producers()
            if self.opts.reader:
                self.start_reader()
            for rnd in range(self.opts.rounds):
                if rnd:
                    writer = self.spawn()
                self.kill_round(rnd, writer, rng)
            writer = self.spawn()  # the last start: the producers reach it, then everyone stops cleanly
            self.finish(writer)
        finally:
            self.stop.set()
            if writer.is_alive():
                writer.kill()
            self.reap_producers()
            self.collect_reader()
            for c in self.conns:
                c.close()

    def spawn(self) -> Any:
        from ..writer_proc import WriterProcess

        t0 = time.monotonic()
        writer = WriterProcess.spawn(self.config)
        self.report.restart_s.append(time.monotonic() - t0)
        self.report.recovery_s.append(writer.recovery_info.duration_s)
        self.report.truncated_bytes.append(writer.recovery_info.bytes_truncated)
        return writer

    def start_producers(self) -> None:
        opts = self.opts
        for p in range(opts.producers):
            parent, child = self.ctx.Pipe(duplex=False)
            proc = self.ctx.Process(
                target=_producer_main,
                name=f"nori-torture-producer-{p}",
                daemon=True,
                args=(
                    p,
                    opts.directory,
                    child,
                    self.stop,
                    opts.client_timeout,
                    opts.value_size,
                    opts.batch,
                    opts.retry,
                ),
            )
            proc.start()
            child.close()
            self.conns[parent] = p
            self.procs.append(proc)

    def start_reader(self) -> None:
        self.reader_conn, child = self.ctx.Pipe(duplex=False)
        self.reader_proc = self.ctx.Process(
            target=_reader_main,
            name="nori-torture-reader",
            daemon=True,
            args=(self.opts.directory, child, self.stop, self.opts.value_size),
        )
        self.reader_proc.start()
        child.close()

    def kill_round(self, rnd: int, writer: Any, rng: random.Random) -> None:
        """Wait for a random number of acks (sometimes none), SIGKILL the writer, check the log as it left it."""
        target = rng.randint(0, self.opts.max_acks_per_round) if rng.random() > 0.1 else 0
        got, deadline = 0, time.monotonic() + self.opts.round_timeout
        while got < target:
            left = deadline - time.monotonic()
            if left <= 0:
                self.report.stalled_rounds += got == 0
                break
            got += self.drain(min(left, 0.5))
        writer.kill()
        self.report.kills += 1
        self.drain(0)
        self.check_acked_present(f"after kill {rnd + 1}")
        self.say(
            f"round {rnd + 1}/{self.opts.rounds}: killed after {got} acks; "
            f"{sum(map(len, self.acked.values()))} acknowledged so far"
        )

    def finish(self, writer: Any) -> None:
        """Let the producers reach the last writer, stop them, stop the writer cleanly."""
        opts = self.opts
        got, deadline = 0, time.monotonic() + opts.round_timeout
        while got < opts.producers and time.monotonic() < deadline:
            got += self.drain(0.5)
        self.stop.set()
        deadline = time.monotonic() + opts.client_timeout * 3 + 30
        while len(self.ended) < opts.producers and time.monotonic() < deadline:
            self.drain(0.5)
        self.report.final_exit_code = writer.stop()
        if self.report.final_exit_code != 0:
            self.report.problems.append(
                f"the last writer exited with code {self.report.final_exit_code} on a clean stop"
            )

    def drain(self, timeout: float) -> int:
        """Take acks already sent (waiting up to ``timeout``); returns how many."""
        got = 0
        live = [c for c, p in self.conns.items() if p not in self.ended]
        if not live:
            return 0
        for c in wait(live, timeout):
            p = self.conns[c]  # type: ignore[index]
            try:
                got += self._take(c, p)  # type: ignore[arg-type]
            except EOFError:
                self.ended.add(p)
        return got

    def _take(self, c: Connection, p: int) -> int:
        """Every message producer ``p`` has sent on ``c`` so far: acks, its crash report, its end."""
        got = 0
        while c.poll():
            data = c.recv_bytes()
            if data.startswith(b"END"):
                info = json.loads(data[3:])
                self.report.unknown_outcome += int(info["unknown"])
                self.ended.add(p)
                break
            if data.startswith(b"ERR"):
                self.report.problems.append(f"producer {p} crashed: {data[3:].decode()[-400:]}")
                continue
            for seq, seg, off in _ACK.iter_unpack(data):
                self.acked[p].append((seq, Position(seg, off)))
                got += 1
        return got

    def check_acked_present(self, when: str) -> None:
        self.log.catch_up(self.opts.value_size)
        for p, items in self.acked.items():
            for seq, pos in items:
                key = torture_key(p, seq)
                found = self.log.where.get(key)
                if found is None:
                    self.report.problems.append(f"{when}: acknowledged {key.decode()} at {pos} is not in the log")
                    return
                if found != pos:
                    self.report.problems.append(f"{when}: acknowledged {key.decode()} at {pos} found at {found}")
                    return

    def reap_producers(self) -> None:
        for proc in self.procs:
            proc.join(self.opts.client_timeout * 3 + 10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
                self.report.problems.append(f"producer {proc.name} did not stop")

    def collect_reader(self) -> None:
        """The reader's report (what it saw, where), then the reader gone."""
        proc, conn, report = self.reader_proc, self.reader_conn, self.report
        if proc is None or conn is None:
            return
        if conn.poll(60):
            try:
                self.seen, errors = conn.recv()
                report.reader_errors.extend(errors)
            except EOFError:
                report.reader_errors.append("the reader died without a report")
        else:
            report.reader_errors.append("the reader did not report within 60 s")
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
        conn.close()
        report.reader_records = len(self.seen)


def _final_check(
    opts: TortureOptions,
    report: TortureReport,
    acked: dict[int, list[tuple[int, Position]]],
    seen: list[tuple[bytes, int, int]],
) -> None:
    """The whole log after the clean stop, against every acknowledgement and every reader observation."""
    log = _Log(opts.directory)
    try:
        log.catch_up(opts.value_size)
    except CorruptionError as exc:
        report.problems.append(f"final read: {exc}")
    report.records_in_log = len(log.order)
    report.duplicated = len(log.duplicates)
    report.invented = len(log.invented)
    report.problems.extend(f"duplicate: {d}" for d in log.duplicates[:5])
    report.problems.extend(f"invented or damaged: {d}" for d in log.invented[:5])
    rank = {k: i for i, k in enumerate(log.order)}
    acked_keys: set[bytes] = set()
    for p, items in acked.items():
        last_rank = -1
        for seq, pos in items:
            key = torture_key(p, seq)
            acked_keys.add(key)
            found = log.where.get(key)
            if found is None:
                report.lost += 1
                if report.lost <= 5:
                    report.problems.append(f"lost: {key.decode()} acknowledged at {pos}")
                continue
            if found != pos:
                report.misplaced += 1
                report.problems.append(f"misplaced: {key.decode()} acknowledged at {pos}, found at {found}")
            if rank[key] < last_rank:
                report.out_of_order += 1
            last_rank = rank[key]
    report.acked = len(acked_keys)
    report.unacked_present = sum(1 for k in log.order if k not in acked_keys)
    for key, seg, off in seen:
        if log.where.get(key) != Position(seg, off):
            report.reader_errors.append(
                f"the reader saw {key.decode()} at {seg}:{off}; the final log has it at {log.where.get(key)}"
            )
            break


__all__ = ["TortureOptions", "TortureReport", "parse_key", "run_torture", "torture_key", "torture_value"]
