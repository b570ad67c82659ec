"""The ``nori-wal`` command line: one entry point, one module per subcommand.

Each subcommand lives in ``nori_wal/commands/<name>.py`` and exposes
``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``;
modules are imported only when their command runs, so ``--help`` is fast.

Exit codes: 0 success; 1 the check failed (e.g. ``verify``, ``stats``, ``dump``
or ``gc`` found corruption, ``torture`` lost a record); 2 bad usage or a bad
argument (wrong path, no segments, bad position); 3 the directory is locked by
another writer; 4 an I/O failure (``nori_wal.exit_codes``). Errors are one line on stderr
(``nori-wal COMMAND: error: ...``); see docs/CLI.md.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from types import ModuleType

COMMANDS = ["serve", "load", "dump", "verify", "stats", "gc", "torture", "consumers", "ship", "keygen"]


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"nori_wal.commands.{name}")


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nori-wal", description="nori-wal: a durable multi-process write-ahead log")
    parser.add_argument(
        "--log-level",
        default=None,
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        help="logging level (DEBUG, INFO, WARNING, ...); default INFO for serve, WARNING otherwise",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    wanted = next((a for a in argv if a in COMMANDS), None)
    for name in COMMANDS:
        if wanted is None or name == wanted:
            try:
                mod = _module(name)
            except ImportError:
                continue
            p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
            mod.add_arguments(p)
            p.set_defaults(_run=mod.run)
        else:
            sub.add_parser(name, help="(see nori-wal %s --help)" % name)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    level = args.log_level or ("INFO" if args.command == "serve" else "WARNING")
    logging.basicConfig(level=getattr(logging, level), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
