"""``nori-wal ship DIR --to nats://h1:4222,... --stream NAME``: forward the log to a NATS JetStream stream.

Reads through the named cursor (``--consumer``, default ``shipper``) and
publishes every record exactly once, in log order (docs/SHIPPING.md). Runs in
the foreground until SIGTERM or SIGINT, then lets the publishes in flight be
acknowledged, commits the cursor and exits 0. Logs a progress line every
``--progress-interval`` seconds; ``--metrics-port`` serves Prometheus metrics.

Exit codes: 0 stopped by a signal; 1 the cluster stayed unreachable past
``--give-up-after`` or refused the credentials; 2 bad usage, nats-py missing,
no such stream, or a stream that cannot deduplicate for the shipper; 3 another
process holds the cursor; 4 an I/O error on the log.
"""

from __future__ import annotations

import argparse
import logging
import signal
from typing import Any

from ._common import EXIT_FAILED, EXIT_IO, EXIT_LOCKED, EXIT_OK, EXIT_USAGE, check_dir, fail, guarded

HELP = "ship the log to a NATS JetStream stream, exactly once, in order (needs nori-wal[nats])"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="the log directory")
    parser.add_argument("--to", required=True, metavar="URLS", help="the cluster: nats://h1:4222,nats://h2:4222")
    parser.add_argument("--stream", required=True, help="the JetStream stream to publish into")
    parser.add_argument("--subject", default=None, help="the subject to publish to (default: the stream's name)")
    parser.add_argument("--consumer", default="shipper", help="the cursor's name (default shipper)")
    parser.add_argument("--create-stream", action="store_true", help="create the stream when it does not exist")
    parser.add_argument("--replicas", type=int, default=3, help="replicas of a stream made by --create-stream (3)")
    parser.add_argument("--max-in-flight", type=int, default=256, help="publishes awaiting an ack at once (256)")
    parser.add_argument("--ack-timeout", type=float, default=5.0, metavar="S", help="seconds per publish ack (5)")
    parser.add_argument("--commit-every", type=int, default=1000, help="commit the cursor every N acks (1000)")
    parser.add_argument(
        "--commit-interval", type=float, default=0.2, metavar="S", help="...or S seconds after an ack (0.2)"
    )
    parser.add_argument(
        "--give-up-after",
        type=float,
        default=None,
        metavar="S",
        help="exit 1 after S seconds without a working cluster (default: keep retrying, with backoff)",
    )
    parser.add_argument("--progress-interval", type=float, default=10.0, metavar="S", help="progress log period (10)")
    parser.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port")


@guarded("ship")
def run(args: argparse.Namespace) -> int:
    from ..errors import WalIOError, WalLockedError

    try:
        import nats  # noqa: F401
    except ImportError:
        fail("nats-py is not installed: pip install 'nori-wal[nats]'", EXIT_USAGE)
    from ..ship import ShipOptions, Shipper
    from ..ship.errors import ShipAuthorizationError, ShipError, StreamConfigError, StreamNotFoundError

    check_dir(args.dir)
    if args.max_in_flight < 1 or args.replicas < 1:
        fail("--max-in-flight and --replicas must be at least 1")
    if args.log_level is None:
        logging.getLogger("nori_wal.ship").setLevel(logging.INFO)
    servers = [u.strip() for u in args.to.split(",") if u.strip()]
    options = ShipOptions(
        subject=args.subject,
        consumer=args.consumer,
        create_replicas=args.replicas if args.create_stream else None,
        max_in_flight=args.max_in_flight,
        commit_every=args.commit_every,
        commit_interval=args.commit_interval,
        ack_timeout=args.ack_timeout,
        give_up_after=args.give_up_after,
        progress_interval=args.progress_interval,
    )
    shipper = Shipper(args.dir, servers, args.stream, options)
    if args.metrics_port is not None:
        from ..ship.metrics import serve_metrics

        serve_metrics(shipper, args.metrics_port)

    def on_signal(signum: int, frame: Any) -> None:
        shipper.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        shipper.run()
    except (StreamNotFoundError, StreamConfigError) as exc:
        fail(str(exc), EXIT_USAGE)
    except ShipAuthorizationError as exc:
        fail(str(exc), EXIT_FAILED)
    except WalLockedError as exc:
        fail(str(exc), EXIT_LOCKED)
    except WalIOError as exc:
        fail(str(exc), EXIT_IO)
    except ShipError as exc:
        fail(str(exc), EXIT_FAILED)
    return EXIT_OK
