"""The critical-batch study in words: each finding computed from its numbers."""

from __future__ import annotations

import math
from typing import Any

from batchlab.lr import LrRule
from batchlab.measure.branches import loss_metric
from batchlab.workload import Workload

# The ramp and the constant batch are compared over VALIDATION_SEEDS seeds (data order, initial
# weights): on the built-in workloads one seed's updates to the target vary by up to 2x between seeds


def rate_finding(rate: dict[str, Any], b: int) -> str:
    if rate["source"] != "tuned":
        return f"Batch {b} at lr {rate['lr']:.3g} ({rate['source']}; not tuned)."
    tried = sorted({c["lr"] for c in rate["checks"]})
    found = (
        "kept"
        if math.isclose(rate["lr"], rate["start"])
        else f"{rate['lr'] / rate['start']:.3g}x it reached the target in fewer updates"
    )
    return (
        f"Batch {b} at lr {rate['lr']:.3g}: the workload's rate scaled to the batch was {rate['start']:.3g}; "
        f"tried {', '.join(f'{r:.3g}' for r in tried)} to the target, {found} (a rate below the best "
        "would inflate the critical batch: the larger branches run at larger rates)."
    )


def _fmt_batch(row: dict[str, Any]) -> str:
    if row["critical_batch"] is None:
        return "-"
    return f"{'>= ' if row['lower_bound'] else ''}{row['critical_batch']}"


def findings_of(
    rows: list[dict[str, Any]],
    validation: list[dict[str, Any]],
    *,
    rule: LrRule,
    both: bool,
    epsilon: float,
    length: int,
    b: int,
    workload: Workload,
) -> list[str]:
    rate = (
        "sqrt(k) x the rate (the adaptive optimizer's rule)"
        if rule is LrRule.SQRT
        else "k x the rate (SGD's rule)"
    )
    if both:
        rate = f"the better of {rate} and {'k x' if rule is LrRule.SQRT else 'sqrt(k) x'}"
    out = [
        f"Critical batch by branched training (the largest k x {b} whose {loss_metric(workload)} fell by at "
        f"least {1 - epsilon:.0%} as much as batch {b}'s over the same {length:,} examples, at {rate}): "
        + "; ".join(f"{_fmt_batch(r)} at {r['point']} of the steps to target" for r in rows)
        + ".",
        "B_simple at the same parameters: "
        + "; ".join(f"{r['b_simple']:.3g} +- {r['b_simple_stderr']:.2g}" for r in rows)
        + ".",
    ]
    none = [r["point"] for r in rows if r["critical_batch"] is None]
    if none:
        out.append(
            f"At {', '.join(none)} batch {b} itself made no progress over the branch: no critical batch "
            "can be read there (the loss is at its floor, or the branch is too short)."
        )
    exact = [r for r in rows if r["critical_batch"] is not None and not r["lower_bound"]]
    if len(exact) >= 2:
        ratios = [r["critical_batch"] / r["b_simple"] for r in exact if r["b_simple"] > 0]
        if ratios:
            out.append(
                f"Measured over B_simple: {min(ratios):.2g}x to {max(ratios):.2g}x: "
                + (
                    "the noise scale is a fair proxy here."
                    if min(ratios) >= 0.5 and max(ratios) <= 2
                    else "the noise scale alone would misplace the batch here."
                )
            )
    by = {v["group"]: v for v in validation}
    out.extend(_validation_findings(by["constant"], by["ramp"], b=b, metric=loss_metric(workload)))
    if "advised" in by:
        a = by["advised"]
        out.append(
            f"The advised constant batch {a['batch_size']}: "
            + (
                f"{a['updates_to_target']:.0f} updates to target (median)"
                if a["updates_to_target"]
                else f"{a['reached']} of {a['seeds']} seeds reached the target"
            )
            + (
                f", final {loss_metric(workload)} {a['final_loss']:.4g}."
                if a["final_loss"] is not None
                else "."
            )
        )
    return out


def loss_difference(ramp: dict[str, Any], constant: dict[str, Any]) -> tuple[float, float] | None:
    """The ramp's mean final loss less the constant's, and the standard error of that difference
    from the two arms' seed-to-seed spreads (None with one seed a side)."""
    if ramp["final_loss"] is None or constant["final_loss"] is None:
        return None
    if ramp["final_loss_spread"] is None or constant["final_loss_spread"] is None:
        return None
    error = math.sqrt(
        ramp["final_loss_spread"] ** 2 / ramp["seeds"]
        + constant["final_loss_spread"] ** 2 / constant["seeds"]
    )
    return ramp["final_loss"] - constant["final_loss"], error


def _validation_findings(c: dict[str, Any], r: dict[str, Any], *, b: int, metric: str) -> list[str]:
    n = f"{r['seeds']} seeds" if r["seeds"] > 1 else "one seed"
    if r["arm"] == f"ramp {b}":  # a ramp that never grows is the constant batch: nothing to compare
        return [
            f"No ramp: from no point on was the measured critical batch at least twice batch {b} at "
            "every later point (a ramp's batch never shrinks, so one point below it holds the batch back "
            "from there on). The constant batch is the answer; its runs stand for the ramp in the table."
        ]
    if not r["updates_to_target"]:
        return [
            f"The ramp reached the target on {r['reached']} of {r['seeds']} seeds in the validation "
            "budget: the measurement overshot."
        ]
    if not c["updates_to_target"]:
        return [f"The constant batch {b} reached the target on {c['reached']} of {c['seeds']} seeds only."]
    saved = 1 - r["updates_to_target"] / c["updates_to_target"]
    line = (
        f"Over {n}, the ramp reached the target in {r['updates_to_target']:.0f} updates (median) against "
        f"{c['updates_to_target']:.0f} at constant batch {b} ({saved:.0%} fewer), with "
        f"{r['examples_to_target']:,.0f} examples against {c['examples_to_target']:,.0f}; after the same "
        f"{c['examples']:,} examples its {metric} was {r['final_loss']:.4g} against {c['final_loss']:.4g}"
    )
    difference = loss_difference(r, c)
    if difference is None:
        return [line + " (one seed a side: no spread to judge the difference by)."]
    delta, error = difference
    verdict = (
        "better, by more than two standard errors"
        if delta < -2 * error
        else "worse, by more than two standard errors"
        if delta > 2 * error
        else "equal within two standard errors"
    )
    return [line + f" ({delta:+.2g} +- {error:.2g}: {verdict})."]
