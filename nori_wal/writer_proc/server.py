"""Running a writer in this process: lock and recover the directory, bind, handle signals, serve.

Used by ``nori-wal serve`` (in the foreground) and by the child ``WriterProcess``
spawns. ``open_writer`` takes the directory's lock first (so a second writer
never touches the live writer's socket), recovers it, claims and binds the
endpoint and records it in DIR/WRITER; ``run_writer`` adds the signal handlers,
the metrics endpoint and the loop (``loop.WriterServer.serve``).

Signals (SIGTERM, SIGINT) only set a flag (gunicorn: "just queue the signal");
``signal.set_wakeup_fd`` wakes the watcher thread, which wakes the loop.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
from dataclasses import dataclass
from typing import Callable

import zmq

from ..config import WalConfig
from ..endpoint_file import default_endpoint, runtime_endpoint, write_endpoint_file
from ..exit_codes import EXIT_IO, EXIT_USAGE, exit_code_for
from ..fs import OS, FileLayer, chmod_socket
from ..observe import NOOP, Meter, guard_meter
from ..recovery import RecoveryInfo
from ..security import INSECURE_WARNING, endpoint_problem, is_loopback_tcp
from ..segment_log import SegmentLog
from .auth import ServerCurve
from .budget import DEFAULT_MAX_CONNECTION_BYTES, DEFAULT_MAX_PENDING_BYTES, MemoryBudget
from .dedupe_stage import open_keys
from .endpoint import EndpointBusy, IpcClaim, claim_ipc, private_runtime_dir
from .loop import FatalStop, WriterServer
from .notify import open_notifier

log = logging.getLogger("nori_wal.writer")


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
    curve_secret: str | bytes | None = None  # the writer's .key_secret file (or secret key): CURVE on
    curve_clients: str | None = None  # directory of allowed client public keys (*.key)
    insecure: bool = False  # allow a non-loopback tcp endpoint without CURVE (warned on every start)
    max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES  # request bytes the loop holds before writing (budget)
    max_connection_bytes: int = DEFAULT_MAX_CONNECTION_BYTES  # request bytes ZeroMQ holds per connection


def open_writer(spec: WriterSpec, meter: Meter = NOOP) -> WriterServer:
    """Lock and recover the directory, then bind: raises WalLockedError / FatalStop.

    The lock comes first, so a second writer never touches the live writer's socket.
    A failure after the recovery (binding, recording DIR/WRITER) leaves nothing
    behind: no socket file, no WRITER record, the log closed cleanly.
    """
    config = spec.config
    meter = guard_meter(meter)  # the server's own reports too: a meter never raises into the log
    curve = server_curve(spec)  # bad keys or a refused endpoint: before the directory is touched
    budget = memory_budget(spec)
    seglog, info = SegmentLog.open(config, spec.layer or OS, meter)
    try:
        keys = open_keys(seglog)  # before the socket: no request is served without the keys in the log
        server = _listen(spec, seglog, info, meter, curve, budget)
        server.keys = keys
    except BaseException:
        seglog.close()
        raise
    try:
        write_endpoint_file(
            seglog.dir,
            server.endpoint,
            os.getpid(),
            curve.public.decode() if curve else None,
            notify=server.notifier.endpoint,
        )
    except OSError as exc:
        server.stop("DIR/WRITER could not be written")
        server.shutdown()  # the socket file goes, the log is closed (whoever connected meanwhile is answered)
        reason = f"{seglog.dir}: cannot record the endpoint in WRITER: {exc.strerror or exc}"
        raise FatalStop(reason, exit_code_for(exc.errno, EXIT_IO)) from exc
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


# bind(2) errors that say the file system cannot hold a unix socket (FUSE, some network file systems)
_NO_SOCKETS_ERRNOS = frozenset({errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM, errno.ENAMETOOLONG})


def _listen(
    spec: WriterSpec,
    seglog: SegmentLog,
    info: RecoveryInfo,
    meter: Meter,
    curve: ServerCurve | None,
    budget: MemoryBudget,
) -> WriterServer:
    """Bind the spec's endpoint; when it is the default DIR/writer.sock and the directory's file system
    cannot hold a socket, the runtime endpoint instead (``endpoint_file.runtime_endpoint``)."""
    endpoint = spec.endpoint or default_endpoint(seglog.dir)
    fallback = runtime_endpoint(seglog.dir)
    try:
        return _bind(endpoint, endpoint == fallback, spec, seglog, info, meter, curve, budget)
    except FatalStop as stop:
        cause = stop.__cause__
        no_sockets = isinstance(cause, zmq.ZMQError) and cause.errno in _NO_SOCKETS_ERRNOS
        if spec.endpoint is not None or endpoint == fallback or not no_sockets:
            raise
        log.warning("%s cannot hold a unix socket (%s): serving on %s", seglog.dir, cause, fallback)
    return _bind(fallback, True, spec, seglog, info, meter, curve, budget)


def _bind(
    endpoint: str,
    runtime: bool,
    spec: WriterSpec,
    seglog: SegmentLog,
    info: RecoveryInfo,
    meter: Meter,
    curve: ServerCurve | None,
    budget: MemoryBudget,
) -> WriterServer:
    """Claim and bind one endpoint (``runtime``: in its private runtime directory, made first)."""
    claim: IpcClaim | None = None
    try:
        try:  # another directory's live writer (or anything else): never take it over
            if runtime:
                private_runtime_dir(os.path.dirname(endpoint[len("ipc://") :]), spec.config.group)
            claim = claim_ipc(endpoint)
        except EndpointBusy as exc:
            raise FatalStop(str(exc), EXIT_USAGE) from None
        except OSError as exc:
            raise FatalStop(f"endpoint {endpoint}: {exc}", exit_code_for(exc.errno)) from exc
        server = WriterServer(seglog, info, endpoint, meter, spec.overlap, curve, budget)
        server.ipc_claim = claim
        server.notifier = open_notifier(server.ctx, endpoint if endpoint.startswith("tcp://") else server.endpoint)
        if claim is not None:
            claim.bound()
            chmod_socket(claim.path)  # owner-only, or the group's (fs.modes_under), whatever the umask
    except BaseException:
        if claim is not None:
            claim.release()
        raise
    return server


def server_curve(spec: WriterSpec) -> ServerCurve | None:
    """The writer's CURVE setup from the spec (None without --curve-secret), after the endpoint policy
    (``security.endpoint_problem``); FatalStop (usage) with a one-line reason when either is wrong."""
    if (spec.curve_secret is None) != (spec.curve_clients is None):
        raise FatalStop(
            "--curve-secret and --curve-clients go together (the writer's key, the allowed keys)", EXIT_USAGE
        )
    endpoint = spec.endpoint or ""
    problem = endpoint_problem(endpoint, spec.curve_secret is not None, spec.insecure)
    if problem is not None:
        raise FatalStop(problem, EXIT_USAGE)
    if spec.insecure and spec.curve_secret is None and endpoint.startswith("tcp://") and not is_loopback_tcp(endpoint):
        log.warning(INSECURE_WARNING.format(endpoint=endpoint))
        print(f"nori-wal writer: warning: {INSECURE_WARNING.format(endpoint=endpoint)}", file=sys.stderr, flush=True)
    if spec.curve_secret is None or spec.curve_clients is None:
        return None
    try:
        return ServerCurve(spec.curve_secret, spec.curve_clients)
    except ValueError as exc:
        raise FatalStop(str(exc), EXIT_USAGE) from None


def memory_budget(spec: WriterSpec) -> MemoryBudget:
    """The spec's byte caps (``budget.MemoryBudget``); FatalStop (usage) naming the cap when one is wrong."""
    try:
        return MemoryBudget(spec.max_pending_bytes, spec.max_connection_bytes)
    except ValueError as exc:
        raise FatalStop(str(exc), EXIT_USAGE) from None


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

    def on_hangup(_signum: int, _frame: object) -> None:
        if serving and serving[0].curve is not None:
            serving[0].curve.reload()  # the allowed client keys, read again

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hangup)
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
                _consumer_metrics(meter, server.log.dir)
                _serve_metrics(meter, spec.metrics_port, spec.metrics_addr)
            except FatalStop:
                server.stop("the metrics port is unusable")
                server.shutdown()
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


def _consumer_metrics(meter: Meter, directory: str) -> None:
    """Per-consumer lag on the writer's exporter (nori_wal.consumer_metrics), computed at each scrape."""
    from ..consumer_metrics import register_consumer_metrics
    from ..prometheus import PrometheusMeter

    assert isinstance(meter, PrometheusMeter)
    register_consumer_metrics(meter.registry, directory, namespace=meter.namespace)


def _serve_metrics(meter: Meter, port: int, addr: str) -> None:
    """Serve ``meter`` at http://addr:port/metrics from a daemon thread; FatalStop if the port is unusable."""
    from ..prometheus import PrometheusMeter, start_metrics_server

    assert isinstance(meter, PrometheusMeter)
    try:
        start_metrics_server(port, meter, addr=addr)
    except (OSError, OverflowError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise FatalStop(f"metrics port {addr}:{port}: {reason}", EXIT_USAGE) from exc


__all__ = ["FatalStop", "WriterServer", "WriterSpec", "open_writer", "run_writer"]
