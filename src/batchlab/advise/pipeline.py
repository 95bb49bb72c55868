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
from dataclasses import dataclass, replace
from typing import Any

import torch

from batchlab.advise.budget import Budget
from batchlab.advise.choice import Point, cap_from_memory, choose_point
from batchlab.advise.emit import Emit, as_emit, with_trainer_settings
from batchlab.advise.evidence import contenders_side_by_side, speedup_evidence, validate_advice
from batchlab.advise.model import (
    forecast_speedup,
    predict,
    throughput_stop,
)
from batchlab.advise.ramp import ramp_offer
from batchlab.advise.rationale import clipping_limitation, rationale_lines, recipe_lines
from batchlab.advise.reference import reference_noise
from batchlab.advise.result import Advice, Prediction
from batchlab.core import dist as _dist
from batchlab.core.progress import Say
from batchlab.core.store import Store
from batchlab.errors import bad, check_int
from batchlab.lr import LrRule
from batchlab.measure.lr_search import Measured, RecordedRuns, measured_run
from batchlab.measure.memory import MemoryProfile
from batchlab.measure.throughput import ThroughputProfile, profile_throughput
from batchlab.train.result import TrainResult
from batchlab.workload import Workload
from batchlab.workloads import load_workload


@dataclass(frozen=True, kw_only=True)
class AdviseConfig:
    """The advice's options, checked where they are built."""

    device: str | torch.device = "auto"
    memory_limit: int | None = None  # bytes; a limit below the device's makes the probe run
    budget_seconds: float | None = None  # past it the advice stops measuring and says so
    validate: bool = False  # train the advice to the target and measure the speedup
    full_memory: bool = False  # probe memory to the edge, not only as far as the choice needs
    schedule: bool = False  # also measure the critical batch along a run and offer a batch ramp
    devices: int = 1  # the trainer settings split the batch over this many devices
    emit: Emit | None = None  # and are pasted as this trainer's code

    def __post_init__(self) -> None:
        devices = self.devices
        check_int("--devices", devices, fix="pass --devices 8, say")
        if self.emit is not None:
            object.__setattr__(self, "emit", as_emit(self.emit))  # a string from Python callers

        limit = self.memory_limit
        if limit is not None:
            check_int(
                "memory_limit", limit, expected="a whole number of bytes >= 1", fix="pass --memory-limit 2GiB"
            )
        seconds = self.budget_seconds
        if seconds is not None and (
            isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds < math.inf
        ):
            raise bad("budget_seconds", seconds, "a number of seconds > 0", "pass --budget 600")


@dataclass(frozen=True, kw_only=True)
class _Measurements:
    """What the advice chooses from: the reference run and its noise scale, step times, the memory
    cap, and the predictions under it."""

    reference_run: TrainResult
    noise: dict[str, Any] | None
    b_noise: float | None
    throughput: ThroughputProfile
    memory: MemoryProfile
    cap: int
    probe_to: int | None
    probed_no_further: bool
    predictions: list[Prediction]  # the batches that fit
    past_cap: tuple[Prediction, ...]
    reference_prediction: Prediction | None  # the baseline, whatever the cap


@dataclass(frozen=True, kw_only=True)
class _Choice:
    """The point chosen, its rate and how it was found (its `lr_checks` with the runs the speedup's
    evidence added), and the evidence for its speedup."""

    point: Point
    contenders: tuple[Prediction, ...]  # timed side by side before the choice (none: not timed)
    lr_checks: list[Measured]
    timing: ThroughputProfile | None
    measured: list[Measured]
    measured_speedup: float | None


def advise(
    workload: Workload | str,
    *,
    device: str | torch.device = "auto",
    memory_limit: int | None = None,
    budget_seconds: float | None = None,
    validate: bool = False,
    full_memory: bool = False,
    schedule: bool = False,
    devices: int = 1,
    emit: Emit | str | None = None,
    store: Store | None = None,
    progress: Say | None = None,
) -> Advice:
    """Measure noise, throughput and memory; recommend the batch size and learning rate that
    minimise predicted time to target under the memory cap (the options: `AdviseConfig`).

    The phases run so that each bounds the next: the reference run and its noise scale; the
    throughput curve up to where doubling the batch stops paying; then the memory probe only up to
    the largest batch the prediction could choose (its time to target still falling), never the
    whole training set unless `full_memory`. The advice then costs a few reference runs, not a
    memory search at batches nobody would train at."""
    config = AdviseConfig(
        device=device,
        memory_limit=memory_limit,
        budget_seconds=budget_seconds,
        validate=validate,
        full_memory=full_memory,
        schedule=schedule,
        devices=devices,
        emit=None if emit is None else as_emit(emit),
    )
    return run_advice(load_workload(workload), config, store=store, progress=progress)


def run_advice(
    workload: Workload, config: AdviseConfig, *, store: Store | None = None, progress: Say | None = None
) -> Advice:
    """`advise` with its options as one config. `store` keeps the ramp's runs (with `schedule`), so
    that a killed command resumes past them."""
    _dist.init_from_env()
    world = _dist.world_size()
    if workload.batch_size % world:
        raise bad(
            "torchrun",
            f"{world} ranks",
            f"a number of ranks that divides {workload.name}'s reference batch {workload.batch_size}",
            "run the advice on a divisor of it, or in one process",
        )
    budget = Budget(config.budget_seconds)

    def say(text: str) -> None:  # each message opens a phase named by its first word
        budget.enter(text.split(":", 1)[0])
        if progress:
            progress(text)

    limitations: list[str] = []
    found = _measure(workload, config, say, limitations)
    choice = _choose(workload, config, found, budget, say, limitations)
    if config.budget_seconds is not None and budget.left() < 0:
        limitations.append(
            f"the measurements took {config.budget_seconds - budget.left():.0f}s of a "
            f"{config.budget_seconds:.0f}s budget"
        )
    budget.enter(None)
    advice = _advice(workload, found, choice, budget, limitations)
    if config.schedule:
        ramp = ramp_offer(workload, advice, store=store, device=config.device, say=say)
        advice = replace(advice, schedule=ramp)
    return with_trainer_settings(advice, workload, devices=config.devices, emit=config.emit)


def _measure(workload: Workload, config: AdviseConfig, say: Say, limitations: list[str]) -> _Measurements:
    """The reference run and B_noise there; the throughput profile, stopped where no larger batch can
    win; the predictions; and memory, probed only as far as they need."""
    say("noise: train from the reference point to the target, then measure B_noise there")
    reference_run, noise = reference_noise(workload, config.device, limitations)
    b_noise = None if noise is None else noise["b_simple"]
    s_min = None
    if b_noise is not None and reference_run.steps_to_target is not None:
        s_min = reference_run.steps_to_target / (1 + b_noise / workload.batch_size)
    say("throughput: seconds per step, up to where doubling the batch stops paying")
    throughput = profile_throughput(
        workload,
        device=config.device,
        stop_when=None if s_min is None or b_noise is None else throughput_stop(workload, s_min, b_noise),
    )
    predictions: list[Prediction] = []
    if s_min is not None and b_noise is not None:
        upper = throughput.largest_timed or workload.batch_size
        predictions = predict(workload, s_min=s_min, b_noise=b_noise, throughput=throughput, cap=upper)
    memory, cap, probe_to, probed_no_further = cap_from_memory(
        workload,
        predictions,
        throughput,
        config.full_memory,
        config.device,
        config.memory_limit,
        say,
        limitations,
    )
    return _Measurements(
        reference_run=reference_run,
        noise=noise,
        b_noise=b_noise,
        throughput=throughput,
        memory=memory,
        cap=cap,
        probe_to=probe_to,
        probed_no_further=probed_no_further,
        predictions=[p for p in predictions if p.batch_size <= cap],
        past_cap=tuple(p for p in predictions if p.batch_size > cap),
        reference_prediction=next((p for p in predictions if p.batch_size == workload.batch_size), None),
    )


def _choose(
    workload: Workload,
    config: AdviseConfig,
    found: _Measurements,
    budget: Budget,
    say: Say,
    limitations: list[str],
) -> _Choice:
    """The point and its rate; then what its speedup rests on, and with `validate` the advice trained."""
    runs = RecordedRuns(workload, config.device)  # the tuning runs and the extra seeds
    contenders, timed = found.predictions, None
    if found.predictions and budget.left() > 0:
        contenders, timed = contenders_side_by_side(workload, found.predictions, config.device, say)
    point = choose_point(
        workload,
        contenders,
        timed or found.throughput,
        found.reference_prediction,
        found.b_noise,
        runs,
        budget,
        limitations,
        say,
        reference_run=measured_run(found.reference_run, workload.batch_size),
    )
    best, size, lr = point.best, point.batch_size, point.lr
    lr_checks = list(point.lr_checks)  # with the speedup evidence's runs added below
    timing = None
    if best is not None and budget.left() > 0:
        timing, more = speedup_evidence(
            workload,
            (size, lr),
            found.reference_run,
            lr_checks,
            found.throughput,
            config.device,
            runs,
            budget,
            limitations,
            say,
            timed,
        )
        lr_checks += more
        forecast = forecast_speedup(best, lr_checks, lr, found.reference_prediction, workload, timing)
        if size != workload.batch_size and forecast.speedup is not None and forecast.speedup < 1:
            # Its own evidence says the chosen point is slower than the user's: that is no advice.
            limitations.append(
                f"batch {size} at lr {lr:.3g} measured {1 / forecast.speedup:.2f}x slower than the "
                f"reference ({forecast.steps:.0f} steps in its tuning runs, its step time timed beside "
                "the reference's): the reference point is kept"
            )
            point = replace(
                point,
                best=found.reference_prediction,
                batch_size=workload.batch_size,
                lr=workload.lr,
                rule=LrRule.NONE,
                rule_lr=workload.lr,
                lr_stopped_because=None,
                flat=(),
            )
            best, size, lr, timing = point.best, point.batch_size, point.lr, None
    measured: list[Measured] = []
    measured_speedup = None
    if config.validate and best is not None:
        measured, measured_speedup = validate_advice(
            workload, size, lr, config.device, budget, limitations, say
        )
    return _Choice(
        point=point,
        contenders=tuple(contenders) if timed is not None else (),
        lr_checks=lr_checks,
        timing=timing,
        measured=measured,
        measured_speedup=measured_speedup,
    )


def _advice(
    workload: Workload, found: _Measurements, choice: _Choice, budget: Budget, limitations: list[str]
) -> Advice:
    """The advice, with its forecast and the rationale in words."""
    best, run = choice.point.best, found.reference_run
    forecast = forecast_speedup(
        best, choice.lr_checks, choice.point.lr, found.reference_prediction, workload, choice.timing
    )
    reference: dict[str, Any] = {
        "batch_size": workload.batch_size,
        "lr": workload.lr,
        "steps_to_target": run.steps_to_target,
        "seconds_to_target": run.seconds_to_target,
        "run_seconds_to_target": run.seconds_to_target,  # while tracking the noise scale
    }
    if forecast.speedup is not None:
        # On the advice's footing: the reference's steps (the mean of its seeds) x its step time; its
        # run's own clock ran slow, split every step to track the noise scale.
        reference["seconds_to_target"] = forecast.reference_seconds
        reference["seeds_steps_to_target"] = list(forecast.reference_steps)
    world, memory, throughput = _dist.world_size(), found.memory, found.throughput
    rationale = rationale_lines(
        workload,
        best,
        found.b_noise,
        memory,
        throughput,
        forecast,
        choice.point.rule,
        (choice.point.rule_lr, choice.point.lr, choice.point.lr_stopped_because),
        probed_no_further=found.probed_no_further,
        flat=choice.point.flat,
        contenders=choice.contenders,
    ) + recipe_lines(workload, choice.point.batch_size, run.clipped_fraction)
    clipped = clipping_limitation(run.clipped_fraction)
    if clipped is not None:
        limitations.append(clipped)
    return Advice(
        workload=workload.name,
        device=memory.device,
        target=workload.target.to_dict(),
        batch_size=choice.point.batch_size,
        lr=choice.point.lr,
        lr_rule=choice.point.rule.value,
        lr_from_rule=choice.point.rule_lr,
        lr_stopped_because=choice.point.lr_stopped_because,
        predicted_steps_to_target=forecast.steps,
        predicted_seconds_to_target=forecast.seconds,
        predicted_speedup=forecast.speedup,
        predicted_speedup_range=forecast.speedup_range,
        model_steps_to_target=best.steps_to_target if best else None,
        max_batch_size=None
        if memory.max_batch_size is None
        else (found.cap if world > 1 else memory.max_batch_size),
        max_batch_size_is_lower_bound=found.probed_no_further,
        memory_probed_to=found.probe_to,
        b_noise=found.b_noise,
        b_noise_stderr=None if found.noise is None else found.noise["b_simple_stderr"],
        knee_batch_size=throughput.knee_batch_size,
        reference=reference,
        predictions=tuple(found.predictions),
        predictions_past_cap=found.past_cap,
        rationale=tuple(rationale),
        limitations=tuple(limitations),
        lr_checks=tuple(choice.lr_checks),
        measured=tuple(choice.measured),
        measured_speedup=choice.measured_speedup,
        memory=memory.to_dict(),
        throughput=throughput.to_dict(),
        noise=found.noise,
        phase_seconds=budget.phases,
        seconds=budget.clock() - budget.start,
        world_size=world,
        step_timing=None if choice.timing is None else choice.timing.to_dict(),
    )
