"""The critical batch size over training, measured by branched training, and a ramp built from it.

Merrill, Arora, Groeneveld, Hajishirzi 2025 (arXiv:2505.23971): from a checkpoint of a run at batch
B, continue at k B (k = 1, 2, 4, ...) with the rule's learning rate for the same number of examples;
the critical batch at that point is the largest k B that trains about as well per example as the
k = 1 branch. They found it small early and growing as the loss falls (as Kaplan et al. 2020 wrote
B_crit(L) ~ B* / L^(1/alpha_B)), and that a batch ramped up to follow it saves steps at no cost in
loss. The gradient noise scale B_simple, measured beside it at the same parameters, is the cheap
proxy it is compared with.

`critical_batch` runs the study: the reference run to the target, checkpoints at fractions of its
steps, the branches from each, B_simple there, the ramp built from the measurements, and the ramp
trained against the constant batch (and the advised one, when given). Every run is recorded in the
store; a killed study resumes from the runs it finished and the checkpoints it saved.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from batchlab.core.device import resolve_device
from batchlab.core.store import Store
from batchlab.errors import bad
from batchlab.lr import LrRule, optimizer_rule, scale_lr
from batchlab.measure.noise import noise_at_parameters
from batchlab.schedule import BatchSchedule
from batchlab.train.checkpoint import load_checkpoint
from batchlab.train.config import DEFAULT_EPOCHS_UNTIL_TARGET
from batchlab.train.loop import train
from batchlab.train.model import fresh_model
from batchlab.train.record import recorded, recorded_train
from batchlab.train.result import CurvePoint, TrainResult
from batchlab.workload import Workload, check_batch_size

# Where to branch: fractions of the reference run's steps to the target (Merrill et al. branch along
# the whole run; four points show the rise and where it flattens).
POINTS = (0.1, 0.25, 0.5, 0.75)


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


# The ramp and the constant batch train for VALIDATION_LENGTH x the examples the reference run (one
# seed) took to the target, so that the slower seeds reach it too: on tabular-adam (bench) at its
# tuned rate seeds 0, 1, 2 took 704, 928 and 1280 updates (1.8x seed 0's), on digits-cnn at batch 8
# 184 to 400 (2.2x).
VALIDATION_LENGTH = 2.5


BRANCH_RATES = ("both", "rule")  # see branch_rules


# Each branch trains on BRANCH_ORDERS data orders (the checkpoint's own, then others) and keeps the
# mean of their losses: more orders, less noise in each progress ratio, at that many times the cost.
# Two, measured (bench/ramp_oracle.py, 3 validation seeds): with one order a single low point held
# the ramp back (digits-cnn from 32: critical 128/64/32/64, ramp 32 -> 64, 3% fewer updates;
# tabular-adam: 256/256/128/64, 28%); with two, 128/128/64/128 and 256/256/128/128, ramps
# 32 -> 64 -> 128 with 45% and 62% fewer updates at equal loss, while charlm from 32 (where no ramp
# pays) still measured 64/64/32/32 and no ramp.
BRANCH_ORDERS = 2


def branch_rules(rule: LrRule) -> tuple[LrRule, ...]:
    """The rates a k-times branch tries: the optimizer's rule first, then the other. The rule is an
    assumption about the optimizer, not a measurement: SGD's linear rate passes its stability limit
    as training sharpens (on digits-cnn lr x 8 diverges from every checkpoint past 10% of the run),
    and a conservative Adam rate gains from the linear one (on charlm, 32 -> 64 at a tenth of the run
    took 46% fewer updates to the target at 2x the rate, eval loss 1.52 after equal examples against
    1.53 at constant 32; at sqrt(2)x it was 1.66). A branch judged at a rate it cannot use measures
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


@dataclass(frozen=True, kw_only=True)
class Measurement:
    """The critical batch at points of one run, the branches behind it, and the ramp built from it."""

    rows: list[dict[str, Any]]
    branches: list[dict[str, Any]]
    ramp: BatchSchedule
    constant: TrainResult  # the run at the constant batch that the checkpoints came from
    settings: dict[str, Any]


def measure(
    workload: Workload,
    *,
    batch_size: int,
    lr: float,
    points: Sequence[float] = POINTS,
    max_k: int = MAX_K,
    max_batch_size: int | None = None,
    epsilon: float = EPSILON,
    branch_examples: int | None = None,
    branch_rates: str = "both",
    branch_orders: int = BRANCH_ORDERS,
    store: Store | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    progress: Any = None,
) -> Measurement:
    """Train at `batch_size` and `lr` to the target, branch at `points` of its steps, and read the
    critical batch at each by the rule (EPSILON); B_simple beside it; the ramp from the points."""
    b = _check_options(workload, batch_size, points, max_k, max_batch_size, epsilon, branch_examples)
    _check_branching(branch_rates, branch_orders)
    cap = min(workload.train_size, max_batch_size or workload.train_size)
    rule = optimizer_rule(workload)
    dev = resolve_device(device)
    say = progress or (lambda label: None)
    say(f"reference run at batch {b} to the target")
    steps_to_target, examples_to_target = _reference_run(store, workload, b=b, lr=lr, seed=seed, device=dev)
    at_steps = sorted({max(1, round(f * steps_to_target)) for f in points})
    k_top = 1 << int(math.log2(max(1, min(max_k, cap // b))))
    ks = [1 << i for i in range(int(math.log2(k_top)) + 1)]
    length = branch_examples or max(
        round(BRANCH_FRACTION * examples_to_target), MIN_BRANCH_UPDATES * k_top * b
    )
    length = k_top * b * math.ceil(length / (k_top * b))  # every branch sees exactly these examples
    longest = VALIDATION_LENGTH * examples_to_target / workload.train_size
    folder, owned = _checkpoint_folder(store)
    try:
        say(f"checkpoints at steps {', '.join(map(str, at_steps))}")
        constant = _checkpointed_run(
            store, workload, b=b, lr=lr, epochs=longest, steps=at_steps, folder=folder, seed=seed, device=dev
        )
        saved = {c["step"]: c for c in constant.checkpoints}
        rows, branches = [], []
        for step in at_steps:
            say(f"branches from step {step}")
            row, arms = _measure_point(
                workload,
                store=store,
                checkpoint=saved[step],
                fraction=step / steps_to_target,
                b=b,
                lr=lr,
                ks=ks,
                length=length,
                rules=branch_rules(rule) if branch_rates == "both" else (rule,),
                epsilon=epsilon,
                orders=branch_orders,
                seed=seed,
                device=dev,
            )
            rows.append(row)
            branches.extend(arms)
    finally:
        if owned:
            shutil.rmtree(folder, ignore_errors=True)
    ramp = BatchSchedule.ramp(
        [(r["examples"], r["critical_batch"]) for r in rows if r["critical_batch"] is not None],
        batch_size=b,
        rule=rule,
        max_batch_size=cap,
    )
    ramp = measured_rates(ramp, rows, branches, lr)
    settings = {
        "batch_size": b,
        "lr": lr,
        "rule": rule.value,
        "points": [round(s / steps_to_target, 4) for s in at_steps],
        "checkpoint_steps": at_steps,
        "ks": ks,
        "epsilon": epsilon,
        "branch_examples": length,
        "branch_rates": branch_rates,
        "branch_orders": branch_orders,
        "smoothing": SMOOTHING,
        "loss_metric": loss_metric(workload),
        "max_batch_size": cap,
        "validation_epochs": longest,
        "reference_steps_to_target": steps_to_target,
        "reference_examples_to_target": examples_to_target,
        "seed": seed,
    }
    return Measurement(rows=rows, branches=branches, ramp=ramp, constant=constant, settings=settings)


def _reference_run(
    store: Store | None, workload: Workload, *, b: int, lr: float, seed: int, device: torch.device
) -> tuple[int, int]:
    """The run at batch `b` to the target: its updates and examples to the target."""
    reference, _ = recorded_train(
        store,
        workload,
        kind="study",
        batch_size=b,
        lr=lr,
        until_target=True,
        max_steps=_target_limit(workload, b),  # as tuning trains its first rate: reused when kept
        seed=seed,
        device=device,
    )
    if not reference.reached_target or reference.steps_to_target is None:
        raise bad(
            "workload.target",
            workload.target.to_dict(),
            f"a target the run at batch {b}, lr {lr:.3g} reaches in {reference.steps} steps",
            "set a target it reaches, or pass --batch-size with a batch that trains",
        )
    steps = reference.steps_to_target
    return steps, reference.examples_to_target or steps * b


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


def _target_limit(workload: Workload, b: int) -> int:
    """The steps a run to the target may take at batch `b` (train's own limit for such a run)."""
    return BatchSchedule.constant(b).steps(DEFAULT_EPOCHS_UNTIL_TARGET, workload.train_size)


def _check_branching(branch_rates: str, branch_orders: int) -> None:
    if branch_rates not in BRANCH_RATES:
        raise bad("branch_rates", branch_rates, "'both' or 'rule'", "pass --branch-rates both")
    if isinstance(branch_orders, bool) or not isinstance(branch_orders, int) or branch_orders < 1:
        raise bad("branch_orders", branch_orders, "an integer >= 1", "pass --branch-orders 2")


def _check_options(
    workload: Workload,
    batch_size: int | None,
    points: Sequence[float],
    max_k: int,
    max_batch_size: int | None,
    epsilon: float,
    branch_examples: int | None,
) -> int:
    b = workload.batch_size if batch_size is None else batch_size
    check_batch_size(b, workload.train_size)
    if (
        isinstance(points, (str, bytes))
        or not points
        or any(isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < 1 for f in points)
    ):
        raise bad(
            "points", points, "fractions in (0, 1) of the reference run's steps", "pass --points 0.1,0.25,0.5"
        )
    if isinstance(max_k, bool) or not isinstance(max_k, int) or max_k < 2:
        raise bad("max_k", max_k, "an integer >= 2", "pass --max-k 16")
    if max_batch_size is not None:
        check_batch_size(max_batch_size, workload.train_size, field="max_batch_size")
        if max_batch_size < 2 * b:
            raise bad("max_batch_size", max_batch_size, f"at least twice the batch {b}", "raise it")
    elif 2 * b > workload.train_size:
        raise bad(
            "batch_size", b, f"at most half the training set ({workload.train_size})", "pass a smaller one"
        )
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not 0 < epsilon < 1:
        raise bad("epsilon", epsilon, "a number in (0, 1)", "pass --epsilon 0.2")
    if branch_examples is not None and (
        isinstance(branch_examples, bool) or not isinstance(branch_examples, int) or branch_examples < 2 * b
    ):
        raise bad("branch_examples", branch_examples, f"an integer >= {2 * b} (two batches)", "leave it out")
    return b


def _checkpoint_folder(store: Store | None) -> tuple[Path, bool]:
    """Beside the store, so that a resumed study finds them; a temporary folder without one."""
    if store is not None:
        return Path(store.path).parent / "checkpoints", False
    return Path(tempfile.mkdtemp(prefix="batchlab-checkpoints-")), True


def _checkpointed_run(
    store: Store | None,
    workload: Workload,
    *,
    b: int,
    lr: float,
    epochs: float,
    steps: list[int],
    folder: Path,
    seed: int,
    device: torch.device,
) -> TrainResult:
    """The constant batch run with its checkpoints (trained again if a reused run's files are gone)."""
    settings: dict[str, Any] = dict(
        batch_size=b,
        lr=lr,
        max_epochs=epochs,
        checkpoint_at=steps,
        checkpoint_dir=str(folder / f"b{b}-seed{seed}"),
        seed=seed,
        device=device,
    )
    result, reused = recorded_train(store, workload, kind="study", **settings)
    have = {c["step"] for c in result.checkpoints if Path(c["path"]).is_file()}
    if reused and not set(steps) <= have:
        result = train(workload, **settings)  # the same run, for its files: its curve is the stored one
    if not set(steps) <= {c["step"] for c in result.checkpoints}:
        raise bad(
            "points",
            steps,
            f"steps the constant run reaches ({result.steps}; it diverged)",
            "pass earlier points",
        )
    return result


def _measure_point(
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
            arm, start_loss = _branch(
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
    reading = _noise_at_checkpoint(store, workload, path, b=b, seed=seed, device=device)
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


def _branch(
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


def _noise_at_checkpoint(
    store: Store | None, workload: Workload, path: str, *, b: int, seed: int, device: torch.device
) -> dict[str, float]:
    """B_simple at a checkpoint's parameters (micro-batches of `b`, one pass over at most
    NOISE_EXAMPLES), recorded in the store like a run, so that a resumed study does not measure it
    again (on charlm it costs about as much as two branches)."""
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
