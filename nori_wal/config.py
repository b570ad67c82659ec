"""WalConfig and FsyncPolicy: what a log promises and how it is laid out (pure).

Both check their arguments when they are made (TypeError for a wrong type,
ValueError for a wrong value, each naming the field), so a bad setting fails on
the line that wrote it, not later inside ``Wal.open`` or a writer process.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal, Union

PathLike = Union[str, "os.PathLike[str]"]

DEFAULT_MAX_SEGMENT_SIZE = 128 * 1024 * 1024  # 128 MiB per segment file
MAX_SEGMENT_SIZE = 2**63 - 1  # bytes: the largest file offset (a signed 64-bit off_t) can address
DEFAULT_BATCH_WINDOW = 0.005  # seconds: at most one fsync per 5 ms
DEFAULT_DEDUPE_WINDOW = timedelta(minutes=10)  # idempotency keys are remembered at least this long
DEFAULT_DEDUPE_MAX_KEYS = 1_000_000  # keys the dedupe index holds at most (nori_wal/dedupe.py)
# A retrying client's automatic keys (nori_wal/dedupe.py Rule 2) are remembered this long: its longest
# delivery_timeout (dedupe.MAX_DELIVERY_TIMEOUT, 120 s) and 30 s for a retry still queued at the writer
# at least, so that much is the floor.
DEFAULT_AUTO_KEY_WINDOW = timedelta(minutes=3)
MIN_AUTO_KEY_WINDOW = timedelta(seconds=150)
DEFAULT_DEDUPE_MAX_AUTO_KEYS = 4_000_000  # 22,000 auto-keyed appends/s sustained over 3 minutes

_KINDS = ("always", "batch", "os")


def _check_int(owner: str, name: str, value: Any) -> int:
    """``value`` if it is an int (a bool is not), else a TypeError naming ``owner.name``."""
    if type(value) is not int:
        if isinstance(value, bool) or not hasattr(value, "__index__"):
            raise TypeError(f"{owner} {name} must be an int, got {type(value).__name__} {value!r:.40}")
        value = value.__index__()  # numpy integers and the like
    return int(value)


@dataclass(frozen=True)
class FsyncPolicy:
    """When the log fsyncs, and so what an acknowledged record survives.

    Make one with ``FsyncPolicy.always()``, ``FsyncPolicy.batch(0.005)``,
    ``FsyncPolicy.os()``, or from text with ``FsyncPolicy.parse("batch:5ms")`` (what
    ``str(policy)`` prints; ``WalConfig`` also takes that text directly).

    always: fsync after each written group (survives power loss).
    batch:  at most one fsync per ``window`` seconds; acks wait for it (survives power loss).
    os:     never fsync for a record (a full segment is made durable when sealed at a roll); the OS writes back.
            Survives a crash of the writer process only.
    """

    kind: Literal["always", "batch", "os"]
    window: float = 0.0  # seconds; batch only

    def __post_init__(self) -> None:
        kind, window = self.kind, self.window
        if kind not in _KINDS or type(kind) is not str:
            hint = f"; FsyncPolicy.parse({kind!r}) reads text" if isinstance(kind, str) and ":" in kind else ""
            raise ValueError(
                f"FsyncPolicy kind must be one of 'always', 'batch', 'os', got {kind!r}{hint} "
                f"(use FsyncPolicy.always(), FsyncPolicy.batch(window) or FsyncPolicy.os())"
            )
        if isinstance(window, bool) or not isinstance(window, (int, float)):
            raise TypeError(f"FsyncPolicy window must be a number of seconds, got {type(window).__name__}")
        if kind == "batch":
            if not (window > 0 and math.isfinite(window)):
                raise ValueError(f"FsyncPolicy batch window must be a finite number of seconds > 0, got {window!r}")
        elif window != 0:
            raise ValueError(f"FsyncPolicy window applies to 'batch' only, got {kind!r} with window {window!r}")
        object.__setattr__(self, "window", float(window))

    @classmethod
    def always(cls) -> "FsyncPolicy":
        return cls("always")

    @classmethod
    def batch(cls, window: float = DEFAULT_BATCH_WINDOW) -> "FsyncPolicy":
        """At most one fsync per ``window`` seconds (default 5 ms); acks wait for the fsync that covers them."""
        return cls("batch", window)

    @classmethod
    def os(cls) -> "FsyncPolicy":
        return cls("os")

    @classmethod
    def parse(cls, text: str) -> "FsyncPolicy":
        """Parse ``always``, ``os``, ``batch`` or ``batch:5ms`` / ``batch:0.01s`` / ``batch:0.01`` (CLIs, env vars)."""
        if not isinstance(text, str):
            raise TypeError(f"FsyncPolicy.parse takes a string such as 'batch:5ms', got {type(text).__name__}")
        spec = text.strip().lower()
        if spec == "always":
            return cls.always()
        if spec == "os":
            return cls.os()
        if spec == "batch":
            return cls.batch()
        m = re.fullmatch(r"batch:(\d+(?:\.\d*)?|\.\d+)(ms|s|us)?", spec)
        if not m:
            raise ValueError(f"unknown fsync policy {text!r}: use always, batch, batch:5ms or os")
        per_second = {"ms": 1e3, "us": 1e6, "s": 1.0, None: 1.0}[m.group(2)]
        return cls.batch(float(m.group(1)) / per_second)  # 59 / 1e3 is 0.059; 59 * 1e-3 is not

    def __str__(self) -> str:
        if self.kind == "batch":
            return f"batch:{self.window * 1e3:g}ms"
        return self.kind


@dataclass
class WalConfig:
    """Where the log lives and how it behaves; defaults in place, with units.

    Checked when made: ``dir`` a path, ``max_segment_size`` an int of bytes from
    4096 up to 2**63 - 1, ``node_id`` a 32-bit int; ``fsync_policy`` an FsyncPolicy
    or its text (``"always"``, ``"batch"``, ``"batch:5ms"``, ``"os"``: what
    ``FsyncPolicy.parse`` reads), kept as the FsyncPolicy it names.
    """

    dir: PathLike = "wal"
    max_segment_size: int = DEFAULT_MAX_SEGMENT_SIZE  # bytes per segment file, header included
    fsync_policy: FsyncPolicy = field(default_factory=FsyncPolicy.batch)
    node_id: int = 0  # recorded in every segment header
    dedupe_window: timedelta = DEFAULT_DEDUPE_WINDOW  # how long an idempotency key is remembered (at least)
    dedupe_max_keys: int = DEFAULT_DEDUPE_MAX_KEYS  # a new key past this many within the window is refused
    auto_key_window: timedelta = DEFAULT_AUTO_KEY_WINDOW  # how long a retrying client's automatic key is remembered
    dedupe_max_auto_keys: int = DEFAULT_DEDUPE_MAX_AUTO_KEYS  # ... and how many of them at most
    max_retained_bytes: int | None = None  # bytes: consumers may hold back GC until the log is this big (None: no cap)
    group: str | None = None  # share with this group: dir 0750, files 0640, socket 0660 (None: owner-only 0700/0600)

    def __post_init__(self) -> None:
        from .segment import MIN_SEGMENT_SIZE

        if not isinstance(self.dir, (str, os.PathLike)) or not isinstance(os.fspath(self.dir), str):
            raise TypeError(f"WalConfig dir must be a str or os.PathLike path, got {type(self.dir).__name__}")
        if not os.fspath(self.dir):
            raise ValueError("WalConfig dir must not be empty (use '.' for the current directory)")
        size = self.max_segment_size = _check_int("WalConfig", "max_segment_size", self.max_segment_size)
        if not MIN_SEGMENT_SIZE <= size <= MAX_SEGMENT_SIZE:
            raise ValueError(
                f"WalConfig max_segment_size must be from {MIN_SEGMENT_SIZE} to {MAX_SEGMENT_SIZE} bytes "
                f"(2**63 - 1: the largest file offset), got {size}"
            )
        node_id = self.node_id = _check_int("WalConfig", "node_id", self.node_id)
        if not 0 <= node_id < 2**32:
            raise ValueError(f"WalConfig node_id must fit in 32 bits (0 to {2**32 - 1}), got {node_id}")
        policy: Any = self.fsync_policy
        if isinstance(policy, str):
            try:
                self.fsync_policy = FsyncPolicy.parse(policy)
            except ValueError as exc:
                raise ValueError(f"WalConfig fsync_policy: {exc}") from None
        elif not isinstance(policy, FsyncPolicy):
            raise TypeError(
                f"WalConfig fsync_policy must be an FsyncPolicy or its text ('always', 'batch', 'batch:5ms', 'os'), "
                f"got {type(policy).__name__}"
            )
        self._check_dedupe()
        if self.max_retained_bytes is not None:
            retained = self.max_retained_bytes = _check_int("WalConfig", "max_retained_bytes", self.max_retained_bytes)
            if retained < 0:
                raise ValueError(f"WalConfig max_retained_bytes must be None or >= 0 bytes, got {retained}")
        if self.group is not None:
            from .fs import group_id

            if not isinstance(self.group, str) or not self.group:
                raise TypeError(f"WalConfig group must be None or a group name, got {self.group!r}")
            group_id(self.group)  # ValueError naming it when there is no such group

    def _check_dedupe(self) -> None:
        if not isinstance(self.dedupe_window, timedelta) or self.dedupe_window <= timedelta(0):
            raise ValueError(f"WalConfig dedupe_window must be a positive timedelta, got {self.dedupe_window!r}")
        if type(self.dedupe_max_keys) is not int or self.dedupe_max_keys < 1:
            raise ValueError(f"WalConfig dedupe_max_keys must be an int >= 1, got {self.dedupe_max_keys!r}")
        if not isinstance(self.auto_key_window, timedelta) or self.auto_key_window < MIN_AUTO_KEY_WINDOW:
            raise ValueError(
                f"WalConfig auto_key_window must be a timedelta of at least {MIN_AUTO_KEY_WINDOW} (a client retries "
                f"for up to 120 s), got {self.auto_key_window!r}"
            )
        if type(self.dedupe_max_auto_keys) is not int or self.dedupe_max_auto_keys < 1:
            raise ValueError(f"WalConfig dedupe_max_auto_keys must be an int >= 1, got {self.dedupe_max_auto_keys!r}")
