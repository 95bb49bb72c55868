"""Batch-size schedules: the phases, the batches and learning rates a run takes, and the sampler."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

from batchlab import BatchSchedule, ConfigError, load_workload, train


def test_a_scheduled_run_takes_the_batch_sizes_and_learning_rates_of_its_phases() -> None:
    """digits-mlp, batch 32, lr / B divided by 2 at epochs 2 and 4 with a cap of 64: two epochs at
    (32, lr), two at (64, lr), then the cap forces (64, lr / 2). Every step's point shows both."""
    workload = load_workload("digits-mlp")
    n = workload.train_size
    schedule = BatchSchedule.multistep(32, [2, 4], 2, max_batch_size=64)
    lr = workload.lr
    run = train(workload, batch_size=schedule, lr=lr, max_epochs=6, eval_every=1, device="cpu")
    expected = [(32, lr)] * (2 * (n // 32)) + [(64, lr)] * (2 * (n // 64)) + [(64, lr / 2)] * (2 * (n // 64))
    assert [p.step for p in run.curve[1:]] == list(range(1, len(expected) + 1))
    assert [p.batch_size for p in run.curve[1:]] == [b for b, _ in expected]
    assert [p.lr for p in run.curve[1:]] == pytest.approx([r for _, r in expected], rel=1e-12)
    assert run.steps == len(expected) == schedule.steps(6, n)
    assert run.examples == sum(b for b, _ in expected) == run.curve[-1].examples
    assert run.batch_size == 32
    assert run.batch_schedule == schedule.to_dict()


def test_warm_up_multiplies_the_phase_learning_rate() -> None:
    schedule = BatchSchedule.multistep(32, [1], 2, mode="decay-lr")
    run = train("digits-mlp", batch_size=schedule, lr=0.1, warmup_steps=4, max_epochs=2, eval_every=1)
    lrs = [p.lr for p in run.curve[1:]]
    per_epoch = load_workload("digits-mlp").train_size // 32
    assert lrs[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1])
    assert lrs[per_epoch - 1] == pytest.approx(0.1)
    assert lrs[per_epoch:] == pytest.approx([0.05] * per_epoch)


def test_a_constant_schedule_is_the_plain_batch_size() -> None:
    plain = train("digits-mlp", batch_size=64, max_steps=30, eval_every=10, device="cpu")
    scheduled = train("digits-mlp", batch_size=BatchSchedule.constant(64), max_steps=30, eval_every=10)
    assert [p.train_loss for p in plain.curve] == [p.train_loss for p in scheduled.curve]
    assert scheduled.batch_schedule is None


def test_the_memory_cap_turns_the_rest_of_each_factor_into_a_learning_rate_drop() -> None:
    schedule = BatchSchedule.multistep(32, [10, 20, 30], 2, max_batch_size=100)
    assert [(p.start_epoch, p.batch_size) for p in schedule.phases] == [
        (0, 32),
        (10, 64),
        (20, 100),
        (30, 100),
    ]
    assert [p.lr_factor for p in schedule.phases] == pytest.approx([1, 1, 100 / 128, 100 / 256])
    decay = BatchSchedule.multistep(32, [10, 20], 4, mode="decay-lr")
    assert [(p.batch_size, p.lr_factor) for p in decay.phases] == [(32, 1), (32, 0.25), (32, 0.0625)]
    assert schedule.at(0).batch_size == 32 and schedule.at(19).batch_size == 64
    assert schedule.at(1000).lr_factor == pytest.approx(100 / 256)


@given(
    batch=st.integers(1, 512),
    gaps=st.lists(st.integers(1, 20), max_size=5),
    factor=st.sampled_from([1.5, 2, 3, 4, 10]),
    headroom=st.one_of(st.none(), st.integers(0, 5000)),
    mode=st.sampled_from(["increase-batch", "decay-lr"]),
)
def test_every_milestone_divides_lr_over_batch_by_the_factor(
    batch: int, gaps: list[int], factor: float, headroom: int | None, mode: str
) -> None:
    """Smith et al.'s invariant: in phase k, lr_factor / B = 1 / (B_0 factor^k) (lr_factor absorbs the
    rounding of B down to an integer); batches never shrink nor pass the cap; the rate never rises."""
    milestones = [sum(gaps[: i + 1]) for i in range(len(gaps))]
    cap = None if headroom is None else batch + headroom
    schedule = BatchSchedule.multistep(batch, milestones, factor, mode=mode, max_batch_size=cap)
    sizes = [p.batch_size for p in schedule.phases]
    assert sizes == sorted(sizes)
    assert cap is None or max(sizes) <= cap
    for k, phase in enumerate(schedule.phases):
        assert phase.lr_factor / phase.batch_size == pytest.approx(1 / (batch * factor**k), rel=1e-9)
        assert phase.lr_factor <= 1


def test_the_batch_sampler_drives_a_dataloader() -> None:
    schedule = BatchSchedule.multistep(8, [1, 2], 2)
    data = TensorDataset(torch.arange(100.0))
    sampler = schedule.batch_sampler(len(data), seed=3)
    loader = DataLoader(data, batch_sampler=sampler)
    seen = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = [b[0] for b in loader]
        assert len(batches) == len(loader) == 100 // (8 * 2**epoch)
        assert {len(b) for b in batches} == {8 * 2**epoch}
        flat = torch.cat(batches).tolist()
        assert len(set(flat)) == len(flat)  # without replacement within an epoch
        seen.append(flat)
    sampler.set_epoch(0)
    assert torch.cat([b[0] for b in loader]).tolist() == seen[0]  # the same epoch, the same order


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"factor": 1}, "factor"),
        ({"milestones": [5, 5]}, "milestones"),
        ({"milestones": [0]}, "milestones"),
        ({"max_batch_size": 16}, "max_batch_size"),
        ({"mode": "sideways"}, "mode"),
    ],
)
def test_bad_schedules_name_the_field(kwargs: dict[str, object], field: str) -> None:
    settings: dict[str, object] = {"batch_size": 32, "milestones": [5], "factor": 2, **kwargs}
    with pytest.raises(ConfigError, match=field):
        BatchSchedule.multistep(**settings)  # type: ignore[arg-type]


def test_a_schedule_past_the_training_set_is_refused() -> None:
    schedule = BatchSchedule.multistep(512, [1, 2], 2)
    with pytest.raises(ConfigError, match="batch_size"):
        train("digits-mlp", batch_size=schedule, max_epochs=3)


def test_ghost_batch_norm_through_train() -> None:
    """digits-cnn: a ghost batch the size of the batch trains exactly like BatchNorm; 16 of 64 does not;
    a model without BatchNorm is refused."""
    runs = [
        train("digits-cnn", batch_size=64, max_steps=10, eval_every=5, ghost_batch_size=g, device="cpu")
        for g in (None, 64, 16)
    ]
    losses = [[p.train_loss for p in r.curve] for r in runs]
    assert losses[0] == losses[1]
    assert losses[2] != losses[0]
    assert runs[2].ghost_batch_size == 16
    assert all(math.isfinite(v) for v in losses[2][1:])
    with pytest.raises(ConfigError, match="ghost_batch_size"):
        train("digits-mlp", batch_size=64, max_steps=1, ghost_batch_size=16)


def test_train_measures_the_final_sharpness() -> None:
    from batchlab.sharpness import sharpness

    run = train("digits-mlp", batch_size=64, max_steps=60, sharpness=True, keep_model=True, device="cpu")
    assert run.sharpness is not None and run.model is not None
    again = sharpness(run.model, load_workload("digits-mlp"), max_examples=2048, tolerance=1e-3)
    assert run.sharpness["top_eigenvalue"] == pytest.approx(again.top_eigenvalue, rel=0.01)
    assert run.sharpness["method"] == "autograd"
    assert run.sharpness["epsilon_sharpness"] > 0
