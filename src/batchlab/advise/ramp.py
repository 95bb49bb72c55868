"""The batch ramp offered with the advice: from the critical batch measured along a run at the
advised batch and rate (branched training, Merrill et al. 2025), and the updates it saves."""

from __future__ import annotations

import math
from typing import Any

import torch

from batchlab.advise.result import Advice
from batchlab.core.progress import Say
from batchlab.core.store import Store
from batchlab.errors import BatchlabError
from batchlab.measure.branches import EPSILON, ramp_updates
from batchlab.measure.critical_batch import measure
from batchlab.workload import Workload


def schedule_advice(
    workload: Workload,
    *,
    batch_size: int,
    lr: float,
    max_batch_size: int | None = None,
    cap_is_lower_bound: bool = False,
    store: Store | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    progress: Any = None,
) -> dict[str, Any]:
    """The ramp that starts at the advised batch and rate, from the critical batch measured along a
    run at them, and the updates it is predicted to save. The prediction keeps the constant run's
    examples to target: the ramp's batches kept at least 1 - EPSILON of the small batch's progress
    per example in every branch, so in the worst case it needs up to 1 / (1 - EPSILON) as many
    examples; `worst_case_updates` says what that costs. Offered only when it saves updates."""
    cap = None if max_batch_size is None else min(max_batch_size, workload.train_size)
    if cap is not None and cap < 2 * batch_size:  # no room to grow: say so, measure nothing
        why = f"the memory cap {cap} leaves no room to double batch {batch_size}"
        if cap_is_lower_bound:
            why = f"memory was probed only up to batch {cap}; pass --full-memory to let a ramp grow past it"
        return {"offered": False, "why": why}
    found = measure(
        workload,
        batch_size=batch_size,
        lr=lr,
        max_batch_size=cap,
        store=store,
        seed=seed,
        device=device,
        progress=progress,
    )
    constant = found.settings["reference_steps_to_target"]
    examples = found.settings["reference_examples_to_target"]
    predicted = ramp_updates(found.ramp, examples)
    worst = ramp_updates(found.ramp, math.ceil(examples / (1 - EPSILON)))
    offered = len(found.ramp.phases) > 1 and predicted < constant
    sizes = " -> ".join(str(p.batch_size) for p in found.ramp.phases)
    why = (
        f"the ramp {sizes} is predicted to take {predicted} updates to the target against {constant} "
        f"at constant batch {batch_size} ({1 - predicted / constant:.0%} fewer; at worst {worst})"
        if offered
        else f"the critical batch measured along the run never passed twice batch {batch_size}: "
        "a constant batch is the advice"
    )
    return {
        "offered": offered,
        "why": why,
        "ramp": found.ramp.to_dict(),
        "lr": lr,
        "predicted_updates_to_target": predicted,
        "worst_case_updates": worst,
        "constant_updates_to_target": constant,
        "points": found.rows,
        "settings": found.settings,
    }


def ramp_offer(
    workload: Workload,
    advice: Advice,
    *,
    store: Store | None,
    device: str | torch.device,
    say: Say,
) -> dict[str, Any]:
    """`advise --schedule`: the ramp from the advised point (its runs kept in `store`), or why there is
    none; the advice itself stands either way."""
    try:
        return schedule_advice(
            workload,
            batch_size=advice.batch_size,
            lr=advice.lr,
            max_batch_size=advice.max_batch_size,
            cap_is_lower_bound=advice.max_batch_size_is_lower_bound,
            store=store,
            device=device,
            progress=lambda text: say(f"schedule: {text}"),
        )
    except BatchlabError as error:
        return {"offered": False, "why": f"no ramp could be measured: {error}"}
