"""``nori-wal serve --dir DIR``: run a directory's writer process in the foreground.

Prints its endpoint (``ipc://...`` or ``tcp://...``) on stdout once it serves;
producers connect with ``WalClient(endpoint)`` or ``WalClient.for_dir(DIR)``.
SIGTERM or SIGINT: drain what is pending, fsync, acknowledge, close the log
cleanly, exit 0. No daemonising, no new session: run it under a supervisor.

Exit codes: 0 stopped cleanly; 2 bad arguments (e.g. DIR is a file, or lies
under one) or the endpoint cannot be bound; 3 the directory belongs to another
live writer (nothing is disturbed); 4 a write or fsync failed (fail-stop:
restart it and recovery keeps every acknowledged record), or an I/O error
while starting (a full disk: nothing is left behind).
"""

from __future__ import annotations

import argparse
import sys

HELP = "run the writer process for a directory in the foreground (group commit over ZeroMQ)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", required=True, help="the log directory (created if missing)")
    parser.add_argument(
        "--endpoint",
        default=None,
        help="where to listen: ipc://PATH or tcp://HOST:PORT (tcp://127.0.0.1:* picks a port); "
        "default: an ipc:// socket tied to DIR, which WalClient.for_dir(DIR) finds",
    )
    parser.add_argument(
        "--fsync", default="batch:5ms", metavar="POLICY", help="always | batch | batch:5ms | os (default batch:5ms)"
    )
    parser.add_argument(
        "--max-segment-size",
        type=int,
        default=None,
        metavar="BYTES",
        help="segment file size in bytes (default 128 MiB)",
    )
    parser.add_argument(
        "--max-retained-bytes",
        type=int,
        default=None,
        metavar="BYTES",
        help="cap on what consumers' cursors may hold back from GC: past it, GC deletes anyway and "
        "expires the lagging consumer (default: no cap)",
    )
    parser.add_argument(
        "--overlap",
        action="store_true",
        help="fsync in a flush thread while the next group is received (measured slower for synchronous producers)",
    )
    parser.add_argument(
        "--curve-secret",
        default=None,
        metavar="FILE",
        help="require CURVE authentication: the writer's secret key file (NAME.key_secret, from nori-wal keygen)",
    )
    parser.add_argument(
        "--curve-clients",
        default=None,
        metavar="DIR",
        help="with --curve-secret: the directory of allowed client public keys (*.key); SIGHUP reloads it",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback tcp endpoint without CURVE (anyone who reaches it may append and delete)",
    )
    parser.add_argument(
        "--group",
        default=None,
        metavar="GROUP",
        help="share the log with GROUP: directory 0750, files 0640, socket 0660 (default: owner-only 0700/0600)",
    )
    parser.add_argument(
        "--max-pending-bytes",
        type=_size,
        default=None,
        metavar="BYTES",
        help="request bytes the writer takes in before it writes them (default 32 MiB; docs/SECURITY.md)",
    )
    parser.add_argument(
        "--max-connection-bytes",
        type=_size,
        default=None,
        metavar="BYTES",
        help="request bytes queued per connection before it is no longer read (default 3 requests, ~48 MiB)",
    )
    parser.add_argument(
        "--metrics-port",
        type=_port,
        default=None,
        metavar="PORT",
        help="serve Prometheus /metrics on this port (needs prometheus-client)",
    )
    parser.add_argument(
        "--metrics-addr",
        default="127.0.0.1",
        metavar="ADDR",
        help="the address /metrics listens on (default 127.0.0.1; 0.0.0.0 for every interface)",
    )


def run(args: argparse.Namespace) -> int:
    from ..config import DEFAULT_MAX_SEGMENT_SIZE, FsyncPolicy, WalConfig
    from ..errors import WalError, WalLockedError
    from ..exit_codes import EXIT_IO, EXIT_LOCKED, EXIT_USAGE
    from ..writer_proc.loop import FatalStop, WriterServer
    from ..writer_proc.server import WriterSpec, run_writer
    from ._common import dir_path_problem

    def say(message: str) -> None:
        print(f"nori-wal serve: error: {message}", file=sys.stderr, flush=True)

    problem = dir_path_problem(args.dir)  # else the open fails later, reported as an I/O error (exit 4)
    if problem is not None:
        say(problem)
        return EXIT_USAGE
    try:
        policy = FsyncPolicy.parse(args.fsync)
        config = WalConfig(
            dir=args.dir,
            fsync_policy=policy,
            max_segment_size=(DEFAULT_MAX_SEGMENT_SIZE if args.max_segment_size is None else args.max_segment_size),
            group=args.group,
            max_retained_bytes=args.max_retained_bytes,
        )
    except ValueError as exc:
        say(str(exc))
        return EXIT_USAGE
    spec = WriterSpec(
        config=config,
        endpoint=args.endpoint,
        metrics_port=args.metrics_port,
        metrics_addr=args.metrics_addr,
        overlap=args.overlap,
        curve_secret=args.curve_secret,
        curve_clients=args.curve_clients,
        insecure=args.insecure,
    )
    if args.max_pending_bytes is not None:
        spec.max_pending_bytes = args.max_pending_bytes
    if args.max_connection_bytes is not None:
        spec.max_connection_bytes = args.max_connection_bytes

    def ready(server: WriterServer) -> None:
        print(server.endpoint, flush=True)

    try:
        return run_writer(spec, ready)
    except WalLockedError as exc:
        say(str(exc))
        return EXIT_LOCKED
    except FatalStop as stop:
        say(stop.reason)
        return stop.exit_code
    except WalError as exc:
        say(str(exc))
        return EXIT_IO
    except OSError as exc:  # the path's shape was checked above: this is the storage failing
        say(f"{args.dir}: {exc.strerror or exc}")
        return EXIT_IO


def _port(text: str) -> int:
    """An argparse type: a TCP port, 0 (any free one) to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, not {value}")
    return value


def _size(text: str) -> int:
    """An argparse type: a positive byte count (the budget checks what else it needs)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid byte count: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"a byte count is positive, not {value}")
    return value
