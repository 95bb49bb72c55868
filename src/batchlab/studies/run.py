"""Studies: small experiments that test the large-batch folklore on the user's own workload.

Each study trains (or measures) a handful of configurations, records every run in the store as it
goes (a killed study resumes), and returns its numbers and a finding computed from them, not
written in advance: on another workload the same study may find the opposite.

  lr-scaling       batches 64, 256, 1024 for the same epochs, the learning rate fixed, then scaled
                   (Goyal et al. 2017): do the loss curves line up against epochs?
  increase-batch   the same milestones as a learning-rate decay, the batch grown instead (Smith et
                   al. 2018): the final eval metric and the number of parameter updates of each.
  generalization   small against large batch: train and eval loss, the gap, sharpness (Keskar et al.
                   2017); then the large batch with ghost batch norm and with as many updates as the
                   small one (Hoffer et al. 2017).
  noise-vs-batch   the spread of the batch gradient around the full gradient against B, beside the
                   law E|g_B - G|^2 = tr(Sigma)/B (N - B)/(N - 1) for sampling without replacement.
  critical-batch   the critical batch at points of training by branched training (Merrill et al.
                   2025), B_simple beside it, and a batch ramp built from it against the constant
                   batch (critical.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from batchlab.core.store import Store
from batchlab.errors import bad, check_seed
from batchlab.studies.arms import StudyName, StudyProgress, StudyResult
from batchlab.studies.critical import critical_batch
from batchlab.studies.generalization import generalization
from batchlab.studies.increase_batch import increase_batch
from batchlab.studies.lr_scaling import lr_scaling
from batchlab.studies.noise_vs_batch import noise_vs_batch
from batchlab.workload import Workload
from batchlab.workloads import load_workload

# lr-scaling -------------------------------------------------------------------------------------


# increase-batch ---------------------------------------------------------------------------------


# generalization ---------------------------------------------------------------------------------


# noise-vs-batch ---------------------------------------------------------------------------------


# Dispatch ---------------------------------------------------------------------------------------

STUDIES: dict[StudyName, Callable[..., StudyResult]] = {
    StudyName.LR_SCALING: lr_scaling,
    StudyName.INCREASE_BATCH: increase_batch,
    StudyName.GENERALIZATION: generalization,
    StudyName.NOISE_VS_BATCH: noise_vs_batch,
    StudyName.CRITICAL_BATCH: critical_batch,
}


def run_study(
    name: str | StudyName,
    workload: Workload | str,
    *,
    store: Store | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    progress: StudyProgress | None = None,
    **options: Any,
) -> StudyResult:
    """Run one study by name; `options` are that study's own (epochs, batch_sizes, ...)."""
    try:
        study = StudyName(name)
    except ValueError:
        choices = ", ".join(s.value for s in StudyName)
        raise bad("study", name, f"one of {choices}", "pass `batchlab study lr-scaling`") from None
    check_seed(seed, fix="pass --seed 0")
    workload = load_workload(workload)
    started = time.perf_counter()
    result = STUDIES[study](workload, store=store, seed=seed, device=device, progress=progress, **options)
    result = replace(result, seconds=time.perf_counter() - started)
    if store is not None:
        store.save_result(f"study:{study.value}", workload.name, result.to_dict())
    return result
