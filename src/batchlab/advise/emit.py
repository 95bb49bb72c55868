"""The advice as the settings a trainer takes: `batchlab advise --emit torchrun|lightning|hf`.

One function, `trainer_settings`, turns the advice's global batch and learning rate into what a
launch needs for a number of devices: the per-device micro-batch, the gradient accumulation steps
and the warm-up. Each format only writes those same numbers in its trainer's words.
"""

from __future__ import annotations

import enum
import shlex
from dataclasses import asdict, dataclass, replace
from typing import Any

from batchlab.advise.result import Advice
from batchlab.errors import BatchlabError, bad
from batchlab.workload import Workload


class Emit(str, enum.Enum):
    TORCHRUN = "torchrun"
    LIGHTNING = "lightning"
    HF = "hf"


@dataclass(frozen=True)
class TrainerSettings:
    """A global batch as devices x per-device micro-batch x accumulation steps, with its rate."""

    global_batch_size: int
    devices: int
    per_device_batch_size: int
    accumulation: int
    lr: float
    warmup_steps: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def trainer_settings(
    global_batch: int, lr: float, *, devices: int, max_per_device: int | None, warmup_steps: int = 0
) -> TrainerSettings:
    """The fewest accumulation steps whose per-device micro-batch fits under `max_per_device` (the
    memory probe's answer; None: no cap known) and splits the global batch evenly over `devices`."""
    if devices < 1:
        raise bad("--devices", devices, "an integer >= 1")
    if global_batch % devices:
        raise bad(
            "--devices",
            devices,
            f"a number of devices that divides the advised batch {global_batch}",
            "pass a divisor of it, or train on a multiple of that batch",
        )
    per_rank = global_batch // devices
    cap = per_rank if max_per_device is None else max(1, max_per_device)
    accumulation = next(k for k in range(1, per_rank + 1) if per_rank % k == 0 and per_rank // k <= cap)
    return TrainerSettings(
        global_batch_size=global_batch,
        devices=devices,
        per_device_batch_size=per_rank // accumulation,
        accumulation=accumulation,
        lr=lr,
        warmup_steps=warmup_steps,
    )


def render(settings: TrainerSettings, form: Emit, *, workload: str, spec: str | None) -> str:
    """The settings in the words of `form`'s trainer."""
    s = settings
    head = (
        f"# batchlab advice for {workload}: global batch {s.global_batch_size} = {s.devices} device(s) x "
        f"{s.per_device_batch_size} x {s.accumulation} accumulation step(s), lr {s.lr:.4g}, "
        f"warm-up {s.warmup_steps} steps (the advice's runs used none)"
    )
    if form is Emit.TORCHRUN:
        command = ["torchrun", "--nproc_per_node", str(s.devices), "-m", "batchlab", "train"]
        command += ["--workload", spec or workload, "--batch-size", str(s.global_batch_size)]
        command += ["--accumulation", str(s.accumulation), "--lr", f"{s.lr:.6g}"]
        command += ["--warmup-steps", str(s.warmup_steps), "--until-target"]
        return head + "\n" + shlex.join(command)
    if form is Emit.LIGHTNING:
        return "\n".join(
            [
                head,
                "trainer = lightning.Trainer(",
                f"    devices={s.devices},",
                f"    accumulate_grad_batches={s.accumulation},",
                "    ...,",
                ")",
                f"# the DataLoader of each device: batch_size={s.per_device_batch_size}",
                f"# configure_optimizers: lr={s.lr:.6g}",
            ]
        )
    return "\n".join(
        [
            head,
            "args = transformers.TrainingArguments(",
            f"    per_device_train_batch_size={s.per_device_batch_size},",
            f"    gradient_accumulation_steps={s.accumulation},",
            f"    learning_rate={s.lr:.6g},",
            f"    warmup_steps={s.warmup_steps},",
            "    ...,",
            ")",
            f"# launched on {s.devices} device(s): torchrun --nproc_per_node {s.devices} your_script.py",
        ]
    )


def as_emit(form: Emit | str) -> Emit:
    try:
        return Emit(form)
    except ValueError:
        choices = ", ".join(e.value for e in Emit)
        raise bad("emit", form, f"one of {choices}", "pass --emit hf") from None


def with_trainer_settings(advice: Advice, workload: Workload, *, devices: int, emit: Emit | None) -> Advice:
    """The advice with its trainer settings over `devices` (and, with `emit`, that trainer's code).
    A batch that does not split over the devices is said there, not instead of the advice."""
    cap = None if advice.max_batch_size is None else advice.max_batch_size // advice.world_size
    try:
        settings = trainer_settings(advice.batch_size, advice.lr, devices=devices, max_per_device=cap)
    except BatchlabError as error:
        return replace(advice, trainer_settings=None, emitted={"error": str(error)})
    emitted = None
    if emit is not None:
        emitted = {emit.value: render(settings, emit, workload=workload.name, spec=workload.spec)}
    return replace(advice, trainer_settings=settings.to_dict(), emitted=emitted)
