"""A trainer's own learning-rate scheduler read back as a batchlab `LrSchedule`, by its rates.

A scheduler is code (a LambdaLR around any function, torch's CosineAnnealingLR, a SequentialLR of a
warm-up and a decay, Hugging Face's get_*_schedule_with_warmup), so it is not parsed: it is stepped
on a throwaway optimizer, and its rates are matched against batchlab's shapes in steps (warm-up
s / W, then constant, cosine, linear or WSD to a floor). A shape that gives every rate to 1e-6 is
the reading, its lengths turned into examples at the trainer's batch; anything else is said, not
guessed.
"""

from __future__ import annotations

import warnings
from typing import Any

from batchlab.recipe import Decay, LrSchedule, StepSchedule

MATCH = 1e-6  # the largest difference, as a fraction of the peak, between a reading and the rates
SAMPLED_STEPS = 100_000  # how far a scheduler with no stated horizon is stepped (about a second)


def sample_factors(scheduler: Any, steps: int) -> list[float]:
    """The rates over the peak (the rate it began from) at steps 0..steps of a torch scheduler, stepped with
    its optimizer: build it on a throwaway optimizer (a fresh module's, or one of your own)."""
    optimizer = scheduler.optimizer
    peak = float(optimizer.param_groups[0]["initial_lr"])  # every torch scheduler records it
    factors = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an optimizer step with no gradient, on purpose
        for _ in range(steps + 1):
            factors.append(float(optimizer.param_groups[0]["lr"]) / peak)
            optimizer.step()
            scheduler.step()
    return factors


def schedule_from_factors(factors: list[float], batch_size: int) -> tuple[LrSchedule | None, str | None]:
    """The schedule (lengths in examples at `batch_size`) whose rates in steps are `factors`, or
    None and why. The horizon is the step where the rate first reaches its lowest."""
    warmup = _warmup(factors)
    if warmup is None:
        return None, "its warm-up is not linear from 0 (s / W)"
    rest = factors[warmup:]
    if all(abs(f - 1) <= MATCH for f in rest):  # constant after the warm-up (if any)
        return (LrSchedule(warmup_examples=warmup * batch_size) if warmup else None), None
    if factors[-1] < min(factors[:-1]) - 1e-12:  # still falling to a new low at the last step read
        return None, f"its decay goes on past the {len(factors) - 1} steps read: state its horizon"
    total = warmup + rest.index(min(rest))
    held = max(i for i, f in enumerate(factors[: total + 1]) if abs(f - 1) <= MATCH)
    floor = round(max(0.0, factors[total]), 9)  # 0.1, not 0.09999999999999999
    if floor >= 1:
        return None, "its rate rises after the warm-up"
    for decay in (Decay.COSINE, Decay.LINEAR, Decay.WSD):
        start = held if decay is Decay.WSD else warmup
        steps = StepSchedule(decay.value, warmup, total, total - start, floor)
        if all(abs(steps(s) - factors[s]) <= MATCH for s in range(total + 1)):
            return (
                LrSchedule(
                    decay=decay,
                    warmup_examples=warmup * batch_size,
                    final_fraction=floor,
                    decay_fraction=(total - start) / total if decay is Decay.WSD else 0.2,
                    horizon_examples=total * batch_size,
                ),
                None,
            )
    return None, "its decay is none of cosine, linear or WSD to a floor"


def _warmup(factors: list[float]) -> int | None:
    """W where the rates begin 0, 1/W, ..., (W-1)/W, 1 (0 where they begin at the peak)."""
    reached = next((s for s, f in enumerate(factors) if f >= 1 - MATCH), None)
    if reached is None:
        return None
    if all(abs(factors[s] - s / reached) <= MATCH for s in range(reached)):
        return reached
    return None
