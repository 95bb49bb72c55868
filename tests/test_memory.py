"""The memory probe: exact answers, short searches, child-process isolation, honest errors."""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path

import pytest

from batchlab import WorkloadError
from batchlab.core.device import is_out_of_memory
from batchlab.measure.memory import probe_memory
from batchlab.measure.memory_search import Pace, fit_memory_model, search_max_batch
from batchlab.measure.memory_trial import MemoryTrial, TrialPlan, TrialServer

DATA = Path(__file__).parent / "data" / "memory_workloads.py"
MiB = 1024**2


def synthetic(fixed: float, per_sample: float, limit: float, tried: list[int]):  # type: ignore[no-untyped-def]
    """A trial function with an exact linear memory model: fits iff fixed + per_sample*B <= limit."""

    def trial(batch_size: int, confirmation: bool) -> MemoryTrial:
        tried.append(batch_size)
        peak = fixed + per_sample * batch_size
        return MemoryTrial(
            batch_size=batch_size,
            fits=peak <= limit,
            peak_bytes=int(peak),
            seconds=0.0,
            steps=4,
            confirmation=confirmation,
        )

    return trial


def test_search_jumps_to_the_predicted_edge() -> None:
    """With a linear memory model the search goes 1, 64, edge, edge+1, confirm: five trials."""
    tried: list[int] = []
    trial = synthetic(300 * MiB, 1 * MiB, 300 * MiB + 777 * MiB + 1000, tried)
    best, trials, _ = search_max_batch(
        trial, start=1, cap=10_000, granularity=1, budget_bytes=300 * MiB + 777 * MiB + 1000
    )
    assert best == 777
    assert tried == [1, 64, 777, 778, 777]
    assert trials[-1].confirmation


def test_search_respects_granularity_and_cap() -> None:
    """With granularity 8 every size tried is a multiple of 8; a cap that fits ends the search."""
    tried: list[int] = []
    limit = 100 * MiB + 501 * 4096
    best, _, _ = search_max_batch(
        synthetic(100 * MiB, 4096, limit, tried), start=8, cap=10_000, granularity=8, budget_bytes=limit
    )
    assert best == 496
    assert all(b % 8 == 0 for b in tried)
    tried.clear()
    best, _, _ = search_max_batch(
        synthetic(100 * MiB, 4096, limit, tried), start=1, cap=300, granularity=1, budget_bytes=limit
    )
    assert (best, tried) == (300, [1, 64, 300, 300])


def test_nothing_fits() -> None:
    tried: list[int] = []
    best, _, _ = search_max_batch(
        synthetic(10 * MiB, MiB, 5 * MiB, tried), start=1, cap=100, granularity=1, budget_bytes=5 * MiB
    )
    assert best is None and tried == [1]


def test_fit_memory_model_recovers_a_line() -> None:
    trials = [
        MemoryTrial(batch_size=b, fits=True, peak_bytes=1000 + 7 * b, seconds=0, steps=4) for b in (1, 10, 50)
    ]
    fixed, per_sample = fit_memory_model(trials)  # type: ignore[misc]
    assert (fixed, per_sample) == (pytest.approx(1000), pytest.approx(7))


def test_out_of_memory_is_recognised_and_nothing_else() -> None:
    import torch

    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate"))
    assert is_out_of_memory(
        RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")
    )
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"))
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_fake_cuda_oom_exact_sequence() -> None:
    """A workload that raises CUDA's OOM above batch 300: the exact sizes tried, and 300."""
    profile = probe_memory(f"{DATA}:fake_oom", device="cpu")
    assert profile.max_batch_size == 300
    sizes = [t.batch_size for t in profile.trials]
    # 1 and 64 fit; the model (tiny real peaks) says the cap fits, the cap fails with an OOM the
    # model cannot explain, so the search bisects: geometric first, then halving; then confirms.
    assert sizes == [1, 64, 1000, 252, 626, 439, 345, 298, 321, 309, 303, 300, 301, 300]
    assert [t.error for t in profile.trials if not t.fits] == ["out_of_memory"] * 8
    assert profile.trials[-1].confirmation and profile.trials[-1].fits


def test_other_errors_are_the_workloads_not_memory() -> None:
    """A ValueError at batch 64 is re-raised as the workload's failure, naming the batch size."""
    with pytest.raises(WorkloadError, match=r"the workload failed at batch size 64: ValueError: shapes"):
        probe_memory(f"{DATA}:broken", device="cpu")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads /proc")
def test_exact_edge_and_isolation() -> None:
    """Place the limit between the measured peaks of batches 60 and 61: the probe finds exactly 60,
    a fresh trial at 60 fits and one at 61 does not, in few trials, and the caller's memory is
    unchanged although several trials failed."""
    server = TrialServer()
    try:

        def peak(b: int) -> int:
            outcome = server.run(TrialPlan(f"{DATA}:wide", b, "cpu", 2**40, True, 4, 40), confirmation=False)
            assert outcome.peak_bytes is not None
            return outcome.peak_bytes

        low, high = peak(60), peak(61)
        assert high - low > 2 * MiB  # about 3 MiB a sample: far above run-to-run noise (~0.2 MiB)
        limit = (low + high) // 2
        before = _rss()
        profile = probe_memory(f"{DATA}:wide", device="cpu", limit_bytes=limit)
        after = _rss()
        assert profile.max_batch_size == 60
        assert sum(not t.fits for t in profile.trials) >= 2
        assert len(profile.trials) <= math.ceil(math.log2(60)) + 4
        assert abs(after - before) <= 0.05 * before
        plan = lambda b: TrialPlan(f"{DATA}:wide", b, "cpu", limit, True, 4, 40)  # noqa: E731
        assert server.run(plan(60), confirmation=False).fits
        assert not server.run(plan(61), confirmation=False).fits
        assert profile.per_sample_bytes == pytest.approx(high - low, rel=0.25)
    finally:
        server.close()


def test_bad_arguments() -> None:
    from batchlab import ConfigError

    with pytest.raises(ConfigError, match="granularity must be a whole number >= 1"):
        probe_memory("linreg", granularity=0)
    with pytest.raises(ConfigError, match="reserve_bytes must be"):
        probe_memory("linreg", limit_bytes=1000, reserve_bytes=2000)


def test_cli_memory_json(tmp_path: Path) -> None:
    """The acceptance command prints the documented keys, in few trials, and keeps the result."""
    from .helpers import invoke_json

    data = invoke_json(
        "memory", "--workload", "digits-cnn", "--memory-limit", "1.5GiB", "--out", str(tmp_path)
    )
    for key in ("max_batch_size", "fixed_bytes", "per_sample_bytes", "limit_bytes", "device", "trials"):
        assert key in data
    assert data["limit_bytes"] == 1536 * MiB
    assert data["max_batch_size"] == 1438 and data["capped_by_dataset"]  # the whole training set fits
    assert all({"batch_size", "fits", "peak_bytes"} <= set(t) for t in data["trials"])
    assert len(data["trials"]) <= math.ceil(math.log2(data["max_batch_size"])) + 4
    assert all(t["peak_bytes"] <= data["limit_bytes"] for t in data["trials"] if t["fits"])
    assert (tmp_path / "memory.json").is_file()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--memory-limit", "lots"], "memory_limit must be a size such as 1.5GiB"),
        (["--memory-limit", "0GiB"], "memory_limit must be a size greater than zero"),
        (["--reserve", "2GiB", "--memory-limit", "1GiB"], "reserve_bytes must be a whole number of bytes"),
        (["--granularity", "x"], "granularity must be a whole number (got 'x')"),
    ],
)
def test_cli_memory_bad_input(args: list[str], fragment: str) -> None:
    from .helpers import assert_one_line_error, invoke

    assert_one_line_error(invoke("memory", "--workload", "linreg", *args), fragment)


@pytest.mark.parametrize("creep", [0, 150 * 1024])
@pytest.mark.parametrize("limit_mib", [310, 340, 380, 450, 600, 1000, 1536])
@pytest.mark.parametrize("curve", ["linear", "charlm", "concave"])
def test_search_bound_and_answer_on_replayed_curves(curve: str, limit_mib: int, creep: int) -> None:
    """Memory curves shaped like the measured ones (a linear one, charlm's 623 KiB a sample, and
    digits-cnn's concave start at 56 KiB a sample), with and without a late creep of 150 KiB in the
    longer confirmation run: the search stays within ceil(log2(answer)) + 4 trials; the answer is
    the exact edge without creep, and with it the largest size whose long run fits, or one below."""
    import numpy as np

    peaks = {
        "linear": lambda b: 300 * MiB + MiB * b,
        "charlm": lambda b: 255 * MiB + 623 * 1024 * b,
        "concave": lambda b: 303 * MiB + 56 * 1024 * b + 3 * MiB * (1 - float(np.exp(-b / 50))),
    }
    peak, limit = peaks[curve], limit_mib * MiB
    tried: list[int] = []

    def trial(b: int, confirmation: bool) -> MemoryTrial:
        tried.append(b)
        p = peak(b) + (creep if confirmation else 0)
        return MemoryTrial(
            batch_size=b,
            fits=p <= limit,
            peak_bytes=int(min(p, limit + 4096)),
            seconds=0.0,
            steps=4,
            confirmation=confirmation,
        )

    best, _, _ = search_max_batch(trial, start=1, cap=7137, granularity=1, budget_bytes=limit)
    long_edge = max((b for b in range(1, 7138) if peak(b) + creep <= limit), default=None)
    if long_edge is None:
        assert best is None
        return
    assert best is not None
    assert long_edge - 1 <= best <= long_edge
    if creep == 0:
        assert best == long_edge
    assert len(tried) <= math.ceil(math.log2(max(best, 2))) + 4


def timed(per_sample_seconds: float, tried: list[int]):  # type: ignore[no-untyped-def]
    """The synthetic trial of an edge at 777 (300 MiB + 1 MiB a sample), whose steps take
    `per_sample_seconds` a sample."""
    inner = synthetic(300 * MiB, MiB, 300 * MiB + 777 * MiB + 1000, tried)

    def trial(batch_size: int, confirmation: bool) -> MemoryTrial:
        return replace(inner(batch_size, confirmation), step_seconds=per_sample_seconds * batch_size)

    return trial


def paced_search(per_sample_seconds: float, pace: Pace, tried: list[int]):  # type: ignore[no-untyped-def]
    budget = 300 * MiB + 777 * MiB + 1000
    trial = timed(per_sample_seconds, tried)
    return search_max_batch(trial, start=1, cap=10_000, granularity=1, budget_bytes=budget, pace=pace)


def test_a_pace_stops_the_search_at_a_batch_that_fits_and_says_why() -> None:
    """Steps of 1 ms a sample and at most 0.5 s a step: no trial past batch 500; the search runs
    1, 64, then 500 (not the edge at 777), stops there with the reason, and confirms nothing."""
    tried: list[int] = []
    best, trials, stopped = paced_search(1e-3, Pace(seconds=1e9, max_step_seconds=0.5), tried)
    assert (best, tried) == (500, [1, 64, 500])
    assert stopped == "a step at batch 500 took 0.50 s (limit 0.5 s)"
    assert not any(t.confirmation for t in trials)


def test_a_pace_with_time_left_finds_the_edge_as_without_one() -> None:
    tried: list[int] = []
    best, _, stopped = paced_search(1e-6, Pace(seconds=1e9, max_step_seconds=10.0), tried)
    assert (best, stopped) == (777, None)


def test_a_spent_budget_answers_the_first_batch_as_a_lower_bound() -> None:
    tried: list[int] = []
    best, _, stopped = paced_search(1e-6, Pace(0.0, 1.0), tried)
    assert (best, tried, stopped) == (1, [1], "the 0 s budget ran out")


def test_a_probe_with_a_pace_reports_its_lower_bound(tmp_path: Path) -> None:
    """Through the trial server: the slow workload's steps take at least 50 ms (a sleep), so a
    limit of 20 ms a step stops the probe at its first batch, as a lower bound."""
    slow = Path(__file__).parent / "data" / "failing_workloads.py"
    profile = probe_memory(
        f"{slow}:slow", device="cpu", limit_bytes=2**31, pace=Pace(seconds=1e9, max_step_seconds=0.02)
    )
    assert profile.max_batch_size == 1 and profile.is_lower_bound
    assert profile.trials[0].step_seconds is not None and profile.trials[0].step_seconds >= 0.05
    assert profile.stopped_because is not None and "a step at batch 1 took" in profile.stopped_because
