"""``nori-wal torture --dir DIR``: SIGKILL the writer under load on your own disk and count what survives.

Runs ``nori_wal.testing.torture`` in a fresh subdirectory of DIR (so it never
touches anything already there; removed afterwards unless ``--keep``):
PRODUCERS processes append through ``WalClient`` while the writer process is
killed with SIGKILL at a random moment of each of ROUNDS rounds and restarted;
a reader follows the log through the kills. The report gives the records
acknowledged, lost, duplicated, the calls whose outcome was unknown, and the
restart and recovery times.

Exit codes: 0 nothing acknowledged was lost (and nothing duplicated, invented
or torn); 1 the check failed; 2 a bad argument (e.g. DIR is a file, or lies
under one); 4 an I/O error.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

from ..config import FsyncPolicy, WalConfig
from ..errors import WalError
from ._common import EXIT_FAILED, EXIT_IO, EXIT_OK, dir_path_problem, fail, guarded

HELP = "SIGKILL the writer under load at random moments, restart it, and report what survived"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", required=True, help="a directory on the disk to test (a fresh subdirectory is used)")
    parser.add_argument("--producers", type=int, default=8, help="producer processes (default 8)")
    parser.add_argument("--rounds", type=int, default=20, help="kill + restart rounds (default 20)")
    parser.add_argument(
        "--fsync", default="always", metavar="POLICY", help="always | batch | batch:5ms | os (default always)"
    )
    parser.add_argument("--batch", type=int, default=1, metavar="N", help="records per append call (default 1)")
    parser.add_argument(
        "--value-size",
        type=int,
        default=256,
        metavar="BYTES",
        help="largest value size; values are 0..BYTES (default 256)",
    )
    parser.add_argument(
        "--max-segment-size",
        type=int,
        default=1024 * 1024,
        metavar="BYTES",
        help="segment size, small so rounds cross segment rolls (default 1 MiB)",
    )
    parser.add_argument(
        "--max-acks-per-round",
        type=int,
        default=300,
        metavar="N",
        help="each round kills after a random 0..N acknowledgements (default 300)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="producer call timeout; a call that times out counts as unknown, not acked (default 2)",
    )
    parser.add_argument(
        "--retry",
        type=float,
        default=None,
        metavar="SECONDS",
        help="retrying producers: resend with the same idempotency key for up to SECONDS (delivery_timeout); "
        "duplicated and lost must still be 0",
    )
    parser.add_argument("--no-reader", action="store_true", help="do not run a reader during the kills")
    parser.add_argument("--seed", type=int, default=None, help="seed of the kill schedule (default random)")
    parser.add_argument("--keep", action="store_true", help="keep the log directory afterwards")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--quiet", action="store_true", help="no per-round progress on stderr")


def _check_arguments(args: argparse.Namespace) -> None:
    """A bad argument is a usage error (exit 2) naming it, before anything is created."""
    if args.producers < 1 or args.rounds < 1 or args.batch < 1 or args.value_size < 0 or args.max_acks_per_round < 1:
        fail("--producers, --rounds, --batch and --max-acks-per-round must be >= 1, --value-size >= 0")
    try:
        WalConfig(dir=args.dir, max_segment_size=args.max_segment_size)
    except ValueError as exc:
        fail(str(exc))
    if args.timeout <= 0:
        fail("--timeout must be > 0 seconds")
    try:
        FsyncPolicy.parse(args.fsync)
    except ValueError as exc:
        fail(str(exc))
    problem = dir_path_problem(args.dir)
    if problem is not None:
        fail(problem)


@guarded("torture")
def run(args: argparse.Namespace) -> int:
    from ..testing.torture import TortureOptions, run_torture

    _check_arguments(args)
    try:
        os.makedirs(args.dir, exist_ok=True)
        work = tempfile.mkdtemp(prefix="nori-wal-torture-", dir=args.dir)
    except OSError as exc:
        fail(f"{args.dir}: {exc.strerror or exc}", EXIT_IO)
    opts = TortureOptions(
        directory=os.path.join(work, "wal"),
        producers=args.producers,
        rounds=args.rounds,
        fsync=args.fsync,
        max_segment_size=args.max_segment_size,
        value_size=args.value_size,
        batch=args.batch,
        reader=not args.no_reader,
        max_acks_per_round=args.max_acks_per_round,
        client_timeout=args.timeout,
        seed=args.seed,
        retry=args.retry,
    )

    def progress(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    try:
        report = run_torture(opts, progress)
    except KeyboardInterrupt:  # its processes are cleaned up by then (run_torture's finally blocks)
        print("nori-wal torture: interrupted", file=sys.stderr)
        return 130
    except WalError as exc:  # a writer that would not start (first: WalIOError is an OSError too)
        print(f"nori-wal torture: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        print(f"nori-wal torture: error: {exc}", file=sys.stderr)
        return EXIT_IO
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(report.summary())
        if args.keep:
            print(f"  log kept in {opts.directory}")
    return EXIT_OK if report.ok else EXIT_FAILED
