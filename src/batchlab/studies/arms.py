"""What every study shares: its name, its result, and arms (labelled runs) trained and tabled alike."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

import torch

from batchlab.core.json_safe import json_safe
from batchlab.core.progress import Say
from batchlab.core.store import Store
from batchlab.errors import bad
from batchlab.schedule import BatchSchedule
from batchlab.train.record import recorded_train
from batchlab.train.result import TrainResult
from batchlab.workload import Workload

StudyProgress = Say  # told the label of each run as it starts


class StudyName(str, Enum):
    LR_SCALING = "lr-scaling"
    INCREASE_BATCH = "increase-batch"
    GENERALIZATION = "generalization"
    NOISE_VS_BATCH = "noise-vs-batch"
    CRITICAL_BATCH = "critical-batch"


@dataclass(frozen=True, kw_only=True)
class StudyResult:
    study: str
    workload: str
    question: str  # the claim the study tests
    findings: tuple[str, ...]  # what the numbers say, computed from them
    settings: dict[str, Any]
    rows: tuple[dict[str, Any], ...]  # one per arm: the table of the report
    runs: tuple[dict[str, Any], ...] = ()  # each arm's label and curve, for the plots
    extra: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))


@dataclass(frozen=True, kw_only=True)
class Arm:
    label: str
    batch_size: int | BatchSchedule
    lr: float
    epochs: float
    group: str = ""
    ghost_batch_size: int | None = None
    warmup_steps: int = 0


def run_arms(
    arms: list[Arm],
    workload: Workload,
    *,
    store: Store | None,
    seed: int,
    device: str | torch.device,
    progress: StudyProgress | None,
    sharpness: bool = False,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Train each arm (reusing finished ones from the store): its table row and its curve."""
    rows, runs = [], []
    for arm in arms:
        if progress:
            progress(arm.label)
        result, _ = recorded_train(
            store,
            workload,
            kind="study",
            batch_size=arm.batch_size,
            lr=arm.lr,
            max_epochs=arm.epochs,
            warmup_steps=arm.warmup_steps,
            ghost_batch_size=arm.ghost_batch_size,
            sharpness=sharpness,
            seed=seed,
            device=device,
        )
        rows.append(arm_row(arm, result))
        runs.append(arm_curve(arm, result, workload.train_size))
    return rows, runs


def arm_row(arm: Arm, result: TrainResult) -> dict[str, Any]:
    gap = None
    if result.final_eval_loss is not None and result.final_train_loss is not None:
        gap = result.final_eval_loss - result.final_train_loss
    row: dict[str, Any] = {
        "arm": arm.label,
        "group": arm.group,
        "batch_size": result.batch_size,
        "lr": result.lr,
        "epochs": arm.epochs,
        "updates": result.steps,
        "examples": result.examples,
        "diverged": result.diverged,
        "final_train_loss": result.final_train_loss,
        "final_eval_loss": result.final_eval_loss,
        "generalization_gap": gap,
        **result.final_metrics,
        "seconds": result.seconds,
    }
    if result.ghost_batch_size is not None:
        row["ghost_batch_size"] = result.ghost_batch_size
    if result.sharpness is not None:
        row["sharpness"] = result.sharpness["top_eigenvalue"]
        row["epsilon_sharpness"] = result.sharpness["epsilon_sharpness"]
    return row


def epochs_done(schedule: BatchSchedule, steps: int, train_size: int) -> float:
    """Passes over the data after `steps` updates (an epoch is N // B updates of its batch B)."""
    epoch = 0
    while True:
        per_epoch = train_size // schedule.batch_size_at(epoch)
        if steps < per_epoch:
            return epoch + steps / per_epoch
        steps -= per_epoch
        epoch += 1


def arm_curve(arm: Arm, result: TrainResult, train_size: int) -> dict[str, Any]:
    schedule = (
        arm.batch_size
        if isinstance(arm.batch_size, BatchSchedule)
        else BatchSchedule.constant(arm.batch_size)
    )
    return {
        "label": arm.label,
        "group": arm.group,
        "curve": [
            {
                "epoch": epochs_done(schedule, p.step, train_size),
                "step": p.step,
                "batch_size": p.batch_size,
                "lr": p.lr,
                "train_loss": p.train_loss,
                "eval_loss": p.eval_loss,
            }
            for p in result.curve
        ],
    }


def fmt_value(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def check_epochs(epochs: float) -> float:
    if isinstance(epochs, bool) or not isinstance(epochs, (int, float)) or not 0 < epochs < math.inf:
        raise bad("epochs", epochs, "a number > 0", "pass --epochs 20")
    return float(epochs)


def batch_sizes_for(batch_sizes: Sequence[int], workload: Workload) -> list[int]:
    sizes = sorted(set(batch_sizes))
    if not sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in sizes):
        raise bad("batch_sizes", list(batch_sizes), "integers >= 1", "pass --batch-sizes 64,256,1024")
    usable = [b for b in sizes if b <= workload.train_size]
    if not usable:
        raise bad(
            "batch_sizes",
            list(batch_sizes),
            f"at least one no larger than the training set ({workload.train_size})",
            "pass smaller batch sizes",
        )
    return usable
