"""Cursor files on disk: ``DIR/consumers/NAME.cursor`` (+ ``.expired``, ``.lock``), through a FileLayer.

The thin shell around ``cursor`` (the pure bytes). Every write is durable
before it returns and a crash at any step leaves the old file or the new one,
never a mix (``write_durable``). All I/O goes through the FileLayer, so
FaultFS can crash it at every syscall (tests/crash/test_cursor_crash.py).

Who writes what: only the process holding ``NAME.lock`` writes
``NAME.cursor`` (its consumer) or removes the cursor (``drop_consumer``);
only GC, under the log's writer lock, writes ``NAME.expired``. So a commit
can never overwrite an expiry (they are different files), and GC reads
cursors without taking their locks (a rename replaces a file atomically).
"""

from __future__ import annotations

import os

from .cursor import (
    CONSUMERS_DIR,
    CURSOR_SUFFIX,
    EXPIRY_SUFFIX,
    LOCK_SUFFIX,
    TMP_SUFFIX,
    CursorState,
    Expiry,
    decode_cursor,
    decode_expiry,
    encode_cursor,
    encode_expiry,
    name_of,
)
from .errors import CorruptionError, WalIOError, WalLockedError
from .fs import DirLock, FileLayer, make_dirs_durable, replace_durably

MAX_FILE = 4096  # bytes: a cursor file is ~100; anything larger is not one


def consumers_dir(directory: str) -> str:
    return os.path.join(directory, CONSUMERS_DIR)


def _path(directory: str, name: str, suffix: str) -> str:
    return os.path.join(consumers_dir(directory), name + suffix)


def _io_error(what: str, exc: OSError) -> WalIOError:
    err = WalIOError(f"{what}: {exc.strerror or exc}")
    err.__cause__ = exc
    return err


def ensure_consumers_dir(layer: FileLayer, directory: str) -> None:
    """Create ``DIR/consumers`` durably (its entry fsynced into DIR)."""

    make_dirs_durable(layer, consumers_dir(directory))


def lock_cursor(layer: FileLayer, directory: str, name: str) -> DirLock:
    """Take ``NAME.lock`` at once (WalLockedError if another process, or open_consumer, holds it)."""
    lock_file = getattr(layer, "lock_file", None)
    if lock_file is None:
        raise TypeError(f"{type(layer).__name__} cannot lock files (FileLayer.lock_file)")
    path = _path(directory, name, LOCK_SUFFIX)
    try:
        return lock_file(path)  # type: ignore[no-any-return]
    except WalLockedError as exc:
        raise WalLockedError(
            f"consumer {name!r} of {directory} is open in another process (or another open_consumer): {exc}"
        ) from exc
    except OSError as exc:
        raise _io_error(f"locking consumer {name!r} ({path})", exc) from exc


def _read_bytes(layer: FileLayer, path: str) -> bytes | None:
    """The file's bytes (up to MAX_FILE + 1), None when it does not exist."""
    try:
        fh = layer.open_read(path)
    except FileNotFoundError:
        return None
    try:
        return fh.pread(MAX_FILE + 1, 0)
    finally:
        fh.close()


def read_cursor(layer: FileLayer, directory: str, name: str) -> CursorState | None:
    """The committed cursor of ``name``, None when there is none; CorruptionError when its file is damaged."""
    path = _path(directory, name, CURSOR_SUFFIX)
    try:
        data = _read_bytes(layer, path)
    except OSError as exc:
        raise _io_error(f"reading consumer cursor {path}", exc) from exc
    if data is None:
        return None
    state = decode_cursor(data, name)
    if state is None:
        raise CorruptionError(
            f"consumer cursor {path} is damaged ({len(data)} bytes that are not a whole, checksummed cursor "
            f"of {name!r}): not trusted; drop_consumer({name!r}) resets it"
        )
    return state


def read_expiry(layer: FileLayer, directory: str, name: str) -> Expiry | None:
    """Why ``name`` was expired by retention, None when it was not; CorruptionError when the file is damaged."""
    path = _path(directory, name, EXPIRY_SUFFIX)
    try:
        data = _read_bytes(layer, path)
    except OSError as exc:
        raise _io_error(f"reading consumer expiry {path}", exc) from exc
    if data is None:
        return None
    expiry = decode_expiry(data, name)
    if expiry is None:
        raise CorruptionError(f"consumer expiry file {path} is damaged: consumer {name!r} was expired")
    return expiry


def write_durable(layer: FileLayer, path: str, data: bytes) -> None:
    """``fs.replace_durably`` (the old file or the whole new one after any crash), failures as WalIOError."""
    try:
        replace_durably(layer, path, [data], path + TMP_SUFFIX)
    except OSError as exc:
        raise _io_error(f"writing {path} durably", exc) from exc


def write_cursor(layer: FileLayer, directory: str, state: CursorState) -> None:
    write_durable(layer, _path(directory, state.name, CURSOR_SUFFIX), encode_cursor(state))


def write_expiry(layer: FileLayer, directory: str, expiry: Expiry) -> None:
    write_durable(layer, _path(directory, expiry.name, EXPIRY_SUFFIX), encode_expiry(expiry))


def cursor_names(layer: FileLayer, directory: str) -> list[str]:
    """The registered consumers (a cursor or an expiry file), sorted; none when there is no consumers dir."""
    try:
        entries = layer.listdir(consumers_dir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise _io_error(f"listing {consumers_dir(directory)}", exc) from exc
    names = {name_of(e, CURSOR_SUFFIX) for e in entries} | {name_of(e, EXPIRY_SUFFIX) for e in entries}
    return sorted(n for n in names if n is not None)


def remove_cursor(layer: FileLayer, directory: str, name: str) -> bool:
    """Delete ``name``'s cursor and expiry files durably (the caller holds its lock); whether there were any.

    The lock file stays: unlinking a lock file others may be opening would let
    two processes lock two different files of one name.
    """
    found = False
    try:
        for suffix in (CURSOR_SUFFIX, EXPIRY_SUFFIX, CURSOR_SUFFIX + TMP_SUFFIX, EXPIRY_SUFFIX + TMP_SUFFIX):
            try:
                layer.unlink(_path(directory, name, suffix))
                found = found or not suffix.endswith(TMP_SUFFIX)
            except FileNotFoundError:
                pass
        layer.sync_dir(consumers_dir(directory))
    except OSError as exc:
        raise _io_error(f"dropping consumer {name!r} in {directory}", exc) from exc
    return found
