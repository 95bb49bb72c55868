"""How a run is judged: when the data is scored, on what, in chunks that fit, and when a run has diverged."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from batchlab.core.data import DeviceData, batch_len
from batchlab.core.device import is_out_of_memory
from batchlab.core.monitor import NoiseReading
from batchlab.train.result import CurvePoint
from batchlab.workload import Workload

EVAL_RESOLUTION = 16  # automatic evaluation keeps steps-to-target within 1/16 of its value


# ...but scoring the data at every such point can cost more than the training between them
# (docs/measurements.md#check-resolution). So a run to the target keeps the
# weights at each point and scores the data only at checks, CHECK_RESOLUTION to a doubling of the
# steps (gaps <= step/4); the first check that meets the target scores the kept weights since the
# check before, in order, and the first of them to meet it is the target point. Steps-to-target keeps
# its 1/16 resolution at about a third of the evaluations. What it means
# changes in one case: a dip below the target between two checks that both miss it is not counted;
# the run must still be there at the next check, which makes the count less of a first-passage lottery
# on a noisy evaluation (it is never earlier than the first dip).
CHECK_RESOLUTION = 4


# A target is judged on fixed data at evaluation points, never on the mini-batches just trained on
# (Shallue et al. 2018; at batch 1 a mini-batch's loss has the spread of one example's, so a lucky
# example "meets" any target). Train metrics are measured on a fixed random sample of the training
# set, the same examples in every run. For a train-metric target the sample is TRAIN_SAMPLE examples:
# a cross-entropy whose per-example spread is about the size of the loss itself then has a standard
# error of ~2% of the loss, small against the distance from the starting loss to any target worth
# setting. Otherwise the sample only watches for divergence (a 3x rise, below) and draws the train
# curve, and DIVERGENCE_SAMPLE examples (standard error ~6% of the loss) are plenty for that; nor is
# it larger than the evaluation set, which judges the target itself: a train curve more precise than
# the eval curve beside it buys nothing and is paid at every check
# (docs/measurements.md#train-sample). At least DIVERGENCE_MIN examples
# (standard error ~12%, still a quarter of the 3x rise).
TRAIN_SAMPLE = 2048


DIVERGENCE_SAMPLE = 256


DIVERGENCE_MIN = 64


FINAL_TRAIN_SAMPLE = TRAIN_SAMPLE  # examples scored at the end, for the train/eval gap


# The data is scored in chunks of max(B, EVAL_CHUNK): fewer, faster passes than at a small training
# batch. Where a chunk does not fit (a forward without backward at 256 can still outgrow a training
# step at 12: a language model's logits), it is halved until it does (`evaluate_within_memory`).
EVAL_CHUNK = 256


SAMPLE_SEED = 0  # the fixed sample's seed: every run of a workload is judged on the same examples


# A run has diverged when its loss is not finite, or when the training-sample loss rises above its
# starting value by more than (DIVERGENCE_FACTOR - 1) times that value (3x a positive start). A run
# that got there is no longer training; an unstable rate grows the loss geometrically, so the exact
# factor changes when it is caught by a step or two, not whether; and a transient rise of less than
# that (Adam's early bumps, momentum's overshoot) still recovers and is let run.
DIVERGENCE_FACTOR = 3.0


def evaluate_within_memory(
    model: nn.Module,
    workload: Workload,
    data: DeviceData,
    *,
    batch_size: int,
    prefix: str = "eval_",
) -> tuple[float, dict[str, float], int]:
    """`evaluate` in chunks of `batch_size`, halved while a chunk runs out of memory; also the chunk
    size that fitted, for the next evaluation to start from. The result does not depend on the
    chunks (a mean weighted by their sizes; the model is in eval mode), only its float rounding."""
    while True:
        try:
            loss, metrics = evaluate(model, workload, data, batch_size=batch_size, prefix=prefix)
            return loss, metrics, batch_size
        except Exception as error:  # only out-of-memory is handled here; the rest is raised again
            if batch_size == 1 or not is_out_of_memory(error):
                raise
        batch_size //= 2  # outside the handler: the failed chunk's tensors are released by now
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def evaluate(
    model: nn.Module,
    workload: Workload,
    data: DeviceData,
    *,
    batch_size: int,
    prefix: str = "eval_",
) -> tuple[float, dict[str, float]]:
    """Mean loss (and metrics, named `prefix` + name) over `data` in eval mode, weighted by chunk size."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    sums: dict[str, float] = {}
    try:
        with torch.no_grad():
            for x, y in data.in_order(batch_size):
                out = model(x)
                n = batch_len(y)
                total += float(workload.loss(out, y)) * n
                count += n
                for name, value in (workload.metrics(out, y) if workload.metrics else {}).items():
                    sums[name] = sums.get(name, 0.0) + float(value) * n
    finally:  # a chunk that ran out of memory must not leave the model in eval mode
        model.train(was_training)
    return total / count, {f"{prefix}{k}": v / count for k, v in sums.items()}


def auto_eval(step: int, resolution: int = EVAL_RESOLUTION) -> bool:
    """Evaluate every step up to 2*R, then every 2^k steps so that the gap stays below step/R."""
    interval = 1 << max(0, int(math.log2(max(step, 1) / resolution)))
    return step % interval == 0


def last_eval_at(steps: int) -> int:
    """The last automatic evaluation point at or before `steps` (0 if none). A run capped there ends
    where an uncapped one is scored, so their steps-to-target compare on the same grid
    (docs/measurements.md#eval-grid)."""
    if steps < 1:
        return 0
    # Every point from 16 x interval on is a multiple of its interval, and the interval at `steps`
    # holds back to the multiple below it (itself >= 16 x interval).
    interval = 1 << max(0, int(math.log2(steps / EVAL_RESOLUTION)))
    return steps - steps % interval


def auto_check(step: int) -> bool:
    """Where the automatic schedule scores the data (a subset of `auto_eval`'s points)."""
    return auto_eval(step, CHECK_RESOLUTION)


@dataclass(frozen=True)
class Kept:
    """An evaluation point not scored yet: where training stood (losses None) and its weights."""

    point: CurvePoint
    weights: dict[str, torch.Tensor]
    noise: NoiseReading | None


def has_diverged(point: CurvePoint, start: CurvePoint) -> bool:
    """Not finite, or the training-sample loss far above where it started (DIVERGENCE_FACTOR)."""
    losses = (point.train_loss, point.eval_loss, point.batch_loss)
    if any(v is not None and not math.isfinite(v) for v in losses):
        return True
    first, now = start.train_loss, point.train_loss
    if first is None or now is None or not math.isfinite(first):
        return False
    return now - first > (DIVERGENCE_FACTOR - 1) * abs(first)
