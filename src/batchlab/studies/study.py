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

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from typing import Any

import numpy as np
import torch

from batchlab.core.device import resolve_device
from batchlab.core.json_safe import json_safe
from batchlab.core.store import Store
from batchlab.errors import bad
from batchlab.lr import LrRule, scale_lr
from batchlab.measure.noise import exact_noise_scale
from batchlab.schedule import BatchSchedule, ScheduleMode
from batchlab.sharpness import _mean_gradient
from batchlab.studies.critical import critical_batch
from batchlab.train.loop import TrainResult, fresh_model, train
from batchlab.train.record import recorded_train
from batchlab.workload import Workload, load_workload

StudyProgress = Callable[[str], None]  # told the label of each run as it starts


class StudyName(str, Enum):
    LR_SCALING = "lr-scaling"
    INCREASE_BATCH = "increase-batch"
    GENERALIZATION = "generalization"
    NOISE_VS_BATCH = "noise-vs-batch"
    CRITICAL_BATCH = "critical-batch"


@dataclass(frozen=True, kw_only=True)
class StudyResult:
    study: str
    workload: str
    question: str  # the claim the study tests
    findings: tuple[str, ...]  # what the numbers say, computed from them
    settings: dict[str, Any]
    rows: tuple[dict[str, Any], ...]  # one per arm: the table of the report
    runs: tuple[dict[str, Any], ...] = ()  # each arm's label and curve, for the plots
    extra: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))


@dataclass(frozen=True, kw_only=True)
class _Arm:
    label: str
    batch_size: int | BatchSchedule
    lr: float
    epochs: float
    group: str = ""
    ghost_batch_size: int | None = None
    warmup_steps: int = 0


def _run_arms(
    arms: list[_Arm],
    workload: Workload,
    *,
    store: Store | None,
    seed: int,
    device: str | torch.device,
    progress: StudyProgress | None,
    sharpness: bool = False,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Train each arm (reusing finished ones from the store): its table row and its curve."""
    rows, runs = [], []
    for arm in arms:
        if progress:
            progress(arm.label)
        result, _ = recorded_train(
            store,
            workload,
            kind="study",
            batch_size=arm.batch_size,
            lr=arm.lr,
            max_epochs=arm.epochs,
            warmup_steps=arm.warmup_steps,
            ghost_batch_size=arm.ghost_batch_size,
            sharpness=sharpness,
            seed=seed,
            device=device,
        )
        rows.append(_row(arm, result))
        runs.append(_curve(arm, result, workload.train_size))
    return rows, runs


def _row(arm: _Arm, result: TrainResult) -> dict[str, Any]:
    gap = None
    if result.final_eval_loss is not None and result.final_train_loss is not None:
        gap = result.final_eval_loss - result.final_train_loss
    row: dict[str, Any] = {
        "arm": arm.label,
        "group": arm.group,
        "batch_size": result.batch_size,
        "lr": result.lr,
        "epochs": arm.epochs,
        "updates": result.steps,
        "examples": result.examples,
        "diverged": result.diverged,
        "final_train_loss": result.final_train_loss,
        "final_eval_loss": result.final_eval_loss,
        "generalization_gap": gap,
        **result.final_metrics,
        "seconds": result.seconds,
    }
    if result.ghost_batch_size is not None:
        row["ghost_batch_size"] = result.ghost_batch_size
    if result.sharpness is not None:
        row["sharpness"] = result.sharpness["top_eigenvalue"]
        row["epsilon_sharpness"] = result.sharpness["epsilon_sharpness"]
    return row


def _epochs_done(schedule: BatchSchedule, steps: int, train_size: int) -> float:
    """Passes over the data after `steps` updates (an epoch is N // B updates of its batch B)."""
    epoch = 0
    while True:
        per_epoch = train_size // schedule.batch_size_at(epoch)
        if steps < per_epoch:
            return epoch + steps / per_epoch
        steps -= per_epoch
        epoch += 1


def _curve(arm: _Arm, result: TrainResult, train_size: int) -> dict[str, Any]:
    schedule = (
        arm.batch_size
        if isinstance(arm.batch_size, BatchSchedule)
        else BatchSchedule.constant(arm.batch_size)
    )
    return {
        "label": arm.label,
        "group": arm.group,
        "curve": [
            {
                "epoch": _epochs_done(schedule, p.step, train_size),
                "step": p.step,
                "batch_size": p.batch_size,
                "lr": p.lr,
                "train_loss": p.train_loss,
                "eval_loss": p.eval_loss,
            }
            for p in result.curve
        ],
    }


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def _check_epochs(epochs: float) -> float:
    if isinstance(epochs, bool) or not isinstance(epochs, (int, float)) or not 0 < epochs < math.inf:
        raise bad("epochs", epochs, "a number > 0", "pass --epochs 20")
    return float(epochs)


def _sizes(batch_sizes: Sequence[int], workload: Workload) -> list[int]:
    sizes = sorted(set(batch_sizes))
    if not sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in sizes):
        raise bad("batch_sizes", list(batch_sizes), "integers >= 1", "pass --batch-sizes 64,256,1024")
    usable = [b for b in sizes if b <= workload.train_size]
    if not usable:
        raise bad(
            "batch_sizes",
            list(batch_sizes),
            f"at least one no larger than the training set ({workload.train_size})",
            "pass smaller batch sizes",
        )
    return usable


# lr-scaling -------------------------------------------------------------------------------------


def lr_scaling(
    workload: Workload,
    *,
    batch_sizes: Sequence[int] = (64, 256, 1024),
    epochs: float = 20,
    rule: LrRule = LrRule.LINEAR,
    warmup_epochs: float = 2,
    store: Store | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    progress: StudyProgress | None = None,
) -> StudyResult:
    sizes = _sizes(batch_sizes, workload)
    epochs = _check_epochs(epochs)
    arms = []
    for group, group_rule in (("fixed", LrRule.NONE), ("scaled", rule)):
        for b in sizes:
            lr = scale_lr(group_rule, lr_ref=workload.lr, batch_ref=workload.batch_size, batch_size=b)
            warmup = round(warmup_epochs * (workload.train_size // b))
            arms.append(
                _Arm(
                    label=f"B={b}, lr {group}",
                    batch_size=b,
                    lr=lr,
                    epochs=epochs,
                    group=group,
                    warmup_steps=warmup,
                )
            )
    rows, runs = _run_arms(arms, workload, store=store, seed=seed, device=device, progress=progress)
    findings = []
    for group in ("fixed", "scaled"):
        finals = [(r["batch_size"], r["final_eval_loss"], r["diverged"]) for r in rows if r["group"] == group]
        text = ", ".join(f"B={b}: {'diverged' if d else _fmt(v)}" for b, v, d in finals)
        label = (
            "fixed" if group == "fixed" else f"scaled ({rule.value} rule, {warmup_epochs:g}-epoch warm-up)"
        )
        findings.append(f"Final eval loss after {epochs:g} epochs, lr {label}: {text}.")
    for group in ("fixed", "scaled"):
        curves = [r for r in runs if r["group"] == group]
        for run, row in zip(curves[1:], [r for r in rows if r["group"] == group][1:], strict=True):
            row["curve_distance"] = _curve_distance(curves[0]["curve"], run["curve"], epochs)
    pairs = [
        (b, _by(rows, "fixed", b)["curve_distance"], _by(rows, "scaled", b)["curve_distance"])
        for b in sizes[1:]
    ]
    if pairs:
        text = "; ".join(f"B={b}: {f:.2f}x fixed, {c:.2f}x scaled" for b, f, c in pairs)
        findings.append(
            f"Against epochs, each curve's distance from B={sizes[0]}'s (the geometric mean ratio of eval "
            f"loss at 25, 50, 75 and 100% of training; 1.00x = on top of it): {text}."
        )
        better = [b for b, f, c in pairs if c < f]
        worse = [b for b, f, c in pairs if c >= f]
        if better:
            findings.append(f"Scaling the learning rate brought B={', '.join(map(str, better))} closer.")
        if worse:
            findings.append(
                f"At B={', '.join(map(str, worse))} the scaled rate did not help: the rule's assumption "
                "(the same noise per example at every batch) broke down, or the rate passed stability."
            )
    return StudyResult(
        study=StudyName.LR_SCALING.value,
        workload=workload.name,
        question="Does scaling the learning rate with the batch make the loss curves line up against epochs?",
        findings=tuple(findings),
        settings={
            "batch_sizes": sizes,
            "epochs": epochs,
            "rule": rule.value,
            "warmup_epochs": warmup_epochs,
            "reference": {"batch_size": workload.batch_size, "lr": workload.lr},
            "seed": seed,
        },
        rows=tuple(rows),
        runs=tuple(runs),
    )


def _by(rows: list[dict[str, Any]], group: str, batch_size: int) -> dict[str, Any]:
    return next(r for r in rows if r["group"] == group and r["batch_size"] == batch_size)


def _curve_distance(reference: list[dict[str, Any]], other: list[dict[str, Any]], epochs: float) -> float:
    """exp(mean |log L_other(e) - log L_ref(e)|) at 25/50/75/100% of `epochs`, eval loss interpolated
    linearly in epochs; infinite when a curve has no finite value there (a diverged run)."""

    def at(curve: list[dict[str, Any]], epoch: float) -> float:
        points = [(p["epoch"], p["eval_loss"]) for p in curve if p["eval_loss"] is not None]
        if not points or not all(math.isfinite(v) and v > 0 for _, v in points):
            return math.nan
        xs, ys = zip(*points, strict=True)
        return float(np.interp(epoch, xs, np.log(ys)))

    grid = [epochs * f for f in (0.25, 0.5, 0.75, 1.0)]
    gaps = [abs(at(other, e) - at(reference, e)) for e in grid]
    return math.inf if any(math.isnan(g) for g in gaps) else math.exp(float(np.mean(gaps)))


# increase-batch ---------------------------------------------------------------------------------


def increase_batch(
    workload: Workload,
    *,
    batch_size: int | None = None,
    epochs: float = 32,
    milestones: Sequence[int] | None = None,
    factor: float = 2,
    max_batch_size: int | None = None,
    store: Store | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    progress: StudyProgress | None = None,
) -> StudyResult:
    epochs = _check_epochs(epochs)
    start = workload.batch_size if batch_size is None else batch_size
    if milestones is None:
        milestones = [round(epochs * k / 4) for k in (1, 2, 3)]
    decay = BatchSchedule.multistep(start, milestones, factor, mode=ScheduleMode.DECAY_LR)
    grow = BatchSchedule.multistep(
        start, milestones, factor, mode=ScheduleMode.INCREASE_BATCH, max_batch_size=max_batch_size
    )
    arms = [
        _Arm(label="constant (no decay)", batch_size=start, lr=workload.lr, epochs=epochs, group="constant"),
        _Arm(
            label="decay the learning rate", batch_size=decay, lr=workload.lr, epochs=epochs, group="decay-lr"
        ),
        _Arm(
            label="increase the batch", batch_size=grow, lr=workload.lr, epochs=epochs, group="increase-batch"
        ),
    ]
    rows, runs = _run_arms(arms, workload, store=store, seed=seed, device=device, progress=progress)
    by = {r["group"]: r for r in rows}
    metric = workload.target.metric
    findings = []
    d, g = by["decay-lr"], by["increase-batch"]
    if not d["diverged"] and not g["diverged"]:
        findings.append(
            f"Increasing the batch ({' -> '.join(str(p.batch_size) for p in grow.phases)}) ended at eval "
            f"loss {_fmt(g['final_eval_loss'])} in {g['updates']} updates; decaying the learning rate "
            f"(/{factor:g} at epochs {', '.join(map(str, milestones))}) ended at "
            f"{_fmt(d['final_eval_loss'])} "
            f"in {d['updates']}: {d['updates'] / g['updates']:.2f}x fewer updates for the batch schedule."
        )
        for name in sorted(k for k in d if k.startswith("eval_") and k != "eval_loss"):
            findings.append(
                f"Final {name}: {_fmt(g.get(name), 4)} (increase the batch), "
                f"{_fmt(d.get(name), 4)} (decay the rate), "
                f"{_fmt(by['constant'].get(name), 4)} (constant)."
            )
    capped = [p for p in grow.phases if p.lr_factor < 1]
    if capped:
        findings.append(
            f"The batch reached the cap of {max_batch_size} at epoch {capped[0].start_epoch}; from there the "
            "learning rate decayed instead."
        )
    return StudyResult(
        study=StudyName.INCREASE_BATCH.value,
        workload=workload.name,
        question="Does increasing the batch do what decaying the learning rate does, with fewer updates?",
        findings=tuple(findings),
        settings={
            "batch_size": start,
            "epochs": epochs,
            "milestones": list(milestones),
            "factor": factor,
            "max_batch_size": max_batch_size,
            "lr": workload.lr,
            "target_metric": metric,
            "seed": seed,
            "schedules": {"decay-lr": decay.to_dict(), "increase-batch": grow.to_dict()},
        },
        rows=tuple(rows),
        runs=tuple(runs),
    )


# generalization ---------------------------------------------------------------------------------


def generalization(
    workload: Workload,
    *,
    small: int | None = None,
    large: int | None = None,
    epochs: float = 20,
    ghost_batch_size: int | None = None,
    store: Store | None = None,
    seed: int = 0,
    device: str | torch.device = "auto",
    progress: StudyProgress | None = None,
) -> StudyResult:
    epochs = _check_epochs(epochs)
    small = workload.batch_size if small is None else small
    if large is None:  # 16x the small batch, at most a quarter of the data, a power of two if capped
        large = min(16 * small, 1 << int(math.log2(max(workload.train_size // 4, 1))))
    _sizes([small, large], workload)
    if large <= small:
        raise bad("large", large, f"larger than the small batch {small}", "pass --large 512")
    ghost = small if ghost_batch_size is None else ghost_batch_size
    has_norm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in workload.model().modules())
    lr_large = scale_lr(LrRule.SQRT, lr_ref=workload.lr, batch_ref=small, batch_size=large)
    n = workload.train_size  # as many updates as the small batch (Hoffer et al.'s regime adaptation)
    longer = epochs * (n // small) / (n // large)
    arms = [
        _Arm(label=f"small B={small}", batch_size=small, lr=workload.lr, epochs=epochs, group="small"),
        _Arm(label=f"large B={large}", batch_size=large, lr=lr_large, epochs=epochs, group="large"),
    ]
    if has_norm:
        arms.append(
            _Arm(
                label=f"large + ghost BN ({ghost})",
                batch_size=large,
                lr=lr_large,
                epochs=epochs,
                group="large+ghost",
                ghost_batch_size=ghost,
            )
        )
    arms.append(
        _Arm(
            label=f"large, {longer:.3g} epochs",
            batch_size=large,
            lr=lr_large,
            epochs=longer,
            group="large+longer",
        )
    )
    if has_norm:
        arms.append(
            _Arm(
                label=f"large + ghost BN, {longer:.3g} epochs",
                batch_size=large,
                lr=lr_large,
                epochs=longer,
                group="large+ghost+longer",
                ghost_batch_size=ghost,
            )
        )
    rows, runs = _run_arms(
        arms, workload, store=store, seed=seed, device=device, progress=progress, sharpness=True
    )
    by = {r["group"]: r for r in rows}
    s, big = by["small"], by["large"]
    findings = [
        f"Small batch {small}: train loss {_fmt(s['final_train_loss'])}, eval loss "
        f"{_fmt(s['final_eval_loss'])}, gap {_fmt(s['generalization_gap'])}, "
        f"sharpness {_fmt(s.get('sharpness'))}. Large batch {large} (lr x sqrt({large}/{small}), same "
        f"{epochs:g} epochs, {big['updates']} updates against {s['updates']}): train loss "
        f"{_fmt(big['final_train_loss'])}, eval loss "
        f"{_fmt(big['final_eval_loss'])}, gap {_fmt(big['generalization_gap'])}, "
        f"sharpness {_fmt(big.get('sharpness'))}."
    ]
    if s.get("sharpness") and big.get("sharpness"):
        sharper = big["sharpness"] / s["sharpness"]
        findings.append(
            f"The large batch's minimum is {sharper:.2f}x as sharp (top Hessian eigenvalue)"
            + (
                ": Keskar et al.'s observation holds here."
                if sharper > 1
                else ": the opposite of Keskar et al.'s observation."
            )
        )
    for group, what in (
        ("large+ghost", "With ghost batch norm"),
        ("large+longer", "Trained as long (in updates)"),
        ("large+ghost+longer", "With both"),
    ):
        if group in by:
            r = by[group]
            findings.append(
                f"{what}: eval loss {_fmt(r['final_eval_loss'])}, gap {_fmt(r['generalization_gap'])}, "
                f"sharpness {_fmt(r.get('sharpness'))}."
            )
    if not has_norm:
        findings.append(
            f"{workload.name}'s model has no BatchNorm layer: the ghost batch norm arms were left out."
        )
    return StudyResult(
        study=StudyName.GENERALIZATION.value,
        workload=workload.name,
        question="Do large batches generalize worse, and do ghost batch norm and longer training "
        "close the gap?",
        findings=tuple(findings),
        settings={
            "small": small,
            "large": large,
            "epochs": epochs,
            "longer_epochs": longer,
            "ghost_batch_size": ghost if has_norm else None,
            "lr_small": workload.lr,
            "lr_large": lr_large,
            "seed": seed,
        },
        rows=tuple(rows),
        runs=tuple(runs),
    )


# noise-vs-batch ---------------------------------------------------------------------------------


def _flat_grad(model: torch.nn.Module, workload: Workload, batches: list[tuple[Any, Any]]) -> torch.Tensor:
    """The mean-loss gradient over `batches`, flattened into one vector."""
    return torch.cat([g.reshape(-1) for g in _mean_gradient(model, workload, batches, create_graph=False)])


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
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 8:
        raise bad("draws", draws, "an integer >= 8", "pass --draws 64")
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
    full = _flat_grad(model, workload, chunks)
    grad_norm = float(full.norm())
    sizes = [1 << k for k in range(int(math.log2(n // 2)) + 1)]
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for b in sizes:
        if progress:
            progress(f"batches of {b}")
        errors = []
        # At least a training set's worth of examples per size: single-example errors are heavy-tailed
        # (a few examples carry most of tr(Sigma)), and 64 draws of them typically miss those few.
        for _ in range(max(draws, math.ceil(n / b))):
            idx = torch.randperm(n, generator=generator)[:b].to(dev)
            errors.append(
                float((_flat_grad(model, workload, [(x_all[idx], y_all[idx])]) - full).pow(2).sum())
            )
        mean = float(np.mean(errors))
        stderr = float(np.std(errors, ddof=1) / math.sqrt(len(errors)))
        law = exact["trace_sigma"] / b * (n - b) / (n - 1)
        rows.append(
            {
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
        )
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


def _all_examples(workload: Workload, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    from batchlab.core.data import DeviceData

    xs, ys = zip(*DeviceData(workload.train_data, device).in_order(1024), strict=True)
    x, y = torch.cat(xs), torch.cat(ys)
    return (x.double() if x.is_floating_point() else x), (y.double() if y.is_floating_point() else y)


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
    workload = load_workload(workload)
    started = time.perf_counter()
    result = STUDIES[study](workload, store=store, seed=seed, device=device, progress=progress, **options)
    result = replace(result, seconds=time.perf_counter() - started)
    if store is not None:
        store.save_result(f"study:{study.value}", workload.name, result.to_dict())
    return result
