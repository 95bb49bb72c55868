"""Throughput: the knee, interpolation of step time, and curves that end at out-of-memory."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from batchlab import Target, Workload
from batchlab.measure.throughput import (
    ThroughputPoint,
    ThroughputProfile,
    default_batch_sizes,
    find_knee,
    profile_throughput,
)

from .helpers import invoke_json

DATA = Path(__file__).parent / "data" / "memory_workloads.py"


def _points(pairs: list[tuple[int, float]]) -> list[ThroughputPoint]:
    return [
        ThroughputPoint(
            batch_size=b,
            step_seconds=b / s,
            step_seconds_min=b / s,
            step_seconds_max=b / s,
            samples_per_second=s,
            steps_per_repeat=1,
        )
        for b, s in pairs
    ]


def test_knee_is_where_doubling_stops_paying() -> None:
    """step = 1 ms + 0.01 ms x B: samples/s = B / (1 + 0.01 B). Gains per doubling: 8->16 +93%,
    ..., 128->256 +35%, 256->512 +14%, 512->1024 +7%: the knee is 512."""
    points = _points([(b, b / (1e-3 + 1e-5 * b)) for b in (8, 16, 32, 64, 128, 256, 512, 1024)])
    assert find_knee(points, 0.10) == 512


def test_a_dip_is_not_a_knee() -> None:
    """A noisy dip at 32 followed by real gains does not make 16 the knee."""
    points = _points([(16, 1000.0), (32, 900.0), (64, 4000.0), (128, 4100.0), (256, 4150.0)])
    assert find_knee(points, 0.10) == 64


def test_step_seconds_interpolates_linearly() -> None:
    profile = ThroughputProfile(
        workload="w",
        device="cpu",
        points=tuple(_points([(10, 1000.0), (20, 1000.0)])),
        knee_batch_size=10,
        knee_gain=0.1,
        warmup_steps=0,
        repeats=1,
    )
    assert profile.step_seconds(15) == pytest.approx(0.015)
    assert profile.step_seconds(40) == pytest.approx(0.040)


def test_a_slow_spell_at_one_batch_does_not_spread_to_the_larger_ones() -> None:
    """Step times 1, 10 (a slow spell), 1.2, 1.4 and 2 ms at batches 4 to 64: with `monotone`, batch 8
    takes at most batch 16's 1.2 ms (a larger batch does at least its work, and noise only slows a
    timing), the others stay as measured, and batch 12 interpolates between 8 and 16 on the
    envelope. Without it, the spike stands."""
    times = {4: 1e-3, 8: 10e-3, 16: 1.2e-3, 32: 1.4e-3, 64: 2e-3}
    profile = ThroughputProfile(
        workload="w",
        device="cpu",
        points=tuple(_points([(b, b / t) for b, t in times.items()])),
        knee_batch_size=None,
        knee_gain=0.1,
        warmup_steps=0,
        repeats=1,
    )
    assert [profile.step_seconds(b, monotone=True) for b in times] == pytest.approx(
        [1e-3, 1.2e-3, 1.2e-3, 1.4e-3, 2e-3]
    )
    assert profile.step_seconds(12, monotone=True) == pytest.approx(1.2e-3)
    assert profile.step_seconds(8) == pytest.approx(10e-3)


def test_default_batch_sizes() -> None:
    assert default_batch_sizes(100) == [1, 2, 4, 8, 16, 32, 64, 100]
    assert default_batch_sizes(64) == [1, 2, 4, 8, 16, 32, 64]


def test_curve_ends_at_out_of_memory() -> None:
    """The fake workload raises CUDA's OOM above 300: 512 is recorded as not fitting, 1000 not tried."""
    profile = profile_throughput(
        f"{DATA}:fake_oom",
        batch_sizes=[64, 256, 512, 1000],
        steps=2,
        repeats=1,
        device="cpu",
        stop_after_knee=False,
    )
    assert [(p.batch_size, p.fits) for p in profile.points] == [(64, True), (256, True), (512, False)]
    for p in profile.points[:2]:
        assert p.samples_per_second == pytest.approx(p.batch_size / p.step_seconds)  # type: ignore[operator]


def test_a_callers_stop_ends_the_curve_and_leaves_the_knee_unknown() -> None:
    """`stop_when` sees the points timed so far after each batch; where it gives a reason the curve
    ends there, the reason is kept, and the knee is unknown (every doubling paid up to the cut)."""
    seen: list[list[int]] = []

    def stop(points: list[ThroughputPoint]) -> str | None:
        seen.append([p.batch_size for p in points])
        return "cut at 8" if points[-1].batch_size >= 8 else None

    profile = profile_throughput(
        "digits-mlp", batch_sizes=[1, 2, 4, 8, 16, 32], steps=2, repeats=2, device="cpu", stop_when=stop
    )
    assert seen == [[1], [1, 2], [1, 2, 4], [1, 2, 4, 8]]
    assert [p.batch_size for p in profile.points] == [1, 2, 4, 8]
    assert profile.stopped_because == "cut at 8" and profile.knee_batch_size is None
    assert ThroughputProfile.from_dict(profile.to_dict()) == profile
    # Where it would stop at the last size asked for, nothing was cut: no reason, and a knee.
    seen.clear()
    whole = profile_throughput(
        "digits-mlp", batch_sizes=[1, 2, 4, 8], steps=2, repeats=2, device="cpu", stop_when=stop
    )
    assert seen == [[1], [1, 2], [1, 2, 4]]
    assert whole.stopped_because is None and whole.knee_batch_size is not None


def test_cli_throughput_json() -> None:
    data = invoke_json(
        "throughput", "--workload", "digits-mlp", "--batch-sizes", "8,32,128", "--repeats", "2"
    )
    assert [p["batch_size"] for p in data["points"]] == [8, 32, 128]
    for p in data["points"]:  # samples/s is the batch over the step's median seconds
        assert p["step_seconds"] > 0 and p["samples_per_second"] == pytest.approx(
            p["batch_size"] / p["step_seconds"]
        )
    profile = ThroughputProfile.from_dict(data)
    assert data["knee_batch_size"] == find_knee(list(profile.points), data["knee_gain"])


class _SlowSpell(torch.nn.Module):
    """Every forward sleeps 2 ms, except calls SPELL (a slow spell of the machine): 30 ms."""

    calls = 0
    SPELL = range(4, 13)

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _SlowSpell.calls += 1
        time.sleep(0.030 if _SlowSpell.calls in self.SPELL else 0.002)
        return self.linear(x)


def test_a_slow_spell_is_outvoted_by_the_interleaved_repeats() -> None:
    """With 1 warm-up step and blocks of 2 steps, timing each batch size's three blocks one after the
    other takes 7 consecutive forward calls per size, so a 9-call spell (calls 4-12) would own at
    least two blocks, the median, of one size (15x its step time). Interleaved (one block per size on
    the way up, then rounds), the spell covers 16's and 32's first blocks and 8's second: at most one
    block of each, so every median is a 2 ms step. Bounds: a spell-owned median would read >= 30 ms
    (a sleep never ends early); a normal step is 2 ms asleep plus a tiny linear layer, which even a
    loaded machine (the suite runs two processes) keeps far below 15 ms."""
    _SlowSpell.calls = 0
    workload = Workload(
        name="slow-spell",
        model=_SlowSpell,
        train_data=TensorDataset(torch.randn(256, 8), torch.zeros(256, dtype=torch.long)),
        eval_data=TensorDataset(torch.randn(16, 8), torch.zeros(16, dtype=torch.long)),
        loss=F.cross_entropy,
        optimizer=lambda params, lr: torch.optim.SGD(params, lr=lr),
        batch_size=8,
        lr=0.1,
        target=Target(metric="eval_loss", value=0.1),
    )
    profile = profile_throughput(
        workload, batch_sizes=[8, 16, 32], warmup_steps=1, steps=2, repeats=3, stop_after_knee=False
    )
    assert _SlowSpell.calls == 3 * (1 + 2) + 2 * 3 * (1 + 2)  # the climb, then two rounds of 1 + 2
    medians = [p.step_seconds for p in profile.points]
    assert all(m is not None and m < 0.015 for m in medians), medians
    spells = [p.step_seconds_max for p in profile.points]
    assert sum(s is not None and s >= 0.030 for s in spells) == 3, spells  # each size saw the spell once
