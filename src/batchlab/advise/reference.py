"""The reference run, from the user's own batch and rate to the target, and the gradient noise scale
B_noise measured where it gets there (McCandlish et al. 2018): B_simple grows as the loss falls, and
the last stretch of training is where most steps go, so the value there governs what a bigger batch saves."""

from __future__ import annotations

from typing import Any

import torch

from batchlab.advise.model import (
    point_and_window_disagree,
)
from batchlab.measure.noise import noise_at_parameters
from batchlab.train.result import TrainResult
from batchlab.train.run import train
from batchlab.workload import Workload

NOISE_MICRO_BATCHES = 4


# B_noise is read to NOISE_REL_ERROR (standard error over the value), not over the whole training set:
# the prediction's steps move with B_noise as 1 + B_noise / B, so 5% of B_noise is at most 5% of the
# steps, below the 10% a tuning doubling must save; a whole pass can cost more than the reference
# run it follows (docs/measurements.md#noise-precision).
NOISE_REL_ERROR = 0.05


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
