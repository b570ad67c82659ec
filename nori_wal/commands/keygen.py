"""``nori-wal keygen DIR [--name NAME]``: write a CURVE key pair for a writer or a client.

DIR/NAME.key is the public key (give it out: a writer's to its clients, a
client's into the writer's ``--curve-clients`` directory); DIR/NAME.key_secret
holds both halves and is owner-only (0600). ZeroMQ's own format and code
(``zmq.auth.create_certificates``). Exit 2 when the pair exists (never overwritten).
"""

from __future__ import annotations

import argparse

from ._common import EXIT_OK, fail, guarded

HELP = "write a CURVE key pair DIR/NAME.key (public) and DIR/NAME.key_secret (owner-only)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", metavar="DIR", help="where to write the pair (created owner-only if missing)")
    parser.add_argument("--name", default="nori-wal", help="the files' name (default nori-wal)")


@guarded("keygen")
def run(args: argparse.Namespace) -> int:
    from ..security import keygen

    try:
        public, secret = keygen(args.dir, args.name)
    except (ValueError, FileExistsError) as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{args.dir}: {exc.strerror or exc}")
    print(f"public key: {public}")
    print(f"secret key: {secret} (keep it private)")
    return EXIT_OK
