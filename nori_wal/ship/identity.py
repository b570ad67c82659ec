"""The log's identity: a random id kept in ``DIR/LOG_ID``, made durable before first use.

Message ids must differ between logs (two logs both have a record at 0:32)
and stay the same for one log across restarts, so JetStream can tell a re-send
from a new record. Nothing durable in the directory says which log it is
(GC deletes the first segment), so the first shipper creates ``LOG_ID``:
write a temporary file, fsync it, rename it into place, fsync the directory,
and only then use the id. A crash at any step leaves either no ``LOG_ID`` (a
new id is made next time: nothing was published with the lost one) or the
complete file (the directory is fsynced again before an existing id is
used: its creator may have died before doing it). A copy of the directory is the same log and keeps the id.
"""

from __future__ import annotations

import os
import re
import secrets
from typing import Optional

from ..errors import CorruptionError
from ..fs import FileLayer, OsFileLayer, replace_durably

IDENTITY_FILE = "LOG_ID"
_ID = re.compile(r"^[0-9a-f]{32}$")


def read_identity(directory: str, layer: Optional[FileLayer] = None) -> Optional[str]:
    """The log's id, or None when it has none yet; a damaged file raises CorruptionError naming it."""
    layer = layer or OsFileLayer()
    path = os.path.join(directory, IDENTITY_FILE)
    if not layer.exists(path):
        return None
    f = layer.open_read(path)
    try:
        text = f.pread(f.size(), 0).decode("ascii", "replace").strip()
    finally:
        f.close()
    if not _ID.match(text):
        raise CorruptionError(f"{path}: not a log id (expected 32 hex digits, got {text[:40]!r})")
    return text


def ensure_identity(directory: str, layer: Optional[FileLayer] = None) -> str:
    """The log's id, created durably first if it has none (see the module docstring)."""
    layer = layer or OsFileLayer()
    existing = read_identity(directory, layer)
    if existing is not None:
        # Its creator may have died between the rename and the directory fsync: the
        # entry could still vanish at a power loss, and we are about to use the id.
        layer.sync_dir(directory)
        return existing
    new = secrets.token_hex(16)
    path = os.path.join(directory, IDENTITY_FILE)
    replace_durably(layer, path, [f"{new}\n".encode("ascii")], f"{path}.{os.getpid()}.tmp")  # pid: shippers may race
    return new
