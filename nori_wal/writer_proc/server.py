"""The writer loop: receive, validate, write a group, fsync per policy, acknowledge.

A thin shell around three pure parts: ``protocol`` (what a request is and
whether its frames are valid), ``commit.GroupCommit`` (when to fsync, whom
an fsync acknowledges) and ``SegmentLog`` (the bytes on disk).

One pass of the loop::

    block for the first message (poll timeout = time to the Batch deadline)
    drain everything already pending without blocking
    validate each request: a one-record append in a few steps (one_plain_frame), else one scan_frames call
    write the valid payloads with ONE SegmentLog call (one write per segment touched)
    Always/Batch: fsync once for the group (when due), then ack every request it covers
    Os: ack right after the write

The fsync runs inline by default: requests that arrive meanwhile wait in the
socket and form the next group (the yardstick's loop). With ``overlap`` it runs
in a flush thread while the loop receives, validates and writes the next group
(``os.fdatasync`` releases the GIL). On the two-core reference machine the
inline fsync was faster in every workload -- the producers keep both cores
busy, so there is no idle core to overlap with, and overlap costs thread
hand-offs and a wake-up per arriving request -- so overlap is opt-in; see
``commit.overlap_fsync`` for the figures.

The loop waits on its ROUTER socket alone: the flush thread and a watcher
thread (signals, the lifeline) wake it with messages from inproc DEALERs whose
routing ids start with ``!`` (ids ZeroMQ generates for peers start with a 0 byte).

Fail-stop: a failed write or fsync (WalIOError from SegmentLog) acknowledges
nothing from the group, answers every waiting producer with that error and
stops the writer with a non-zero exit (``EXIT_IO``); the next start recovers.
A producer's bad request is answered with an error reply and never written;
it changes nothing for anyone else.

Signals (SIGTERM, SIGINT) only set a flag (gunicorn: "just queue the signal");
``signal.set_wakeup_fd`` wakes the watcher, which wakes the loop; the loop then
drains what is pending, fsyncs, acknowledges, closes the log cleanly and
returns 0. Per request the loop does one ``scan_frames`` call and a handful of
small steps; per group one write and (Always) one fsync.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import zmq

from .. import protocol as P
from ..commit import GroupCommit, overlap_fsync
from ..config import WalConfig
from ..errors import ProtocolError, RecordTooLargeError, WalError, WalIOError, WalLockedError
from ..fs import OS, FileLayer
from ..observe import NOOP, Meter, guard_meter
from ..position import Position
from ..record import BytesLike
from ..recovery import RecoveryInfo
from ..scan import one_plain_frame as _one_plain_frame
from ..segment_log import SegmentLog
from .endpoint import EndpointBusy, IpcClaim, claim_ipc, default_endpoint, remove_endpoint_file, write_endpoint_file

log = logging.getLogger("nori_wal.writer")

EXIT_OK, EXIT_USAGE, EXIT_LOCKED, EXIT_IO = 0, 2, 3, 4  # as in cli.py
MAX_GROUP_BYTES = 64 * 1024 * 1024  # stop draining a group beyond this many payload bytes
MAX_GROUP_MESSAGES = 4096  # ... or this many requests (bounds one pass's latency)
REPLY_LINGER_MS = 2000  # how long closing waits to deliver the last replies
PEER_RECV_LIMIT = 1024  # requests queued per peer (ZeroMQ's RCVHWM: back-pressure, loses nothing)
PEER_SEND_LIMIT = 100_000  # replies queued per peer (SNDHWM: past it a reply is dropped, so high:
# one pass may answer thousands of a live peer's control requests)
SHUTDOWN_DRAIN_S = 2.0  # how long a graceful stop keeps taking queued requests


class FatalStop(BaseException):
    """The writer must stop now with ``exit_code``; not an Exception, so nothing swallows it."""

    def __init__(self, reason: str, exit_code: int):
        super().__init__(reason)
        self.reason, self.exit_code = reason, exit_code


@dataclass
class WriterSpec:
    """Everything a writer process needs (picklable: it crosses into the child process)."""

    config: WalConfig
    endpoint: str | None = None  # None: default_endpoint(config.dir)
    layer: FileLayer | None = None  # test seam: a picklable FileLayer (None: the OS)
    metrics_port: int | None = None
    metrics_addr: str = "127.0.0.1"  # where /metrics listens (0.0.0.0: every interface)
    log_level: str = "WARNING"
    overlap: bool = False  # fsync in a flush thread while the next group is received (see commit)


# A request waiting for its ack: (routing id, request id, reply -- None for a SYNC, built at ack time --,
# perf_counter when its group was received). A tuple: the writer makes one per request.
Ticket = tuple[bytes, int, "bytes | None", float]
# An APPEND validated and waiting to be written: (routing id, request id, records, bytes, units it became).
_Pending = tuple[bytes, int, int, int, int]


_FLUSH_ID = b"!flush"  # routing ids of the writer's own threads (peer-generated ids start with a 0 byte)
_WAKE_ID = b"!wake"
_INTERNAL_IDS = frozenset((_FLUSH_ID, _WAKE_ID))  # a peer may choose an id starting with "!": it is served
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
_POLLIN = int(zmq.POLLIN)
_EVENTS = int(zmq.EVENTS)
_RCVMORE = int(zmq.RCVMORE)
_ZERO_COPY_BYTES = 64 * 1024
_HEADER_SIZE = P.APPEND_HEADER_SIZE
# pyzmq's C-level send: zmq.Socket.send's Python-level wrapper costs more per call than the C work
# of a small message, and the writer sends two frames per reply.
_send: Callable[..., Any] = zmq.backend.Socket.send


class _FlushThread:
    """Runs ``SegmentLog.sync`` off the loop's thread; says "done" with a message into the loop's ROUTER.

    The loop then waits on one socket only, whatever woke it: a producer, a
    finished fsync or (through ``_Watcher``) a signal or the lifeline.
    """

    def __init__(self, seglog: SegmentLog, ctx: zmq.Context[Any], wake_endpoint: str):
        self._log = seglog
        self._cond = threading.Condition()
        self._jobs = 0  # fsyncs handed over and not yet begun
        self._closing = False
        self.started = 0  # fsyncs handed to the thread ...
        self.finished = 0  # ... and finished (the result below belongs to the last one)
        self._result: tuple[Position | None, WalError | None] = (None, None)
        self._sock = _internal_socket(ctx, _FLUSH_ID, wake_endpoint)
        self._thread = threading.Thread(target=self._run, name="nori-wal-flush", daemon=True)
        self._thread.start()

    def start(self) -> None:
        with self._cond:
            self.started += 1
            self._jobs += 1
            self._cond.notify()

    def _run(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while not self._jobs and not self._closing:
                    cond.wait()
                if not self._jobs:
                    return
                self._jobs -= 1
            try:
                res: tuple[Position | None, WalError | None] = (self._log.sync(), None)
            except WalError as exc:
                res = (None, exc)
            except BaseException as exc:  # noqa: BLE001  never leave the loop waiting for an answer
                res = (None, WalIOError(f"fsync thread failed: {exc!r}"))
            with cond:
                self._result = res
                self.finished += 1
                cond.notify_all()
                try:
                    self._sock.send(b"f", _NOBLOCK)  # the socket is only used under the lock
                except zmq.ZMQError:
                    pass

    def take(self) -> tuple[Position | None, WalError | None] | None:
        """The result of the fsync handed over last, or None while it still runs."""
        with self._cond:
            return self._result if self.finished == self.started else None

    def wait(self) -> tuple[Position | None, WalError | None]:
        """Block until the fsync handed over last has finished; its result."""
        with self._cond:
            while self.finished != self.started:
                self._cond.wait()
            return self._result

    def close(self) -> bool:
        """Stop the thread; False if it did not end within 10 s."""
        with self._cond:
            self._closing = True
            self._cond.notify()
            self._sock.close(0)
        self._thread.join(10.0)
        return not self._thread.is_alive()


class _Watcher:
    """Turns a signal's wake-up byte and the lifeline's EOF into a message for the loop's ROUTER.

    Signal handlers only set a flag (gunicorn: "just queue the signal");
    ``signal.set_wakeup_fd`` writes a byte that wakes this thread, which wakes
    the loop. Blocked in ``select``, it costs nothing.
    """

    def __init__(self, server: "WriterServer", sock: zmq.Socket[Any], wake_fd: int | None, lifeline_fd: int | None):
        self._server = server
        self._fds = [fd for fd in (wake_fd, lifeline_fd) if fd is not None]
        self._lifeline = lifeline_fd
        self._stop_r, self._stop_w = os.pipe()
        self._sock = sock  # connected by the server before its public endpoint existed
        self._thread = threading.Thread(target=self._run, name="nori-wal-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import select

        fds = self._fds + [self._stop_r]
        while True:
            ready, _, _ = select.select(fds, [], [])
            if self._stop_r in ready:
                break
            for fd in ready:
                if not _drain_fd(fd) and fd == self._lifeline:
                    fds.remove(fd)
                    self._server.stop("the spawning process is gone (lifeline closed)")
            try:
                self._sock.send(b"w", _NOBLOCK)
            except zmq.ZMQError:
                pass
        self._sock.close(0)

    def close(self) -> bool:
        """Stop the thread; False if it did not end within 10 s (its pipe is then left open)."""
        os.write(self._stop_w, b"x")
        self._thread.join(10.0)
        if self._thread.is_alive():
            return False
        os.close(self._stop_r)
        os.close(self._stop_w)
        return True


class WriterServer:
    """One directory's writer: owns the SegmentLog, the ROUTER socket and the commit state."""

    def __init__(
        self, seglog: SegmentLog, info: RecoveryInfo, endpoint: str, meter: Meter = NOOP, overlap: bool = False
    ):
        self.log = seglog
        self.overlap = overlap
        self.info = info
        self.meter = meter
        self._metered = meter is not NOOP
        self.policy = seglog.config.fsync_policy
        self.commit: GroupCommit[Ticket] = GroupCommit(self.policy, seglog.durable)
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # unroutable replies raise, never vanish
        self.sock.setsockopt(zmq.MAXMSGSIZE, P.MAX_MESSAGE_BYTES)
        # Per peer: past these a peer that sends without reading stops being read (receive) and loses
        # the replies it leaves unread (send: ROUTER_MANDATORY raises, _reply counts the drop) instead
        # of growing the writer without bound. Our clients keep 8 requests in flight by default.
        self.sock.setsockopt(zmq.SNDHWM, PEER_SEND_LIMIT)
        self.sock.setsockopt(zmq.RCVHWM, PEER_RECV_LIMIT)
        self.sock.setsockopt(zmq.LINGER, REPLY_LINGER_MS)
        self.wake_endpoint = f"inproc://nori-wal-writer-{id(self):x}"
        flusher: _FlushThread | None = None
        try:
            self.sock.bind(self.wake_endpoint)
            # Our threads' sockets connect (and the ROUTER takes them in) before the public endpoint
            # exists, so no peer can claim their ids first: ZeroMQ refuses a second pipe with one id.
            self._flusher = flusher = _FlushThread(self.log, self.ctx, self.wake_endpoint)
            self._wake_sock = _internal_socket(self.ctx, _WAKE_ID, self.wake_endpoint)
            self.sock.getsockopt(zmq.EVENTS)  # processes the pending attach commands
            self.sock.bind(endpoint)
        except zmq.ZMQError as exc:
            if flusher is not None:
                flusher.close()
            self.sock.close(0)
            self.ctx.destroy(0)
            raise FatalStop(f"cannot listen on {endpoint}: {exc}", EXIT_USAGE) from exc
        self.endpoint = self._bound_endpoint(endpoint)
        self.ipc_claim: IpcClaim | None = None  # set by open_writer; released with the socket file
        self.stopping = False
        self.stop_reason = ""
        self._watcher: _Watcher | None = None
        self._overlap = False
        self._arrived_during_fsync = False
        self._unsynced_records = 0
        self._unsynced_bytes = 0
        self._fsync_records = 0
        self._fsync_bytes = 0

    def _bound_endpoint(self, requested: str) -> str:
        last = self.sock.getsockopt(zmq.LAST_ENDPOINT)
        bound = last.decode() if isinstance(last, bytes) else str(last)
        if requested.startswith("tcp://") and bound.startswith("tcp://0.0.0.0:"):
            bound = "tcp://127.0.0.1:" + bound.rsplit(":", 1)[1]  # what a local client can connect to
        return bound or requested

    # -- the loop -------------------------------------------------------------------------

    def serve(self, wake_fd: int | None = None, lifeline_fd: int | None = None) -> int:
        """Run until stopped (signal, ``stop``, lifeline EOF) or a fatal error; returns the exit code.

        ``wake_fd`` (the signal wake-up fd) and ``lifeline_fd`` are watched by a
        helper thread; the loop itself waits on its ROUTER socket alone.
        """
        if wake_fd is not None or lifeline_fd is not None:
            self._watcher = _Watcher(self, self._wake_sock, wake_fd, lifeline_fd)
        sock = self.sock
        items = [(sock, _POLLIN)]
        zpoll = zmq.zmq_poll
        commit = self.commit
        try:
            while not self.stopping:
                due = commit.fsync_due()
                if due is not None:
                    now = time.monotonic()
                    if due <= now:
                        self._start_fsync(now)
                        continue
                    timeout = max(1, int((due - now) * 1e3 + 0.999))
                else:
                    timeout = -1
                if not zpoll(items, timeout):  # returns at once when messages are already queued
                    continue
                if commit.in_flight:
                    self._arrived_during_fsync = True
                self._receive_group()
            return self._shutdown()
        except FatalStop as stop:
            self._fail_stop(stop)
            return stop.exit_code
        except Exception as exc:  # a bug: stop like a failed write (answer everyone), never hang
            log.exception("writer for %s: internal error", self.log.dir)
            fatal = FatalStop(f"internal error in the writer: {exc!r}", EXIT_IO)
            fatal.__cause__ = WalIOError(fatal.reason)
            self._fail_stop(fatal)
            return EXIT_IO

    def stop(self, reason: str) -> None:
        """Ask the loop to drain, fsync and exit (safe from a signal handler: sets flags only)."""
        self.stop_reason = self.stop_reason or reason
        self.stopping = True

    # -- receiving and writing -------------------------------------------------------------

    def _receive_group(self) -> None:
        """Drain pending requests, validate them, write the appends with one call, ack per policy."""
        sock = self.sock
        recv = sock.recv
        max_frame = self.log.max_frame
        check_payload = P.check_payload
        append_header = P.append_header
        compact_append = P.compact_append
        t_recv = time.perf_counter() if self._metered else 0.0
        units: list[Any] = []
        counts: list[int] = []
        pending: list[_Pending] = []
        records = nbytes = 0
        failed: FatalStop | None = None
        for _ in range(MAX_GROUP_MESSAGES):
            try:
                ident = recv(_NOBLOCK)  # once per group it raises Again: cheaper than asking first
            except zmq.Again:
                break
            # The rest of a multipart message is already here (ZeroMQ delivers messages whole); a Frame
            # says whether more follows, cheaper than a getsockopt(RCVMORE) per frame.
            f = recv(copy=False)
            payload: BytesLike
            frames: list[Any] | None = None
            if not f.more:  # one frame: a compact APPEND (our clients'), or a control
                head = f.bytes if len(f) < _ZERO_COPY_BYTES else f.buffer
                h = compact_append(head)
                if h is not None:
                    payload = memoryview(head)[_HEADER_SIZE:]
            else:  # a header and a payload frame (or garbage: more frames)
                head = f.bytes
                f = recv(copy=False)
                frames = [head, f.bytes if len(f) < _ZERO_COPY_BYTES else f.buffer]  # big payloads: no copy
                if f.more:  # garbage: count its frames, keep none of them
                    n = 2
                    while f.more:
                        f = recv(copy=False)
                        n += 1
                    self._reply(ident, P.encode_error(0, ProtocolError(f"a request has 1 or 2 frames, got {n}")))
                    continue
                h = append_header(head)
                payload = frames[-1]
            if ident[0] == 0x21 and ident in _INTERNAL_IDS:  # b"!": one of our own threads
                try:
                    self._internal(ident)
                except FatalStop as stop:  # stop after this pass, once the requests taken are answered
                    failed = failed or stop
                continue
            if h is not None:  # the hot path: an APPEND in our clients' encoding
                rid, count = h
            else:
                req = P.decode_request(frames or [head])
                if type(req) is P.Control:
                    # Keep each producer's order: write the appends received before it first.
                    self._write_group(units, counts, pending, records, nbytes, t_recv)
                    units, counts, pending, records, nbytes = [], [], [], 0, 0
                    self._control(ident, req, t_recv)
                    continue
                if type(req) is P.BadRequest:
                    self._reply(ident, P.encode_error(req.request_id, req.error))
                    continue
                assert type(req) is P.Append
                rid, count, payload = req
            size = len(payload)
            nunits = 1
            if count != 1 or not _one_plain_frame(payload, max_frame):  # else: valid, checked in a few steps
                err = check_payload(payload, count, max_frame)
                if err is not None:
                    self._reply(ident, P.encode_error(rid, err))
                    continue
                if size > max_frame:  # a batch larger than a segment holds: split at frames
                    mv = memoryview(payload)
                    parts = P.split_units(payload, count, max_frame)
                    units += [mv[s:e] for s, e, _c in parts]
                    counts += [c for _s, _e, c in parts]
                    nunits = len(parts)
            if nunits == 1:
                units.append(payload)
                counts.append(count)
            pending.append((ident, rid, count, size, nunits))
            records += count
            nbytes += size
            if nbytes >= MAX_GROUP_BYTES:
                break
        self._write_group(units, counts, pending, records, nbytes, t_recv)  # after a failed fsync: answers them
        if failed is not None:
            raise failed

    def _write_group(
        self, units: list[Any], counts: list[int], pending: list[_Pending], records: int, nbytes: int, t_recv: float
    ) -> None:
        """Write the group's units with one call; ack now (Os) or hand the group's tickets to the commit."""
        if not pending:
            return
        log = self.log
        try:
            start = log.append_in_place(units, records, nbytes)  # None: a roll is due
            firsts = log.append_frames(units, counts) if start is None else []
        except RecordTooLargeError as exc:  # cannot happen: every unit was checked against max_frame
            for ident, rid, *_ in pending:
                self._reply(ident, P.encode_error(rid, exc))
            return
        except WalError as exc:
            # Fail-stop: nothing of this group is acknowledged, every producer hears why.
            for ident, rid, *_ in pending:
                self._reply(ident, P.encode_error(rid, exc))
            raise FatalStop(str(exc), EXIT_IO) from exc
        run_ok = P.encode_run_ok
        tickets: list[Ticket] = []
        if start is not None:  # all in the active segment: each request is one run
            seg, off = log.active_id, start
            for ident, rid, count, size, _n in pending:
                tickets.append((ident, rid, run_ok(rid, seg, off, count), t_recv))
                off += size
            end = Position(seg, off)
        else:  # across a roll: a request's units may sit in two segments
            i = 0
            for ident, rid, count, _size, nunits in pending:
                if nunits == 1:
                    seg, off = firsts[i]
                    reply = run_ok(rid, seg, off, count)
                else:
                    runs: list[int] = []
                    for j in range(i, i + nunits):
                        runs += (firsts[j][0], firsts[j][1], counts[j])
                    reply = P.encode_ok(rid, runs)
                i += nunits
                tickets.append((ident, rid, reply, t_recv))
            end = Position(firsts[-1][0], firsts[-1][1] + len(units[-1]))
        commit = self.commit
        if commit.written_group(end, tickets):
            self._send_acks(tickets)
        if commit.in_flight or commit.waiting:
            self._unsynced_records += records
            self._unsynced_bytes += nbytes
        elif self._metered:  # Os: a group is what one write carried
            self.meter.histogram("wal_group_records", records)
            self.meter.histogram("wal_group_bytes", nbytes)

    def _internal(self, ident: bytes) -> None:
        """A message from the flush thread (an fsync finished) or the watcher (a signal, the lifeline)."""
        if ident != _FLUSH_ID:
            return  # _WAKE_ID: nothing to do here; the loop looks at ``stopping`` next.
        if self.commit.in_flight and self._overlap:
            res = self._flusher.take()
            if res is not None:
                self._finish_fsync(*res)

    def _control(self, ident: bytes, req: P.Control, t_recv: float) -> None:
        op, rid = req.op, req.request_id
        log = self.log
        try:
            if op is P.Op.SYNC:
                end = log.position
                ticket: Ticket = (ident, rid, None, t_recv)
                if self.commit.sync_requested(end, ticket):
                    self._send_acks([ticket])
            elif op is P.Op.POSITION:
                log.check_usable()
                self._reply(ident, P.encode_ok(rid, list(log.position)))
            elif op is P.Op.DELETE:
                assert req.position is not None
                self._reply(ident, P.encode_ok(rid, log.delete_segments_before(req.position)))
            elif op is P.Op.INFO:
                self._reply(ident, P.encode_ok(rid, self.describe()))
        except WalIOError as exc:
            self._reply(ident, P.encode_error(rid, exc))
            if log.failed is not None:
                raise FatalStop(str(exc), EXIT_IO) from exc
        except WalError as exc:
            self._reply(ident, P.encode_error(rid, exc))

    def describe(self) -> dict[str, Any]:
        """What INFO answers."""
        return {
            "version": P.VERSION,
            "pid": os.getpid(),
            "dir": self.log.dir,
            "policy": str(self.policy),
            "position": list(self.log.position),
            "durable": list(self.log.durable),
            "max_frame": self.log.max_frame,
            "max_payload": P.MAX_PAYLOAD_BYTES,
            "segments": len(self.log.segment_ids),
            "recovered_records": self.info.valid_records,
            "records": self.log.total_records,
            "writes": self.log.writes,
            "fsyncs": self.log.fsyncs,
        }

    # -- fsync and acks --------------------------------------------------------------------

    def _start_fsync(self, now: float) -> None:
        commit = self.commit
        commit.fsync_started(now)
        self._fsync_records, self._fsync_bytes = self._unsynced_records, self._unsynced_bytes
        self._unsynced_records = self._unsynced_bytes = 0
        self._overlap = overlap_fsync(self.overlap, self._arrived_during_fsync)
        self._arrived_during_fsync = False
        if self._overlap:
            self._flusher.start()
            return
        try:
            durable: Position | None = self.log.sync()
            err = None
        except WalError as exc:
            durable, err = None, exc
        if self.overlap and err is None and self.sock.getsockopt(_EVENTS) & _POLLIN:  # type: ignore[operator]
            self._arrived_during_fsync = True
        self._finish_fsync(durable, err)

    def _finish_fsync(self, durable: Position | None, err: WalError | None) -> None:
        if err is not None or durable is None:
            exc = err or WalIOError("fsync ended without a result")
            # The fsync is over (it failed): _fail_stop must not wait for it (it hung there).
            self.commit.in_flight = False
            raise FatalStop(str(exc), EXIT_IO) from exc
        if self._metered:
            self.meter.histogram("wal_group_records", self._fsync_records)
            self.meter.histogram("wal_group_bytes", self._fsync_bytes)
        self._send_acks(self.commit.fsync_done(durable))

    def _send_acks(self, tickets: list[Ticket]) -> None:
        """Acknowledge these requests (a SYNC's reply, None in its ticket, is built now)."""
        sock = self.sock
        send = _send
        dropped = 0
        for ident, rid, reply, _t in tickets:
            if reply is None:
                reply = P.encode_ok(rid, list(self.commit.durable))
            try:
                send(sock, ident, _SNDMORE_NOBLOCK)
                send(sock, reply, _NOBLOCK)
            except zmq.ZMQError as exc:
                # EHOSTUNREACH: the producer went away (ROUTER_MANDATORY tells us instead of dropping silently).
                log.debug("reply to a departed producer dropped: %s", exc)
                dropped += 1
        if self._metered:
            now = time.perf_counter()
            for t in tickets:
                self.meter.histogram("wal_ack_latency_ms", (now - t[3]) * 1e3)
            if dropped:
                self.meter.counter("wal_replies_dropped_total", dropped)

    def _reply(self, ident: bytes, reply: bytes) -> None:
        """Answer one request now (an error, or a control request's result)."""
        sock = self.sock
        try:
            _send(sock, ident, _SNDMORE_NOBLOCK)
            _send(sock, reply, _NOBLOCK)
        except zmq.ZMQError as exc:
            log.debug("reply to a departed producer dropped: %s", exc)
            if self._metered:
                self.meter.counter("wal_replies_dropped_total", 1)

    # -- stopping --------------------------------------------------------------------------

    def _shutdown(self) -> int:
        """Graceful stop: take what is pending, finish the fsync, ack, seal the segment, exit 0."""
        try:
            # Everything already queued, not one group: a request left unanswered here would reach
            # its producer as a lost connection (outcome unknown). Bounded: producers may keep sending.
            deadline = time.monotonic() + SHUTDOWN_DRAIN_S
            self._receive_group()
            while self.sock.poll(0) and time.monotonic() < deadline:
                self._receive_group()
            self._settle()
        except FatalStop as stop:
            self._fail_stop(stop)
            return stop.exit_code
        self._close_transport()  # the replies are out (linger); then the files, while we hold the lock
        try:
            self.log.close()  # seal + fsync: a clean close, the next open rescans nothing
        except WalError as exc:
            log.error("writer for %s: closing the log failed: %s", self.log.dir, exc)
            return EXIT_IO
        log.info(
            "writer for %s stopped (%s): %d segment(s), next position %s",
            self.log.dir,
            self.stop_reason or "asked to stop",
            len(self.log.segment_ids),
            self.log.position,
        )
        return EXIT_OK

    def _settle(self) -> None:
        """Wait for the running fsync, then fsync once more if anything still waits, and ack."""
        commit = self.commit
        if commit.in_flight:
            self._finish_fsync(*self._flusher.wait())
        if commit.waiting:
            commit.fsync_started(time.monotonic())
            try:
                durable = self.log.sync()
            except WalError as exc:
                raise FatalStop(str(exc), EXIT_IO) from exc
            self._finish_fsync(durable, None)

    def _fail_stop(self, stop: FatalStop) -> None:
        """Answer everyone still waiting (and everything queued) with the error, then close."""
        exc = stop.__cause__ if isinstance(stop.__cause__, WalError) else WalIOError(stop.reason)
        log.error("writer for %s stopping after a failure: %s", self.log.dir, stop.reason)
        if self.commit.in_flight:
            self._flusher.wait()
        for ident, rid, *_ in self.commit.fail_all():
            self._reply(ident, P.encode_error(rid, exc))
        while True:  # requests already queued: tell them now rather than let them time out
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.ZMQError:
                break
            if frames[0] in _INTERNAL_IDS:
                continue
            req = P.decode_request(frames[1:])
            self._reply(frames[0], P.encode_error(getattr(req, "request_id", 0), exc))
        self._close_transport()
        try:
            self.log.close()
        except WalError:
            pass

    def _close_transport(self) -> None:
        """Close the socket (delivering the last replies), remove DIR/WRITER and the ipc socket file."""
        if self.sock.closed:
            return
        helpers_done = self._flusher.close()
        if self._watcher is not None:
            helpers_done = self._watcher.close() and helpers_done
        else:
            self._wake_sock.close(0)
        self.sock.close(REPLY_LINGER_MS)
        if helpers_done:
            self.ctx.term()  # waits (up to the linger) for the last replies to go out
        else:  # a helper thread is stuck holding its socket: never hang on it
            log.warning("writer for %s: a helper thread did not stop; closing its socket anyway", self.log.dir)
            self.ctx.destroy(linger=REPLY_LINGER_MS)
        remove_endpoint_file(self.log.dir, os.getpid())
        if self.ipc_claim is not None:
            self.ipc_claim.release()  # removes the socket file if it is still ours


def _internal_socket(ctx: zmq.Context[Any], routing_id: bytes, endpoint: str) -> zmq.Socket[Any]:
    """A DEALER for one of the writer's own threads, connected to the loop's ROUTER (inproc)."""
    sock: zmq.Socket[Any] = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.ROUTING_ID, routing_id)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return sock


def _drain_fd(fd: int) -> bool:
    """Read what a wake-up fd holds; False at EOF."""
    try:
        return bool(os.read(fd, 4096))
    except BlockingIOError:
        return True
    except OSError:
        return False


# -- running a writer in this process (the serve command and the spawned child) -------------


def open_writer(spec: WriterSpec, meter: Meter = NOOP) -> WriterServer:
    """Lock and recover the directory, then bind: raises WalLockedError / FatalStop.

    The lock comes first, so a second writer never touches the live writer's socket.
    """
    config = spec.config
    meter = guard_meter(meter)  # the server's own reports too: a meter never raises into the log
    seglog, info = SegmentLog.open(config, spec.layer or OS, meter)
    endpoint = spec.endpoint or default_endpoint(seglog.dir)
    claim: IpcClaim | None = None
    try:
        try:  # another directory's live writer (or anything else): never take it over
            claim = claim_ipc(endpoint)
        except EndpointBusy as exc:
            raise FatalStop(str(exc), EXIT_USAGE) from None
        except OSError as exc:
            raise FatalStop(f"endpoint {endpoint}: {exc}", EXIT_USAGE) from exc
        server = WriterServer(seglog, info, endpoint, meter, spec.overlap)
        server.ipc_claim = claim
        if claim is not None:
            claim.bound()
    except BaseException:
        if claim is not None:
            claim.release()
        seglog.close()
        raise
    write_endpoint_file(seglog.dir, server.endpoint, os.getpid())
    log.info(
        "writer for %s serving on %s (pid %d, fsync %s): recovered %d record(s) in %d segment(s), "
        "%d byte(s) truncated%s",
        seglog.dir,
        server.endpoint,
        os.getpid(),
        config.fsync_policy,
        info.valid_records,
        info.segment_count,
        info.bytes_truncated,
        ", corruption detected in the tail" if info.corruption_detected else "",
    )
    if info.set_aside:
        log.warning(
            "recovery set aside what it cut off as damage, in %s: examine it, then delete it",
            ", ".join(os.path.join(seglog.dir, name) for name in info.set_aside),
        )
    return server


def run_writer(spec: WriterSpec, on_ready: Callable[[WriterServer], None], lifeline_fd: int | None = None) -> int:
    """Open, serve until SIGTERM/SIGINT (or lifeline EOF), stop cleanly; returns the exit code.

    Must run in the main thread (signal handlers). Raises WalLockedError when
    the directory belongs to another live writer (before anything is bound).
    A signal that arrives while the log is still being opened (recovery) is
    kept: the writer then stops cleanly as soon as it exists, and exits 0.
    """
    early: list[str] = []  # a signal before the server exists (during recovery): stop once it does
    serving: list[WriterServer] = []

    def on_signal(signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if serving:
            serving[0].stop(name)  # only a flag: the wakeup fd wakes the poller
        else:
            early.append(name)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        meter: Meter = NOOP
        if spec.metrics_port is not None:
            meter = _metrics_meter()
        server = open_writer(spec, meter)  # the lock first: a second writer is told so, whatever its port
        serving.append(server)
        if early:
            server.stop(early[0])
        if spec.metrics_port is not None:
            try:
                _serve_metrics(meter, spec.metrics_port, spec.metrics_addr)
            except FatalStop:
                server.stop("the metrics port is unusable")
                server._shutdown()
                raise
        rfd, wfd = os.pipe()
        os.set_blocking(rfd, False)
        os.set_blocking(wfd, False)
        old_wakeup = signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
        try:
            on_ready(server)
            return server.serve(rfd, lifeline_fd)
        finally:
            signal.set_wakeup_fd(old_wakeup)
            os.close(rfd)
            os.close(wfd)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _metrics_meter() -> Meter:
    """A PrometheusMeter (nori_wal.prometheus, imported only when asked)."""
    try:
        from ..prometheus import PrometheusMeter
    except ImportError as exc:
        raise FatalStop(f"--metrics-port needs nori_wal.prometheus and prometheus-client: {exc}", EXIT_USAGE) from exc
    return PrometheusMeter()


def _serve_metrics(meter: Meter, port: int, addr: str) -> None:
    """Serve ``meter`` at http://addr:port/metrics from a daemon thread; FatalStop if the port is unusable."""
    from ..prometheus import PrometheusMeter, start_metrics_server

    assert isinstance(meter, PrometheusMeter)
    try:
        start_metrics_server(port, meter, addr=addr)
    except (OSError, OverflowError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise FatalStop(f"metrics port {addr}:{port}: {reason}", EXIT_USAGE) from exc


__all__ = [
    "EXIT_IO",
    "EXIT_LOCKED",
    "EXIT_OK",
    "FatalStop",
    "WalLockedError",
    "WriterServer",
    "WriterSpec",
    "open_writer",
    "run_writer",
]
