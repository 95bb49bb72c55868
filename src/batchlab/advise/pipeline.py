"""The main job: which batch size and learning rate to use, why, and how much time it saves.

The advice stands on three measurements and one model:
  - memory: the largest batch that fits (the cap);
  - throughput: seconds per step at each batch size;
  - noise: the gradient noise scale B_noise, measured at the parameters where a run from the
    reference point first reaches the target. B_simple grows as the loss falls, and the last stretch
    of training (near the target) is where most steps go, so the value there governs the steps a
    bigger batch can save; earlier values would understate it. B_simple stands in for B_noise (they
    coincide when the Hessian is proportional to the identity).
  - the model (McCandlish et al. 2018, eqs. 2.7-2.11): steps to target S(B) = S_min (1 + B_noise / B),
    with S_min calibrated by the reference run's measured steps; time to target
    T(B) = S(B) * step_seconds(B), minimised over the batch sizes that fit.

The learning rate follows the noise-aware rule for SGD, lr(B) = lr_ref (1 + B_noise/B_ref) /
(1 + B_noise/B), and the square-root rule for adaptive optimizers (Malladi et al. 2022); then a
short doubling search at the recommended batch (rates compared on one seed; its last doubling
checked on a second) halves the rate while it diverges and doubles it while it trains in fewer
steps. With `validate`, the recommendation is trained to the target and the measured speedup
stands beside the predicted.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from batchlab.core import dist as _dist
from batchlab.core.json_safe import json_safe
from batchlab.core.store import Store
from batchlab.errors import bad
from batchlab.lr import LrRule, scale_lr
from batchlab.measure.memory import MemoryProfile, default_limit_bytes, probe_memory
from batchlab.measure.noise import noise_at_parameters
from batchlab.measure.throughput import ThroughputPoint, ThroughputProfile, profile_throughput
from batchlab.train.loop import TrainResult, last_eval_at, train
from batchlab.train.record import recorded_train
from batchlab.workload import Workload, load_workload

LR_CHECK_STEPS = 50  # the least a tuning run may take
LR_CHECK_HALVINGS = 4
LR_DOUBLINGS = 2
# The throughput profile stops where S_min steps at the last batch cost this many times the best
# predicted time so far (one timed block's step time carries ~15% on a shared machine).
STOP_MARGIN = 1.5
SIDE_BY_SIDE_REPEATS = 5  # timed blocks at the chosen and the reference batch, for the speedup
# The advice's cost in proportion to one reference run (issue 13's goal): it spends up to this many
# reference runs' training time plus EXTRA_SECONDS. A second seed of the reference runs only within it.
REFERENCE_RUNS = 5
EXTRA_SECONDS = 10.0
# Seeds 2 and 3 of both points of the speedup (the chosen and the reference), each only where it costs
# at most CHEAP_SHARE of the advice so far (and stays within the proportion above).
EXTRA_SEEDS = (2, 3)
CHEAP_SHARE = 0.1
TUNING_SEEDS = 2  # each candidate rate is trained on this many seeds; the slower decides
LR_DOUBLING_GAIN = 0.9  # a doubling must save 10% of the steps: one seed's noise is not a gain
NOISE_MICRO_BATCHES = 4
# B_noise is read to NOISE_REL_ERROR (standard error over the value), not over the whole training set:
# the prediction's steps move with B_noise as 1 + B_noise / B, so 5% of B_noise is at most 5% of the
# steps, below the 10% a tuning doubling must save; on charlm a whole pass (892 micro-batches of 8)
# read 17.9 +- 0.18, a pass that costs more than the reference run it follows.
NOISE_REL_ERROR = 0.05

Progress = Callable[[str], None]


@dataclass(frozen=True, kw_only=True)
class Prediction:
    batch_size: int
    lr: float
    steps_to_target: float
    step_seconds: float
    seconds_to_target: float


@dataclass(frozen=True, kw_only=True)
class Measured:
    batch_size: int
    lr: float
    reached_target: bool
    steps_to_target: int | None
    seconds_to_target: float | None
    diverged: bool


@dataclass(frozen=True, kw_only=True)
class Advice:
    workload: str
    device: str
    target: dict[str, Any]
    batch_size: int
    lr: float
    lr_rule: str
    lr_from_rule: float  # the rule's rate, before the doubling search at the chosen batch
    # Steps at the chosen batch: measured by the tuning runs when they reached the target, else the
    # model's; seconds = steps x the profiled step time. The speedup is over the reference as run.
    predicted_steps_to_target: float | None
    predicted_seconds_to_target: float | None
    predicted_speedup: float | None
    # The speedup at the seeds' extremes (see _Forecast.speedup_range); None with one seed a point.
    predicted_speedup_range: tuple[float, float] | None
    model_steps_to_target: float | None  # S_min (1 + B_noise / B) at the chosen batch
    max_batch_size: int | None
    # True when memory was probed only up to the largest batch the prediction could choose, and
    # that fitted: the edge lies somewhere above (`full_memory` finds it).
    max_batch_size_is_lower_bound: bool
    memory_probed_to: int | None  # that bound; None when probed to the edge
    b_noise: float | None
    b_noise_stderr: float | None
    knee_batch_size: int | None
    reference: dict[str, Any]
    predictions: tuple[Prediction, ...]  # at the batches that fit (under the cap)
    rationale: tuple[str, ...]
    limitations: tuple[str, ...]
    lr_checks: tuple[Measured, ...] = ()
    measured: tuple[Measured, ...] = ()
    measured_speedup: float | None = None
    memory: dict[str, Any] | None = field(default=None, repr=False)
    throughput: dict[str, Any] | None = field(default=None, repr=False)
    noise: dict[str, Any] | None = field(default=None, repr=False)
    phase_seconds: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    world_size: int = 1  # under torchrun: batch sizes (and max_batch_size) are global
    # The prediction past the cap (batches timed by the throughput profile that do not fit, or that
    # the bounded probe did not reach): where the time to target turns up, drawn beside the advice.
    predictions_past_cap: tuple[Prediction, ...] = ()
    # The chosen batch and the reference batch timed again side by side (SIDE_BY_SIDE_REPEATS blocks
    # each, interleaved): the step times of the predicted seconds and the speedup.
    step_timing: dict[str, Any] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))


def is_adaptive(workload: Workload) -> bool:
    """Whether the workload's optimizer adapts per-parameter step sizes (Adam and relatives)."""
    probe = workload.optimizer([torch.nn.Parameter(torch.zeros(1))], workload.lr)
    return not isinstance(probe, torch.optim.SGD)


def lr_for(workload: Workload, batch_size: int, b_noise: float | None) -> tuple[float, LrRule]:
    """The noise-aware rule for SGD; the square-root rule for adaptive optimizers (or without B_noise)."""
    if b_noise is not None and math.isfinite(b_noise) and b_noise > 0 and not is_adaptive(workload):
        rule = LrRule.NOISE
    else:
        rule = LrRule.SQRT
    return scale_lr(
        rule, lr_ref=workload.lr, batch_ref=workload.batch_size, batch_size=batch_size, b_noise=b_noise
    ), rule


def candidate_sizes(cap: int, reference: int, world: int = 1) -> list[int]:
    """Powers of two and three times powers of two up to the cap, the cap, and the reference;
    under torchrun, only global batches that split evenly over the ranks."""
    sizes = {reference, cap}
    k = 1
    while k <= cap:
        sizes.add(k)
        if 3 * k // 2 <= cap and k >= 2:
            sizes.add(3 * k // 2)
        k *= 2
    return sorted(s for s in sizes if s <= cap and s % world == 0)


def predict(
    workload: Workload, *, s_min: float, b_noise: float, throughput: ThroughputProfile, cap: int
) -> list[Prediction]:
    predictions = []
    for b in candidate_sizes(cap, workload.batch_size, _dist.world_size()):
        step = throughput.step_seconds(b)
        if step is None:
            continue
        steps = s_min * (1 + b_noise / b)
        lr, _ = lr_for(workload, b, b_noise)
        predictions.append(
            Prediction(
                batch_size=b, lr=lr, steps_to_target=steps, step_seconds=step, seconds_to_target=steps * step
            )
        )
    return predictions


def _past_any_win(
    workload: Workload, s_min: float, b_noise: float
) -> Callable[[list[ThroughputPoint]], str | None]:
    """The throughput profile's stop, from the model: no batch takes fewer than S_min steps, so once
    S_min steps at the last batch timed cost more than the best predicted time to target so far,
    no larger batch (whose steps cost at least as much) can be chosen. Then the profile stops there,
    past the reference batch, with a margin for one timed block's noise: larger batches cost the
    most time to time (charlm: the blocks at 128 and 256 were 3 of 4.7 s) and cannot change the
    advice."""

    def stop(points: list[ThroughputPoint]) -> str | None:
        timed = [(p.batch_size, p.step_seconds) for p in points if p.step_seconds is not None]
        if not timed or timed[-1][0] < workload.batch_size:
            return None
        best_seconds, best_batch = min((s_min * (1 + b_noise / b) * step, b) for b, step in timed)
        last, floor = timed[-1][0], s_min * timed[-1][1]
        if floor <= STOP_MARGIN * best_seconds:
            return None
        return (
            f"timed up to batch {last}: S_min steps there ({s_min:.0f}, the fewest any batch "
            f"takes) cost {floor:.3g} s at its first timed block, over {STOP_MARGIN:g}x the best "
            f"predicted so far ({best_seconds:.3g} s at batch {best_batch}), so no larger batch "
            "can be the advice"
        )

    return stop


class _Budget:
    """Seconds left, and where they went: each phase (memory, throughput, ...) is timed."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.start = time.perf_counter()
        self.phases: dict[str, float] = {}
        self._phase: str | None = None
        self._since = self.start

    def enter(self, phase: str | None) -> None:
        now = time.perf_counter()
        if self._phase is not None:
            self.phases[self._phase] = self.phases.get(self._phase, 0.0) + now - self._since
        self._phase, self._since = phase, now

    def spent(self) -> float:
        """Seconds since the start; rank 0's under torchrun, so that every rank decides alike."""
        return float(_dist.broadcast(time.perf_counter() - self.start))

    def left(self) -> float:
        """Rank 0's reading under torchrun, so that every rank stops at the same point."""
        if self.seconds is None:
            return math.inf
        return self.seconds - self.spent()


def advise(
    workload: Workload | str,
    *,
    device: str | torch.device = "auto",
    memory_limit: int | None = None,
    budget_seconds: float | None = None,
    validate: bool = False,
    full_memory: bool = False,
    progress: Progress | None = None,
) -> Advice:
    """Measure noise, throughput and memory; recommend the batch size and learning rate that
    minimise predicted time to target under the memory cap.

    The phases run so that each bounds the next: the reference run and its noise scale; the
    throughput curve up to where doubling the batch stops paying; then the memory probe only up to
    the largest batch the prediction could choose (its time to target still falling), never the
    whole training set unless `full_memory`. The advice then costs a few reference runs, not a
    memory search at batches nobody would train at."""
    workload = load_workload(workload)
    _dist.init_from_env()
    world = _dist.world_size()
    if workload.batch_size % world:
        raise bad(
            "torchrun",
            f"{world} ranks",
            f"a number of ranks that divides {workload.name}'s reference batch {workload.batch_size}",
            "run the advice on a divisor of it, or in one process",
        )
    budget = _Budget(budget_seconds)

    def say(text: str) -> None:  # each message opens a phase named by its first word
        budget.enter(text.split(":", 1)[0])
        if progress:
            progress(text)

    limitations: list[str] = []

    say("noise: train from the reference point to the target, then measure B_noise there")
    reference_run, noise = _reference_noise(workload, device, limitations)
    b_noise = None if noise is None else noise["b_simple"]
    b_noise_stderr = None if noise is None else noise["b_simple_stderr"]
    reference: dict[str, Any] = {
        "batch_size": workload.batch_size,
        "lr": workload.lr,
        "steps_to_target": reference_run.steps_to_target,
        "seconds_to_target": reference_run.seconds_to_target,
        "run_seconds_to_target": reference_run.seconds_to_target,  # while tracking the noise scale
    }

    s_min = None
    if b_noise is not None and reference_run.steps_to_target is not None:
        s_min = reference_run.steps_to_target / (1 + b_noise / workload.batch_size)
    say("throughput: seconds per step, up to where doubling the batch stops paying")
    throughput = profile_throughput(
        workload,
        device=device,
        stop_when=None if s_min is None or b_noise is None else _past_any_win(workload, s_min, b_noise),
    )

    predictions: list[Prediction] = []
    if s_min is not None and b_noise is not None:
        upper = throughput.largest_timed or workload.batch_size
        predictions = predict(workload, s_min=s_min, b_noise=b_noise, throughput=throughput, cap=upper)

    memory, cap, probe_to, probed_no_further = _memory_cap(
        workload, predictions, throughput, full_memory, device, memory_limit, say, limitations
    )
    # The reference is what the user runs today: its prediction stays the baseline whatever the cap.
    reference_prediction = next((p for p in predictions if p.batch_size == workload.batch_size), None)
    past_cap = tuple(p for p in predictions if p.batch_size > cap)
    predictions = [p for p in predictions if p.batch_size <= cap]
    best, chosen_size, chosen_lr, rule, rule_lr, lr_checks = _choose(
        workload,
        predictions,
        reference_prediction,
        b_noise,
        device,
        budget,
        limitations,
        say,
        reference_run=_measured(reference_run, workload.batch_size),
    )
    timing = None
    if best is not None and budget.left() > 0:
        timing, more = _speedup_evidence(
            workload,
            (chosen_size, chosen_lr),
            reference_run,
            lr_checks,
            throughput,
            device,
            budget,
            limitations,
            say,
        )
        lr_checks += more
    measured: list[Measured] = []
    measured_speedup = None
    if validate and best is not None:
        measured, measured_speedup = _validate(
            workload, chosen_size, chosen_lr, device, budget, limitations, say
        )
    if budget_seconds is not None and budget.left() < 0:
        limitations.append(
            f"the measurements took {budget_seconds - budget.left():.0f}s of a {budget_seconds:.0f}s budget"
        )

    budget.enter(None)
    forecast = _predicted(best, lr_checks, chosen_lr, reference_prediction, workload, timing)
    predicted_steps, predicted_seconds, speedup = forecast.steps, forecast.seconds, forecast.speedup
    if speedup is not None:
        # On the advice's footing: the reference's steps (the mean of its seeds) x its step time. Its
        # run's own clock ran slow, split every step to track the noise scale (digits-mlp: 0.33 s
        # against 0.11 s for its steps at the profiled step time).
        reference["seconds_to_target"] = forecast.reference_seconds
        reference["seeds_steps_to_target"] = list(forecast.reference_steps)
    return Advice(
        workload=workload.name,
        device=memory.device,
        target=workload.target.to_dict(),
        batch_size=chosen_size,
        lr=chosen_lr,
        lr_rule=rule.value,
        lr_from_rule=rule_lr,
        predicted_steps_to_target=predicted_steps,
        predicted_seconds_to_target=predicted_seconds,
        predicted_speedup=speedup,
        predicted_speedup_range=forecast.speedup_range,
        model_steps_to_target=best.steps_to_target if best else None,
        max_batch_size=None
        if memory.max_batch_size is None
        else (cap if world > 1 else memory.max_batch_size),
        max_batch_size_is_lower_bound=probed_no_further,
        memory_probed_to=probe_to,
        b_noise=b_noise,
        b_noise_stderr=b_noise_stderr,
        knee_batch_size=throughput.knee_batch_size,
        reference=reference,
        predictions=tuple(predictions),
        predictions_past_cap=past_cap,
        rationale=tuple(
            _rationale(
                workload,
                best,
                b_noise,
                memory,
                throughput,
                forecast,
                rule,
                chosen_lr / rule_lr,
                probed_no_further=probed_no_further,
            )
        ),
        limitations=tuple(limitations),
        lr_checks=tuple(lr_checks),
        measured=tuple(measured),
        measured_speedup=measured_speedup,
        memory=memory.to_dict(),
        throughput=throughput.to_dict(),
        noise=noise,
        phase_seconds=budget.phases,
        seconds=time.perf_counter() - budget.start,
        world_size=world,
        step_timing=None if timing is None else timing.to_dict(),
    )


def _speedup_evidence(
    workload: Workload,
    chosen: tuple[int, float],
    reference_run: TrainResult,
    lr_checks: list[Measured],
    throughput: ThroughputProfile,
    device: str | torch.device,
    budget: _Budget,
    limitations: list[str],
    say: Progress,
) -> tuple[ThroughputProfile | None, list[Measured]]:
    """What the speedup rests on beyond the tuning runs, where the batch moved: the two batches timed
    again side by side, and the further seeds of both points the advice can afford."""
    if chosen[0] == workload.batch_size:
        return None, []
    timing = _side_by_side(workload, chosen[0], device, say)
    steps = timing or throughput
    more = _reference_seed(workload, reference_run, lr_checks, steps, device, budget, limitations, say)
    more += _cheap_seeds(workload, chosen, reference_run, lr_checks + more, steps, device, budget, say)
    return timing, more


def _side_by_side(
    workload: Workload, chosen_size: int, device: str | torch.device, say: Progress
) -> ThroughputProfile:
    """The chosen batch and the reference batch timed again, SIDE_BY_SIDE_REPEATS blocks each in
    interleaved rounds, for the speedup: the profile's three blocks a batch put tabular-adam's step
    at 1536 over its step at 32 at 1.66 in one run and 2.3-2.9 in others (two 9-block timings of
    charlm's 12 and 32 spread 3% against 9% for 3 blocks)."""
    say(f"timing: batch {chosen_size} beside the reference batch {workload.batch_size}, for the speedup")
    return profile_throughput(
        workload,
        batch_sizes=[chosen_size, workload.batch_size],
        repeats=SIDE_BY_SIDE_REPEATS,
        stop_after_knee=False,
        device=device,
    )


def _reference_seed(
    workload: Workload,
    reference_run: TrainResult,
    lr_checks: list[Measured],
    timing: ThroughputProfile,
    device: str | torch.device,
    budget: _Budget,
    limitations: list[str],
    say: Progress,
) -> list[Measured]:
    """The reference trained again on seed 1, for the speedup's reference steps, where the advice
    can afford it: its cost so far plus this run (its steps x the timed step) within REFERENCE_RUNS
    such runs + EXTRA_SECONDS. One seed's data order moves the steps to target: tabular-adam's
    reference took 1,280 to 1,856 steps over four seeds, and its first seed's 1,600 put a speedup of
    10.9 at 19.7 with the profile's step times. Where it cannot, the limitations say so."""
    steps = reference_run.steps_to_target
    step = timing.step_seconds(workload.batch_size)
    if steps is None or step is None:
        return []
    if any(m.batch_size == workload.batch_size and math.isclose(m.lr, workload.lr) for m in lr_checks):
        return []  # a tuning run already trained the reference point on another seed
    run_seconds = steps * step
    if budget.spent() + run_seconds > _allowed(run_seconds) or budget.left() < run_seconds:
        limitations.append(
            f"the reference's steps to target ({steps}) are one seed's: a second seed (about "
            f"{run_seconds:.2g} s of training) would take the advice past {REFERENCE_RUNS} reference runs "
            f"+ {EXTRA_SECONDS:.0f} s, so the predicted speedup carries that seed's luck (one seed's data "
            "order can move the steps to target by a fifth)"
        )
        return []
    say(f"reference: batch {workload.batch_size} at lr {workload.lr:.3g} on seed 1, for the speedup")
    run = _reference_on_seed_1(workload, 2 * steps, device)
    if run.steps_to_target is None:
        limitations.append(
            f"the reference on seed 1 did not reach the target within {2 * steps} steps (twice seed 0's): "
            "the predicted speedup rests on seed 0's steps alone"
        )
    return [run]


def _cheap_seeds(
    workload: Workload,
    chosen: tuple[int, float],
    reference_run: TrainResult,
    lr_checks: list[Measured],
    timing: ThroughputProfile,
    device: str | torch.device,
    budget: _Budget,
    say: Progress,
) -> list[Measured]:
    """Both points of the speedup trained on EXTRA_SEEDS too, each run only where it is cheap: at most
    CHEAP_SHARE of the advice's cost so far, and within REFERENCE_RUNS reference runs + EXTRA_SECONDS.
    With two seeds a point, steps to target that spread by a quarter over seeds leave the speedup
    about that uncertain (digits-mlp at 256 took 31 to 62 steps over six seeds, its seeds 0 and 1 42
    and 31: a speedup of 4.5 predicted where 15 seeds measured 3.2); these seeds also took no part in
    choosing the rate."""
    ref_steps, ref_step = reference_run.steps_to_target, timing.step_seconds(workload.batch_size)
    if ref_steps is None or ref_step is None:
        return []
    allowed = _allowed(ref_steps * ref_step)
    added: list[Measured] = []
    for seed in EXTRA_SEEDS:
        for batch_size, lr in (chosen, (workload.batch_size, workload.lr)):
            at = [m for m in lr_checks + added if m.batch_size == batch_size and math.isclose(m.lr, lr)]
            reached = [m.steps_to_target for m in at if m.steps_to_target is not None]
            if batch_size == workload.batch_size and math.isclose(lr, workload.lr):
                reached.append(ref_steps)
            step = timing.step_seconds(batch_size)
            if len(reached) < seed or step is None:  # the seeds before it did not all reach the target
                continue
            steps = sum(reached) / len(reached)
            cost = steps * step
            spent = budget.spent()
            if cost > CHEAP_SHARE * spent or spent + cost > allowed or budget.left() < cost:
                continue
            say(f"reference: batch {batch_size} at lr {lr:.3g} on seed {seed}, for the speedup")
            added.append(_trained_on_seed(workload, batch_size, lr, seed, math.ceil(2 * steps), device))
    return added


def _allowed(reference_run_seconds: float) -> float:
    """What the advice may spend in all, in proportion to one reference run: REFERENCE_RUNS such runs
    + EXTRA_SECONDS."""
    return REFERENCE_RUNS * reference_run_seconds + EXTRA_SECONDS


def _reference_on_seed_1(workload: Workload, max_steps: int, device: str | torch.device) -> Measured:
    """The reference point (its batch and rate) trained to the target on seed 1."""
    return _trained_on_seed(workload, workload.batch_size, workload.lr, 1, max_steps, device)


def _trained_on_seed(
    workload: Workload, batch_size: int, lr: float, seed: int, max_steps: int, device: str | torch.device
) -> Measured:
    run, _ = recorded_train(
        None,
        workload,
        kind="tuning",
        batch_size=batch_size,
        lr=lr,
        until_target=True,
        max_steps=max_steps,
        device=device,
        seed=seed,
        final_gap=False,
    )
    return _measured(run, batch_size)


def _memory_cap(
    workload: Workload,
    predictions: list[Prediction],
    throughput: ThroughputProfile,
    full_memory: bool,
    device: str | torch.device,
    memory_limit: int | None,
    say: Progress,
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
        return _ran_in_profile(workload, throughput, ran, probe_to), ran, probe_to, True
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


def _ran_in_profile(
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


def _choose(
    workload: Workload,
    predictions: list[Prediction],
    reference_prediction: Prediction | None,
    b_noise: float | None,
    device: str | torch.device,
    budget: _Budget,
    limitations: list[str],
    say: Progress,
    reference_run: Measured | None = None,
) -> tuple[Prediction | None, int, float, LrRule, float, list[Measured]]:
    """The predicted best batch under the cap and its rate: the rule's, then tuned there (at the
    reference batch, from the reference run). Returns the prediction, the batch, the rate, the
    rule, the rule's rate, and the tuning runs."""
    best = min(predictions, key=lambda p: p.seconds_to_target) if predictions else None
    chosen_size = best.batch_size if best else workload.batch_size
    chosen_lr, rule = lr_for(workload, chosen_size, b_noise) if best else (workload.lr, LrRule.NONE)
    rule_lr = chosen_lr
    lr_checks: list[Measured] = []
    if best is not None and chosen_size != workload.batch_size:
        chosen_lr, lr_checks = tune_lr(
            workload,
            chosen_size,
            chosen_lr,
            _tuning_steps(best, reference_prediction),
            device,
            budget=budget,
            limitations=limitations,
            say=say,
            confirm=True,
        )
        if lr_checks and not any(m.steps_to_target is not None for m in lr_checks):
            # Never seen to reach the target at this batch (a larger batch can settle above a tight
            # target): recommend only what was seen to work, the reference point.
            limitations.append(
                f"at batch {chosen_size} no learning rate tried reached the target within twice the "
                "predicted steps, nor in the time the reference takes, so the reference point "
                f"(batch {workload.batch_size}) is kept"
            )
            best = next((p for p in predictions if p.batch_size == workload.batch_size), None)
            chosen_size, chosen_lr, rule = workload.batch_size, workload.lr, LrRule.NONE
            rule_lr = chosen_lr
    if best is not None and chosen_size == workload.batch_size and reference_run is not None:
        chosen_lr, more = _tune_reference_rate(
            workload, best, reference_run, device, budget, limitations, say
        )
        lr_checks += more
    return best, chosen_size, chosen_lr, rule, rule_lr, lr_checks


def _tune_reference_rate(
    workload: Workload,
    best: Prediction,
    reference_run: Measured,
    device: str | torch.device,
    budget: _Budget,
    limitations: list[str],
    say: Progress,
) -> tuple[float, list[Measured]]:
    """The advice stays at the reference batch: is the reference rate the best there? The search
    starts from the reference run (not trained again) and goes up or down (digits-cnn: the oracle
    found a quarter of its rate 1.29x faster at its own batch). Each run may take twice the
    reference's steps; a rate that did not reach the target on every seed is not advice."""
    if reference_run.steps_to_target is None:
        return workload.lr, []
    limit = _tuning_steps(best, None)
    lr, checks = tune_lr(
        workload,
        workload.batch_size,
        workload.lr,
        limit,
        device,
        budget=budget,
        limitations=limitations,
        say=say,
        confirm=True,
        first=reference_run,
    )
    at_rate = [m for m in checks if math.isclose(m.lr, lr)]
    if lr != workload.lr and not all(m.steps_to_target is not None for m in at_rate):
        limitations.append(
            f"at batch {workload.batch_size} no rate but the reference's reached the target on every seed: "
            f"the reference rate {workload.lr:.3g} is kept"
        )
        lr = workload.lr
    if (
        lr != workload.lr
        and budget.left() > 0
        and not any(math.isclose(m.lr, workload.lr) and m.steps_to_target is not None for m in checks[1:])
    ):
        # The speedup is then the rates' alone, and one seed's data order can move a run by half its
        # steps: the reference rate on the other seed too, so that both points have two.
        say(f"check: batch {workload.batch_size} at the reference rate {workload.lr:.3g}, seed 1")
        checks.append(_reference_on_seed_1(workload, limit, device))
    # The reference run is reported as the reference; where the search kept its rate, so is the
    # other seed's run there (the prediction stays the reference's own: speedup 1).
    return lr, [m for m in checks[1:] if not (lr == workload.lr and math.isclose(m.lr, lr))]


def _validate(
    workload: Workload,
    chosen_size: int,
    chosen_lr: float,
    device: str | torch.device,
    budget: _Budget,
    limitations: list[str],
    say: Progress,
) -> tuple[list[Measured], float | None]:
    """The advice and the reference, each trained to the target: what each took, and the speedup."""
    if budget.left() <= 0:
        limitations.append("the budget ran out before validation")
        return [], None
    say(f"validate: train batch {chosen_size} (lr {chosen_lr:.3g}) and the reference to the target")
    run = train(
        workload, batch_size=chosen_size, lr=chosen_lr, until_target=True, device=device, final_gap=False
    )
    ref = train(workload, batch_size=workload.batch_size, until_target=True, device=device, final_gap=False)
    measured = [_measured(ref, workload.batch_size), _measured(run, chosen_size)]
    speedup = None
    if run.seconds_to_target and ref.seconds_to_target:
        speedup = ref.seconds_to_target / run.seconds_to_target
    return measured, speedup


@dataclass(frozen=True)
class _Forecast:
    """The advice's time to target and the speedup, with what they rest on."""

    steps: float | None = None  # at the chosen batch and rate
    step_seconds: float | None = None
    reference_steps: tuple[int, ...] = ()  # one per seed that reached the target
    reference_step_seconds: float | None = None
    seed_steps: tuple[int, ...] = ()  # the chosen point's, one per seed that reached the target

    @property
    def seconds(self) -> float | None:
        return None if self.steps is None or self.step_seconds is None else self.steps * self.step_seconds

    @property
    def reference_seconds(self) -> float | None:
        if not self.reference_steps or self.reference_step_seconds is None:
            return None
        return sum(self.reference_steps) / len(self.reference_steps) * self.reference_step_seconds

    @property
    def speedup(self) -> float | None:
        seconds, reference = self.seconds, self.reference_seconds
        return reference / seconds if seconds and reference else None

    @property
    def speedup_range(self) -> tuple[float, float] | None:
        """The speedup from the seeds' extremes, the slowest reference over the fastest advice and
        the other way round: where either point has two seeds, how far its data order alone moves
        the speedup (digits-mlp's chosen rate took 28 and 60 steps on its two seeds)."""
        ref_step, step = self.reference_step_seconds, self.step_seconds
        if self.speedup is None or ref_step is None or step is None or self.steps is None:
            return None
        if len(self.reference_steps) < 2 and len(self.seed_steps) < 2:
            return None
        ours = self.seed_steps or (self.steps,)
        return (
            min(self.reference_steps) * ref_step / (max(ours) * step),
            max(self.reference_steps) * ref_step / (min(ours) * step),
        )


def _predicted(
    best: Prediction | None,
    lr_checks: list[Measured],
    lr: float,
    reference: Prediction | None,
    workload: Workload,
    timing: ThroughputProfile | None = None,
) -> _Forecast:
    """Steps and seconds to target at the chosen batch and rate, and the speedup over the reference.
    Where runs reached the target there, their mean steps replace the model's: the tuning runs at
    the chosen rate, and for the reference its own run and any other seed's at its batch and rate
    (a mean over the seeds each point has: one seed's data order moved digits-cnn's reference by
    half its steps). Step times are the side-by-side `timing`'s where there is one, else the
    profile's."""

    def reached(batch_size: int, rate: float) -> list[int]:
        return [
            m.steps_to_target
            for m in lr_checks
            if m.batch_size == batch_size and math.isclose(m.lr, rate) and m.steps_to_target is not None
        ]

    def step_seconds(p: Prediction) -> float:
        timed = timing.step_seconds(p.batch_size) if timing is not None else None
        return timed or p.step_seconds

    if best is None:
        return _Forecast()
    tuned = reached(best.batch_size, lr)
    steps = sum(tuned) / len(tuned) if tuned else best.steps_to_target
    if reference is None:
        return _Forecast(steps, step_seconds(best))
    # The reference prediction's steps are its own run's (seed 0); other seeds' runs there join it.
    runs = (round(reference.steps_to_target), *reached(workload.batch_size, workload.lr))
    return _Forecast(steps, step_seconds(best), runs, step_seconds(reference), tuple(tuned))


def _reference_noise(
    workload: Workload, device: str | torch.device, limitations: list[str]
) -> tuple[TrainResult, dict[str, Any] | None]:
    """The reference run to the target, and the noise scale measured where it got there."""
    # The reference run also tracks B_simple at every step, for its history (a short window of
    # steps, so that it follows B_simple as it grows); its time is not used as a measurement
    # (validation re-runs the reference plainly).
    run = train(
        workload,
        batch_size=workload.batch_size,
        until_target=True,
        device=device,
        keep_model=True,
        track_noise=workload.batch_size % 2 == 0,
        noise_every=1,
        final_gap=False,
    )
    if not run.reached_target or run.model is None:
        limitations.append(
            f"the reference run (batch {workload.batch_size}, lr {workload.lr:g}) did not reach "
            "the target, so nothing calibrates the prediction; the reference point is returned"
        )
        return run, None
    micro_batch = max(1, workload.batch_size // NOISE_MICRO_BATCHES)
    reading = noise_at_parameters(
        run.model,
        workload,
        micro_batch=micro_batch,
        device=next(run.model.parameters()).device,
        rel_error=NOISE_REL_ERROR,
    )
    window = run.noise  # the tracked reading where the run stopped: the last tenth of its steps
    if window is not None and point_and_window_disagree(
        (reading.b_simple, reading.b_simple_stderr), (window["b_simple"], window["b_simple_stderr"])
    ):
        limitations.append(
            f"B_noise read {reading.b_simple:.3g} ± {reading.b_simple_stderr:.2g} at the target point and "
            f"{window['b_simple']:.3g} ± {window['b_simple_stderr']:.2g} over the last tenth of the "
            "reference run: B_simple moves from point to point by more than one point's error bar, so "
            "the prediction is uncertain by about that much (the tuning runs measure the steps)"
        )
    return run, {
        "b_simple": reading.b_simple,
        "b_simple_stderr": reading.b_simple_stderr,
        "grad_sq": reading.grad_sq,
        "trace_sigma": reading.trace_sigma,
        "micro_batch": micro_batch,
        "measured_examples": reading.micro_batches * micro_batch,  # read to NOISE_REL_ERROR
        "measured_at_step": run.steps_to_target,
        "window": window,
        "history": [
            {
                "step": p.step,
                "train_loss": p.train_loss,
                "eval_loss": p.eval_loss,
                "b_simple": p.b_simple,
            }
            for p in run.curve
        ],
    }


# The final pass's error bar is sampling error at fixed parameters; along the trajectory B_simple
# itself moves (charlm, AdamW: passes at steps 200, 360, 380, 400 of one reference run read 31, 22,
# 46 and 18.5, each +- 1). Where the pass and the tracked window over the run's last tenth differ by
# more than DISAGREE_SIGMAS of their combined standard error, the advice says so.
DISAGREE_SIGMAS = 3.0


def point_and_window_disagree(point: tuple[float, float], window: tuple[float, float]) -> bool:
    """Whether two (B_simple, standard error) readings differ by more than DISAGREE_SIGMAS
    combined standard errors (False where either is not finite)."""
    (a, se_a), (b, se_b) = point, window
    if not all(math.isfinite(v) for v in (a, se_a, b, se_b)):
        return False
    return abs(a - b) > DISAGREE_SIGMAS * math.hypot(se_a, se_b)


def _measured(run: Any, batch_size: int) -> Measured:
    return Measured(
        batch_size=batch_size,
        lr=run.lr,
        reached_target=run.reached_target,
        steps_to_target=run.steps_to_target,
        seconds_to_target=run.seconds_to_target,
        diverged=run.diverged,
    )


def _tuning_steps(best: Prediction, reference: Prediction | None) -> int:
    """How far a tuning run at the chosen batch may train: twice the predicted steps, and never
    past the steps that the reference's time to target buys at this batch (a rate slower than the
    reference is not advice). At least LR_CHECK_STEPS."""
    limit = 2 * best.steps_to_target
    if reference is not None:
        limit = min(limit, reference.seconds_to_target / best.step_seconds)
    return max(LR_CHECK_STEPS, math.ceil(limit))


def tune_lr(
    workload: Workload,
    batch_size: int,
    lr: float,
    limit: int,
    device: str | torch.device,
    *,
    budget: _Budget | None = None,
    limitations: list[str] | None = None,
    say: Progress | None = None,
    store: Store | None = None,
    kind: str = "tuning",
    confirm: bool = False,
    first: Measured | None = None,
) -> tuple[float, list[Measured]]:
    """A doubling search on the learning rate at the chosen batch, each run trained to the target
    (at most `limit` steps): halve while it diverges; from the first rate that trains,
    double while steps-to-target falls. The rules assume the reference rate was the best one at the
    reference batch; when it was conservative, this recovers the difference. With a `store`, each
    run is recorded there under `kind` and a finished one reused (a killed study resumes past its
    tuning).

    Each rate is trained on TUNING_SEEDS seeds and the slower decides. With `confirm`, the search
    compares rates on the first seed alone (the same data order and initial weights at every rate,
    so the comparison is paired), and the other seeds check only its last step up (`_confirm`):
    the rate recommended has still reached the target, and saved its last 10%, on every seed. Where
    twice the answer diverged, the rate halfway between (x sqrt 2) is tried too. It
    also starts in the middle of the range, `lr` x 2^(LR_DOUBLINGS // 2), and halves from there only
    when its first doubling did not pay: the slowest run of a search up from `lr`, the one at `lr`
    itself, is trained only where it may be the answer, and then only until it can no longer be.
    `first`, a run at `lr` on seed 0 that reached the target (the advice's reference run, when the
    advice stays at the reference batch), is not trained again: the search starts from it, and
    goes up or down as far as LR_DOUBLINGS, since the user's own rate need not be the best."""
    checks: list[Measured] = []
    limitations = [] if limitations is None else limitations
    attempt = _Attempts(
        workload,
        batch_size,
        device,
        seeds=range(1) if confirm else range(TUNING_SEEDS),
        checks=checks,
        budget=budget,
        limitations=limitations,
        say=say or (lambda text: None),
        store=store,
        kind=kind,
    )
    if first is not None:
        ups = downs = LR_DOUBLINGS
        checks.append(first)
        current: Measured | None = first
    else:
        downs = LR_DOUBLINGS // 2 if confirm else 0
        ups = LR_DOUBLINGS - downs
        lr *= 2**downs
        current = attempt(lr, limit)
    for _ in range(LR_CHECK_HALVINGS + downs):
        if current is None or not current.diverged:
            break
        lr /= 2
        current = attempt(lr, limit)
    if current is None or current.diverged:
        if current is not None:
            limitations.append(f"training diverged at batch {batch_size} even at lr {lr:.3g}")
        return lr, checks
    # After a halving the doubled rate is the one that just diverged on the same seed, within at
    # least the steps a doubling may take: trained again it can only lose, so it is not.
    halved = any(m.diverged for m in checks)
    trained = [lr]  # the rates the search kept, rising: the last is the answer
    if not halved:
        trained, current = _climb(trained, current, attempt, ups=ups, downs=downs, limit=limit)
    if not confirm or current.steps_to_target is None:
        return trained[-1], checks
    lr = trained[-1]
    if any(m.diverged and math.isclose(m.lr, 2 * lr) for m in checks):
        # Twice the answer diverged: the stability edge, where SGD's best rate usually sits, lies
        # between. The rate halfway (x sqrt 2) is kept if it saves LR_DOUBLING_GAIN of the steps.
        cap = _at_most(LR_DOUBLING_GAIN * _steps(current))
        between = attempt(lr * math.sqrt(2), cap) if cap >= 1 else None
        if between is not None and not between.diverged and between.steps_to_target is not None:
            trained.append(lr * math.sqrt(2))
    return _confirm(trained, attempt, limit, batch_size, limitations), checks


@dataclass
class _Attempts:
    """Tuning runs at one batch: `attempt(rate, limit)` trains the seeds at `rate`, each to the target
    or `limit` steps, and keeps every run in `checks`."""

    workload: Workload
    batch_size: int
    device: str | torch.device
    seeds: range
    checks: list[Measured]
    budget: _Budget | None
    limitations: list[str]
    say: Progress
    store: Store | None
    kind: str

    def __call__(self, rate: float, limit: int, seeds: range | None = None) -> Measured | None:
        """The slower seed speaks for the rate (a rate that only one seed's data order tolerates is
        not a rate to recommend), so a seed that misses ends the attempt: the others cannot change
        its verdict. None when the budget ran out."""
        runs = []
        for seed in self.seeds if seeds is None else seeds:
            if self.budget is not None and self.budget.left() <= 0:
                self.limitations.append("the budget ran out while the learning rate was being tuned")
                return None
            batch = self.batch_size
            self.say(f"check: batch {batch} at lr {rate:.3g}, seed {seed}, to the target or {limit} steps")
            run, _ = recorded_train(
                self.store,
                self.workload,
                kind=self.kind,
                batch_size=self.batch_size,
                lr=rate,
                until_target=True,
                max_steps=limit,
                device=self.device,
                seed=seed,
                final_gap=False,  # steps to the target are all a tuning run is for
            )
            runs.append(_measured(run, self.batch_size))
            if not run.reached_target:
                break
        self.checks.extend(runs)
        return max(runs, key=lambda m: (m.diverged, _steps(m)))


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
    trained: list[float],
    current: Measured,
    attempt: Callable[[float, int], Measured | None],
    *,
    ups: int,
    downs: int,
    limit: int,
) -> tuple[list[float], Measured]:
    """From the rate that trained (`trained[-1]`, `current` its run): double up to `ups` times while
    a doubling saves LR_DOUBLING_GAIN of the steps; when the first did not, halve up to `downs` times
    while halving costs less than that. Each run stops where it can no longer win. Returns the rates
    kept (rising; the rate below the answer's doubling first, where one paid) and the answer's run."""
    lr = trained[-1]
    for _ in range(ups):
        # A doubling is kept only if it saves LR_DOUBLING_GAIN of the steps: a run still short of
        # the target by then can no longer win, so it stops there.
        can_win = limit if current.steps_to_target is None else _at_most(LR_DOUBLING_GAIN * _steps(current))
        if can_win < 1:
            break
        bigger = attempt(2 * lr, can_win)
        # Kept only when it reaches the target, in clearly fewer steps (two runs that both miss the
        # target compare as inf > 0.9 inf, which is false: that must not count as a gain).
        if (
            bigger is None
            or bigger.diverged
            or bigger.steps_to_target is None
            or _steps(bigger) > LR_DOUBLING_GAIN * _steps(current)
        ):
            break
        lr, current = 2 * lr, bigger
        trained.append(lr)
    if len(trained) > 1 or current.steps_to_target is None:
        return trained, current
    for _ in range(downs):
        # Half the rate takes over if it reaches the target in fewer than steps / LR_DOUBLING_GAIN:
        # past that, the doubling from it to this rate paid.
        cap = _fewer_than(_steps(current) / LR_DOUBLING_GAIN)
        smaller = attempt(lr / 2, cap) if cap >= 1 else None
        if smaller is None or smaller.diverged:
            break
        if smaller.steps_to_target is None:
            trained.insert(0, lr / 2)
            break
        lr, current, trained = lr / 2, smaller, [lr / 2]
    return trained, current


def _confirm(
    trained: list[float],
    attempt: Callable[[float, int, range], Measured | None],
    limit: int,
    batch_size: int,
    limitations: list[str],
) -> float:
    """The other seeds at the rates a one-seed search kept (`trained`, rising): the answer must
    reach the target on them (within `limit`; a seed that misses backs off a step, and another),
    and its last step up must pay on them too, so they then train at the rate below it only until
    it can no longer be slower by LR_DOUBLING_GAIN. The rate returned has reached the target on every
    seed, and its last step up saved 10% of the steps on every seed."""
    others = range(1, TUNING_SEEDS)

    def reached(m: Measured | None) -> bool:
        return m is not None and m.steps_to_target is not None and not m.diverged

    j = len(trained) - 1
    top = attempt(trained[j], limit, others)
    while top is not None and not reached(top) and j > 0:
        j -= 1
        top = attempt(trained[j], limit, others)
    if top is None:  # the budget ran out: what the first seed found stands
        return trained[-1]
    if not reached(top):
        limitations.append(
            f"at batch {batch_size} the rates tried reached the target on the first seed only, "
            f"not on all {TUNING_SEEDS} within {limit} steps"
        )
        return trained[0]
    if j < len(trained) - 1 or j == 0:  # backed off, or no doubling to check
        return trained[j]
    cap = _fewer_than(_steps(top) / LR_DOUBLING_GAIN)
    below = attempt(trained[j - 1], cap, others) if cap >= 1 else None
    return trained[j - 1] if reached(below) else trained[j]


def _forecast_lines(workload: Workload, best: Prediction, forecast: _Forecast) -> list[str]:
    """What the predicted time and speedup rest on: the tuning runs' steps, the step times timed
    again side by side, the reference's seeds."""
    lines = []
    steps, seconds = forecast.steps, forecast.seconds
    moved = best.batch_size != workload.batch_size
    if steps is not None and seconds is not None and round(steps) != round(best.steps_to_target):
        lines.append(
            f"Tuning runs trained to the target at batch {best.batch_size} in {steps:.0f} steps "
            f"(the mean of its seeds), so the prediction is {seconds:.3g} s"
            + (" (its steps timed again beside the reference's)." if moved else ".")
        )
    speedup, ref_steps, ref_step = forecast.speedup, forecast.reference_steps, forecast.reference_step_seconds
    if speedup is None or ref_step is None:
        return lines
    mean = sum(ref_steps) / len(ref_steps)
    seeds = (
        "one seed's"
        if len(ref_steps) == 1
        else f"the mean of {len(ref_steps)} seeds' "
        + ", ".join(str(n) for n in ref_steps[:-1])
        + f" and {ref_steps[-1]}"
    )
    lines.append(
        f"That is {speedup:.2f}x faster than the reference batch {workload.batch_size} (predicted: "
        f"{mean:.0f} steps at {ref_step * 1e3:.3g} ms, {seeds})."
    )
    if (spread := forecast.speedup_range) is not None:
        lines.append(
            f"Its seeds alone move it between {spread[0]:.2f}x and {spread[1]:.2f}x (each point's slowest "
            "seed against the other's fastest)."
        )
    return lines


def _rationale(
    workload: Workload,
    best: Prediction | None,
    b_noise: float | None,
    memory: MemoryProfile,
    throughput: ThroughputProfile,
    forecast: _Forecast,
    rule: LrRule,
    tuned: float = 1.0,
    *,
    probed_no_further: bool = False,
) -> list[str]:
    if best is None or b_noise is None:
        return [
            f"Keep the reference point (batch {workload.batch_size}, lr {workload.lr:g}): the measurements "
            "could not calibrate a prediction."
        ]
    lines = [
        "The gradient noise scale where the reference run reaches the target is about "
        f"{b_noise:.0f}: below it, "
        "doubling the batch nearly halves the steps; above it, a bigger batch buys little per step.",
    ]
    if probed_no_further and not memory.trials and memory.max_batch_size is not None:
        lines.append(
            f"Batch {memory.max_batch_size * memory.world_size} fits: it ran in the throughput profile. "
            "Memory was not probed, since no larger batch is predicted to reach the target sooner "
            "(--full-memory finds the edge)."
        )
    elif probed_no_further:
        lines.append(
            f"Batch {memory.max_batch_size} fits; memory was probed no further, since no larger batch "
            "is predicted to reach the target sooner (--full-memory finds the edge)."
        )
    elif memory.max_batch_size is not None:
        cap_note = "the whole training set" if memory.capped_by_dataset else "the memory limit"
        lines.append(f"The largest batch that fits is {memory.max_batch_size} ({cap_note}).")
    largest = throughput.largest_timed
    if throughput.knee_batch_size is None and throughput.stopped_because:
        lines.append(f"Throughput was {throughput.stopped_because}.")
    elif throughput.knee_batch_size is not None and throughput.knee_batch_size == largest:
        lines.append(f"Throughput still grows up to the largest batch measured, {largest}.")
    elif throughput.knee_batch_size is not None:
        lines.append(
            f"Throughput stops paying past batch {throughput.knee_batch_size} (doubling adds under "
            f"{throughput.knee_gain:.0%} samples/s)."
        )
    lines.append(
        f"The model predicts the least time to target at batch {best.batch_size}: "
        f"{best.steps_to_target:.0f} steps "
        f"of {best.step_seconds * 1e3:.3g} ms = {best.seconds_to_target:.3g} s."
    )
    lines += _forecast_lines(workload, best, forecast)
    if rule is LrRule.NONE:  # the advice stays at the reference batch
        lines.append("Learning rate: the reference rate, searched from the reference run.")
    else:
        lines.append(
            "Learning rate: "
            + (
                "the noise-aware rule lr_ref (1 + B_noise/B_ref) / (1 + B_noise/B) for SGD."
                if rule is LrRule.NOISE
                else "the square-root rule for an adaptive optimizer."
            )
        )
    what = "the reference rate" if rule is LrRule.NONE else "the rule's rate"
    if tuned > 1.0:
        lines.append(
            f"Trained to the target at batch {best.batch_size}, {tuned:g}x {what} was faster: "
            "the reference rate was not the best one at the reference batch."
        )
    elif tuned < 1.0:
        lines.append(
            f"Trained to the target at batch {best.batch_size}, {tuned:g}x {what}: no higher rate saved "
            "10% of its steps (a higher rate is kept only where it does)."
        )
    return lines
