"""The critical batch size over training, measured by branched training, and the ramp built from it.

Merrill, Arora, Groeneveld, Hajishirzi 2025 (arXiv:2505.23971): from a checkpoint of a run at batch
B, continue at k B (k = 1, 2, 4, ...) with the rule's learning rate for the same number of examples;
the critical batch at that point is the largest k B that trains about as well per example as the
k = 1 branch. They found it small early and growing as the loss falls (as Kaplan et al. 2020 wrote
B_crit(L) ~ B* / L^(1/alpha_B)), and that a batch ramped up to follow it saves steps at no cost in
loss. The gradient noise scale B_simple, measured beside it at the same parameters, is the cheap
proxy it is compared with.

`measure` takes the measurement: the reference run to the target, checkpoints at fractions of its
steps, the branches from each (`branches.py`), B_simple there, and the ramp built from what they
read. Every run is recorded in the store; a killed measurement resumes from the runs it finished
and the checkpoints it saved. The study (`studies/critical.py`) trains the ramp against the
constant batch; the advice (`advise/ramp.py`) offers it.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from batchlab.core.device import resolve_device
from batchlab.core.store import Store
from batchlab.errors import bad, check_int
from batchlab.lr import optimizer_rule
from batchlab.measure.branches import (
    BRANCH_FRACTION,
    BRANCH_ORDERS,
    BRANCH_RATES,
    EPSILON,
    MAX_K,
    MIN_BRANCH_UPDATES,
    SMOOTHING,
    branch_rules,
    loss_metric,
    measure_point,
    measured_rates,
)
from batchlab.schedule import BatchSchedule
from batchlab.train.config import DEFAULT_EPOCHS_UNTIL_TARGET
from batchlab.train.record import recorded_train
from batchlab.train.result import TrainResult
from batchlab.train.run import train
from batchlab.workload import Workload, check_batch_size

# Where to branch: fractions of the reference run's steps to the target (Merrill et al. branch along
# the whole run; four points show the rise and where it flattens).
POINTS = (0.1, 0.25, 0.5, 0.75)


# The ramp and the constant batch train for VALIDATION_LENGTH x the examples the reference run (one
# seed) took to the target, so that the slower seeds reach it too: they can take twice seed 0's
# updates (docs/measurements.md#seeds).
VALIDATION_LENGTH = 2.5


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
    ks, length = _branch_plan(b, cap, max_k, branch_examples, examples_to_target)
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
            row, arms = measure_point(
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


def _branch_plan(
    b: int, cap: int, max_k: int, branch_examples: int | None, examples_to_target: int
) -> tuple[list[int], int]:
    """The multiples k = 1, 2, 4, ... a checkpoint branches at (within `max_k` and the cap), and the
    examples every branch trains on: BRANCH_FRACTION of the reference's examples to the target, at
    least MIN_BRANCH_UPDATES updates of the largest branch, a whole number of its batches."""
    k_top = 1 << int(math.log2(max(1, min(max_k, cap // b))))
    ks = [1 << i for i in range(int(math.log2(k_top)) + 1)]
    length = branch_examples or max(
        round(BRANCH_FRACTION * examples_to_target), MIN_BRANCH_UPDATES * k_top * b
    )
    return ks, k_top * b * math.ceil(length / (k_top * b))


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


def _target_limit(workload: Workload, b: int) -> int:
    """The steps a run to the target may take at batch `b` (train's own limit for such a run)."""
    return BatchSchedule.constant(b).steps(DEFAULT_EPOCHS_UNTIL_TARGET, workload.train_size)


def _check_branching(branch_rates: str, branch_orders: int) -> None:
    if branch_rates not in BRANCH_RATES:
        raise bad("branch_rates", branch_rates, "'both' or 'rule'", "pass --branch-rates both")
    check_int("branch_orders", branch_orders, fix="pass --branch-orders 2")


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
    check_int("max_k", max_k, minimum=2, fix="pass --max-k 16")
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
    if branch_examples is not None:
        expected = f"an integer >= {2 * b} (two batches)"
        check_int("branch_examples", branch_examples, minimum=2 * b, expected=expected, fix="leave it out")
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
