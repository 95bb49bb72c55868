"""Convergence sweeps: train to the target at several batch sizes, and fit the steps/examples trade-off.

Each batch size gets its learning rate from a rule (and, with several multipliers around the rule's
value, the best one is kept per batch size, as Shallue et al. 2018 retune per batch size). Every
run and curve point goes to the store as it happens; the same sweep on the same store resumes.

The fit is McCandlish et al. 2018, section 2.3: S(B) = S_min (1 + B_crit / B) and
E(B) = E_min (1 + B / B_crit) with E_min = S_min B_crit, fitted in log space (the errors are
multiplicative), on the batch sizes that reached the target; at least three are needed.

References:
  McCandlish, Kaplan, Amodei et al. 2018, arXiv:1812.06162.
  Shallue, Lee, Antognini et al. 2018, arXiv:1811.03600.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
import torch

from batchlab.core.json_safe import json_safe
from batchlab.core.store import Store
from batchlab.errors import bad
from batchlab.lr import LrRule, as_rule, rate_for
from batchlab.train.record import recorded_train
from batchlab.train.result import TrainResult
from batchlab.workload import Workload, check_batch_size
from batchlab.workloads import load_workload

MIN_FIT_POINTS = 3
ONE_SEED_NOTE = (
    "one seed: each batch size's best rate was picked from single runs, so the choice, and the fit, "
    "carry that run's luck; pass --seeds 0,1 to count a rate only when both seeds reach the target"
)


class SweepProgress(Protocol):
    def run_started(self, index: int, total: int, label: str) -> None: ...

    def step(self, done: int, total: int) -> None: ...


@dataclass(frozen=True, kw_only=True)
class SweepRun:
    """One training run of the sweep, with its whole curve."""

    batch_size: int
    lr: float
    lr_multiplier: float
    seed: int
    reached_target: bool
    steps_to_target: int | None
    examples_to_target: int | None
    seconds_to_target: float | None
    diverged: bool
    steps: int
    final_train_loss: float | None
    final_eval_loss: float | None
    generalization_gap: float | None  # final eval loss minus final train loss
    final_metrics: dict[str, float]
    sharpness: float | None  # top Hessian eigenvalue of the training loss at the final parameters
    epsilon_sharpness: float | None  # Keskar et al.'s, at the same parameters
    reused: bool  # read back from the store rather than trained now
    curve: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))

    @classmethod
    def from_result(cls, result: TrainResult, *, multiplier: float, reused: bool) -> SweepRun:
        gap = None
        if result.final_eval_loss is not None and result.final_train_loss is not None:
            gap = result.final_eval_loss - result.final_train_loss
        return cls(
            batch_size=result.batch_size,
            lr=result.lr,
            lr_multiplier=multiplier,
            seed=result.seed,
            reached_target=result.reached_target,
            steps_to_target=result.steps_to_target,
            examples_to_target=result.examples_to_target,
            seconds_to_target=result.seconds_to_target,
            diverged=result.diverged,
            steps=result.steps,
            final_train_loss=result.final_train_loss,
            final_eval_loss=result.final_eval_loss,
            generalization_gap=gap,
            final_metrics=dict(result.final_metrics),
            sharpness=None if result.sharpness is None else result.sharpness["top_eigenvalue"],
            epsilon_sharpness=None if result.sharpness is None else result.sharpness["epsilon_sharpness"],
            reused=reused,
            curve=[p.to_dict() for p in result.curve],
        )


@dataclass(frozen=True, kw_only=True)
class TradeoffFit:
    """S(B) = s_min (1 + b_crit / B); E(B) = e_min (1 + B / b_crit); or why it could not be fitted."""

    ok: bool
    reason: str | None
    points: int
    s_min: float | None = None
    e_min: float | None = None
    b_crit: float | None = None
    b_crit_low: float | None = None  # one-sigma interval from the profile likelihood
    b_crit_high: float | None = None
    rms_log_error: float | None = None
    note: str | None = None  # a caveat on the data behind the fit, for whoever reads it

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))

    def steps(self, batch_size: float) -> float | None:
        if not self.ok or self.s_min is None or self.b_crit is None:
            return None
        return self.s_min * (1 + self.b_crit / batch_size)


@dataclass(frozen=True, kw_only=True)
class SweepResult:
    workload: str
    lr_rule: str
    target: dict[str, Any]
    runs: tuple[SweepRun, ...]
    best: tuple[SweepRun, ...]  # per batch size: the multiplier that reached the target in fewest steps
    fit: TradeoffFit

    def to_dict(self) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "lr_rule": self.lr_rule,
            "target": self.target,
            "runs": [r.to_dict() for r in self.runs],
            "best": [
                {
                    "batch_size": r.batch_size,
                    "lr": r.lr,
                    "lr_multiplier": r.lr_multiplier,
                    "steps_to_target": r.steps_to_target,
                }
                for r in self.best
            ],
            "fit": self.fit.to_dict(),
        }


def _log_residuals(b_crit: float, sizes: np.ndarray, steps: np.ndarray) -> tuple[float, float]:
    """For a fixed B_crit the best log S_min is a mean; returns (log S_min, sum of squared residuals)."""
    shape = np.log1p(b_crit / sizes)
    log_s_min = float(np.mean(np.log(steps) - shape))
    residuals = np.log(steps) - log_s_min - shape
    return log_s_min, float(residuals @ residuals)


def fit_tradeoff(sizes: Sequence[float], steps: Sequence[float]) -> TradeoffFit:
    """Fit S = S_min (1 + B_crit/B) to (batch size, steps to target) pairs, in log space.

    B_crit is found on a fine log grid (then refined); S_min follows in closed form. The interval
    is where the residual sum of squares rises by at most one residual variance (a one-sigma
    profile-likelihood interval). A best B_crit at the grid's edge means the data only bound it.
    """
    n = len(sizes)
    if n < MIN_FIT_POINTS:
        return TradeoffFit(
            ok=False,
            points=n,
            reason=f"not enough data: {n} batch size(s) reached the target, {MIN_FIT_POINTS} are needed",
        )
    b = np.asarray(sizes, dtype=float)
    s = np.asarray(steps, dtype=float)
    lo, hi = b.min() / 1000, b.max() * 1000
    grid = np.exp(np.linspace(math.log(lo), math.log(hi), 2001))
    sse = np.array([_log_residuals(c, b, s)[1] for c in grid])
    i = int(np.argmin(sse))
    if i in (0, len(grid) - 1):
        side = "below" if i == 0 else "above"
        hint = (
            "steps barely fall as the batch grows"
            if i == 0
            else "steps still fall in proportion to the batch at the largest size"
        )
        return TradeoffFit(
            ok=False, points=n, reason=f"B_crit lies {side} the range the data can resolve: {hint}"
        )
    # Refine between the neighbours with golden-section search on log B_crit.
    a_log, c_log = math.log(grid[i - 1]), math.log(grid[i + 1])
    for _ in range(60):
        m1, m2 = a_log + 0.382 * (c_log - a_log), a_log + 0.618 * (c_log - a_log)
        if _log_residuals(math.exp(m1), b, s)[1] < _log_residuals(math.exp(m2), b, s)[1]:
            c_log = m2
        else:
            a_log = m1
    b_crit = math.exp((a_log + c_log) / 2)
    log_s_min, best_sse = _log_residuals(b_crit, b, s)
    variance = best_sse / max(n - 2, 1)
    inside = np.append(grid[sse <= best_sse + variance], b_crit)  # exact data: the point itself
    s_min = math.exp(log_s_min)
    return TradeoffFit(
        ok=True,
        reason=None,
        points=n,
        s_min=s_min,
        e_min=s_min * b_crit,
        b_crit=b_crit,
        b_crit_low=float(inside.min()),
        b_crit_high=float(inside.max()),
        rms_log_error=math.sqrt(best_sse / n),
    )


def best_per_batch(runs: Sequence[SweepRun]) -> list[SweepRun]:
    """Per batch size, the multiplier whose slowest seed reached the target in the fewest steps.
    A multiplier counts only if every one of its seeds reached the target: a rate that only one data
    order tolerates is not a rate to recommend. The representative run is the slowest seed, the one
    that decided; a batch size where no multiplier counts is represented by a run that missed."""
    chosen = []
    for size in sorted({r.batch_size for r in runs}):
        by_multiplier: dict[float, list[SweepRun]] = {}
        for r in runs:
            if r.batch_size == size:
                by_multiplier.setdefault(r.lr_multiplier, []).append(r)

        def slowest(group: list[SweepRun]) -> SweepRun:
            return max(group, key=_steps_or_inf)

        chosen.append(min((slowest(g) for g in by_multiplier.values()), key=_steps_or_inf))
    return chosen


def _steps_or_inf(run: SweepRun) -> float:
    return math.inf if run.steps_to_target is None else run.steps_to_target


def run_sweep(
    workload: Workload | str,
    *,
    batch_sizes: Sequence[int],
    lr_rule: str | LrRule = LrRule.LINEAR,
    lr_multipliers: Sequence[float] = (1.0,),
    seeds: Sequence[int] = (0,),
    b_noise: float | None = None,
    max_steps: int | None = None,
    max_epochs: float | None = None,
    sharpness: bool = True,
    store: Store | None = None,
    device: str | torch.device = "auto",
    progress: SweepProgress | None = None,
) -> SweepResult:
    """Train to the workload's target at each batch size x multiplier x seed; fit the trade-off.
    With `sharpness`, each run's final model gets its top Hessian eigenvalue and epsilon-sharpness
    (over a fixed 2,048-example training sample; seconds on small models, a minute on a small
    transformer)."""
    workload = load_workload(workload)
    rule = as_rule(lr_rule)
    if not batch_sizes:
        raise bad(
            "batch_sizes", list(batch_sizes), "at least one batch size", "pass --batch-sizes 8,32,128,512"
        )
    for size in batch_sizes:
        check_batch_size(size, workload.train_size, field="batch_sizes")
    for m in lr_multipliers:
        if not isinstance(m, (int, float)) or not math.isfinite(m) or m <= 0:
            raise bad("lr_multipliers", list(lr_multipliers), "numbers > 0", "pass --lr-multipliers 0.5,1,2")
    if not seeds:
        raise bad("seeds", list(seeds), "at least one seed", "pass --seeds 0")
    plan = [(size, m, seed) for size in sorted(set(batch_sizes)) for m in lr_multipliers for seed in seeds]
    runs = []
    for index, (size, multiplier, seed) in enumerate(plan):
        lr = rate_for(workload, size, rule, b_noise) * multiplier
        if progress:
            progress.run_started(index, len(plan), f"batch {size}, lr {lr:.3g}, seed {seed}")
        result, reused = recorded_train(
            store,
            workload,
            kind="sweep",
            batch_size=size,
            lr=lr,
            until_target=True,
            max_steps=max_steps,
            max_epochs=max_epochs,
            seed=seed,
            sharpness=sharpness,
            device=device,
            progress=progress.step if progress else None,
        )
        runs.append(SweepRun.from_result(result, multiplier=multiplier, reused=reused))
    best = best_per_batch(runs)
    reached = [r for r in best if r.steps_to_target is not None]
    fit = fit_tradeoff([r.batch_size for r in reached], [r.steps_to_target or 0 for r in reached])
    if len(set(seeds)) == 1:
        fit = dataclasses.replace(fit, note=ONE_SEED_NOTE)
    return SweepResult(
        workload=workload.name,
        lr_rule=rule.value,
        target=workload.target.to_dict(),
        runs=tuple(runs),
        best=tuple(best),
        fit=fit,
    )
