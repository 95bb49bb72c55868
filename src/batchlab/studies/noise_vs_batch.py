"""noise-vs-batch: the spread of the batch gradient around the full gradient against B, beside the
law E|g_B - G|^2 = tr(Sigma)/B (N - B)/(N - 1) for sampling without replacement."""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch

from batchlab.core.data import DeviceData
from batchlab.core.device import resolve_device
from batchlab.core.store import Store
from batchlab.errors import check_int
from batchlab.measure.noise import exact_noise_scale
from batchlab.sharpness import flat_mean_gradient
from batchlab.studies.arms import StudyName, StudyProgress, StudyResult
from batchlab.train.model import fresh_model
from batchlab.train.run import train
from batchlab.workload import Workload


def noise_vs_batch(
    workload: Workload,
    *,
    warmup_steps: int | None = None,
    draws: int = 64,
    store: Store | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    progress: StudyProgress | None = None,
) -> StudyResult:
    """At parameters reached by `warmup_steps` reference steps (default: one epoch), draw batches of
    each power-of-two size without replacement (`draws`, or a training set's worth of examples if
    more) and measure |g_B - G|^2 against the law.
    The model is in eval mode (a per-example gradient, and so the law, needs no batch statistics)
    and in float64, so that rounding never looks like noise."""
    check_int("draws", draws, minimum=8, fix="pass --draws 64")
    n = workload.train_size
    steps = n // workload.batch_size if warmup_steps is None else warmup_steps
    dev = resolve_device(device)
    if progress:
        progress(f"{steps} reference steps")
    if steps > 0:
        model = train(
            workload,
            batch_size=workload.batch_size,
            max_steps=steps,
            seed=seed,
            device=dev,
            keep_model=True,
            eval_every=steps,
        ).model
        assert model is not None
    else:
        model = fresh_model(workload, seed, dev)
    if progress:
        progress("per-example gradients")
    exact = exact_noise_scale(workload, copy.deepcopy(model))
    model = model.double().eval()
    x_all, y_all = _all_examples(workload, dev)
    chunks = [(x_all[start : start + 512], y_all[start : start + 512]) for start in range(0, n, 512)]
    full = flat_mean_gradient(model, workload, chunks)
    grad_norm = float(full.norm())
    sizes = [1 << k for k in range(int(math.log2(n // 2)) + 1)]
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for b in sizes:
        if progress:
            progress(f"batches of {b}")
        rows.append(_row(model, workload, x_all, y_all, full, b, draws, exact["trace_sigma"], generator))
    small = [r for r in rows if r["batch_size"] <= n / 8]
    slope = float(
        np.polyfit(np.log([r["batch_size"] for r in small]), np.log([r["spread"] for r in small]), 1)[0]
    )
    ratios = [r["ratio"] for r in rows]
    findings = [
        f"Over batches of 1 to {small[-1]['batch_size']} the spread |g_B - G| fell as B^{slope:.3f} "
        f"(the law: B^-0.5, with a finite-population factor that matters past {n // 8} of {n}).",
        f"Measured over predicted mean squared error: {min(ratios):.2f} to {max(ratios):.2f} across "
        f"{len(rows)} batch sizes (at least {draws} draws each), at most "
        f"{max(abs(r['z']) for r in rows):.1f} standard errors from the law.",
        f"The spread equals the gradient's norm |G| = {grad_norm:.3g} near B = tr(Sigma)/|G|^2 = "
        f"B_simple = {exact['b_simple']:.3g}: below it a step's direction is mostly noise.",
    ]
    return StudyResult(
        study=StudyName.NOISE_VS_BATCH.value,
        workload=workload.name,
        question="Does the spread of the gradient estimate fall as 1/sqrt(B)?",
        findings=tuple(findings),
        settings={"warmup_steps": steps, "draws": draws, "train_size": n, "seed": seed},
        rows=tuple(rows),
        extra={"exponent": slope, "grad_norm": grad_norm, **exact},
    )


def _row(
    model: torch.nn.Module,
    workload: Workload,
    x_all: torch.Tensor,
    y_all: torch.Tensor,
    full: torch.Tensor,
    b: int,
    draws: int,
    trace_sigma: float,
    generator: torch.Generator,
) -> dict[str, Any]:
    """Batches of `b` drawn without replacement: their gradients' mean squared error from the full
    gradient `full`, beside the law tr(Sigma)/B (N - B)/(N - 1)."""
    n = len(y_all)
    errors = []
    # At least a training set's worth of examples per size: single-example errors are heavy-tailed
    # (a few examples carry most of tr(Sigma)), and 64 draws of them typically miss those few.
    for _ in range(max(draws, math.ceil(n / b))):
        idx = torch.randperm(n, generator=generator)[:b].to(x_all.device)
        errors.append(
            float((flat_mean_gradient(model, workload, [(x_all[idx], y_all[idx])]) - full).pow(2).sum())
        )
    mean = float(np.mean(errors))
    stderr = float(np.std(errors, ddof=1) / math.sqrt(len(errors)))
    law = trace_sigma / b * (n - b) / (n - 1)
    return {
        "batch_size": b,
        "draws": len(errors),
        "spread": math.sqrt(mean),
        "mean_sq_error": mean,
        "mean_sq_stderr": stderr,
        "law_sq": law,
        "law_spread": math.sqrt(law),
        "ratio": mean / law,
        "z": (mean - law) / stderr if stderr > 0 else 0.0,
    }


def _all_examples(workload: Workload, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:

    xs, ys = zip(*DeviceData(workload.train_data, device).in_order(1024), strict=True)
    x, y = torch.cat(xs), torch.cat(ys)
    return (x.double() if x.is_floating_point() else x), (y.double() if y.is_floating_point() else y)
