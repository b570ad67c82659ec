"""The writer loop: receive, validate, write a group, fsync per policy, acknowledge.

A thin shell around the pure parts: ``group`` (a drained batch of requests into
one write and its replies, over ``protocol``), ``commit.GroupCommit`` (when to
fsync, whom an fsync acknowledges) and ``SegmentLog`` (the bytes on disk).
Start-up (lock, recover, bind, signals) is ``server``'s; the helper threads
are ``threads``'.

One pass of the loop::

    block for the first message (poll timeout = time to the Batch deadline)
    drain everything already pending without blocking, each into the GroupBuilder
    write the group's valid payloads with ONE SegmentLog call (one write per segment touched)
    Always/Batch: fsync once for the group (when due), then ack every request it covers
    Os: ack right after the write

The fsync runs inline by default: requests that arrive meanwhile wait in the
socket and form the next group (the yardstick's loop). With ``overlap`` it runs
in the flush thread while the loop receives, validates and writes the next group.
On the two-core reference machine the inline fsync was faster in every
workload -- the producers keep both cores busy, so there is no idle core to
overlap with, and overlap costs thread hand-offs and a wake-up per arriving
request -- so overlap is opt-in; see ``commit.overlap_fsync`` for the figures.

Fail-stop: a failed write or fsync (WalIOError from SegmentLog) acknowledges
nothing from the group, answers every waiting producer with that error and
stops the writer with a non-zero exit (``EXIT_IO``); the next start recovers.
A producer's bad request is answered with an error reply and never written;
it changes nothing for anyone else.

Signals (SIGTERM, SIGINT) only set a flag; the watcher wakes the loop, which
then drains what is pending, fsyncs, acknowledges, closes the log cleanly and
returns 0. Per request the loop does a handful of small steps; per group one
write and (Always) one fsync.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable

import zmq

from .. import protocol as P
from ..commit import GroupCommit, overlap_fsync
from ..endpoint_file import remove_endpoint_file
from ..errors import RecordTooLargeError, WalError, WalIOError
from ..exit_codes import EXIT_IO, EXIT_OK, exit_code_for
from ..observe import NOOP, Meter
from ..recovery import RecoveryInfo
from ..retention import GcPlan
from ..segment_log import SegmentLog
from .auth import ServerCurve
from .budget import DEFAULT_MAX_PENDING_BYTES, MemoryBudget
from .dedupe_stage import WriterKeys, after_delete, write_keyed_group
from .endpoint import IpcClaim
from .group import GroupBuilder, Ticket, acks_across_roll, acks_in_place, acks_keyed
from .notify import NO_NOTIFIER, Notifier
from .threads import FLUSH_ID, INTERNAL_IDS, WAKE_ID, FlushThread, FsyncResult, Watcher, internal_socket

log = logging.getLogger("nori_wal.writer")

MAX_GROUP_BYTES = DEFAULT_MAX_PENDING_BYTES  # stop draining a group beyond this many payload bytes (budget)
MAX_GROUP_MESSAGES = 4096  # ... or this many requests (bounds one pass's latency)
REPLY_LINGER_MS = 2000  # how long closing waits to deliver the last replies
PEER_SEND_LIMIT = 100_000  # replies queued per peer (SNDHWM: past it a reply is dropped, so high:
# one pass may answer thousands of a live peer's control requests)
SHUTDOWN_DRAIN_S = 2.0  # how long a graceful stop keeps taking queued requests

_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
_POLLIN = int(zmq.POLLIN)
_EVENTS = int(zmq.EVENTS)
_ZERO_COPY_BYTES = 64 * 1024
# pyzmq's C-level send: zmq.Socket.send's Python-level wrapper costs more per call than the C work
# of a small message, and the writer sends two frames per reply.
_send: Callable[..., Any] = zmq.backend.Socket.send


class FatalStop(BaseException):
    """The writer must stop now with ``exit_code``; not an Exception, so nothing swallows it."""

    def __init__(self, reason: str, exit_code: int):
        super().__init__(reason)
        self.reason, self.exit_code = reason, exit_code


class WriterServer:
    """One directory's writer: owns the SegmentLog, the ROUTER socket and the commit state."""

    def __init__(
        self,
        seglog: SegmentLog,
        info: RecoveryInfo,
        endpoint: str,
        meter: Meter = NOOP,
        overlap: bool = False,
        curve: ServerCurve | None = None,
        budget: MemoryBudget = MemoryBudget(),
    ):
        self.log = seglog
        self.budget = budget
        self.curve = curve
        self.overlap = overlap
        self.info = info
        self.meter = meter
        self._metered = meter is not NOOP
        self.policy = seglog.config.fsync_policy
        self.commit: GroupCommit[Ticket] = GroupCommit(self.policy, seglog.durable)
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # unroutable replies raise, never vanish
        self.sock.setsockopt(zmq.MAXMSGSIZE, budget.max_message_bytes)
        # Per peer: past these a peer that sends without reading stops being read (receive: at most
        # budget.connection_bound bytes queued, back-pressure, nothing lost) and loses the replies it
        # leaves unread (send: ROUTER_MANDATORY raises, _reply counts the drop) instead of growing the
        # writer without bound.
        self.sock.setsockopt(zmq.SNDHWM, PEER_SEND_LIMIT)
        self.sock.setsockopt(zmq.RCVHWM, budget.rcvhwm)
        self.sock.setsockopt(zmq.LINGER, REPLY_LINGER_MS)
        self.wake_endpoint = f"inproc://nori-wal-writer-{id(self):x}"
        flusher: FlushThread | None = None
        try:
            self.sock.bind(self.wake_endpoint)
            # Our threads' sockets connect (and the ROUTER takes them in) before the public endpoint
            # exists, so no peer can claim their ids first: ZeroMQ refuses a second pipe with one id.
            self._flusher = flusher = FlushThread(self.log, self.ctx, self.wake_endpoint)
            self._wake_sock = internal_socket(self.ctx, WAKE_ID, self.wake_endpoint)
            self.sock.getsockopt(zmq.EVENTS)  # processes the pending attach commands
            if curve is not None:  # after the inproc bind: our own threads need no keys
                curve.start(self.ctx, self.sock)
            self.sock.bind(endpoint)
        except zmq.ZMQError as exc:
            if curve is not None:
                curve.stop()
            if flusher is not None:
                flusher.close()
            self.sock.close(0)
            self.ctx.destroy(0)
            raise FatalStop(f"cannot listen on {endpoint}: {exc}", exit_code_for(exc.errno)) from exc
        self.endpoint = self._bound_endpoint(endpoint)
        self.ipc_claim: IpcClaim | None = None  # set by open_writer; released with the socket file
        self.notifier: Notifier = NO_NOTIFIER  # set by open_writer: wakes followers after each fsync
        self.keys: WriterKeys | None = None  # the dedupe index (set by open_writer; dedupe_stage)
        self.stopping = False
        self.stop_reason = ""
        self._watcher: Watcher | None = None
        self._overlap = False
        self._arrived_during_fsync = False
        self._unsynced_records = 0
        self._unsynced_bytes = 0
        self._fsync_records = 0
        self._fsync_bytes = 0

    def _bound_endpoint(self, requested: str) -> str:
        """The endpoint actually bound (ZMQ_LAST_ENDPOINT: tcp://0.0.0.0:5555 stays what it is)."""
        last = self.sock.getsockopt(zmq.LAST_ENDPOINT)
        bound = last.decode() if isinstance(last, bytes) else str(last)
        return bound or requested

    # -- the loop -------------------------------------------------------------------------

    def serve(self, wake_fd: int | None = None, lifeline_fd: int | None = None) -> int:
        """Run until stopped (signal, ``stop``, lifeline EOF) or a fatal error; returns the exit code.

        ``wake_fd`` (the signal wake-up fd) and ``lifeline_fd`` are watched by a
        helper thread; the loop itself waits on its ROUTER socket alone.
        """
        if wake_fd is not None or lifeline_fd is not None:
            self._watcher = Watcher(self._lifeline_closed, self._wake_sock, wake_fd, lifeline_fd)
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
            return self.shutdown()
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

    def _lifeline_closed(self) -> None:
        self.stop("the spawning process is gone (lifeline closed)")

    # -- receiving and writing -------------------------------------------------------------

    def _receive_group(self) -> None:
        """Drain pending requests into a group (``GroupBuilder``), write it with one call, ack per policy."""
        recv = self.sock.recv
        t_recv = time.perf_counter() if self._metered else 0.0
        group = GroupBuilder(self.log.max_frame, self.keys)
        add = group.add
        max_bytes = self.budget.max_pending_bytes  # what the loop holds before it writes (budget)
        failed: FatalStop | None = None
        for _ in range(MAX_GROUP_MESSAGES):
            try:
                ident = recv(_NOBLOCK)  # once per group it raises Again: cheaper than asking first
            except zmq.Again:
                break
            # The rest of a multipart message is already here (ZeroMQ delivers messages whole); a Frame
            # says whether more follows, cheaper than a getsockopt(RCVMORE) per frame.
            f = recv(copy=False)
            payload: Any = None
            nframes = 0
            if not f.more:  # one frame: a compact APPEND (our clients'), or a control
                head = f.bytes if len(f) < _ZERO_COPY_BYTES else f.buffer
            else:  # a header and a payload frame (or garbage: more frames)
                head = f.bytes
                f = recv(copy=False)
                payload = f.bytes if len(f) < _ZERO_COPY_BYTES else f.buffer  # big payloads: no copy
                if f.more:  # garbage: count its frames, keep none of them
                    nframes = _skip_frames(recv, f)
            if ident[0] == 0x21 and ident in INTERNAL_IDS:  # b"!": one of our own threads
                try:
                    self._internal(ident)
                except FatalStop as stop:  # stop after this pass, once the requests taken are answered
                    failed = failed or stop
                continue
            step = add(ident, head, payload, nframes)
            if step is None:  # it joined the group
                if group.nbytes >= max_bytes:
                    break
            elif isinstance(step, bytes):  # an error reply
                self._reply(ident, step)
            else:  # a control request: keep each producer's order, write the appends received before it first
                self._write_group(group, t_recv)
                group = GroupBuilder(self.log.max_frame, self.keys)
                add = group.add
                self._control(ident, step, t_recv)
        self._write_group(group, t_recv)  # after a failed fsync: answers them
        if failed is not None:
            raise failed

    def _write_group(self, group: GroupBuilder, t_recv: float) -> None:
        """Write the group's units with one call; ack now (Os) or hand the group's tickets to the commit."""
        pending = group.pending
        if not pending:
            return
        log = self.log
        try:
            if group.keys is not None:  # keyed requests: duplicates are not written (dedupe_stage)
                firsts = write_keyed_group(log, group.units, group.counts, group.keys)
                start = None
            else:
                start = log.append_in_place(group.units, group.records, group.nbytes)  # None: a roll is due
                firsts = log.append_frames(group.units, group.counts) if start is None else []
        except RecordTooLargeError as exc:  # cannot happen: every unit was checked against max_frame
            if group.keys is not None:
                group.keys.abandon()  # (the writer goes on: the keys it reserved were not written)
            for p in pending:
                self._reply(p.ident, P.encode_error(p.request_id, exc))
            return
        except WalError as exc:
            # Fail-stop: nothing of this group is acknowledged, every producer hears why.
            for p in pending:
                self._reply(p.ident, P.encode_error(p.request_id, exc))
            raise FatalStop(str(exc), EXIT_IO) from exc
        if group.keys is not None:
            tickets, end = acks_keyed(group, firsts, t_recv), log.position
        elif start is not None:  # all in the active segment: each request is one run
            tickets, end = acks_in_place(pending, log.active_id, start, t_recv)
        else:  # across a roll: a request's units may sit in two segments
            tickets, end = acks_across_roll(group, firsts, t_recv)
        commit = self.commit
        if commit.written_group(end, tickets):
            self._send_acks(tickets)
        if commit.in_flight or commit.waiting:
            self._unsynced_records += group.records
            self._unsynced_bytes += group.nbytes
        elif self._metered:  # Os: a group is what one write carried
            self.meter.histogram("wal_group_records", group.records)
            self.meter.histogram("wal_group_bytes", group.nbytes)

    def _internal(self, ident: bytes) -> None:
        """A message from the flush thread (an fsync finished) or the watcher (a signal, the lifeline)."""
        if ident != FLUSH_ID:
            return  # WAKE_ID: nothing to do here; the loop looks at ``stopping`` next.
        if self.commit.in_flight and self._overlap:
            res = self._flusher.take()
            if res is not None:
                self._finish_fsync(res)

    def _control(self, ident: bytes, req: P.Control, t_recv: float) -> None:
        op, rid = req.op, req.request_id
        log = self.log
        try:
            if op is P.Op.SYNC:
                end = log.position
                ticket = Ticket(ident, rid, None, t_recv)
                if self.commit.sync_requested(end, ticket):
                    self._send_acks([ticket])
            elif op is P.Op.POSITION:
                log.check_usable()
                self._reply(ident, P.encode_ok(rid, list(log.position)))
            elif op is P.Op.DELETE:
                assert req.position is not None
                try:
                    self._reply(ident, P.encode_ok(rid, log.delete_segments_before(req.position)))
                finally:
                    after_delete(log)
            elif op is P.Op.GC:  # DELETE, answered with the plan: which cursors held segments back
                assert req.position is not None
                try:
                    log.delete_segments_before(req.position)
                finally:
                    after_delete(log)
                self._reply(ident, P.encode_ok(rid, P.encode_gc_result(log.last_gc or GcPlan([]))))
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
            "dedupe_keys": 0 if self.keys is None else len(self.keys.index),
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
            res = FsyncResult(self.log.sync(), None)
        except WalError as exc:
            res = FsyncResult(None, exc)
        if self.overlap and res.error is None and int(self.sock.getsockopt(_EVENTS)) & _POLLIN:
            self._arrived_during_fsync = True
        self._finish_fsync(res)

    def _finish_fsync(self, res: FsyncResult) -> None:
        durable = res.durable
        if res.error is not None or durable is None:
            exc = res.error or WalIOError("fsync ended without a result")
            # The fsync is over (it failed): _fail_stop must not wait for it (it hung there).
            self.commit.in_flight = False
            raise FatalStop(str(exc), EXIT_IO) from exc
        if self._metered:
            self.meter.histogram("wal_group_records", self._fsync_records)
            self.meter.histogram("wal_group_bytes", self._fsync_bytes)
        self._send_acks(self.commit.fsync_done(durable))
        self.notifier.moved(durable)  # wake followers (after the acks: it costs producers nothing)

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
                self.meter.histogram("wal_ack_latency_ms", (now - t.received) * 1e3)
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

    def shutdown(self) -> int:
        """Graceful stop (the loop calls it once stopped): take what is pending, finish the fsync, ack,
        seal the segment; the exit code."""
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
            self._finish_fsync(self._flusher.wait())
        if commit.waiting:
            commit.fsync_started(time.monotonic())
            try:
                durable = self.log.sync()
            except WalError as exc:
                raise FatalStop(str(exc), EXIT_IO) from exc
            self._finish_fsync(FsyncResult(durable, None))

    def _fail_stop(self, stop: FatalStop) -> None:
        """Answer everyone still waiting (and everything queued) with the error, then close."""
        exc = stop.__cause__ if isinstance(stop.__cause__, WalError) else WalIOError(stop.reason)
        log.error("writer for %s stopping after a failure: %s", self.log.dir, stop.reason)
        if self.commit.in_flight:
            self._flusher.wait()
        for t in self.commit.fail_all():
            self._reply(t.ident, P.encode_error(t.request_id, exc))
        while True:  # requests already queued: tell them now rather than let them time out
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.ZMQError:
                break
            if frames[0] in INTERNAL_IDS:
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
        self.notifier.close()
        self.sock.close(REPLY_LINGER_MS)
        if self.curve is not None:
            self.curve.stop()  # its ZAP socket would hold up ctx.term
        if helpers_done:
            self.ctx.term()  # waits (up to the linger) for the last replies to go out
        else:  # a helper thread is stuck holding its socket: never hang on it
            log.warning("writer for %s: a helper thread did not stop; closing its socket anyway", self.log.dir)
            self.ctx.destroy(linger=REPLY_LINGER_MS)
        remove_endpoint_file(self.log.dir, os.getpid())
        if self.ipc_claim is not None:
            self.ipc_claim.release()  # removes the socket file if it is still ours


def _skip_frames(recv: Callable[..., Any], frame: Any) -> int:
    """Receive and drop the rest of a message of more than two frames; how many frames it had."""
    n = 2
    while frame.more:
        frame = recv(copy=False)
        n += 1
    return n


__all__ = ["MAX_GROUP_BYTES", "MAX_GROUP_MESSAGES", "FatalStop", "WriterServer"]
