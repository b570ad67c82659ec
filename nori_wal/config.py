"""WalConfig and FsyncPolicy: what a log promises and how it is laid out (pure)."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal, Union

PathLike = Union[str, "os.PathLike[str]"]

DEFAULT_MAX_SEGMENT_SIZE = 128 * 1024 * 1024  # 128 MiB per segment file
DEFAULT_BATCH_WINDOW = 0.005  # seconds: at most one fsync per 5 ms
DEFAULT_DEDUPE_WINDOW = timedelta(minutes=10)  # idempotency keys are remembered at least this long
DEFAULT_DEDUPE_MAX_KEYS = 1_000_000  # keys the dedupe index holds at most (nori_wal/dedupe.py)


@dataclass(frozen=True)
class FsyncPolicy:
    """When the log fsyncs, and so what an acknowledged record survives.

    always: fsync after each written group (survives power loss).
    batch:  at most one fsync per ``window`` seconds; acks wait for it (survives power loss).
    os:     never fsync for a record (a full segment is made durable when sealed at a roll); the OS writes back.
            Survives a crash of the writer process only.
    """

    kind: Literal["always", "batch", "os"]
    window: float = 0.0

    @classmethod
    def always(cls) -> "FsyncPolicy":
        return cls("always")

    @classmethod
    def batch(cls, window: float = DEFAULT_BATCH_WINDOW) -> "FsyncPolicy":
        if not (window > 0 and math.isfinite(window)):
            raise ValueError(f"batch window must be a finite number of seconds > 0, got {window!r}")
        return cls("batch", float(window))

    @classmethod
    def os(cls) -> "FsyncPolicy":
        return cls("os")

    @classmethod
    def parse(cls, text: str) -> "FsyncPolicy":
        """Parse ``always``, ``os``, ``batch`` or ``batch:5ms`` / ``batch:0.01s`` / ``batch:0.01``."""
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
        scale = {"ms": 1e-3, "us": 1e-6, "s": 1.0, None: 1.0}[m.group(2)]
        return cls.batch(float(m.group(1)) * scale)

    def __str__(self) -> str:
        if self.kind == "batch":
            return f"batch:{self.window * 1e3:g}ms"
        return self.kind


@dataclass
class WalConfig:
    """Where the log lives and how it behaves; defaults in place, with units."""

    dir: PathLike = "wal"
    max_segment_size: int = DEFAULT_MAX_SEGMENT_SIZE  # bytes per segment file, header included
    fsync_policy: FsyncPolicy = field(default_factory=FsyncPolicy.batch)
    node_id: int = 0  # recorded in every segment header
    dedupe_window: timedelta = DEFAULT_DEDUPE_WINDOW  # how long an idempotency key is remembered (at least)
    dedupe_max_keys: int = DEFAULT_DEDUPE_MAX_KEYS  # a new key past this many within the window is refused
    max_retained_bytes: int | None = None  # bytes: consumers may hold back GC until the log is this big (None: no cap)

    def __post_init__(self) -> None:
        from .segment import MIN_SEGMENT_SIZE

        if self.max_segment_size < MIN_SEGMENT_SIZE:
            raise ValueError(f"max_segment_size must be >= {MIN_SEGMENT_SIZE} bytes, got {self.max_segment_size}")
        if not 0 <= self.node_id < 2**32:
            raise ValueError(f"node_id must fit in 32 bits, got {self.node_id}")
        if not isinstance(self.dedupe_window, timedelta) or self.dedupe_window <= timedelta(0):
            raise ValueError(f"dedupe_window must be a positive timedelta, got {self.dedupe_window!r}")
        if type(self.dedupe_max_keys) is not int or self.dedupe_max_keys < 1:
            raise ValueError(f"dedupe_max_keys must be an int >= 1, got {self.dedupe_max_keys!r}")
        if self.max_retained_bytes is not None and self.max_retained_bytes < 0:
            raise ValueError(f"max_retained_bytes must be None or >= 0 bytes, got {self.max_retained_bytes}")
