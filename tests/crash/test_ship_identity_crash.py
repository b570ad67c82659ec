"""The log id (DIR/LOG_ID) through a crash at every syscall: absent or whole, never garbage, never changed once used."""

from __future__ import annotations

import re

import pytest

from nori_wal.errors import CorruptionError
from nori_wal.ship.identity import IDENTITY_FILE, ensure_identity, read_identity
from nori_wal.testing import POWER_LOSS, PROCESS_CRASH, FaultFS, SimulatedCrash

DIR = "/log"


def fresh() -> FaultFS:
    return FaultFS.from_files({f"{DIR}/000000.wal": b"x"})


def syscalls_of_creation() -> int:
    fs = fresh()
    start = fs.syscalls
    ensure_identity(DIR, fs)
    return fs.syscalls - start


@pytest.mark.parametrize("spec", [POWER_LOSS, PROCESS_CRASH], ids=["power-loss", "process-crash"])
def test_a_crash_at_any_syscall_leaves_no_id_or_the_whole_id(spec: object) -> None:
    n = syscalls_of_creation()
    assert n >= 5  # create, append, sync, rename, sync_dir (and reads)
    for k in range(n + 1):
        fs = fresh()
        fs.crash_after(fs.syscalls + k)
        try:
            made = ensure_identity(DIR, fs)
        except SimulatedCrash:
            made = None
        after = fs.crash(spec)  # type: ignore[arg-type]
        found = read_identity(DIR, after)  # never raises: no file, or a whole one
        if made is not None:
            assert found == made, f"crash after syscall {k}: the id in use changed"
        again = ensure_identity(DIR, after)
        assert re.fullmatch(r"[0-9a-f]{32}", again)
        assert found is None or again == found
        assert ensure_identity(DIR, after.crash()) == again  # the id a shipper used is durable


def test_the_id_is_stable_and_differs_between_logs() -> None:
    a, b = fresh(), fresh()
    ida = ensure_identity(DIR, a)
    assert ensure_identity(DIR, a) == ida == read_identity(DIR, a)
    assert ensure_identity(DIR, b) != ida
    assert read_identity(DIR, fresh()) is None


def test_a_damaged_id_file_is_corruption_naming_it() -> None:
    fs = FaultFS.from_files({f"{DIR}/{IDENTITY_FILE}": b"not-an-id\n"})
    with pytest.raises(CorruptionError, match=f"{DIR}/{IDENTITY_FILE}"):
        ensure_identity(DIR, fs)
