"""The crash kit: a fault-injecting file layer, crash-state enumeration and a SIGKILL torture engine.

Shipped with the package so users can run the same checks against their own
disk (``nori-wal torture``) or their own code on top of nori-wal:

    from nori_wal.testing import FaultFS, CrashSpec
    fs = FaultFS()
    wal, _ = Wal.open(config, layer=fs)       # the production code, unchanged
    ...
    wal2, info = Wal.open(config, layer=fs.crash())   # the disk after a power loss

Modules: ``crashmodel`` (what a crash keeps, as values and pure rules), ``faultfs``
(the in-memory layer that applies it), ``faultyos`` (real files with the same fault
rules, picklable into a writer process), ``workload`` (workloads snapshotted at every
syscall), ``crashsim`` (crash-state enumeration and the invariant checks),
``torture`` (the SIGKILL torture engine).
"""

from .faultfs import (
    CRASH,
    MUTATING_OPS,
    POWER_LOSS,
    PROCESS_CRASH,
    SECTOR_SIZE,
    CrashSpec,
    Fault,
    FaultFile,
    FaultFS,
    FaultLock,
    SimulatedCrash,
    Syscall,
    sector_tears,
    torn_write_points,
)
from .faultyos import FaultyOsLayer

__all__ = [
    "CRASH",
    "MUTATING_OPS",
    "POWER_LOSS",
    "PROCESS_CRASH",
    "SECTOR_SIZE",
    "CrashSpec",
    "Fault",
    "FaultFS",
    "FaultFile",
    "FaultLock",
    "FaultyOsLayer",
    "SimulatedCrash",
    "Syscall",
    "sector_tears",
    "torn_write_points",
]
