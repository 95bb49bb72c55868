"""generalization: small against large batch: train and eval loss, the gap, sharpness (Keskar et al.
2017); then the large batch with ghost batch norm and with as many updates as the small one (Hoffer
et al. 2017)."""

from __future__ import annotations

import math
from typing import Any

import torch

from batchlab.core.store import Store
from batchlab.errors import bad
from batchlab.lr import LrRule, scale_lr
from batchlab.studies.arms import (
    Arm,
    StudyName,
    StudyProgress,
    StudyResult,
    check_epochs,
    fmt_value,
    run_arms,
)
from batchlab.workload import Workload, check_batch_size


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
    epochs = check_epochs(epochs)
    small = workload.batch_size if small is None else small
    if large is None:  # 16x the small batch, at most a quarter of the data, a power of two if capped
        large = min(16 * small, 1 << int(math.log2(max(workload.train_size // 4, 1))))
    # Both must fit in the training set: an epoch of the large batch is n // large updates.
    check_batch_size(small, workload.train_size, field="small")
    check_batch_size(large, workload.train_size, field="large")
    if large <= small:
        raise bad("large", large, f"larger than the small batch {small}", "pass --large 512")
    ghost = small if ghost_batch_size is None else ghost_batch_size
    has_norm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in workload.model().modules())
    lr_large = scale_lr(LrRule.SQRT, lr_ref=workload.lr, batch_ref=small, batch_size=large)
    n = workload.train_size  # as many updates as the small batch (Hoffer et al.'s regime adaptation)
    longer = epochs * (n // small) / (n // large)
    arms = _arms(
        workload,
        small=small,
        large=large,
        lr_large=lr_large,
        epochs=epochs,
        longer=longer,
        ghost=ghost if has_norm else None,
    )
    rows, runs = run_arms(
        arms, workload, store=store, seed=seed, device=device, progress=progress, sharpness=True
    )
    findings = _findings({r["group"]: r for r in rows}, workload, small=small, large=large, epochs=epochs)
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


def _arms(
    workload: Workload,
    *,
    small: int,
    large: int,
    lr_large: float,
    epochs: float,
    longer: float,
    ghost: int | None,
) -> list[Arm]:
    """Small and large batch for the same epochs; the large one with ghost batch norm (where the model
    has batch norm: `ghost`), for as many updates as the small one, and with both."""
    arms = [
        Arm(label=f"small B={small}", batch_size=small, lr=workload.lr, epochs=epochs, group="small"),
        Arm(label=f"large B={large}", batch_size=large, lr=lr_large, epochs=epochs, group="large"),
    ]
    if ghost is not None:
        arms.append(
            Arm(
                label=f"large + ghost BN ({ghost})",
                batch_size=large,
                lr=lr_large,
                epochs=epochs,
                group="large+ghost",
                ghost_batch_size=ghost,
            )
        )
    arms.append(
        Arm(
            label=f"large, {longer:.3g} epochs",
            batch_size=large,
            lr=lr_large,
            epochs=longer,
            group="large+longer",
        )
    )
    if ghost is not None:
        arms.append(
            Arm(
                label=f"large + ghost BN, {longer:.3g} epochs",
                batch_size=large,
                lr=lr_large,
                epochs=longer,
                group="large+ghost+longer",
                ghost_batch_size=ghost,
            )
        )
    return arms


def _findings(
    by: dict[str, dict[str, Any]], workload: Workload, *, small: int, large: int, epochs: float
) -> list[str]:
    """What the arms' rows say: the gap and sharpness of each, against Keskar et al.'s observation."""
    s, big = by["small"], by["large"]
    findings = [
        f"Small batch {small}: train loss {fmt_value(s['final_train_loss'])}, eval loss "
        f"{fmt_value(s['final_eval_loss'])}, gap {fmt_value(s['generalization_gap'])}, "
        f"sharpness {fmt_value(s.get('sharpness'))}. Large batch {large} (lr x sqrt({large}/{small}), same "
        f"{epochs:g} epochs, {big['updates']} updates against {s['updates']}): train loss "
        f"{fmt_value(big['final_train_loss'])}, eval loss "
        f"{fmt_value(big['final_eval_loss'])}, gap {fmt_value(big['generalization_gap'])}, "
        f"sharpness {fmt_value(big.get('sharpness'))}."
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
                f"{what}: eval loss {fmt_value(r['final_eval_loss'])}, "
                f"gap {fmt_value(r['generalization_gap'])}, "
                f"sharpness {fmt_value(r.get('sharpness'))}."
            )
    if "large+ghost" not in by:
        findings.append(
            f"{workload.name}'s model has no BatchNorm layer: the ghost batch norm arms were left out."
        )
    return findings
