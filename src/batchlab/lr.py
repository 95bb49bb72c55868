"""Learning-rate scaling rules, relative to a reference point known to train well.

References:
  Goyal et al. 2017, arXiv:1706.02677 (linear rule, warm-up).
  Krizhevsky 2014; Hoffer et al. 2017, arXiv:1705.08741; Malladi et al. 2022, arXiv:2205.10287 (sqrt).
  McCandlish et al. 2018, arXiv:1812.06162, eq. 2.6 (noise-aware: eps_opt(B) = eps_max / (1 + B_noise/B)).
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Any

import torch

from batchlab.errors import bad
from batchlab.workload import Workload


class LrRule(str, Enum):
    NONE = "none"
    LINEAR = "linear"
    SQRT = "sqrt"
    NOISE = "noise"


def rate_source(advice: dict[str, Any]) -> str:
    """Where an advice's learning rate came from, in words: its rule (and how far tuning moved it
    from the rule's rate), or (rule "none", the advice at the reference batch) the reference rate,
    kept or tuned."""
    if advice["lr_rule"] != LrRule.NONE.value:
        from_rule = advice.get("lr_from_rule")
        if from_rule and not math.isclose(advice["lr"], from_rule):
            return f"{advice['lr_rule']} rule, tuned: {advice['lr'] / from_rule:.2g}x"
        return f"{advice['lr_rule']} rule"
    same = math.isclose(advice["lr"], advice["reference"]["lr"])
    return "the reference rate" if same else "the reference rate, tuned"


def as_rule(rule: str | LrRule) -> LrRule:
    try:
        return LrRule(rule)
    except ValueError:
        choices = ", ".join(r.value for r in LrRule)
        raise bad("lr_rule", rule, f"one of {choices}", "pass --lr-rule linear") from None


def scale_lr(
    rule: str | LrRule,
    *,
    lr_ref: float,
    batch_ref: int,
    batch_size: int,
    b_noise: float | None = None,
) -> float:
    """The learning rate for `batch_size` under `rule`, from the reference (batch_ref, lr_ref)."""
    rule = as_rule(rule)
    k = batch_size / batch_ref
    if rule is LrRule.NONE:
        return lr_ref
    if rule is LrRule.LINEAR:
        return lr_ref * k
    if rule is LrRule.SQRT:
        return lr_ref * math.sqrt(k)
    if b_noise is None or not math.isfinite(b_noise) or b_noise <= 0:
        raise bad(
            "b_noise",
            b_noise,
            "a positive noise scale for lr_rule 'noise'",
            "measure it with `batchlab noise` first",
        )
    # lr(B) = lr_ref (1 + B_noise / B_ref) / (1 + B_noise / B): linear well below B_noise, flat above.
    return lr_ref * (1 + b_noise / batch_ref) / (1 + b_noise / batch_size)


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear warm-up: the fraction of the learning rate at 0-based `step` (1/W, 2/W, ..., 1)."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return 1.0
    return (step + 1) / warmup_steps


# The one place a batch change picks its rule ----------------------------------------------------


def is_adaptive(workload: Workload) -> bool:
    """Whether the workload's optimizer adapts per-parameter step sizes (Adam and relatives)."""
    probe = workload.optimizer([torch.nn.Parameter(torch.zeros(1))], workload.lr)
    return not isinstance(probe, torch.optim.SGD)


def optimizer_rule(workload: Workload) -> LrRule:
    """The rate of a k-times batch by the optimizer's own rule: k for SGD (Goyal et al.), sqrt(k)
    for adaptive optimizers (Malladi et al.)."""
    return LrRule.SQRT if is_adaptive(workload) else LrRule.LINEAR


def advice_rule(workload: Workload, b_noise: float | None) -> LrRule:
    """The noise-aware rule for SGD where B_noise is measured; else the square-root rule, the
    cautious one (for adaptive optimizers, the rule itself)."""
    if b_noise is not None and math.isfinite(b_noise) and b_noise > 0 and not is_adaptive(workload):
        return LrRule.NOISE
    return LrRule.SQRT


def rate_for(workload: Workload, batch_size: int, rule: str | LrRule, b_noise: float | None = None) -> float:
    """`rule`'s rate at `batch_size`, from the workload's reference point."""
    return scale_lr(
        rule, lr_ref=workload.lr, batch_ref=workload.batch_size, batch_size=batch_size, b_noise=b_noise
    )


def lr_for(workload: Workload, batch_size: int, b_noise: float | None) -> tuple[float, LrRule]:
    """The advice's rate at `batch_size` and the rule that gave it (`advice_rule`)."""
    rule = advice_rule(workload, b_noise)
    return rate_for(workload, batch_size, rule, b_noise), rule
