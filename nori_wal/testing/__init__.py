"""The crash kit: a fault-injecting file layer, crash-state enumeration and a SIGKILL torture engine.

Shipped with the package so users can run the same checks against their own
disk (``nori-wal torture``) or their own code on top of nori-wal:

    from nori_wal.testing import FaultFS, CrashSpec
    fs = FaultFS()
    wal, _ = Wal.open(config, layer=fs)       # the production code, unchanged
    ...
    wal2, info = Wal.open(config, layer=fs.crash())   # the disk after a power loss
"""

from .faultfs import (CRASH, MUTATING_OPS, POWER_LOSS, PROCESS_CRASH, SECTOR_SIZE, CrashSpec, Fault, FaultFile,
                      FaultFS, FaultLock, SimulatedCrash, Syscall, sector_tears, torn_write_points)

__all__ = ["CRASH", "CrashSpec", "Fault", "FaultFS", "FaultFile", "FaultLock", "MUTATING_OPS", "POWER_LOSS",
           "PROCESS_CRASH", "SECTOR_SIZE", "SimulatedCrash", "Syscall", "sector_tears", "torn_write_points"]
