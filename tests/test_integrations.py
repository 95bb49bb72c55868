"""batchlab inside Lightning and Hugging Face runs: the noise scale logged where their users look,
under accumulation and DDP, the trainers' own gradients untouched."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from batchlab import train

LIGHTNING_RUN = Path(__file__).parent / "data" / "lightning_run.py"
SRC = Path(__file__).parents[1] / "src"
STEPS = 60


def lightning_run(strategy: str, devices: int, accumulate: int) -> dict[str, Any]:
    pytest.importorskip("lightning")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, str(LIGHTNING_RUN), strategy, str(devices), str(accumulate), str(STEPS)],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def agree(a: float, a_err: float, b: float, b_err: float) -> bool:
    """Within three combined standard errors."""
    return abs(a - b) <= 3 * math.hypot(a_err, b_err)


@pytest.fixture(scope="module")
def ours() -> Any:
    """batchlab.train on the same model, batch and rate: 4 micro-batches of 16 a step."""
    result = train(
        "digits-mlp", batch_size=64, accumulation=4, max_steps=STEPS, track_noise=True, device="cpu"
    )
    assert result.noise is not None
    return result.noise


@pytest.mark.parametrize(("strategy", "devices", "accumulate"), [("auto", 1, 4), ("ddp", 2, 2)])
def test_lightning_logs_the_noise_scale_that_batchlab_measures(
    ours: Any, strategy: str, devices: int, accumulate: int
) -> None:
    """digits-mlp in a LightningModule, global batch 64: accumulation 4 in one process, and 2 gloo
    ranks x accumulation 2 under strategy="ddp". Every step is measured, the Trainer's logger holds
    the reading, and it agrees with batchlab.train's on the same setup within the error bars (the
    runs shuffle differently, so not to the digit)."""
    run = lightning_run(strategy, devices, accumulate)
    reading = run["reading"]
    assert reading["measurements"] == STEPS
    assert run["logged"]["b_simple"] == pytest.approx(reading["b_simple"], rel=1e-6)
    assert agree(
        reading["b_simple"], reading["b_simple_stderr"], ours["b_simple"], ours["b_simple_stderr"]
    ), (
        reading,
        ours,
    )


def _hf_train(
    callbacks: list[Any], folder: Path, attach: bool = False, learnable: bool = True
) -> tuple[Any, torch.Tensor, Any]:
    """A tiny GPT-2 under the Trainer, 12 optimizer steps of 4 x 4. `learnable` data counts up from
    a random token (a strong gradient signal from the start); otherwise the tokens are random, and
    the loss sits at its floor, where |G|^2 is lost in the noise."""
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        n_layer=1, n_head=2, n_embd=32, vocab_size=64, n_positions=16, bos_token_id=0, eos_token_id=0
    )
    transformers.set_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    generator = torch.Generator().manual_seed(0)
    if learnable:
        tokens = (torch.randint(0, 64, (256, 1), generator=generator) + torch.arange(16)) % 64
    else:
        tokens = torch.randint(0, 64, (256, 16), generator=generator)
    data = [{"input_ids": t, "labels": t} for t in tokens]
    args = transformers.TrainingArguments(
        output_dir=str(folder), per_device_train_batch_size=4, gradient_accumulation_steps=4,
        max_steps=12, logging_steps=4, learning_rate=1e-3, use_cpu=True, save_strategy="no", seed=0,
        disable_tqdm=True, report_to=["tensorboard"] if attach else [], max_grad_norm=0.0,
    )  # fmt: skip
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks)
    from batchlab.integrations.transformers import NoiseScaleCallback

    callback = NoiseScaleCallback.attach(trainer) if attach else None
    trainer.train()
    return trainer, torch.cat([p.detach().reshape(-1) for p in model.parameters()]), callback


def test_hugging_face_logs_the_noise_scale_and_trains_the_same(tmp_path: Path) -> None:
    """A tiny GPT-2 built from a config (no download), gradient_accumulation_steps=4: every
    optimizer step is measured (micro-batches of 4 against the step's 16), b_simple joins the
    Trainer's logs at each logging step, and the trained parameters equal a run without the callback
    bitwise."""
    from batchlab.integrations.transformers import NoiseScaleCallback

    callback = NoiseScaleCallback()
    trainer, with_it, _ = _hf_train([callback], tmp_path / "a")
    _, without, _ = _hf_train([], tmp_path / "b")
    assert torch.equal(with_it, without)
    assert callback.latest is not None and callback.latest.measurements == 12
    logged = [h for h in trainer.state.log_history if "b_simple" in h]
    assert len(logged) == 3 and all(math.isfinite(h["b_simple"]) and h["b_simple"] > 0 for h in logged)
    assert logged[-1]["b_simple"] == callback.latest.b_simple
    assert all(h["b_simple_resolved"] == 1.0 for h in logged)


def test_an_unresolved_noise_scale_is_left_out_of_the_logs_not_logged_as_inf(tmp_path: Path) -> None:
    """On random tokens the loss sits at its floor and |G|^2 is not above zero by two standard
    errors: every logged value is finite, b_simple is left out with its flag at 0, and the parts that
    are always defined (tr(Sigma), |G|^2, the steps measured) are logged; the reading says why."""
    from batchlab.integrations.transformers import NoiseScaleCallback

    callback = NoiseScaleCallback()
    trainer, _, _ = _hf_train([callback], tmp_path, learnable=False)
    logs = [h for h in trainer.state.log_history if "noise_steps_measured" in h]
    assert len(logs) == 3
    for h in logs:
        assert all(math.isfinite(v) for v in h.values() if isinstance(v, float)), h
        assert ("b_simple" in h) == (h["b_simple_resolved"] == 1.0)
        assert {"trace_sigma", "grad_sq"} <= set(h)
    assert callback.latest is not None
    assert callback.latest.unresolved_because is not None and "|G|^2" in callback.latest.unresolved_because
    assert any(h["b_simple_resolved"] == 0.0 for h in logs)


def test_attached_first_the_hugging_face_reporters_record_it(tmp_path: Path) -> None:
    """Attached first, the Trainer's TensorBoard reporter writes b_simple: read back with
    TensorBoard's own event reader."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, _, callback = _hf_train([], tmp_path, attach=True)
    events = EventAccumulator(str(next(tmp_path.rglob("events.out.tfevents.*")).parent))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert "train/b_simple" in tags, tags
    values = [e.value for e in events.Scalars("train/b_simple")]
    assert len(values) == 3 and values[-1] == pytest.approx(callback.latest.b_simple, rel=1e-6)


def test_a_lightning_module_and_datamodule_run_as_a_workload(tmp_path: Path) -> None:
    """integrations.lightning.workload: batchlab trains the module's own training_step to the target
    with its configure_optimizers, and the CLI measures its noise scale by file:function."""
    pytest.importorskip("lightning")
    from batchlab import load_workload

    wl = load_workload(f"{LIGHTNING_RUN}:workload")
    assert (wl.batch_size, wl.lr, wl.train_size) == (32, 0.05, len(load_workload("digits-mlp").train_data))
    result = train(wl, batch_size=wl.batch_size, until_target=True, max_epochs=30, device="cpu")
    assert result.reached_target and result.final_eval_loss is not None and result.final_eval_loss <= 0.2
    from .helpers import invoke_json

    data = invoke_json("noise", "-w", f"{LIGHTNING_RUN}:workload", "--steps", "40")
    assert data["b_simple"] > 0 and math.isfinite(data["b_simple"])


def test_a_lightning_workload_reads_its_schedule_and_clip_from_the_module_and_trainer() -> None:
    """SequentialLR(LinearLR warm-up 5, CosineAnnealingLR to 0.1 at step 100) per step, under a
    Trainer with 2 accumulation steps of 32 and gradient_clip_val 0.5: a schedule of 5 x 64
    warm-up examples and a cosine to 0.1 over 100 x 64, the clip 0.5; batchlab's run at that batch
    applies the scheduler's own rates. A scheduler stepped per epoch is said, not read."""
    pytest.importorskip("lightning")
    from batchlab import LrSchedule, load_workload
    from batchlab.integrations.lightning import _scheduler
    from batchlab.integrations.scheduler import sample_factors

    wl = load_workload(f"{LIGHTNING_RUN}:scheduled_workload")
    expected = LrSchedule(decay="cosine", warmup_examples=320, final_fraction=0.1, horizon_examples=6400)
    assert (wl.schedule, wl.clip_grad_norm, wl.extras["unread"]) == (expected, 0.5, ())
    assert (wl.batch_size, wl.lr) == (64, 0.05)  # the trainer's global batch, the peak
    run = train(wl, batch_size=64, max_steps=100, eval_every=1, device="cpu")
    spec = importlib.util.spec_from_file_location("lightning_run", LIGHTNING_RUN)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    found = _scheduler(script.ScheduledModule().configure_optimizers())  # a fresh module's own
    assert found is not None and found[1] == "step"
    theirs = [wl.lr * f for f in sample_factors(found[0], 99)]  # (past step 100 its cosine rises again)
    assert [p.lr for p in run.curve[1:]] == pytest.approx(theirs, abs=1e-6 * wl.lr)
    epochs = load_workload(f"{LIGHTNING_RUN}:epoch_scheduled_workload")
    assert epochs.schedule is None and "steps per epoch" in epochs.description
