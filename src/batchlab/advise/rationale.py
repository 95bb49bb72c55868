"""The advice in words: one line for each measurement and decision it rests on."""

from __future__ import annotations

import math

from batchlab.advise.evidence import CONTENDER_RATIO, SIDE_BY_SIDE_REPEATS
from batchlab.advise.model import Forecast
from batchlab.advise.result import Prediction
from batchlab.lr import LrRule
from batchlab.measure.memory import MemoryProfile
from batchlab.measure.throughput import ThroughputProfile
from batchlab.recipe import Decay
from batchlab.workload import Workload


def forecast_lines(workload: Workload, best: Prediction, forecast: Forecast) -> list[str]:
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


def rationale_lines(
    workload: Workload,
    best: Prediction | None,
    b_noise: float | None,
    memory: MemoryProfile,
    throughput: ThroughputProfile,
    forecast: Forecast,
    rule: LrRule,
    search: tuple[float, float, str | None] | None = None,
    *,
    probed_no_further: bool = False,
    flat: tuple[Prediction, ...] = (),
    contenders: tuple[Prediction, ...] = (),
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
    others = [p.batch_size for p in contenders if p.batch_size != workload.batch_size]
    if others:
        lines.append(
            f"Batches {', '.join(map(str, others))} (predicted within {CONTENDER_RATIO:g}x of the fastest) "
            f"were timed again beside the reference batch {workload.batch_size}, "
            f"{SIDE_BY_SIDE_REPEATS} blocks each in turn, and the choice rests on those step times."
        )
    if flat:
        lines.append(flat_line(best, flat))
    else:
        lines.append(
            f"The model predicts the least time to target at batch {best.batch_size}: "
            f"{best.steps_to_target:.0f} steps "
            f"of {best.step_seconds * 1e3:.3g} ms = {best.seconds_to_target:.3g} s."
        )
    lines += forecast_lines(workload, best, forecast)
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
    if search is not None:
        lines.append(search_line(best.batch_size, rule, *search))
    return lines


def search_line(batch_size: int, rule: LrRule, start: float, lr: float, stopped_because: str | None) -> str:
    """How far the rate search moved the rate from where it started, and why it stopped there."""
    what = "the reference rate" if rule is LrRule.NONE else "the rule's rate"
    if stopped_because is None:
        return f"Learning rate {lr:.3g}: {what}, not searched."
    moved = lr / start
    how = f"kept {what} ({start:.3g})" if math.isclose(moved, 1) else f"{moved:.3g}x {what} ({start:.3g})"
    return (
        f"Learning rate {lr:.3g}: {how}. Trained to the target at batch {batch_size}, a rate is kept only "
        f"where it saves 10% of the steps; the search stopped because {stopped_because}."
    )


def flat_line(chosen: Prediction, flat: tuple[Prediction, ...]) -> str:
    """A flat optimum, and why its smallest batch is the one chosen (see model.flat_choice)."""
    fastest = min(flat, key=lambda p: p.seconds_to_target)
    sizes = ", ".join(str(p.batch_size) for p in sorted(flat, key=lambda p: p.batch_size))
    return (
        f"The model predicts the least time to target at batch {fastest.batch_size} "
        f"({fastest.seconds_to_target:.3g} s), but batches {sizes} are within this timing's noise of it "
        f"(up to {max(p.seconds_to_target for p in flat) / fastest.seconds_to_target - 1:.0%} slower): "
        f"the smallest, {chosen.batch_size}, is chosen, since it needs the fewest examples and the "
        f"least memory, and the choice does not flip with the machine's noise. At batch "
        f"{chosen.batch_size}: {chosen.steps_to_target:.0f} steps of {chosen.step_seconds * 1e3:.3g} ms = "
        f"{chosen.seconds_to_target:.3g} s."
    )


# Past this share of clipped steps, a step's size is mostly the clip's, not the gradient's.
MOSTLY_CLIPPED = 0.5


def recipe_lines(workload: Workload, batch_size: int, clipped_fraction: float | None) -> list[str]:
    """The workload's recipe as the advice ran it: the warm-up in examples (the same at every batch),
    the decay (held in runs to the target unless the schedule states its horizon), the clip."""
    lines = []
    schedule = workload.schedule
    if schedule is not None:
        warmup = schedule.warmup(schedule.horizon_examples or 0)
        if warmup:
            lines.append(
                f"Warm-up over {_examples(warmup, workload)} at every batch: "
                f"{math.ceil(warmup / batch_size)} steps at "
                f"batch {batch_size}, {math.ceil(warmup / workload.batch_size)} at the reference's "
                f"{workload.batch_size}."
            )
        decay = Decay(schedule.decay).value
        if decay != "constant" and schedule.horizon_examples is None:
            lines.append(
                f"The workload's {decay} decay needs a horizon, which a run to the target does not have: "
                "the runs here held the peak after the warm-up (state horizon_examples to decay over it)."
            )
        elif decay != "constant" and schedule.horizon_examples is not None:
            horizon = _examples(schedule.horizon_examples, workload)
            lines.append(f"The rate decays ({decay}) over {horizon} at every batch.")
    if workload.clip_grad_norm is not None and clipped_fraction is not None:
        lines.append(
            f"Gradients clip at norm {workload.clip_grad_norm:g}: {clipped_fraction:.0%} of the reference "
            "run's steps clipped."
        )
    return lines


def _examples(count: int, workload: Workload) -> str:
    """A length in examples, with its tokens where the workload counts them."""
    if workload.tokens_per_example is None:
        return f"{count} examples"
    return f"{count} examples ({count * workload.tokens_per_example:,} tokens)"


def clipping_limitation(clipped_fraction: float | None) -> str | None:
    """One line where most steps clip: the rate rules then need not transfer."""
    if clipped_fraction is None or clipped_fraction <= MOSTLY_CLIPPED:
        return None
    return (
        f"{clipped_fraction:.0%} of the reference run's steps clipped: a clipped step's size is the clip's, "
        "not the gradient's, so the learning-rate rules (which scale with the gradient's noise) may not "
        "transfer; the tuned rate is measured, the rule's is not"
    )
