"""The gradient noise scale estimator, as an explicit init/update pair over a NamedTuple state.

References:
  McCandlish, Kaplan, Amodei et al. 2018, "An Empirical Model of Large-Batch Training",
  arXiv:1812.06162, Appendix A.1 (unbiased estimates from two batch sizes).

A batch of B examples gives E|G_B|^2 = |G|^2 + tr(Sigma)/B. From |G_small|^2 and |G_big|^2 measured in
the same step:
    |G|^2     ~ (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
    tr(Sigma) ~ (|G_small|^2 - |G_big|^2) / (1/B_small - 1/B_big)
Each one-step estimate is noisy and can be negative, so numerator and denominator are smoothed
separately (EMAs with bias correction) and divided only at the end: the ratio of two unbiased
estimates is biased, and an average of ratios is worse.

With a finite training set of N examples drawn without replacement, the 1/B above becomes
c(B) = (N - B) / ((N - 1) B); passing `population=N` applies that correction (it matters when B is
not small against N, and vanishes as N grows).
"""

from __future__ import annotations

import math
from typing import NamedTuple


class NoiseState(NamedTuple):
    """Exponentially weighted sums of the one-step estimates and of their squares, the sums of the
    weights (for the bias correction) and of their squares (for the effective sample size), and how
    many updates they hold. Each update may decay the past by its own factor: a window counted in
    steps, not updates, when updates are irregular."""

    grad_sq: float  # weighted sum of |G|^2 estimates
    trace: float  # weighted sum of tr(Sigma) estimates
    grad_sq_sq: float  # weighted sums of squares, for the spread
    trace_sq: float
    weight: float  # sum of the weights: 1 - beta^n for a constant beta
    weight_sq: float  # sum of the squared weights
    updates: int


class NoiseReading(NamedTuple):
    """Bias-corrected estimates from a state."""

    grad_sq: float
    trace_sigma: float
    b_simple: float
    b_simple_stderr: float  # one standard error, propagated from both parts' spreads
    grad_sq_stderr: float = math.inf  # one standard error of |G|^2


def init() -> NoiseState:
    return NoiseState(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0)


def inverse_batch(batch: float, population: int | None) -> float:
    """The 1/B in E|G_B|^2 = |G|^2 + tr(Sigma)/B; (N - B)/((N - 1) B) without replacement from N."""
    if population is None:
        return 1.0 / batch
    return (population - batch) / ((population - 1) * batch)


def one_step(
    *, small_sq: float, big_sq: float, b_small: float, b_big: float, population: int | None = None
) -> tuple[float, float]:
    """Unbiased one-step estimates (|G|^2, tr(Sigma)) from squared norms at two batch sizes."""
    if not b_big > b_small > 0:
        raise ValueError(f"need b_big > b_small > 0 (got b_small={b_small}, b_big={b_big})")
    c_small, c_big = inverse_batch(b_small, population), inverse_batch(b_big, population)
    trace = (small_sq - big_sq) / (c_small - c_big)
    grad_sq = big_sq - c_big * trace  # the same as (B_big|G_big|^2 - B_small|G_small|^2)/(B_big - B_small)
    return grad_sq, trace


def update(
    state: NoiseState,
    *,
    small_sq: float,
    big_sq: float,
    b_small: float,
    b_big: float,
    beta: float = 0.95,
    population: int | None = None,
) -> NoiseState:
    """Fold one step's squared norms into the averages, the past decayed by `beta` (0 <= beta < 1)."""
    if not 0 <= beta < 1:
        raise ValueError(f"beta must be in [0, 1) (got {beta})")
    g, s = one_step(small_sq=small_sq, big_sq=big_sq, b_small=b_small, b_big=b_big, population=population)
    w = 1 - beta
    return NoiseState(
        grad_sq=beta * state.grad_sq + w * g,
        trace=beta * state.trace + w * s,
        grad_sq_sq=beta * state.grad_sq_sq + w * g * g,
        trace_sq=beta * state.trace_sq + w * s * s,
        weight=beta * state.weight + w,
        weight_sq=beta * beta * state.weight_sq + w * w,
        updates=state.updates + 1,
    )


def read(state: NoiseState) -> NoiseReading:
    """Bias-corrected |G|^2, tr(Sigma), their ratio B_simple, and its standard error."""
    if state.updates == 0:
        nan = float("nan")
        return NoiseReading(nan, nan, nan, nan, nan)
    g, s = state.grad_sq / state.weight, state.trace / state.weight
    b_simple = s / g if g > 0 else math.inf
    # The effective sample size of a weighted mean, (sum w)^2 / sum w^2: (1 + beta) / (1 - beta)
    # for a long run at a constant beta, the number of updates for the first few.
    n_eff = state.weight**2 / state.weight_sq
    var_g = max(state.grad_sq_sq / state.weight - g * g, 0.0)
    var_s = max(state.trace_sq / state.weight - s * s, 0.0)
    if g > 0 and s > 0 and n_eff > 1:
        rel = math.sqrt((var_g / g**2 + var_s / s**2) / (n_eff - 1))
        stderr = abs(b_simple) * rel
    else:
        stderr = math.inf
    g_stderr = math.sqrt(var_g / (n_eff - 1)) if n_eff > 1 else math.inf
    return NoiseReading(g, s, b_simple, stderr, g_stderr)
