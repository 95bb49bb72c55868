"""advise --emit: the advice as the settings torchrun, Lightning and Hugging Face take, from one
function."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import batchlab
from batchlab import Advice, ConfigError
from batchlab.advise.emit import Emit, render, trainer_settings
from batchlab.recipe import LrSchedule, StepSchedule

from .helpers import invoke


def test_the_fewest_accumulation_steps_that_fit_the_memory_cap() -> None:
    """1536 on 4 devices is 384 a device; under a cap of 100 a device that is 4 steps of 96 (3 steps
    of 128 would not fit, 2 of 192 neither)."""
    s = trainer_settings(1536, 0.9, devices=4, max_per_device=100)
    assert (s.per_device_batch_size, s.accumulation) == (96, 4)
    assert s.per_device_batch_size * s.accumulation * s.devices == 1536
    assert trainer_settings(1536, 0.9, devices=4, max_per_device=None).accumulation == 1


def test_a_device_count_that_does_not_divide_the_batch_is_refused() -> None:
    with pytest.raises(ConfigError, match="divides the advised batch 1536"):
        trainer_settings(1536, 0.9, devices=7, max_per_device=None)


HF = ["    per_device_train_batch_size=96,", "    gradient_accumulation_steps=4,", "    learning_rate=0.9,"]
LIGHTNING = [
    "    devices=4,",
    "    accumulate_grad_batches=4,",
    "# the DataLoader of each device: batch_size=96",
]
TORCHRUN = [
    "torchrun --nproc_per_node 4 -m batchlab train --workload my.py:w --batch-size 1536 "
    "--accumulation 4 --lr 0.9 --until-target"
]


@pytest.mark.parametrize(
    ("form", "lines"), [(Emit.HF, HF), (Emit.LIGHTNING, LIGHTNING), (Emit.TORCHRUN, TORCHRUN)]
)
def test_each_form_writes_the_same_numbers(form: Emit, lines: list[str]) -> None:
    text = render(
        trainer_settings(1536, 0.9, devices=4, max_per_device=100), form, workload="w", spec="my.py:w"
    )
    for line in lines:
        assert line in text.splitlines(), text


def test_advise_keeps_the_settings_and_prints_them(tmp_path: Path) -> None:
    result = invoke("advise", "-w", "linreg", "--out", str(tmp_path), "--emit", "hf", "--devices", "2")
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "advice.json").read_text())
    s = data["trainer_settings"]
    assert s["devices"] == 2 and s["per_device_batch_size"] * s["accumulation"] * 2 == data["batch_size"]
    assert s["per_device_batch_size"] <= data["max_batch_size"]
    assert s["lr"] == data["lr"]
    assert data["emitted"]["hf"] in result.stdout
    assert f"per_device_train_batch_size={s['per_device_batch_size']}," in result.stdout
    # advice.json is Advice.to_dict(): the Python API returns every field the command writes.
    assert set(data) == {f.name for f in dataclasses.fields(Advice)}


def test_the_python_api_returns_the_settings_the_command_writes() -> None:
    """batchlab.advise(..., devices=2, emit="hf") carries the trainer settings and the emitted code."""
    advice = batchlab.advise("linreg", devices=2, emit="hf")
    settings = advice.trainer_settings
    assert settings is not None and settings["devices"] == 2
    assert settings["per_device_batch_size"] * settings["accumulation"] * 2 == advice.batch_size
    assert advice.emitted is not None
    assert f"per_device_train_batch_size={settings['per_device_batch_size']}," in advice.emitted["hf"]
    with pytest.raises(ConfigError, match="emit must be one of"):
        batchlab.advise("linreg", emit="vim")


@given(
    decay=st.sampled_from(["constant", "cosine", "linear", "wsd"]),
    batch=st.sampled_from([1, 8, 48]),
    warmup=st.integers(0, 20),
    total=st.integers(21, 200),
    decay_steps=st.integers(1, 20),
    floor=st.sampled_from([0.0, 0.1, 0.5]),
)
def test_the_schedule_in_steps_is_the_schedule_in_examples(
    decay: str, batch: int, warmup: int, total: int, decay_steps: int, floor: float
) -> None:
    """Where the warm-up, the WSD decay and the horizon are whole steps of the batch, the factor
    at step s is the examples' factor at s x batch, at every step and past the horizon."""
    schedule = LrSchedule(
        decay=decay, warmup_examples=warmup * batch, final_fraction=floor, decay_fraction=decay_steps / total
    )
    steps = schedule.in_steps(batch, total * batch)
    for s in range(total + 3):
        assert steps(s) == pytest.approx(schedule.factor(s * batch, total * batch), abs=1e-12)


def _hf_rates(text: str, output_dir: Path, steps: int) -> tuple[list[float], float]:
    """The emitted TrainingArguments, pasted (its `...` being the user's own arguments), run
    through a Trainer's own optimizer and scheduler: the rate at each step, and the clip."""
    transformers = pytest.importorskip("transformers")
    code = text.replace("    ...,", f"    output_dir={str(output_dir)!r}, report_to='none', use_cpu=True,")
    namespace: dict[str, object] = {"transformers": transformers}
    exec(code, namespace)
    args = namespace["args"]
    trainer = transformers.Trainer(model=torch.nn.Linear(2, 1), args=args)  # type: ignore[arg-type]
    total = args.max_steps if args.max_steps > 0 else steps  # type: ignore[attr-defined]
    trainer.create_optimizer_and_scheduler(num_training_steps=total)
    rates = []
    for _ in range(steps):
        rates.append(trainer.lr_scheduler.get_last_lr()[0])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    return rates, args.max_grad_norm  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "schedule",
    [
        LrSchedule(decay="cosine", warmup_examples=320, final_fraction=0.1, horizon_examples=6400),
        LrSchedule(decay="cosine", warmup_examples=640, horizon_examples=3200),
        LrSchedule(decay="linear", warmup_examples=320, final_fraction=0.2, horizon_examples=3200),
        LrSchedule(decay="linear", horizon_examples=3200),
        LrSchedule(decay="wsd", warmup_examples=320, decay_fraction=0.25, horizon_examples=6400),
        LrSchedule(decay="wsd", final_fraction=0.1, decay_fraction=0.5, horizon_examples=3200),
        LrSchedule(decay="cosine", warmup_examples=640),  # a run to the target: warm-up, then the peak
    ],
    ids=["cosine-floor", "cosine", "linear-floor", "linear", "wsd", "wsd-floor", "no-horizon"],
)
def test_hf_settings_pasted_give_the_runs_rates_step_for_step(schedule: LrSchedule, tmp_path: Path) -> None:
    """At the advised batch 64, Hugging Face's scheduler (built by its Trainer from the emitted
    arguments) gives at every step the rate batchlab's run to the target applies, up to and past
    the horizon; and the clip is the workload's."""
    from batchlab.train.config import run_schedule

    ran = run_schedule(schedule, until_target=True)
    assert ran is not None
    steps = ran.in_steps(64, ran.horizon_examples or ran.warmup_examples)
    text = render(
        trainer_settings(64, 0.02, devices=1, max_per_device=None, schedule=steps, clip=0.5),
        Emit.HF,
        workload="w",
        spec=None,
    )
    horizon = (schedule.horizon_examples or 6400) // 64
    rates, clip = _hf_rates(text, tmp_path, horizon)
    assert rates == pytest.approx([0.02 * ran.factor(64 * k, 0) for k in range(horizon)], rel=1e-9, abs=1e-12)
    assert clip == 0.5
    constant = trainer_settings(64, 0.02, devices=1, max_per_device=None)
    unclipped = render(constant, Emit.HF, workload="w", spec=None)
    assert _hf_rates(unclipped, tmp_path, 3) == ([0.02] * 3, 0.0)  # constant, and HF's default clip off


def test_the_lightning_and_plain_settings_carry_the_schedule() -> None:
    steps = LrSchedule(decay="cosine", warmup_examples=320, horizon_examples=6400).in_steps(64, 0)
    settings = trainer_settings(64, 0.02, devices=1, max_per_device=None, schedule=steps, clip=1.0)
    lightning = render(settings, Emit.LIGHTNING, workload="w", spec=None).splitlines()
    assert "    gradient_clip_val=1.0," in lightning and "    max_steps=100," in lightning
    line = next(x for x in lightning if "StepSchedule(" in x)
    rebuilt = eval(line.split("= batchlab.recipe.")[1], {"StepSchedule": StepSchedule})
    assert rebuilt == steps
    plain = json.loads(render(settings, Emit.PLAIN, workload="w", spec=None).splitlines()[-1])
    assert StepSchedule(**plain["schedule"]) == steps and plain["clip_grad_norm"] == 1.0
