"""Helpers for the exactly-once tests: a producer process, and a writer FileLayer whose fsync waits for a gate.

``python exactly_support.py produce DIR TAG N OUT``: appends N records (value
``TAG:i``) through ``WalClient.for_dir(DIR, delivery_timeout=...)`` and writes
one line per acknowledged call to OUT; exits 0 only if every call returned.
``python exactly_support.py retry DIR KEY``: appends one keyed record and
prints ``duplicate position``.
"""

from __future__ import annotations

import os
import sys
import time

from nori_wal.fs import OsFile, OsFileLayer

GATE_WAIT_S = 30.0


class GatedSyncLayer(OsFileLayer):
    """The real file system, except that a segment's fsync waits until the file ``gate`` exists."""

    def __init__(self, gate: str):
        self.gate = gate

    def create(self, path: str) -> "GatedFile":  # type: ignore[override]
        return GatedFile(super().create(path), self.gate)

    def open_append(self, path: str) -> "GatedFile":  # type: ignore[override]
        return GatedFile(super().open_append(path), self.gate)


class GatedFile:
    def __init__(self, inner: OsFile, gate: str):
        self._inner, self._gate = inner, gate

    def sync(self) -> None:
        deadline = time.monotonic() + GATE_WAIT_S
        while not os.path.exists(self._gate) and time.monotonic() < deadline:
            time.sleep(0.01)  # fault injection inside the writer: hold the ack back
        self._inner.sync()

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)


def produce(directory: str, tag: str, n: int, out: str) -> int:
    from nori_wal import Record, WalClient

    client = WalClient.for_dir(directory, timeout=2.0, delivery_timeout=60.0)
    with open(out, "w") as f:
        for i in range(n):
            if i % 5 == 4:
                batch = [Record.put(tag.encode(), b"%s:%d:%d" % (tag.encode(), i, j)) for j in range(3)]
                pos = client.append_batch(batch)[0]
            else:
                pos = client.append(Record.put(tag.encode(), b"%s:%d" % (tag.encode(), i)))
            f.write(f"{i} {pos}\n")
            f.flush()
    client.close()
    return 0


def retry(directory: str, key: str) -> int:
    from nori_wal import Record, WalClient

    with WalClient.for_dir(directory, timeout=10.0) as client:
        res = client.append_ex(Record.put(b"k", b"the record").with_idempotency_key(key.encode()))
    print(res.duplicate, res.position, flush=True)
    return 0


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "produce":
        sys.exit(produce(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]))
    sys.exit(retry(sys.argv[2], sys.argv[3]))
