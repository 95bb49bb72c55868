"""The learning-rate search: a doubling search over rates at one batch, each rate trained to the target.

`search_lr` is a pure function of an `attempt(rate, step_limit, seeds)` callable, so that it can be
tested with outcomes written down by hand; `tune_lr` hands it real training runs (recorded in the
store, so a killed command resumes past them).

The rules assume the reference rate was the best one at the reference batch; when it was
conservative, the search recovers the difference, and where it was too high, it halves.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from batchlab.core.progress import Say
from batchlab.core.store import Store
from batchlab.train.evaluation import last_eval_at
from batchlab.train.record import recorded_train
from batchlab.workload import Workload

LR_CHECK_HALVINGS = 4  # halvings from a rate that diverged, before the search gives up
# A bound on the climb either way from its first rate (2^10 = 1024x), never met in practice: each
# doubling must pay, and a rate far enough up diverges. Past it the search says so.
LR_MAX_DOUBLINGS = 10
CONFIRMED_START = 2  # a confirmed search's first rate, over the rule's (see `search_lr`)
TUNING_SEEDS = 2  # each candidate rate is trained on this many seeds; the slower decides
LR_DOUBLING_GAIN = 0.9  # a doubling must save 10% of the steps: one seed's noise is not a gain


class Runs(Protocol):
    """Runs to the target at one workload: `to_target(batch_size, lr, seed, max_steps)` trains one
    (stopping at the target or `max_steps`) and returns it. `RecordedRuns` trains them for real."""

    def to_target(self, batch_size: int, lr: float, seed: int, max_steps: int) -> Measured: ...


class Budget(Protocol):
    def left(self) -> float:
        """Seconds left to spend (math.inf without a limit)."""
        ...


@dataclass(frozen=True, kw_only=True)
class Measured:
    batch_size: int
    lr: float
    reached_target: bool
    steps_to_target: int | None
    seconds_to_target: float | None
    diverged: bool


# attempt(rate, step_limit, seeds): the slowest seed's run at `rate`, or None when the budget ran out.
Attempt = Callable[[float, int, range | None], Measured | None]


def measured_run(run: Any, batch_size: int) -> Measured:
    return Measured(
        batch_size=batch_size,
        lr=run.lr,
        reached_target=run.reached_target,
        steps_to_target=run.steps_to_target,
        seconds_to_target=run.seconds_to_target,
        diverged=run.diverged,
    )


@dataclass(frozen=True)
class Tuned:
    """A tuned rate, every run trained for it, and why the search stopped there (a clause: "0.4
    diverged")."""

    lr: float
    checks: list[Measured]
    stopped_because: str


def tune_lr(
    runs: Runs,
    batch_size: int,
    lr: float,
    limit: int,
    *,
    budget: Budget | None = None,
    limitations: list[str] | None = None,
    say: Say | None = None,
    confirm: bool = False,
    first: Measured | None = None,
) -> Tuned:
    """`search_lr` over `runs` at `batch_size`, each trained to the target (at most `limit` steps) on
    TUNING_SEEDS seeds, or on the first alone with `confirm` (the others then check the answer).
    Its checks are every run trained, `first` included."""
    checks: list[Measured] = [] if first is None else [first]
    limitations = [] if limitations is None else limitations
    attempt = _Attempts(
        runs,
        batch_size,
        seeds=range(1) if confirm else range(TUNING_SEEDS),
        checks=checks,
        budget=budget,
        limitations=limitations,
        say=say or (lambda text: None),
    )
    rate, why = search_lr(
        attempt,
        lr=lr,
        limit=limit,
        batch_size=batch_size,
        confirm=confirm,
        first=first,
        limitations=limitations,
    )
    return Tuned(rate, checks, why)


def search_lr(
    attempt: Attempt,
    *,
    lr: float,
    limit: int,
    batch_size: int,
    confirm: bool = False,
    first: Measured | None = None,
    limitations: list[str],
) -> tuple[float, str]:
    """A doubling search on the learning rate at one batch. `attempt(rate, step_limit, seeds)`
    trains `rate` to the target (at most `step_limit` steps) on `seeds` (None: the search's own) and
    returns the slowest seed's run, or None when the budget ran out. Halve while it diverges; from
    the first rate that trains, double for as long as steps-to-target falls by LR_DOUBLING_GAIN: no
    fixed multiple, since a published rate can be conservative by any factor for the user's data.
    A doubling's run stops once it can no longer win, so each step up costs less than the one before.

    With `confirm`, the search compares rates on the first seed alone (the same data order and
    initial weights at every rate, so the comparison is paired), and the other seeds check only its
    last step up (`_confirm`): the rate recommended has still reached the target, and saved its last
    10%, on every seed. Where twice the answer diverged, the rate halfway between (x sqrt 2) is
    tried too. It starts at `lr` x CONFIRMED_START and halves from there only when its first
    doubling did not pay, for as long as halving pays: the slowest run of a search up from `lr`, the
    one at `lr` itself, is trained only where it may be the answer, and then only until it can no
    longer be. `first`, a run at `lr` on seed 0 that reached the target (the advice's reference run,
    when the advice stays at the reference batch), is not trained again: the search starts from it,
    and goes up or down, since the user's own rate need not be the best. What limited the answer is
    appended to `limitations`. Returns the rate and why the search stopped there."""
    tried: list[Measured] = [] if first is None else [first]

    def run(rate: float, step_limit: int, seeds: range | None = None) -> Measured | None:
        outcome = attempt(rate, step_limit, seeds)
        if outcome is not None:
            tried.append(outcome)
        return outcome

    above = 0  # halvings the start lies above `lr`
    if first is not None:
        current: Measured | None = first
    else:
        above = int(math.log2(CONFIRMED_START)) if confirm else 0
        lr *= 2**above
        current = run(lr, limit)
    for _ in range(LR_CHECK_HALVINGS + above):
        if current is None or not current.diverged:
            break
        lr /= 2
        current = run(lr, limit)
    if current is None:
        return lr, "the budget ran out"
    if current.diverged:
        limitations.append(f"training diverged at batch {batch_size} even at lr {lr:.3g}")
        return lr, f"training diverged at every rate down to {lr:.3g}"
    # After a halving the doubled rate is the one that just diverged on the same seed, within at
    # least the steps a doubling may take: trained again it can only lose, so it is not.
    if any(m.diverged for m in tried):
        trained, why = [lr], f"{2 * lr:.3g} diverged"
    else:
        halve = confirm or first is not None
        trained, current, why = _climb(lr, current, run, halve=halve, limit=limit)
    if not confirm or current.steps_to_target is None:
        return trained[-1], why
    lr = trained[-1]
    if any(m.diverged and math.isclose(m.lr, 2 * lr) for m in tried):
        # Twice the answer diverged: the stability edge, where SGD's best rate usually sits, lies
        # between. The rate halfway (x sqrt 2) is kept if it saves LR_DOUBLING_GAIN of the steps.
        cap = _at_most(LR_DOUBLING_GAIN * _steps(current))
        between = run(lr * math.sqrt(2), cap) if cap >= 1 else None
        if between is not None and not between.diverged and between.steps_to_target is not None:
            trained.append(lr * math.sqrt(2))
            why = f"{2 * lr:.3g} diverged, and the rate halfway to it saved 10% of the steps"
        elif between is not None:
            why = f"{2 * lr:.3g} diverged, and the rate halfway to it did not save 10% of the steps"
    rate, backed_off = _confirm(trained, run, limit, batch_size, limitations)
    return rate, backed_off or why


@dataclass
class _Attempts:
    """Tuning runs at one batch: `attempt(rate, limit)` trains the seeds at `rate`, each to the target
    or `limit` steps, and keeps every run in `checks`."""

    runs: Runs
    batch_size: int
    seeds: range
    checks: list[Measured]
    budget: Budget | None
    limitations: list[str]
    say: Say

    def __call__(self, rate: float, limit: int, seeds: range | None = None) -> Measured | None:
        """The slower seed speaks for the rate (a rate that only one seed's data order tolerates is
        not a rate to recommend), so a seed that misses ends the attempt: the others cannot change
        its verdict. None when the budget ran out."""
        trained = []
        for seed in self.seeds if seeds is None else seeds:
            if self.budget is not None and self.budget.left() <= 0:
                self.limitations.append("the budget ran out while the learning rate was being tuned")
                return None
            batch = self.batch_size
            self.say(f"check: batch {batch} at lr {rate:.3g}, seed {seed}, to the target or {limit} steps")
            run = self.runs.to_target(batch, rate, seed, limit)
            trained.append(run)
            if not run.reached_target:
                break
        self.checks.extend(trained)
        return max(trained, key=lambda m: (m.diverged, _steps(m)))


def _steps(m: Measured) -> float:
    return math.inf if m.steps_to_target is None else m.steps_to_target


def _at_most(steps: float) -> int:
    """The step limit of a run that must reach the target in at most `steps`, on the evaluation grid
    that an uncapped run is scored on (`last_eval_at`), so the cap itself is no extra evaluation."""
    return last_eval_at(math.floor(steps))


def _fewer_than(steps: float) -> int:
    """The step limit of a run that must reach the target in fewer than `steps` (on the grid)."""
    return last_eval_at(math.ceil(steps) - 1)


def _climb(
    lr: float,
    current: Measured,
    attempt: Callable[[float, int], Measured | None],
    *,
    halve: bool,
    limit: int,
) -> tuple[list[float], Measured, str]:
    """From `lr`, which trained (`current` its run): double while a doubling saves LR_DOUBLING_GAIN
    of the steps; when the first did not and `halve`, halve while halving costs less than that.
    Each run stops where it can no longer win. Returns the rates kept (rising; the rate below the
    answer's doubling first, where one paid), the answer's run, and why the search stopped."""
    trained = [lr]
    why = f"it had moved {2**LR_MAX_DOUBLINGS}x, its bound"
    for _ in range(LR_MAX_DOUBLINGS):
        # A doubling is kept only if it saves LR_DOUBLING_GAIN of the steps: a run still short of
        # the target by then can no longer win, so it stops there.
        can_win = limit if current.steps_to_target is None else _at_most(LR_DOUBLING_GAIN * _steps(current))
        if can_win < 1:
            why = f"{lr:.3g} reached the target in too few steps for 10% fewer to be measured"
            break
        bigger = attempt(2 * lr, can_win)
        if bigger is None:
            why = "the budget ran out"
            break
        if bigger.diverged:
            why = f"{2 * lr:.3g} diverged"
            break
        # Kept only when it reaches the target, in clearly fewer steps (two runs that both miss the
        # target compare as inf > 0.9 inf, which is false: that must not count as a gain).
        if bigger.steps_to_target is None or _steps(bigger) > LR_DOUBLING_GAIN * _steps(current):
            why = f"{2 * lr:.3g} did not reach the target in 10% fewer steps"
            break
        lr, current = 2 * lr, bigger
        trained.append(lr)
    if len(trained) > 1 or current.steps_to_target is None or not halve:
        return trained, current, why
    for _ in range(LR_MAX_DOUBLINGS):
        # Half the rate takes over if it reaches the target in fewer than steps / LR_DOUBLING_GAIN:
        # past that, the doubling from it to this rate paid.
        smaller = attempt(lr / 2, _fewer_than(_steps(current) / LR_DOUBLING_GAIN))
        if smaller is None:
            why = "the budget ran out"
            break
        if smaller.diverged:
            break
        if smaller.steps_to_target is None:
            trained.insert(0, lr / 2)
            why = f"{2 * lr:.3g} did not save 10% of the steps, and the doubling from {lr / 2:.3g} did"
            break
        lr, current, trained = lr / 2, smaller, [lr / 2]
        why = f"it had moved {2**LR_MAX_DOUBLINGS}x down, its bound"
    return trained, current, why


def _confirm(
    trained: list[float],
    attempt: Callable[[float, int, range], Measured | None],
    limit: int,
    batch_size: int,
    limitations: list[str],
) -> tuple[float, str | None]:
    """The other seeds at the rates a one-seed search kept (`trained`, rising): the answer must
    reach the target on them (within `limit`; a seed that misses backs off a step, and another),
    and its last step up must pay on them too, so they then train at the rate below it only until
    it can no longer be slower by LR_DOUBLING_GAIN. The rate returned has reached the target on every
    seed, and its last step up saved 10% of the steps on every seed; with why, where the other seeds
    moved it (None where they kept the first seed's answer)."""
    others = range(1, TUNING_SEEDS)

    def reached(m: Measured | None) -> bool:
        return m is not None and m.steps_to_target is not None and not m.diverged

    j = len(trained) - 1
    top = attempt(trained[j], limit, others)
    while top is not None and not reached(top) and j > 0:
        j -= 1
        top = attempt(trained[j], limit, others)
    if top is None:  # the budget ran out: what the first seed found stands
        return trained[-1], None
    if not reached(top):
        limitations.append(
            f"at batch {batch_size} the rates tried reached the target on the first seed only, "
            f"not on all {TUNING_SEEDS} within {limit} steps"
        )
        return trained[0], f"no rate tried reached the target on all {TUNING_SEEDS} seeds"
    if j < len(trained) - 1:
        return trained[j], f"{trained[j + 1]:.3g} missed the target on another seed"
    if j == 0:  # no doubling to check
        return trained[j], None
    cap = _fewer_than(_steps(top) / LR_DOUBLING_GAIN)
    below = attempt(trained[j - 1], cap, others) if cap >= 1 else None
    if reached(below):
        return trained[
            j - 1
        ], f"on another seed the step up to {trained[j]:.3g} did not save 10% of the steps"
    return trained[j], None


@dataclass(frozen=True)
class RecordedRuns:
    """Real runs of `workload` on `device`, each recorded in `store` under `kind` and a finished one
    reused (a killed study resumes past its tuning)."""

    workload: Workload
    device: str | torch.device
    store: Store | None = None
    kind: str = "tuning"

    def to_target(self, batch_size: int, lr: float, seed: int, max_steps: int) -> Measured:
        run, _ = recorded_train(
            self.store,
            self.workload,
            kind=self.kind,
            batch_size=batch_size,
            lr=lr,
            until_target=True,
            max_steps=max_steps,
            device=self.device,
            seed=seed,
            final_gap=False,  # steps to the target are all a tuning run is for
        )
        return measured_run(run, batch_size)
