"""Train a fresh model from a workload, and record its curve.

`train` builds everything from the workload (a seeded model, a new optimizer), so a run is a pure
function of its arguments: the same seed gives the same curve on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from batchlab.core import dist as _dist
from batchlab.core.precision import Precision
from batchlab.core.progress import Steps
from batchlab.lr import LrRule
from batchlab.schedule import BatchSchedule
from batchlab.train.config import TrainConfig, plan_run
from batchlab.train.loop import Loop
from batchlab.train.result import CurvePoint, TrainResult
from batchlab.workload import Workload
from batchlab.workloads import load_workload


def train(
    workload: Workload | str,
    *,
    batch_size: int | BatchSchedule,
    lr: float | None = None,
    lr_rule: str | LrRule = LrRule.LINEAR,
    b_noise: float | None = None,
    warmup_steps: int = 0,
    accumulation: int = 1,
    max_steps: int | None = None,
    max_epochs: float | None = None,
    max_examples: int | None = None,
    max_tokens: int | None = None,
    until_target: bool = False,
    eval_every: int | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    track_noise: bool = False,
    noise_every: int | None = None,
    precision: str | Precision = Precision.FP32,
    checkpoint: bool = False,
    ghost_batch_size: int | None = None,
    sharpness: bool = False,
    final_gap: bool = True,
    checkpoint_at: Sequence[int | float] = (),
    checkpoint_dir: str | Path | None = None,
    resume_from: str | Path | None = None,
    data_seed: int | None = None,
    keep_model: bool = False,
    on_point: Callable[[CurvePoint], None] | None = None,
    progress: Steps | None = None,
) -> TrainResult:
    """Train a fresh model from `workload` at `batch_size` and return its whole curve.

    The options are `TrainConfig`'s, where each is described. The target is judged at evaluation
    points on fixed data (`evaluation`); a loss that is not finite, or a training-sample loss that
    rises to DIVERGENCE_FACTOR times its start, stops the run and marks it `diverged`: a result, not
    an error. `on_point` is told each curve point as it is scored; `progress(step, limit)` too.
    """
    config = TrainConfig(
        batch_size=batch_size,
        lr=lr,
        lr_rule=lr_rule,
        b_noise=b_noise,
        warmup_steps=warmup_steps,
        accumulation=accumulation,
        max_steps=max_steps,
        max_epochs=max_epochs,
        max_examples=max_examples,
        max_tokens=max_tokens,
        until_target=until_target,
        eval_every=eval_every,
        seed=seed,
        device=device,
        track_noise=track_noise,
        noise_every=noise_every,
        precision=precision,
        checkpoint=checkpoint,
        ghost_batch_size=ghost_batch_size,
        sharpness=sharpness,
        final_gap=final_gap,
        checkpoint_at=checkpoint_at,
        checkpoint_dir=checkpoint_dir,
        resume_from=resume_from,
        data_seed=data_seed,
        keep_model=keep_model,
    )
    return run(load_workload(workload), config, on_point=on_point, progress=progress)


def run(
    workload: Workload,
    config: TrainConfig,
    *,
    on_point: Callable[[CurvePoint], None] | None = None,
    progress: Steps | None = None,
) -> TrainResult:
    """`train` with its options as one config."""
    _dist.init_from_env()
    loop = Loop(workload, config, plan_run(workload, config))
    curve, stop = loop.run(on_point=on_point, progress=progress)
    return loop.result(curve, stop)
