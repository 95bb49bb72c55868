"""increase-batch: the milestones of a learning-rate decay, the batch grown instead (Smith et al. 2018):
the final eval metric and the number of parameter updates of each."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from batchlab.core.store import Store
from batchlab.schedule import BatchSchedule, ScheduleMode
from batchlab.studies.arms import (
    Arm,
    StudyName,
    StudyProgress,
    StudyResult,
    check_epochs,
    fmt_value,
    run_arms,
)
from batchlab.workload import Workload


def increase_batch(
    workload: Workload,
    *,
    batch_size: int | None = None,
    epochs: float = 32,
    milestones: Sequence[int] | None = None,
    factor: float = 2,
    max_batch_size: int | None = None,
    store: Store | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    progress: StudyProgress | None = None,
) -> StudyResult:
    epochs = check_epochs(epochs)
    start = workload.batch_size if batch_size is None else batch_size
    if milestones is None:
        milestones = [round(epochs * k / 4) for k in (1, 2, 3)]
    decay = BatchSchedule.multistep(start, milestones, factor, mode=ScheduleMode.DECAY_LR)
    grow = BatchSchedule.multistep(
        start, milestones, factor, mode=ScheduleMode.INCREASE_BATCH, max_batch_size=max_batch_size
    )
    arms = [
        Arm(label="constant (no decay)", batch_size=start, lr=workload.lr, epochs=epochs, group="constant"),
        Arm(
            label="decay the learning rate", batch_size=decay, lr=workload.lr, epochs=epochs, group="decay-lr"
        ),
        Arm(
            label="increase the batch", batch_size=grow, lr=workload.lr, epochs=epochs, group="increase-batch"
        ),
    ]
    rows, runs = run_arms(arms, workload, store=store, seed=seed, device=device, progress=progress)
    by = {r["group"]: r for r in rows}
    metric = workload.target.metric
    findings = []
    d, g = by["decay-lr"], by["increase-batch"]
    if not d["diverged"] and not g["diverged"]:
        findings.append(
            f"Increasing the batch ({' -> '.join(str(p.batch_size) for p in grow.phases)}) ended at eval "
            f"loss {fmt_value(g['final_eval_loss'])} in {g['updates']} updates; decaying the learning rate "
            f"(/{factor:g} at epochs {', '.join(map(str, milestones))}) ended at "
            f"{fmt_value(d['final_eval_loss'])} "
            f"in {d['updates']}: {d['updates'] / g['updates']:.2f}x fewer updates for the batch schedule."
        )
        for name in sorted(k for k in d if k.startswith("eval_") and k != "eval_loss"):
            findings.append(
                f"Final {name}: {fmt_value(g.get(name), 4)} (increase the batch), "
                f"{fmt_value(d.get(name), 4)} (decay the rate), "
                f"{fmt_value(by['constant'].get(name), 4)} (constant)."
            )
    capped = [p for p in grow.phases if p.lr_factor < 1]
    if capped:
        findings.append(
            f"The batch reached the cap of {max_batch_size} at epoch {capped[0].start_epoch}; from there the "
            "learning rate decayed instead."
        )
    return StudyResult(
        study=StudyName.INCREASE_BATCH.value,
        workload=workload.name,
        question="Does increasing the batch do what decaying the learning rate does, with fewer updates?",
        findings=tuple(findings),
        settings={
            "batch_size": start,
            "epochs": epochs,
            "milestones": list(milestones),
            "factor": factor,
            "max_batch_size": max_batch_size,
            "lr": workload.lr,
            "target_metric": metric,
            "seed": seed,
            "schedules": {"decay-lr": decay.to_dict(), "increase-batch": grow.to_dict()},
        },
        rows=tuple(rows),
        runs=tuple(runs),
    )
