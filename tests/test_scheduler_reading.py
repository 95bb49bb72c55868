"""A trainer's own scheduler read back as a batchlab schedule by its rates; what is not one of
batchlab's shapes is said, not guessed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from batchlab.integrations.scheduler import sample_factors, schedule_from_factors
from batchlab.recipe import LrSchedule

sched = torch.optim.lr_scheduler


def _optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)


def _hf(name: str, warmup: int, total: int, **kwargs: Any) -> Any:
    transformers = pytest.importorskip("transformers")
    return transformers.get_scheduler(
        name,
        _optimizer(),
        num_warmup_steps=warmup,
        num_training_steps=total,
        scheduler_specific_kwargs=kwargs,
    )


def _sequential() -> Any:
    o = _optimizer()
    warm = sched.LinearLR(o, start_factor=1e-9, end_factor=1.0, total_iters=10)
    return sched.SequentialLR(o, [warm, sched.CosineAnnealingLR(o, T_max=90)], milestones=[10])


CASES = [
    (
        "hf cosine",
        lambda: _hf("cosine", 10, 100),
        LrSchedule(decay="cosine", warmup_examples=320, horizon_examples=3200),
    ),
    (
        "hf cosine_with_min_lr",
        lambda: _hf("cosine_with_min_lr", 10, 100, min_lr_rate=0.1),
        LrSchedule(decay="cosine", warmup_examples=320, final_fraction=0.1, horizon_examples=3200),
    ),
    (
        "hf linear",
        lambda: _hf("linear", 5, 50),
        LrSchedule(decay="linear", warmup_examples=160, horizon_examples=1600),
    ),
    (
        "hf wsd",
        lambda: _hf("warmup_stable_decay", 5, 100, num_decay_steps=20, decay_type="linear"),
        LrSchedule(decay="wsd", warmup_examples=160, decay_fraction=0.2, horizon_examples=3200),
    ),
    ("hf constant_with_warmup", lambda: _hf("constant_with_warmup", 8, 100), LrSchedule(warmup_examples=256)),
    (
        "torch cosine",
        lambda: sched.CosineAnnealingLR(_optimizer(), T_max=50, eta_min=0.01),
        LrSchedule(decay="cosine", final_fraction=0.1, horizon_examples=1600),
    ),
    (
        "torch warm-up then cosine",
        _sequential,
        LrSchedule(decay="cosine", warmup_examples=320, horizon_examples=3200),
    ),
]


@pytest.mark.parametrize(("label", "make", "expected"), CASES, ids=[c[0] for c in CASES])
def test_each_shape_reads_back_as_the_schedule_that_gives_its_rates(
    label: str, make: Any, expected: LrSchedule
) -> None:
    """At batch 32, the schedule read gives the scheduler's own rates at every step to its horizon."""
    factors = sample_factors(make(), 120)
    schedule, why = schedule_from_factors(factors, 32)
    assert (schedule, why) == (expected, None)
    horizon = (expected.horizon_examples or 3200) // 32
    assert [schedule.factor(32 * s, 0) for s in range(horizon + 1)] == pytest.approx(
        factors[: horizon + 1], abs=1e-6
    )


def test_what_is_not_a_shape_is_said() -> None:
    nanogpt = sched.LambdaLR(_optimizer(), lambda it: (it + 1) / 11 if it < 10 else 1.0)  # (it+1)/(W+1)
    assert schedule_from_factors(sample_factors(nanogpt, 50), 32) == (
        None,
        "its warm-up is not linear from 0 (s / W)",
    )
    steps = sched.MultiStepLR(_optimizer(), milestones=[20, 40], gamma=0.5)
    assert (
        schedule_from_factors(sample_factors(steps, 60), 32)[1]
        == "its decay is none of cosine, linear or WSD to a floor"
    )
    long = sched.CosineAnnealingLR(_optimizer(), T_max=10_000)
    assert "goes on past the 100 steps read" in str(schedule_from_factors(sample_factors(long, 100), 32)[1])
    assert schedule_from_factors(sample_factors(sched.ConstantLR(_optimizer(), factor=1.0), 20), 32) == (
        None,
        None,
    )


def test_training_arguments_read_as_the_trainer_would_schedule(tmp_path: Path) -> None:
    """Hugging Face's cosine with a 10-step warm-up over 200 steps of 16 x 2: warm-up 320 examples,
    horizon 6400, and the default clip 1.0; by epochs, the Trainer's own count of updates (1000
    examples in ceil(1000 / 16) = 63 batches, 32 updates of 2 an epoch, 64 in two)."""
    transformers = pytest.importorskip("transformers")
    from batchlab.integrations.transformers import recipe_from_args

    common = {
        "output_dir": str(tmp_path),
        "report_to": "none",
        "use_cpu": True,
        "per_device_train_batch_size": 16,
    }
    args = transformers.TrainingArguments(
        **common, gradient_accumulation_steps=2, lr_scheduler_type="cosine", warmup_steps=10, max_steps=200
    )
    expected = LrSchedule(decay="cosine", warmup_examples=320, horizon_examples=6400)
    assert recipe_from_args(args) == (expected, 1.0, [])
    by_epochs = transformers.TrainingArguments(
        **common, gradient_accumulation_steps=2, num_train_epochs=2, max_grad_norm=0
    )
    schedule, clip, unread = recipe_from_args(by_epochs, train_size=1000)
    assert (schedule, clip, unread) == (LrSchedule(decay="linear", horizon_examples=64 * 32), None, [])
    assert recipe_from_args(by_epochs)[2] == [
        "the schedule's horizon (no max_steps, and no train_size for num_train_epochs)"
    ]
