"""lr-scaling: batches for the same epochs, the learning rate fixed, then scaled (Goyal et al. 2017):
do the loss curves line up against epochs?"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from batchlab.core.store import Store
from batchlab.lr import LrRule, rate_for
from batchlab.studies.arms import (
    Arm,
    StudyName,
    StudyProgress,
    StudyResult,
    batch_sizes_for,
    check_epochs,
    fmt_value,
    run_arms,
)
from batchlab.workload import Workload


def lr_scaling(
    workload: Workload,
    *,
    batch_sizes: Sequence[int] = (64, 256, 1024),
    epochs: float = 20,
    rule: LrRule = LrRule.LINEAR,
    warmup_epochs: float = 2,
    store: Store | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    progress: StudyProgress | None = None,
) -> StudyResult:
    sizes = batch_sizes_for(batch_sizes, workload)
    epochs = check_epochs(epochs)
    arms = []
    for group, group_rule in (("fixed", LrRule.NONE), ("scaled", rule)):
        for b in sizes:
            lr = rate_for(workload, b, group_rule)
            warmup = round(warmup_epochs * (workload.train_size // b))
            arms.append(
                Arm(
                    label=f"B={b}, lr {group}",
                    batch_size=b,
                    lr=lr,
                    epochs=epochs,
                    group=group,
                    warmup_steps=warmup,
                )
            )
    rows, runs = run_arms(arms, workload, store=store, seed=seed, device=device, progress=progress)
    findings = []
    for group in ("fixed", "scaled"):
        finals = [(r["batch_size"], r["final_eval_loss"], r["diverged"]) for r in rows if r["group"] == group]
        text = ", ".join(f"B={b}: {'diverged' if d else fmt_value(v)}" for b, v, d in finals)
        label = (
            "fixed" if group == "fixed" else f"scaled ({rule.value} rule, {warmup_epochs:g}-epoch warm-up)"
        )
        findings.append(f"Final eval loss after {epochs:g} epochs, lr {label}: {text}.")
    for group in ("fixed", "scaled"):
        curves = [r for r in runs if r["group"] == group]
        for run, row in zip(curves[1:], [r for r in rows if r["group"] == group][1:], strict=True):
            row["curve_distance"] = _curve_distance(curves[0]["curve"], run["curve"], epochs)
    pairs = [
        (b, _by(rows, "fixed", b)["curve_distance"], _by(rows, "scaled", b)["curve_distance"])
        for b in sizes[1:]
    ]
    if pairs:
        text = "; ".join(f"B={b}: {f:.2f}x fixed, {c:.2f}x scaled" for b, f, c in pairs)
        findings.append(
            f"Against epochs, each curve's distance from B={sizes[0]}'s (the geometric mean ratio of eval "
            f"loss at 25, 50, 75 and 100% of training; 1.00x = on top of it): {text}."
        )
        better = [b for b, f, c in pairs if c < f]
        worse = [b for b, f, c in pairs if c >= f]
        if better:
            findings.append(f"Scaling the learning rate brought B={', '.join(map(str, better))} closer.")
        if worse:
            findings.append(
                f"At B={', '.join(map(str, worse))} the scaled rate did not help: the rule's assumption "
                "(the same noise per example at every batch) broke down, or the rate passed stability."
            )
    return StudyResult(
        study=StudyName.LR_SCALING.value,
        workload=workload.name,
        question="Does scaling the learning rate with the batch make the loss curves line up against epochs?",
        findings=tuple(findings),
        settings={
            "batch_sizes": sizes,
            "epochs": epochs,
            "rule": rule.value,
            "warmup_epochs": warmup_epochs,
            "reference": {"batch_size": workload.batch_size, "lr": workload.lr},
            "seed": seed,
        },
        rows=tuple(rows),
        runs=tuple(runs),
    )


def _by(rows: list[dict[str, Any]], group: str, batch_size: int) -> dict[str, Any]:
    return next(r for r in rows if r["group"] == group and r["batch_size"] == batch_size)


def _curve_distance(reference: list[dict[str, Any]], other: list[dict[str, Any]], epochs: float) -> float:
    """exp(mean |log L_other(e) - log L_ref(e)|) at 25/50/75/100% of `epochs`, eval loss interpolated
    linearly in epochs; infinite when a curve has no finite value there (a diverged run)."""

    def at(curve: list[dict[str, Any]], epoch: float) -> float:
        points = [(p["epoch"], p["eval_loss"]) for p in curve if p["eval_loss"] is not None]
        if not points or not all(math.isfinite(v) and v > 0 for _, v in points):
            return math.nan
        xs, ys = zip(*points, strict=True)
        return float(np.interp(epoch, xs, np.log(ys)))

    grid = [epochs * f for f in (0.25, 0.5, 0.75, 1.0)]
    gaps = [abs(at(other, e) - at(reference, e)) for e in grid]
    return math.inf if any(math.isnan(g) for g in gaps) else math.exp(float(np.mean(gaps)))
