"""The choice: the memory cap on the candidates, then the batch that minimises predicted time to
target and its learning rate (the rule's, then a short search at that batch)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from batchlab.advise.budget import Budget
from batchlab.advise.evidence import reference_on_seed_1
from batchlab.advise.model import flat_choice, tuning_steps
from batchlab.advise.result import Prediction
from batchlab.core import dist as _dist
from batchlab.core.progress import Say
from batchlab.lr import LrRule, lr_for
from batchlab.measure.lr_search import Measured, Runs, tune_lr
from batchlab.measure.memory import MemoryProfile, default_limit_bytes, probe_memory
from batchlab.measure.throughput import ThroughputProfile
from batchlab.workload import Workload


def cap_from_memory(
    workload: Workload,
    predictions: list[Prediction],
    throughput: ThroughputProfile,
    full_memory: bool,
    device: str | torch.device,
    memory_limit: int | None,
    say: Say,
    limitations: list[str],
) -> tuple[MemoryProfile, int, int | None, bool]:
    """The memory probe, bounded by the prediction: the profile, the cap on the (global) batch, how
    far it probed (None: to the edge), and whether the cap is only a lower bound (probed no further).

    The prediction only considers batches that the throughput profile ran, whole training steps on
    this device: where no `memory_limit` lower than the device's is asked for, those batches are
    known to fit, and the probe (a process of its own, a few seconds even on a tiny model) would
    only say so again. Then memory is not probed, and the cap is the largest batch the profile ran
    (a lower bound)."""
    world = _dist.world_size()
    # The largest batch the prediction could choose is its best without a memory cap: a cap above
    # it changes nothing, a cap below it is found exactly by a search bounded there.
    unbounded = min(predictions, key=lambda p: p.seconds_to_target) if predictions else None
    probe_to = None if full_memory else (unbounded.batch_size if unbounded else workload.batch_size)
    ran = throughput.largest_timed or 0
    if probe_to is not None and memory_limit is None and probe_to <= ran:
        say(f"memory: not probed; the throughput profile ran whole training steps up to batch {ran}")
        return ran_in_profile(workload, throughput, ran, probe_to), ran, probe_to, True
    say(
        "memory: the largest batch that fits"
        + ("" if probe_to is None else f", up to {probe_to} (the largest the prediction could choose)")
    )
    memory = probe_memory(
        workload,
        device=device,
        limit_bytes=memory_limit,
        max_batch_size=None if probe_to is None else max(1, math.ceil(probe_to / world)),
    )
    cap = memory.max_batch_size or workload.batch_size
    if world > 1 and memory.max_batch_size is not None:  # the probe's answer is per device
        cap = min(memory.max_batch_size * world, workload.train_size) // world * world
    if memory.max_batch_size is None:
        limitations.append(
            "not even the smallest batch fitted in memory; the reference batch is used as the cap"
        )
    probed_no_further = probe_to is not None and memory.max_batch_size is not None and cap >= probe_to
    return memory, cap, probe_to, probed_no_further


def ran_in_profile(
    workload: Workload, throughput: ThroughputProfile, ran: int, probe_to: int
) -> MemoryProfile:
    """What memory is known without a probe: batch `ran` (global) ran in the throughput profile."""
    world = _dist.world_size()
    device = torch.device(throughput.device)
    return MemoryProfile(
        workload=workload.name,
        device=throughput.device,
        max_batch_size=ran // world,
        limit_bytes=default_limit_bytes(device),
        reserve_bytes=0,
        fixed_bytes=None,
        per_sample_bytes=None,
        capped_by_dataset=ran >= workload.train_size // world * world,
        granularity=1,
        include_eval=False,
        trials=(),
        seconds=0.0,
        world_size=world,
        is_lower_bound=True,
        stopped_because=(
            f"not probed: the throughput profile ran whole training steps up to batch {ran}, and the "
            f"prediction could choose at most {probe_to}; --full-memory or --memory-limit probes"
        ),
    )


@dataclass(frozen=True, kw_only=True)
class Point:
    """The batch chosen and its rate: the rule's (`rule_lr`), then searched there; every tuning run,
    and why the search stopped (None where no search ran)."""

    best: Prediction | None
    batch_size: int
    lr: float
    rule: LrRule
    rule_lr: float
    lr_checks: list[Measured]
    lr_stopped_because: str | None
    flat: tuple[Prediction, ...] = ()  # the flat optimum `best` was chosen from (see flat_choice)


def choose_point(
    workload: Workload,
    predictions: list[Prediction],
    throughput: ThroughputProfile,
    reference_prediction: Prediction | None,
    b_noise: float | None,
    runs: Runs,
    budget: Budget,
    limitations: list[str],
    say: Say,
    reference_run: Measured | None = None,
) -> Point:
    """The predicted best batch under the cap (the smallest of a flat optimum) and its rate: the
    rule's, then tuned there (at the reference batch, from the reference run)."""
    best, flat = flat_choice(predictions, throughput) if predictions else (None, ())
    chosen_size = best.batch_size if best else workload.batch_size
    chosen_lr, rule = lr_for(workload, chosen_size, b_noise) if best else (workload.lr, LrRule.NONE)
    rule_lr = chosen_lr
    lr_checks: list[Measured] = []
    why: str | None = None
    if best is not None and chosen_size != workload.batch_size:
        tuned = tune_lr(
            runs,
            chosen_size,
            chosen_lr,
            tuning_steps(best, reference_prediction),
            budget=budget,
            limitations=limitations,
            say=say,
            confirm=True,
        )
        chosen_lr, lr_checks, why = tuned.lr, tuned.checks, tuned.stopped_because
        if lr_checks and not any(m.steps_to_target is not None for m in lr_checks):
            # Never seen to reach the target at this batch (a larger batch can settle above a tight
            # target): recommend only what was seen to work, the reference point.
            limitations.append(
                f"at batch {chosen_size} no learning rate tried reached the target within twice the "
                "predicted steps, nor in the time the reference takes, so the reference point "
                f"(batch {workload.batch_size}) is kept"
            )
            best, flat = next((p for p in predictions if p.batch_size == workload.batch_size), None), ()
            chosen_size, chosen_lr, rule = workload.batch_size, workload.lr, LrRule.NONE
            rule_lr, why = chosen_lr, None
    if best is not None and chosen_size == workload.batch_size and reference_run is not None:
        chosen_lr, more, why = tune_reference_rate(
            workload, best, reference_run, runs, budget, limitations, say
        )
        lr_checks += more
    return Point(
        best=best,
        batch_size=chosen_size,
        lr=chosen_lr,
        rule=rule,
        rule_lr=rule_lr,
        lr_checks=lr_checks,
        lr_stopped_because=why,
        flat=flat,
    )


def tune_reference_rate(
    workload: Workload,
    best: Prediction,
    reference_run: Measured,
    runs: Runs,
    budget: Budget,
    limitations: list[str],
    say: Say,
) -> tuple[float, list[Measured], str | None]:
    """The advice stays at the reference batch: is the reference rate the best there? The search
    starts from the reference run (not trained again) and goes up or down: a user's own rate need
    not be the best at their own batch (docs/measurements.md#reference-rate). Each run may take twice the
    reference's steps; a rate that did not reach the target on every seed is not advice. Returns
    the rate, the runs trained, and why the search stopped (None where none ran)."""
    if reference_run.steps_to_target is None:
        return workload.lr, [], None
    limit = tuning_steps(best, None)
    tuned = tune_lr(
        runs,
        workload.batch_size,
        workload.lr,
        limit,
        budget=budget,
        limitations=limitations,
        say=say,
        confirm=True,
        first=reference_run,
    )
    lr, checks, why = tuned.lr, tuned.checks, tuned.stopped_because
    at_rate = [m for m in checks if math.isclose(m.lr, lr)]
    if lr != workload.lr and not all(m.steps_to_target is not None for m in at_rate):
        limitations.append(
            f"at batch {workload.batch_size} no rate but the reference's reached the target on every seed: "
            f"the reference rate {workload.lr:.3g} is kept"
        )
        lr, why = workload.lr, "no other rate reached the target on every seed"
    if (
        lr != workload.lr
        and budget.left() > 0
        and not any(math.isclose(m.lr, workload.lr) and m.steps_to_target is not None for m in checks[1:])
    ):
        # The speedup is then the rates' alone, and one seed's data order can move a run by half its
        # steps: the reference rate on the other seed too, so that both points have two.
        say(f"check: batch {workload.batch_size} at the reference rate {workload.lr:.3g}, seed 1")
        checks.append(reference_on_seed_1(workload, runs, limit))
    # The reference run is reported as the reference; where the search kept its rate, so is the
    # other seed's run there (the prediction stays the reference's own: speedup 1).
    return lr, [m for m in checks[1:] if not (lr == workload.lr and math.isclose(m.lr, lr))], why
