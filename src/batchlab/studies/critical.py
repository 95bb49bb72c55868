"""The critical-batch study: the critical batch measured along a run by branched training
(`measure/critical_batch.py`, Merrill et al. 2025), B_simple beside it, and the batch ramp built
from it trained against the constant batch (and the advised one, when given) over several seeds:
does a batch that ramps up to follow the critical batch save updates at no cost in loss?

The reference run is at the given rate, or the workload's scaled to the batch and tuned there
(`reference_rate`): a ramp compared with a constant batch at too low a rate wins by its rate. Every
run is recorded in the store; a killed study resumes from the runs it finished.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from batchlab.core.device import resolve_device
from batchlab.core.store import Store
from batchlab.errors import bad, check_int
from batchlab.lr import LrRule, optimizer_rule, rate_for, scale_lr
from batchlab.measure.branches import BRANCH_ORDERS, EPSILON, MAX_K, loss_metric
from batchlab.measure.critical_batch import (
    POINTS,
    Measurement,
    _check_branching,
    _check_options,
    _target_limit,
    measure,
)
from batchlab.measure.lr_search import RecordedRuns, tune_lr
from batchlab.schedule import BatchSchedule
from batchlab.studies.arms import StudyName, StudyResult
from batchlab.studies.critical_findings import findings_of, rate_finding
from batchlab.train.record import recorded_train
from batchlab.train.result import TrainResult
from batchlab.workload import Workload, check_batch_size, check_lr

# The ramp and the constant batch are compared over VALIDATION_SEEDS seeds (data order, initial
# weights): one seed's updates to the target can vary by 2x between seeds, so one seed a side cannot
# tell a ramp's saving from luck (docs/measurements.md#seeds).
VALIDATION_SEEDS = 3


def critical_batch(
    workload: Workload,
    *,
    batch_size: int | None = None,
    points: Sequence[float] = POINTS,
    max_k: int = MAX_K,
    max_batch_size: int | None = None,
    epsilon: float = EPSILON,
    branch_examples: int | None = None,
    advised_batch_size: int | None = None,
    branch_rates: str = "both",
    branch_orders: int = BRANCH_ORDERS,
    validation_seeds: int = VALIDATION_SEEDS,
    lr: float | None = None,
    tune_lr: bool = True,
    store: Store | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    progress: Any = None,
) -> StudyResult:
    """Measure the critical batch at `points` of the reference run by branched training, B_simple
    beside it, build the ramp, and train it against the constant batch over `validation_seeds`
    seeds. The reference run is at `lr`, or the workload's rate scaled to the batch and (with
    `tune_lr`) tuned there: see `reference_rate`. See the module's text."""
    b = workload.batch_size if batch_size is None else batch_size
    _check_validation(workload, b, advised_batch_size, validation_seeds, tune_lr)
    _check_options(workload, b, points, max_k, max_batch_size, epsilon, branch_examples)
    _check_branching(branch_rates, branch_orders)  # before the rate's tuning trains anything
    rule = optimizer_rule(workload)
    dev = resolve_device(device)
    say = progress or (lambda label: None)
    lr, reference = reference_rate(workload, b, lr=lr, tune=tune_lr, store=store, device=dev, say=say)
    found = measure(
        workload,
        batch_size=b,
        lr=lr,
        points=points,
        max_k=max_k,
        max_batch_size=max_batch_size,
        epsilon=epsilon,
        branch_examples=branch_examples,
        branch_rates=branch_rates,
        branch_orders=branch_orders,
        store=store,
        seed=seed,
        device=dev,
        progress=say,
    )
    validation, runs = _validate(
        workload,
        found,
        b=b,
        lr=lr,
        rule=rule,
        advised_batch_size=advised_batch_size,
        seeds=[seed + i for i in range(validation_seeds)],
        store=store,
        device=dev,
        say=say,
    )
    findings = findings_of(
        found.rows,
        validation,
        rule=rule,
        both=branch_rates == "both",
        epsilon=epsilon,
        length=found.settings["branch_examples"],
        b=b,
        workload=workload,
    )
    findings.insert(0, rate_finding(reference, b))
    return StudyResult(
        study=StudyName.CRITICAL_BATCH.value,
        workload=workload.name,
        question="How large can the batch be at each point of training, and does a batch that ramps up "
        "to follow it save updates?",
        findings=tuple(findings),
        rows=tuple(found.rows),
        runs=tuple(runs),
        settings={**found.settings, "lr_source": reference["source"], "lr_start": reference["start"]},
        extra={
            "branches": found.branches,
            "validation": validation,
            "ramp": found.ramp.to_dict(),
            "lr_tuning": reference.get("checks", []),
        },
    )


def _validate(
    workload: Workload,
    found: Measurement,
    *,
    b: int,
    lr: float,
    rule: LrRule,
    advised_batch_size: int | None,
    seeds: list[int],
    store: Store | None,
    device: torch.device,
    say: Any,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The ramp against the constant batch (and the advised one), each trained over `seeds` for the
    validation's examples: a summary row per arm, and one curve per arm for the plots."""
    seed = seeds[0]  # its constant run is the one the checkpoints came from
    arms: list[tuple[str, str, BatchSchedule | int, float]] = [
        ("constant", f"constant {b}", b, lr),
        ("ramp", "ramp " + " -> ".join(str(p.batch_size) for p in found.ramp.phases), found.ramp, lr),
    ]
    if advised_batch_size is not None:
        advised_lr = scale_lr(rule, lr_ref=lr, batch_ref=b, batch_size=advised_batch_size)
        arms.append(("advised", f"advised constant {advised_batch_size}", advised_batch_size, advised_lr))
    validation, runs = [], []
    by_group: dict[str, list[TrainResult]] = {}
    for group, label, size, rate in arms:
        if group == "ramp" and len(found.ramp.phases) == 1:  # no growth: the constant batch's runs
            by_group[group] = by_group["constant"]
        else:
            say(f"{label}, {len(seeds)} seeds")
        trained = by_group.get(group) or [
            found.constant
            if group == "constant" and s == seed  # the run the checkpoints came from
            else recorded_train(
                store,
                workload,
                kind="study",
                batch_size=size,
                lr=rate,
                max_epochs=found.settings["validation_epochs"],
                seed=s,
                device=device,
            )[0]
            for s in seeds
        ]
        by_group[group] = trained
        validation.append(seed_summary(group, label, trained, seeds, workload))
        runs.append(_validation_curve(group, label, trained[0], workload))
    return validation, runs


def _check_validation(
    workload: Workload, b: int, advised_batch_size: int | None, validation_seeds: int, tune_lr: bool
) -> None:
    """The batches, the validation's seeds and the tuning flag, checked before anything trains."""
    check_batch_size(b, workload.train_size)  # before the rule scales the rate by it
    if advised_batch_size is not None:
        check_batch_size(advised_batch_size, workload.train_size, field="advised_batch_size")
    check_int("validation_seeds", validation_seeds, fix="pass --validation-seeds 3")
    if not isinstance(tune_lr, bool):
        raise bad("tune_lr", tune_lr, "True or False", "leave it out to tune the rate")


def reference_rate(
    workload: Workload,
    b: int,
    *,
    lr: float | None,
    tune: bool,
    store: Store | None,
    device: torch.device,
    say: Any,
) -> tuple[float, dict[str, Any]]:
    """The rate the study runs batch `b` at: `lr` when given; else the workload's rate scaled to `b`
    by the optimizer's rule and, with `tune`, doubled while that reaches the target in clearly fewer
    updates (advise's `tune_lr`: two seeds, the slower decides, 10% fewer updates a doubling, as many
    doublings as pay; halved while it diverges). Why tune: a branch at k B runs at a larger rate
    than the k = 1 branch, so when the reference rate is below the best one, the larger rate alone
    makes the larger batch look good and inflates the critical batch; and a ramp compared with a
    constant batch at too low a rate wins by its rate (docs/measurements.md#reference-rate)."""

    if lr is not None:
        return check_lr(lr), {"lr": lr, "source": "given", "start": lr}
    rule = optimizer_rule(workload)
    start = rate_for(workload, b, rule)
    if not tune:
        return start, {
            "lr": start,
            "source": f"the workload's, scaled by the {rule.value} rule",
            "start": start,
        }
    say(f"the rate at batch {b}: doubling search from {start:.3g}")
    limitations: list[str] = []
    runs = RecordedRuns(workload, device, store, kind="study")
    tuned = tune_lr(runs, b, start, _target_limit(workload, b), limitations=limitations, say=say)
    return tuned.lr, {
        "lr": tuned.lr,
        "source": "tuned",
        "start": start,
        "stopped_because": tuned.stopped_because,
        "checks": [dataclasses.asdict(m) for m in tuned.checks],
        "limitations": limitations,
    }


def seed_summary(
    group: str, label: str, runs: list[TrainResult], seeds: list[int], workload: Workload
) -> dict[str, Any]:
    """One arm over its seeds: the median updates to target (None unless every seed reached it: a
    seed that did not would make any median a guess), the mean final loss and its spread."""
    metric = loss_metric(workload)
    per_seed = [
        {
            "seed": s,
            "updates_to_target": run.steps_to_target,
            "examples_to_target": run.examples_to_target,
            "seconds_to_target": run.seconds_to_target,
            "final_loss": run.curve[-1].value(metric),
            "diverged": run.diverged,
        }
        for s, run in zip(seeds, runs, strict=True)
    ]
    reached = [r for r in per_seed if r["updates_to_target"] is not None]
    every = len(reached) == len(per_seed)
    finals = [
        r["final_loss"] for r in per_seed if r["final_loss"] is not None and math.isfinite(r["final_loss"])
    ]
    first = runs[0]

    def median(key: str) -> float | None:
        return float(np.median([r[key] for r in reached])) if every else None

    return {
        "arm": label,
        "group": group,
        "batch_size": first.batch_size,
        "lr": first.lr,
        "seeds": len(seeds),
        "reached": len(reached),
        "updates_to_target": median("updates_to_target"),
        "examples_to_target": median("examples_to_target"),
        "seconds_to_target": median("seconds_to_target"),
        "updates": first.steps,
        "examples": first.examples,
        "final_loss": float(np.mean(finals)) if len(finals) == len(per_seed) else None,
        "final_loss_spread": float(np.std(finals, ddof=1)) if len(finals) == len(per_seed) > 1 else None,
        "final_batch_size": first.curve[-1].batch_size,
        "diverged": sum(r["diverged"] for r in per_seed),
        "per_seed": per_seed,
    }


def _validation_curve(group: str, label: str, run: TrainResult, workload: Workload) -> dict[str, Any]:
    metric = loss_metric(workload)
    return {
        "label": label,
        "group": group,
        "curve": [
            {
                "step": p.step,
                "examples": p.examples,
                "epoch": p.examples / workload.train_size,
                "batch_size": p.batch_size,
                "lr": p.lr,
                "train_loss": p.train_loss,
                "eval_loss": p.eval_loss,
                metric: p.value(metric),
            }
            for p in run.curve
        ],
    }
