"""The exit codes of every nori-wal process: the CLI's commands and the writer (see docs/CLI.md)."""

from __future__ import annotations

import errno

EXIT_OK = 0  # success (the writer: stopped cleanly)
EXIT_FAILED = 1  # the check failed: corruption found, a record lost
EXIT_USAGE = 2  # bad usage or a bad argument (wrong path, bad position, an endpoint that cannot be bound)
EXIT_LOCKED = 3  # the directory belongs to another live writer
EXIT_IO = 4  # an I/O failure (the writer: a write or fsync failed, fail-stop)

# What an OSError means for the exit code: the storage failed (4), not the arguments (2).
IO_ERRNOS = frozenset({errno.EIO, errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.ENOMEM})


def exit_code_for(err: int | None, otherwise: int = EXIT_USAGE) -> int:
    """EXIT_IO for an I/O failure's errno (a full disk, EIO, a read-only file system), else ``otherwise``."""
    return EXIT_IO if err in IO_ERRNOS else otherwise


__all__ = ["EXIT_FAILED", "EXIT_IO", "EXIT_LOCKED", "EXIT_OK", "EXIT_USAGE", "IO_ERRNOS", "exit_code_for"]
