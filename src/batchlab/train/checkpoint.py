"""Checkpoints of a training run: enough state to continue it exactly, or to branch from it.

A checkpoint holds the model's and the optimizer's state dicts (momentum, Adam's moments), the fp16
gradient scaler's, the step, example and second counts, where the run stands in its data (the epoch,
the offset in its permutation and the generator that drew it) and the random state (dropout), with
the run's first point (for divergence) and the point it was saved at. A run resumed from it at the
same settings repeats the run that saved it step for step on the CPU.

The file is torch's zip format, read back with `weights_only=True`: tensors, numbers, strings and
containers of them, never arbitrary objects. (Results stay JSON and SQLite; a checkpoint is model
weights, the one thing they cannot hold.)
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from batchlab.core.data import Position
from batchlab.errors import bad

FORMAT = 1  # raise it with any change to the contents


def checkpoint_steps(at: Sequence[int | float], folder: str | Path | None, limit: int) -> set[int]:
    """The steps `checkpoint_at` names: an int is a step, a float in (0, 1) a fraction of `limit`."""
    if isinstance(at, (str, bytes)) or not isinstance(at, Sequence):
        raise bad("checkpoint_at", at, "a list of steps or fractions of the run", "pass [0.25, 0.5]")
    if at and folder is None:
        raise bad("checkpoint_dir", None, "a folder, given with checkpoint_at", "pass checkpoint_dir='ckpt'")
    steps = set()
    for value in at:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("checkpoint_at", value, "a step (int >= 1) or a fraction in (0, 1)", "pass [0.25, 0.5]")
        if isinstance(value, int):
            if value < 1:
                raise bad("checkpoint_at", value, "a step >= 1", "pass [100, 200]")
            steps.add(value)
        elif math.isfinite(value) and 0 < value < 1:
            steps.add(max(1, round(value * limit)))
        else:
            raise bad("checkpoint_at", value, "a fraction in (0, 1) of the run's steps", "pass [0.25, 0.5]")
    return steps


@dataclass(frozen=True, kw_only=True)
class Checkpoint:
    path: Path
    state: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.state["step"])

    @property
    def examples(self) -> int:
        return int(self.state["examples"])

    @property
    def seconds(self) -> float:
        return float(self.state["seconds"])

    @property
    def position(self) -> Position:
        return Position.from_dict(self.state["position"])

    @property
    def start_point(self) -> dict[str, Any]:
        return dict(self.state["start_point"])

    @property
    def point(self) -> dict[str, Any]:
        return dict(self.state["point"])

    @property
    def target_point(self) -> dict[str, Any] | None:
        return self.state["target_point"]

    def restore(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None
    ) -> None:
        try:
            model.load_state_dict(self.state["model"])
            optimizer.load_state_dict(self.state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as error:
            raise bad(
                "resume_from",
                str(self.path),
                "a checkpoint of this model and optimizer",
                f"resume with the settings that saved it ({str(error).splitlines()[0]})",
            ) from None
        if scaler is not None and self.state.get("scaler"):
            scaler.load_state_dict(self.state["scaler"])
        torch.set_rng_state(self.state["torch_rng"])
        device = next(model.parameters()).device
        if device.type == "cuda" and self.state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(self.state["cuda_rng"], device)

    @staticmethod
    def save(
        folder: Path,
        *,
        workload: str,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler | None,
        step: int,
        examples: int,
        seconds: float,
        position: Position,
        start_point: dict[str, Any],
        point: dict[str, Any],
        target_point: dict[str, Any] | None,
    ) -> Path:
        """Write the checkpoint of `step` into `folder` (whole or not at all) and return its path."""
        folder.mkdir(parents=True, exist_ok=True)
        device = next(model.parameters()).device
        state = {
            "format": FORMAT,
            "workload": workload,
            "step": step,
            "examples": examples,
            "seconds": seconds,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": None if scaler is None else scaler.state_dict(),
            "position": position.to_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "start_point": start_point,
            "point": point,
            "target_point": target_point,
        }
        path = folder / f"step-{step:08d}.pt"
        partial = path.with_suffix(".pt.partial")
        torch.save(state, partial)
        os.replace(partial, path)  # a kill mid-write leaves no half checkpoint under the real name
        return path


def load_checkpoint(path: str | Path, workload: str, device: torch.device) -> Checkpoint:
    """Read a checkpoint saved by `train(checkpoint_at=...)`, refusing one of another workload."""
    path = Path(path)
    if not path.is_file():
        raise bad("resume_from", str(path), "an existing checkpoint file", "pass a path train saved")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # a truncated or foreign file: torch raises many kinds
        raise bad(
            "resume_from", str(path), "a checkpoint saved by batchlab", f"it could not be read: {error}"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise bad("resume_from", str(path), f"a batchlab checkpoint of format {FORMAT}", "save it again")
    if state["workload"] != workload:
        raise bad(
            "resume_from", str(path), f"a checkpoint of {workload}", f"it is one of {state['workload']}"
        )
    return Checkpoint(path=path, state=state)
