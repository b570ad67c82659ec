"""The exit codes of every nori-wal process: the CLI's commands and the writer (see docs/CLI.md)."""

EXIT_OK = 0  # success (the writer: stopped cleanly)
EXIT_FAILED = 1  # the check failed: corruption found, a record lost
EXIT_USAGE = 2  # bad usage or a bad argument (wrong path, bad position, an endpoint that cannot be bound)
EXIT_LOCKED = 3  # the directory belongs to another live writer
EXIT_IO = 4  # an I/O failure (the writer: a write or fsync failed, fail-stop)

__all__ = ["EXIT_FAILED", "EXIT_IO", "EXIT_LOCKED", "EXIT_OK", "EXIT_USAGE"]
