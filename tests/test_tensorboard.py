"""--tensorboard DIR: the curves as TensorBoard scalars, read back with TensorBoard's own reader."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from batchlab.integrations.tensorboard import advice_series

from .helpers import assert_one_line_error, invoke

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_train_writes_loss_lr_batch_and_noise(tmp_path: Path) -> None:
    result = invoke(
        "train", "-w", "linreg", "--max-steps", "30", "--accumulation", "2", "--track-noise",
        "--out", str(tmp_path / "out"), "--tensorboard", str(tmp_path / "tb"), "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    (run,) = list((tmp_path / "tb").iterdir())
    assert run.name == f"b{data['batch_size']}-lr{data['lr']:.4g}-seed0"
    read = scalars(run)
    assert {"train_loss", "eval_loss", "lr", "batch_size", "b_simple"} <= set(read)
    curve = data["curve"]
    assert [s for s, _ in read["eval_loss"]] == [p["step"] for p in curve]
    assert [v for _, v in read["eval_loss"]] == pytest.approx([p["eval_loss"] for p in curve], rel=1e-6)
    noisy = [p for p in curve if p["b_simple"] is not None]
    assert [v for _, v in read["b_simple"]] == pytest.approx([p["b_simple"] for p in noisy], rel=1e-6)


def test_a_sweep_writes_one_folder_a_run(tmp_path: Path) -> None:
    result = invoke(
        "sweep", "-w", "linreg", "--batch-sizes", "16,64", "--no-sharpness", "--max-steps", "60",
        "--tensorboard", str(tmp_path / "tb"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "tb").iterdir()) == ["b16", "b64"]


def test_the_advice_series() -> None:
    data = {
        "noise": {
            "history": [
                {"step": 0, "train_loss": 2.0, "b_simple": None},
                {"step": 5, "train_loss": 1.0, "b_simple": 40.0},
            ]
        },
        "predictions": [{"batch_size": 8, "steps_to_target": 100.0, "seconds_to_target": 0.5}],
    }
    series = advice_series(data)
    assert series["b_simple"] == [(5, 40.0)]
    assert series["train_loss"] == [(0, 2.0), (5, 1.0)]
    assert series["predicted_seconds_to_target_by_batch"] == [(8, 0.5)]


def test_without_tensorboard_installed_it_says_so_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # an import of it now fails
    result = invoke("train", "-w", "linreg", "--tensorboard", str(tmp_path / "tb"))
    assert_one_line_error(result, "--tensorboard", "pip install 'batchlab[tensorboard]'")
    assert not (tmp_path / "tb").exists()
