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
from typing import Any

import torch

from batchlab.advise.budget import Budget
from batchlab.advise.evidence import reference_on_seed_1, speedup_evidence, validate_advice
from batchlab.advise.model import (
    forecast_speedup,
    point_and_window_disagree,
    predict,
    throughput_stop,
    tuning_steps,
)
from batchlab.advise.rationale import rationale_lines
from batchlab.advise.result import Advice, Prediction
from batchlab.core import dist as _dist
from batchlab.errors import bad
from batchlab.lr import LrRule, lr_for
from batchlab.measure.lr_search import Measured, measured_run, tune_lr
from batchlab.measure.memory import MemoryProfile, default_limit_bytes, probe_memory
from batchlab.measure.noise import noise_at_parameters
from batchlab.measure.throughput import ThroughputProfile, profile_throughput
from batchlab.train.loop import train
from batchlab.train.result import TrainResult
from batchlab.workload import Workload
from batchlab.workloads import load_workload

NOISE_MICRO_BATCHES = 4
# B_noise is read to NOISE_REL_ERROR (standard error over the value), not over the whole training set:
# the prediction's steps move with B_noise as 1 + B_noise / B, so 5% of B_noise is at most 5% of the
# steps, below the 10% a tuning doubling must save; on charlm a whole pass (892 micro-batches of 8)
# read 17.9 +- 0.18, a pass that costs more than the reference run it follows.
NOISE_REL_ERROR = 0.05

Progress = Callable[[str], None]


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
    budget = Budget(budget_seconds)

    def say(text: str) -> None:  # each message opens a phase named by its first word
        budget.enter(text.split(":", 1)[0])
        if progress:
            progress(text)

    limitations: list[str] = []

    say("noise: train from the reference point to the target, then measure B_noise there")
    reference_run, noise = reference_noise(workload, device, limitations)
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
        stop_when=None if s_min is None or b_noise is None else throughput_stop(workload, s_min, b_noise),
    )

    predictions: list[Prediction] = []
    if s_min is not None and b_noise is not None:
        upper = throughput.largest_timed or workload.batch_size
        predictions = predict(workload, s_min=s_min, b_noise=b_noise, throughput=throughput, cap=upper)

    memory, cap, probe_to, probed_no_further = cap_from_memory(
        workload, predictions, throughput, full_memory, device, memory_limit, say, limitations
    )
    # The reference is what the user runs today: its prediction stays the baseline whatever the cap.
    reference_prediction = next((p for p in predictions if p.batch_size == workload.batch_size), None)
    past_cap = tuple(p for p in predictions if p.batch_size > cap)
    predictions = [p for p in predictions if p.batch_size <= cap]
    best, chosen_size, chosen_lr, rule, rule_lr, lr_checks = choose_point(
        workload,
        predictions,
        reference_prediction,
        b_noise,
        device,
        budget,
        limitations,
        say,
        reference_run=measured_run(reference_run, workload.batch_size),
    )
    timing = None
    if best is not None and budget.left() > 0:
        timing, more = speedup_evidence(
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
        measured, measured_speedup = validate_advice(
            workload, chosen_size, chosen_lr, device, budget, limitations, say
        )
    if budget_seconds is not None and budget.left() < 0:
        limitations.append(
            f"the measurements took {budget_seconds - budget.left():.0f}s of a {budget_seconds:.0f}s budget"
        )

    budget.enter(None)
    forecast = forecast_speedup(best, lr_checks, chosen_lr, reference_prediction, workload, timing)
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
            rationale_lines(
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


def cap_from_memory(
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


def choose_point(
    workload: Workload,
    predictions: list[Prediction],
    reference_prediction: Prediction | None,
    b_noise: float | None,
    device: str | torch.device,
    budget: Budget,
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
            tuning_steps(best, reference_prediction),
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
        chosen_lr, more = tune_reference_rate(workload, best, reference_run, device, budget, limitations, say)
        lr_checks += more
    return best, chosen_size, chosen_lr, rule, rule_lr, lr_checks


def tune_reference_rate(
    workload: Workload,
    best: Prediction,
    reference_run: Measured,
    device: str | torch.device,
    budget: Budget,
    limitations: list[str],
    say: Progress,
) -> tuple[float, list[Measured]]:
    """The advice stays at the reference batch: is the reference rate the best there? The search
    starts from the reference run (not trained again) and goes up or down (digits-cnn: the oracle
    found a quarter of its rate 1.29x faster at its own batch). Each run may take twice the
    reference's steps; a rate that did not reach the target on every seed is not advice."""
    if reference_run.steps_to_target is None:
        return workload.lr, []
    limit = tuning_steps(best, None)
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
        checks.append(reference_on_seed_1(workload, limit, device))
    # The reference run is reported as the reference; where the search kept its rate, so is the
    # other seed's run there (the prediction stays the reference's own: speedup 1).
    return lr, [m for m in checks[1:] if not (lr == workload.lr and math.isclose(m.lr, lr))]


def reference_noise(
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
