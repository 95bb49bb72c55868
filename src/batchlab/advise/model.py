"""The advice's model, pure functions of measured numbers: the candidate batches, steps and time to
target at each (McCandlish et al. 2018, eqs. 2.7-2.11), where the throughput profile can stop, and
the forecast of the speedup with its spread over seeds."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from batchlab.advise.result import Prediction
from batchlab.core import dist as _dist
from batchlab.lr import lr_for
from batchlab.measure.lr_search import Measured
from batchlab.measure.throughput import ThroughputPoint, ThroughputProfile
from batchlab.workload import Workload

LR_CHECK_STEPS = 50  # the least a tuning run may take


# The expected range of n normal draws, in standard deviations (d2, as in control charts): the
# repeats' fastest-to-slowest spread over d2(n) estimates one block's standard deviation.
_D2 = {2: 1.128, 3: 1.693, 4: 2.059, 5: 2.326, 6: 2.534, 7: 2.704, 8: 2.847, 9: 2.970, 10: 3.078}
# A flat optimum is at most this much slower than the fastest prediction, however noisy the timing:
# the advice's own goal is to be within 10% of the best point's time.
FLAT_AT_MOST = 1.10


# The throughput profile stops where S_min steps at the last batch cost this many times the best
# predicted time so far (one timed block's step time carries ~15% on a shared machine).
STOP_MARGIN = 1.5


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
        step = throughput.step_seconds(b, monotone=True)
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


def throughput_stop(
    workload: Workload, s_min: float, b_noise: float
) -> Callable[[list[ThroughputPoint]], str | None]:
    """The throughput profile's stop, from the model: no batch takes fewer than S_min steps, so once
    S_min steps at the last batch timed cost more than the best predicted time to target so far,
    no larger batch (whose steps cost at least as much) can be chosen. Then the profile stops there,
    past the reference batch, with a margin for one timed block's noise: larger batches cost the
    most time to time and cannot change the advice (docs/measurements.md#throughput-stop)."""

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


@dataclass(frozen=True)
class Forecast:
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
        the speedup (docs/measurements.md#seeds)."""
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


def forecast_speedup(
    best: Prediction | None,
    lr_checks: list[Measured],
    lr: float,
    reference: Prediction | None,
    workload: Workload,
    timing: ThroughputProfile | None = None,
) -> Forecast:
    """Steps and seconds to target at the chosen batch and rate, and the speedup over the reference.
    Where runs reached the target there, their mean steps replace the model's: the tuning runs at
    the chosen rate, and for the reference its own run and any other seed's at its batch and rate
    (a mean over the seeds each point has: one seed's data order can move a reference by half its
    steps). Step times are the side-by-side `timing`'s where there is one, else the profile's."""

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
        return Forecast()
    tuned = reached(best.batch_size, lr)
    steps = sum(tuned) / len(tuned) if tuned else best.steps_to_target
    if reference is None:
        return Forecast(steps, step_seconds(best))
    # The reference prediction's steps are its own run's (seed 0); other seeds' runs there join it.
    runs = (round(reference.steps_to_target), *reached(workload.batch_size, workload.lr))
    return Forecast(steps, step_seconds(best), runs, step_seconds(reference), tuple(tuned))


# The final pass's error bar is sampling error at fixed parameters; along the trajectory B_simple
# itself moves (docs/measurements.md#noise-along-a-run). Where the pass and the tracked window over the
# run's last tenth differ by
# more than DISAGREE_SIGMAS of their combined standard error, the advice says so.
DISAGREE_SIGMAS = 3.0


def point_and_window_disagree(point: tuple[float, float], window: tuple[float, float]) -> bool:
    """Whether two (B_simple, standard error) readings differ by more than DISAGREE_SIGMAS
    combined standard errors (False where either is not finite)."""
    (a, se_a), (b, se_b) = point, window
    if not all(math.isfinite(v) for v in (a, se_a, b, se_b)):
        return False
    return abs(a - b) > DISAGREE_SIGMAS * math.hypot(se_a, se_b)


def tuning_steps(best: Prediction, reference: Prediction | None) -> int:
    """How far a tuning run at the chosen batch may train: twice the predicted steps, and never
    past the steps that the reference's time to target buys at this batch (a rate slower than the
    reference is not advice). At least LR_CHECK_STEPS."""
    limit = 2 * best.steps_to_target
    if reference is not None:
        limit = min(limit, reference.seconds_to_target / best.step_seconds)
    return max(LR_CHECK_STEPS, math.ceil(limit))


def step_time_stderr(throughput: ThroughputProfile, batch_size: int) -> float:
    """The relative standard error of the median step time at `batch_size`: its repeats' spread is
    (max - min) / d2(n) standard deviations, and a median of n blocks errs by about 1.25 sigma /
    sqrt(n). Between measured batches, the larger of the two around it; 0 with one repeat."""
    n = throughput.repeats
    measured = [p for p in throughput.points if p.step_seconds and p.step_seconds_min and p.step_seconds_max]
    if n < 2 or not measured:
        return 0.0

    def relative(p: ThroughputPoint) -> float:
        assert p.step_seconds and p.step_seconds_min is not None and p.step_seconds_max is not None
        sigma = (p.step_seconds_max - p.step_seconds_min) / _D2.get(n, 3.078)
        return 1.2533 * sigma / math.sqrt(n) / p.step_seconds

    below = [p for p in measured if p.batch_size <= batch_size][-1:]
    above = [p for p in measured if p.batch_size >= batch_size][:1]
    return max(relative(p) for p in below + above)


def flat_choice(
    predictions: list[Prediction], throughput: ThroughputProfile
) -> tuple[Prediction, tuple[Prediction, ...]]:
    """The batch to choose, and the flat optimum it was chosen from (empty where there is none).

    The predictions whose time, at the optimistic end of its timing error, is no later than the
    fastest's at its pessimistic end (and at most FLAT_AT_MOST of it) cannot be told apart from the
    fastest by this timing: the argmin among them flips with the machine's noise from one run to the
    next. Among them the smallest batch is chosen: it needs the fewest examples to the target (S_min
    (B + B_noise) grows with B) and the least memory, and it is the choice a rerun keeps."""
    fastest = min(predictions, key=lambda p: p.seconds_to_target)
    slowest_fastest = fastest.seconds_to_target * (1 + step_time_stderr(throughput, fastest.batch_size))
    band = tuple(
        p
        for p in predictions
        if p.seconds_to_target <= FLAT_AT_MOST * fastest.seconds_to_target
        and p.seconds_to_target * (1 - step_time_stderr(throughput, p.batch_size)) <= slowest_fastest
    )
    chosen = min(band, key=lambda p: p.batch_size)
    return chosen, () if chosen is fastest else band


def retimed(predictions: list[Prediction], timing: ThroughputProfile) -> list[Prediction]:
    """The predictions at the batches `timing` measured, on its step times (the steps unchanged)."""
    out = []
    for p in predictions:
        step = timing.step_seconds(p.batch_size)
        if step is not None:
            out.append(replace(p, step_seconds=step, seconds_to_target=p.steps_to_target * step))
    return out
