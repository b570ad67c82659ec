"""Write-back out of order, exhaustively: unsynced writes lost while later ones reached the disk.

A disk without barriers may persist a later write before an earlier one; only
an fsync orders them. The regular crash tests sample three such holes per
moment; here every unsynced write is dropped alone (with and without the
pending directory operations), every pair of the last six, and each beside a
torn last write, for every workload and policy, on the plain and the
preallocated layers. This is what caught a seal written before its records
were durable (recovery trusts a seal without rescanning its segment).
"""

import pytest
from test_crash_prealloc import count, use_zeros

from nori_wal.testing.crashsim import POLICIES, WORKLOADS, explore, run_workload, workload_config
from nori_wal.testing.faultfs import FaultFS, PreallocFaultFS


@pytest.mark.parametrize("layer,zeros", [(FaultFS, "segment"), (PreallocFaultFS, "short")], ids=["plain", "prealloc"])
@pytest.mark.parametrize("workload", sorted(WORKLOADS))
@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_no_hole_left_by_out_of_order_write_back_breaks_an_invariant(
    tmp_path, monkeypatch, layer, zeros, workload, policy, crash_counts
):
    use_zeros(monkeypatch, zeros)
    run = run_workload(
        f"out-of-order/{workload}/{policy}",
        workload_config(str(tmp_path), policy),
        WORKLOADS[workload],
        seed=11,
        layer=layer,
    )
    stats = explore(run, all_drops=True)
    count(crash_counts, stats)
    assert stats.lost == 0 and stats.states >= 400
