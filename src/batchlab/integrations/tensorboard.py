"""`--tensorboard DIR`: a command's curves as TensorBoard scalars, one run a subfolder.

Each training run's curve gives, at each evaluation step, its losses (train sample, evaluation
set, mini-batches), metrics, learning rate, batch size and tracked noise scale; `advise` adds the
noise history of its reference run and its predicted time to target against batch size (the
"step" axis is then the batch). Written with PyTorch's SummaryWriter, which needs the
`tensorboard` package (`pip install batchlab[tensorboard]`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from batchlab.errors import bad

CURVE_SCALARS = (
    "train_loss",
    "eval_loss",
    "batch_loss",
    "lr",
    "batch_size",
    "b_simple",
    "examples",
    "seconds",
)


def check_available(folder: Path | None) -> None:
    """Fail before any work when --tensorboard is asked for and cannot be written."""
    if folder is None:
        return
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise bad(
            "--tensorboard", str(folder), "used with the tensorboard package installed",
            "pip install 'batchlab[tensorboard]'",
        ) from None  # fmt: skip
    if folder.exists() and not folder.is_dir():
        raise bad("--tensorboard", str(folder), "a folder, not a file", "pass a folder's path")


def write_runs(folder: Path, runs: Iterable[tuple[str, list[dict[str, Any]]]]) -> list[Path]:
    """One subfolder a run, named by its label: every scalar of every curve point."""
    from torch.utils.tensorboard import SummaryWriter

    written = []
    for label, curve in runs:
        where = folder / _safe(label)
        with SummaryWriter(str(where)) as writer:
            for point in curve:
                for name, value in _scalars(point):
                    writer.add_scalar(name, value, int(point["step"]))
        written.append(where)
    return written


def write_series(folder: Path, label: str, series: dict[str, list[tuple[int, float]]]) -> Path:
    """Named series of (step, value), for what is not a training curve."""
    from torch.utils.tensorboard import SummaryWriter

    where = folder / _safe(label)
    with SummaryWriter(str(where)) as writer:
        for name, points in series.items():
            for step, value in points:
                if _finite(value):
                    writer.add_scalar(name, float(value), int(step))
    return where


def _scalars(point: dict[str, Any]) -> Iterable[tuple[str, float]]:
    for name in CURVE_SCALARS:
        if _finite(point.get(name)):
            yield name, float(point[name])
    for name, value in (point.get("metrics") or {}).items():
        if _finite(value):
            yield name, float(value)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _safe(label: str) -> str:
    """A run's label as a folder name: letters, digits, '.', '_', '-', '=' kept; the rest '_'."""
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", label).strip("_") or "run"


def advice_series(data: dict[str, Any]) -> dict[str, list[tuple[int, float]]]:
    """The advice's measurements as series: the reference run's noise history against its steps,
    and the predicted time to target against the batch size (TensorBoard's step axis)."""
    history = (data.get("noise") or {}).get("history") or []
    return {
        "b_simple": [(p["step"], p["b_simple"]) for p in history if p.get("b_simple") is not None],
        "train_loss": [(p["step"], p["train_loss"]) for p in history if p.get("train_loss") is not None],
        "predicted_seconds_to_target_by_batch": [
            (p["batch_size"], p["seconds_to_target"]) for p in data["predictions"]
        ],
        "predicted_steps_to_target_by_batch": [
            (p["batch_size"], p["steps_to_target"]) for p in data["predictions"]
        ],
    }
