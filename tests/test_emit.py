"""advise --emit: the advice as the settings torchrun, Lightning and Hugging Face take, from one
function."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

import batchlab
from batchlab import Advice, ConfigError
from batchlab.advise.emit import Emit, render, trainer_settings

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
    "--accumulation 4 --lr 0.9 --warmup-steps 0 --until-target"
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
