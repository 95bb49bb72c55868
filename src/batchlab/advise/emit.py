"""The advice as the settings a trainer takes: `batchlab advise --emit torchrun|lightning|hf`.

One function, `trainer_settings`, turns the advice's global batch and learning rate into what a
launch needs for a number of devices: the per-device micro-batch, the gradient accumulation steps,
and the workload's schedule (as the advice's runs to the target applied it) in that batch's steps,
with its clip. Each format only writes those same numbers in its trainer's words.
"""

from __future__ import annotations

import enum
import json
import shlex
from dataclasses import asdict, dataclass, replace
from typing import Any

from batchlab.advise.result import Advice
from batchlab.errors import BatchlabError, bad
from batchlab.recipe import Decay, StepSchedule
from batchlab.train.config import run_schedule
from batchlab.workload import Workload


class Emit(str, enum.Enum):
    TORCHRUN = "torchrun"
    LIGHTNING = "lightning"
    HF = "hf"
    PLAIN = "plain"  # the settings as JSON, for a loop of one's own


@dataclass(frozen=True)
class TrainerSettings:
    """A global batch as devices x per-device micro-batch x accumulation steps, with its rate, the
    workload's schedule in that batch's steps (None: a constant rate) and its gradient clip."""

    global_batch_size: int
    devices: int
    per_device_batch_size: int
    accumulation: int
    lr: float
    schedule: StepSchedule | None = None
    clip_grad_norm: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "schedule": None if self.schedule is None else self.schedule.to_dict()}


def trainer_settings(
    global_batch: int,
    lr: float,
    *,
    devices: int,
    max_per_device: int | None,
    schedule: StepSchedule | None = None,
    clip: float | None = None,
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
        schedule=schedule,
        clip_grad_norm=clip,
    )


def render(settings: TrainerSettings, form: Emit, *, workload: str, spec: str | None) -> str:
    """The settings in the words of `form`'s trainer."""
    s = settings
    head = [
        f"# batchlab advice for {workload}: global batch {s.global_batch_size} = {s.devices} device(s) x "
        f"{s.per_device_batch_size} x {s.accumulation} accumulation step(s), lr {s.lr:.4g}",
        f"# {_recipe_words(s)}",
    ]
    if form is Emit.TORCHRUN:
        command = ["torchrun", "--nproc_per_node", str(s.devices), "-m", "batchlab", "train"]
        command += ["--workload", spec or workload, "--batch-size", str(s.global_batch_size)]
        command += ["--accumulation", str(s.accumulation), "--lr", f"{s.lr:.6g}", "--until-target"]
        head.append("# (batchlab train applies the workload's own schedule and clip)")
        return "\n".join([*head, shlex.join(command)])
    if form is Emit.PLAIN:
        head.append("# the rate at 0-based step s: lr * batchlab.recipe.StepSchedule(**schedule)(s)")
        return "\n".join([*head, json.dumps(s.to_dict())])
    if form is Emit.LIGHTNING:
        return "\n".join([*head, *_lightning(s)])
    return "\n".join([*head, *_hf(s)])


def _recipe_words(s: TrainerSettings) -> str:
    clip = "no gradient clipping"
    if s.clip_grad_norm is not None:
        clip = f"gradient norm clipped at {s.clip_grad_norm:g}"
    q = s.schedule
    if q is None:
        return f"a constant rate, {clip}"
    warmup = f"warm-up {q.warmup_steps} steps (s / {q.warmup_steps} of the peak at step s)"
    if q.decay == Decay.CONSTANT.value:
        return f"{warmup}, then the peak (the advice's runs to the target held it), {clip}"
    floor = f"{q.final_fraction:g} of the peak" if q.final_fraction else "zero"
    return f"{warmup}, then {q.decay} decay to {floor} over {q.decay_steps} of {q.total_steps} steps, {clip}"


def _hf(s: TrainerSettings) -> list[str]:
    """`TrainingArguments` whose own scheduler gives the schedule's rates step for step (Hugging
    Face's warm-up is s / W, as batchlab's), and whose clip is the workload's: its default clips
    at 1.0, so no clip is written as 0."""
    q = s.schedule
    lines = [
        "args = transformers.TrainingArguments(",
        f"    per_device_train_batch_size={s.per_device_batch_size},",
        f"    gradient_accumulation_steps={s.accumulation},",
        f"    learning_rate={s.lr!r},",
    ]
    kind, kwargs = "constant", None
    if q is not None and q.decay == Decay.CONSTANT.value:
        kind = "constant_with_warmup" if q.warmup_steps else "constant"
    elif q is not None:
        kind, kwargs = _hf_decay(q, s.lr)
        lines.append(f"    max_steps={q.total_steps},")
    lines.append(f"    lr_scheduler_type={kind!r},")
    if kwargs:
        lines.append(f"    lr_scheduler_kwargs={kwargs!r},")
    if q is not None and q.warmup_steps:
        lines.append(f"    warmup_steps={q.warmup_steps},")
    lines += [f"    max_grad_norm={s.clip_grad_norm or 0.0!r},", "    ...,", ")"]
    if q is not None and q.decay == Decay.WSD.value and q.final_fraction and q.warmup_steps:
        lines.append("# (its warmup_stable_decay warms up from min_lr_ratio, not from 0)")
    lines.append(f"# launched on {s.devices} device(s): torchrun --nproc_per_node {s.devices} your_script.py")
    return lines


def _hf_decay(q: StepSchedule, lr: float) -> tuple[str, dict[str, Any] | None]:
    """Hugging Face's name (and kwargs) for the decay: linear to a floor is its polynomial of power 1."""
    floor = q.final_fraction
    if q.decay == Decay.COSINE.value:
        return ("cosine_with_min_lr", {"min_lr_rate": floor}) if floor else ("cosine", None)
    if q.decay == Decay.LINEAR.value:
        return ("polynomial", {"lr_end": lr * floor, "power": 1.0}) if floor else ("linear", None)
    wsd = {  # its stable steps: max_steps less the warm-up and the decay
        "num_decay_steps": q.decay_steps,
        "decay_type": "linear",
        "min_lr_ratio": floor,
    }
    return "warmup_stable_decay", wsd


def _lightning(s: TrainerSettings) -> list[str]:
    q = s.schedule
    trainer = ["trainer = lightning.Trainer(", f"    devices={s.devices},"]
    trainer.append(f"    accumulate_grad_batches={s.accumulation},")
    trainer.append(f"    gradient_clip_val={s.clip_grad_norm!r},")
    if q is not None and q.decay != Decay.CONSTANT.value:
        trainer.append(f"    max_steps={q.total_steps},")
    trainer += ["    ...,", ")", f"# the DataLoader of each device: batch_size={s.per_device_batch_size}"]
    if q is None:
        return [*trainer, f"# configure_optimizers: lr={s.lr!r}"]
    schedule = ", ".join(f"{k}={v!r}" for k, v in q.to_dict().items())
    return [
        *trainer,
        "# def configure_optimizers(self):",
        f"#     optimizer = ...(self.parameters(), lr={s.lr!r})",
        f"#     factor = batchlab.recipe.StepSchedule({schedule})",
        "#     scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)",
        '#     return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}',
    ]


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
    schedule = run_schedule(workload.schedule, until_target=True)
    steps = None
    if schedule is not None:
        steps = schedule.in_steps(advice.batch_size, schedule.horizon_examples or schedule.warmup_examples)
    try:
        settings = trainer_settings(
            advice.batch_size,
            advice.lr,
            devices=devices,
            max_per_device=cap,
            schedule=steps,
            clip=workload.clip_grad_norm,
        )
    except BatchlabError as error:
        return replace(advice, trainer_settings=None, emitted={"error": str(error)})
    emitted = None
    if emit is not None:
        emitted = {emit.value: render(settings, emit, workload=workload.name, spec=workload.spec)}
    return replace(advice, trainer_settings=settings.to_dict(), emitted=emitted)
