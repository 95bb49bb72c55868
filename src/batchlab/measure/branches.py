"""Branches from a checkpoint, and the rule that reads the critical batch from them (Merrill et al.
2025): each branch at k B trains the same examples at the rule's rate; the critical batch is the
largest k B whose loss falls about as far per example as the k = 1 branch's."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from batchlab.core.store import Store
from batchlab.lr import LrRule, scale_lr
from batchlab.measure.noise import noise_at_parameters
from batchlab.schedule import BatchSchedule
from batchlab.train.checkpoint import load_checkpoint
from batchlab.train.model import fresh_model
from batchlab.train.record import recorded, recorded_train
from batchlab.train.result import CurvePoint
from batchlab.workload import Workload

# The branched rule. A branch at k B "keeps up" when its loss falls by at least (1 - EPSILON) of the
# k = 1 branch's fall over the same examples. Progress, not the loss itself: a tolerance on the loss
# would depend on the loss's scale and on its floor (irreducible noise, which no batch removes), and
# the same rule then means different things on different workloads. With EPSILON = 0.2 a batch at the
# critical size costs at most 1/(1 - 0.2) = 1.25x the examples of the small batch for the same
# progress; in McCandlish et al.'s model (progress per example ~ 1 / (1 + B / B_noise), with the
# best rate at each batch) that is B <= 1.25 B + B_noise / 4 from a small B: a quarter of B_noise,
# where a batch still buys nearly its full worth in steps. (McCandlish et al.'s own B_crit, where
# examples cost 2x, is EPSILON = 0.5.)
EPSILON = 0.2


# A branch's length: BRANCH_FRACTION of the examples the reference run took to the target, and at
# least MIN_BRANCH_UPDATES updates of the largest branch batch. Long enough that the loss moves well
# past its step-to-step noise; short enough that the run's state (and its critical batch) does not
# move far from the checkpoint's; and a handful of updates, since one update of a large batch says
# more about that step's size than about the batch.
BRANCH_FRACTION = 0.25


MIN_BRANCH_UPDATES = 4


# The branch's loss is smoothed: the mean of its evaluations over the last SMOOTHING of its examples
# (BRANCH_EVALS evaluations a branch), so a single noisy evaluation does not decide a branch.
SMOOTHING = 0.25


BRANCH_EVALS = 8


MAX_K = 16  # branches at k = 1, 2, 4, ..., MAX_K (and no larger than the cap)


NOISE_EXAMPLES = 8192  # B_simple at a checkpoint: one shuffled pass over at most this many examples


BRANCH_RATES = ("both", "rule")  # see branch_rules


# Each branch trains on BRANCH_ORDERS data orders (the checkpoint's own, then others) and keeps the
# mean of their losses: more orders, less noise in each progress ratio, at that many times the cost.
# Two: with one order a single low point held the ramp back (docs/measurements.md#branch-orders).
BRANCH_ORDERS = 2


def branch_rules(rule: LrRule) -> tuple[LrRule, ...]:
    """The rates a k-times branch tries: the optimizer's rule first, then the other. The rule is an
    assumption about the optimizer, not a measurement: SGD's linear rate passes its stability limit
    as training sharpens, and a conservative Adam rate gains from the linear one
    (docs/measurements.md#branch-rates). A branch judged at a rate it cannot use measures
    that rate's limit, not the batch's: with `branch_rates="both"` each k keeps the better of the two
    (the lower smoothed loss), and the ramp takes the rate its branch kept; "rule" is Merrill et
    al.'s protocol, the optimizer's rule alone."""
    other = LrRule.LINEAR if rule is LrRule.SQRT else LrRule.SQRT
    return (rule, other)


def loss_metric(workload: Workload) -> str:
    """What a branch is judged on: the evaluation set's loss when there is one (fixed examples, the
    same for every branch), else the fixed training sample's."""
    return "eval_loss" if workload.eval_data is not None else "train_loss"


def smoothed_loss(curve: Sequence[CurvePoint], start_step: int, steps: int, metric: str) -> float:
    """The mean of `metric` at the branch's evaluations in the last SMOOTHING of its `steps`."""
    after = start_step + (1 - SMOOTHING) * steps
    values = [p.value(metric) for p in curve if p.step >= after and p.step > start_step]
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite or len(finite) < len(values):
        return math.inf  # a branch that diverged keeps up with nothing
    return float(np.mean(finite))


def critical_from_branches(
    start_loss: float, losses: dict[int, float], epsilon: float = EPSILON
) -> int | None:
    """The largest k whose branch (and every smaller one) fell by at least (1 - epsilon) of the k = 1
    branch's fall from `start_loss`; None when the k = 1 branch made no progress to compare with."""
    base = start_loss - losses[1]
    if not base > 0:
        return None
    best = 1
    for k in sorted(losses):
        if start_loss - losses[k] < (1 - epsilon) * base:
            break
        best = k
    return best


def measured_rates(
    ramp: BatchSchedule, rows: Sequence[dict[str, Any]], branches: Sequence[dict[str, Any]], lr: float
) -> BatchSchedule:
    """The ramp with each phase at the rate its branches kept (`branch_rules`): the least of the
    kept rates at the phase's batch over the checkpoints the phase spans (a rate that one of them
    could not use is not used there); the rule's rate where no branch ran at that batch."""
    phases = list(ramp.phases)
    starts = [p.start_examples or 0 for p in phases] + [math.inf]
    by_step = {row["step"]: row["examples"] for row in rows}  # where each checkpoint was
    for i, phase in enumerate(phases):
        kept = [
            arm["lr"] / lr
            for arm in branches
            if arm.get("chosen")
            and arm["batch_size"] == phase.batch_size
            and starts[i] <= by_step.get(arm["step"], -1) < starts[i + 1]
        ]
        if kept and i > 0:
            phases[i] = dataclasses.replace(phase, lr_factor=min(kept))
    return BatchSchedule(tuple(phases))


def ramp_updates(ramp: BatchSchedule, examples: int) -> int:
    """The updates the ramp takes over its first `examples` examples (ignoring epoch ends)."""
    starts = [p.start_examples or 0 for p in ramp.phases] + [examples]
    total = 0.0
    for phase, start, stop in zip(ramp.phases, starts, starts[1:], strict=False):
        if start < examples:
            total += (min(stop, examples) - start) / phase.batch_size
    return math.ceil(total)


def measure_point(
    workload: Workload,
    *,
    store: Store | None,
    checkpoint: dict[str, Any],
    fraction: float,
    b: int,
    lr: float,
    ks: list[int],
    length: int,
    rules: tuple[LrRule, ...],
    epsilon: float,
    orders: int,
    seed: int,
    device: torch.device,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Branch from one checkpoint at every k; the critical batch there and B_simple beside it."""
    step, path = checkpoint["step"], checkpoint["path"]
    losses: dict[int, float] = {}
    arms, start_loss = [], math.nan
    for k in ks:
        steps = length // (k * b)
        tried = []
        for branch_rule_ in rules if k > 1 else rules[:1]:
            arm, start_loss = run_branch(
                workload,
                store=store,
                path=path,
                step=step,
                k=k,
                b=b,
                rate=scale_lr(branch_rule_, lr_ref=lr, batch_ref=b, batch_size=k * b),
                rule=branch_rule_,
                steps=steps,
                orders=orders,
                seed=seed,
                device=device,
            )
            tried.append(arm)
        best = min(tried, key=lambda arm: arm["loss"])  # the first (the optimizer's rule) on a tie
        for arm in tried:
            arm["chosen"] = arm is best
        losses[k] = best["loss"]
        arms.extend(tried)
    k_star = critical_from_branches(start_loss, losses, epsilon)
    base = start_loss - losses[1]
    for arm in arms:
        arm["progress"] = start_loss - arm["loss"]
        arm["progress_ratio"] = arm["progress"] / base if base > 0 else None
    reading = noise_at_checkpoint(store, workload, path, b=b, seed=seed, device=device)
    row = {
        "point": f"{fraction:.0%}",
        "fraction": fraction,
        "step": step,
        "examples": checkpoint["examples"],
        "loss": start_loss,
        "critical_batch": None if k_star is None else k_star * b,
        "lower_bound": k_star == ks[-1],  # every branch kept up: it lies at or past the largest tried
        "b_simple": reading["b_simple"],
        "b_simple_stderr": reading["b_simple_stderr"],
        "branch_examples": length,
    }
    return row, arms


def run_branch(
    workload: Workload,
    *,
    store: Store | None,
    path: str,
    step: int,
    k: int,
    b: int,
    rate: float,
    rule: LrRule,
    steps: int,
    orders: int,
    seed: int,
    device: torch.device,
) -> tuple[dict[str, Any], float]:
    """One branch at k B and `rate` for `steps` updates from the checkpoint, over `orders` data
    orders (the checkpoint's own, then others: `train(data_seed=...)`); its loss is the mean of the
    orders' smoothed losses. Returns the branch's record and the loss at the checkpoint."""
    metric = loss_metric(workload)
    runs = []
    for order in range(orders):
        other = {} if order == 0 else {"data_seed": order}  # the checkpoint's own order keeps its key
        run, _ = recorded_train(
            store,
            workload,
            kind="study",
            batch_size=k * b,
            lr=rate,
            max_steps=step + steps,
            eval_every=max(1, steps // BRANCH_EVALS),
            resume_from=path,
            seed=seed,
            device=device,
            **other,
        )
        runs.append(run)
    losses = [smoothed_loss(run.curve, step, steps, metric) for run in runs]
    first = runs[0]
    record = {
        "step": step,
        "k": k,
        "batch_size": k * b,
        "rule": rule.value,
        "lr": rate,
        "updates": steps,
        "examples": steps * k * b,
        "loss": float(np.mean(losses)),  # inf when any order diverged
        "order_losses": losses,
        "diverged": any(run.diverged for run in runs),
        "curve": [
            {"examples": p.examples - first.curve[0].examples, "loss": p.value(metric)} for p in first.curve
        ],
    }
    return record, first.curve[0].value(metric) or math.nan


def noise_at_checkpoint(
    store: Store | None, workload: Workload, path: str, *, b: int, seed: int, device: torch.device
) -> dict[str, float]:
    """B_simple at a checkpoint's parameters (micro-batches of `b`, one pass over at most
    NOISE_EXAMPLES), recorded in the store like a run, so that a resumed study does not measure it
    again (it can cost about as much as two branches)."""
    config = {
        "workload": workload.name,
        "checkpoint": path,
        "micro_batch": b,
        "max_examples": NOISE_EXAMPLES,
        "seed": seed,
    }

    def measure() -> dict[str, Any]:
        model = fresh_model(workload, seed, device)
        model.load_state_dict(load_checkpoint(path, workload.name, device).state["model"])
        reading = noise_at_parameters(
            model, workload, micro_batch=b, device=device, max_examples=NOISE_EXAMPLES, seed=seed
        )
        return {"b_simple": reading.b_simple, "b_simple_stderr": reading.b_simple_stderr}

    result = recorded(store, workload, kind="noise-at-checkpoint", config=config, compute=measure)
    # JSON keeps a non-finite reading as null: a reused one comes back as nan
    return {k: math.nan if v is None else float(v) for k, v in result.items()}
