"""One model's gradient noise scale measured four ways, side by side: batchlab.train, a user's own
loop with a NoiseMonitor, a Lightning run with NoiseScaleCallback, and a Hugging Face Trainer run
with its NoiseScaleCallback. digits-mlp, global batch 64 = 4 micro-batches of 16, SGD at 0.05, 60
steps, no clipping; each run shuffles its own way, so they agree within their standard errors, not
to the digit. Needs the lightning and hf extras."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from _common import write
from torch import nn

import batchlab
from batchlab.core.step import backward
from batchlab.train.model import fresh_model

STEPS, MICRO, K = 60, 16, 4
ROOT = Path(__file__).parents[1]


def with_train() -> dict[str, float]:
    result = batchlab.train(
        "digits-mlp", batch_size=MICRO * K, accumulation=K, max_steps=STEPS, track_noise=True
    )
    assert result.noise is not None
    return {"b_simple": result.noise["b_simple"], "stderr": result.noise["b_simple_stderr"]}


def own_loop() -> dict[str, float]:
    workload = batchlab.load_workload("digits-mlp")
    torch.manual_seed(1)
    model = fresh_model(workload, 0, torch.device("cpu"))
    optimizer = workload.optimizer(model.parameters(), workload.lr)
    monitor = batchlab.NoiseMonitor(model)
    loader = torch.utils.data.DataLoader(
        workload.train_data, batch_size=MICRO * K, shuffle=True, drop_last=True
    )
    step = 0
    while step < STEPS:
        for batch in loader:
            backward(model, workload.loss, batch, micro_batches=K)
            monitor.step(MICRO * K)
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            if step == STEPS:
                break
    reading = monitor.reading()
    assert reading is not None
    return {"b_simple": reading.b_simple, "stderr": reading.b_simple_stderr}


def lightning() -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    script = ROOT / "tests" / "data" / "lightning_run.py"
    done = subprocess.run(
        [sys.executable, str(script), "auto", "1", str(K), str(STEPS)],
        capture_output=True,
        text=True,
        env=env,
    )
    reading = json.loads(done.stdout.strip().splitlines()[-1])["reading"]
    return {"b_simple": reading["b_simple"], "stderr": reading["b_simple_stderr"]}


class _HFModel(nn.Module):
    def __init__(self, net: nn.Module, loss: object) -> None:
        super().__init__()
        self.net, self.loss = net, loss

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": self.loss(self.net(x), labels)}  # type: ignore[operator]


def hugging_face() -> dict[str, float]:
    import tempfile

    import transformers

    from batchlab.integrations.transformers import NoiseScaleCallback

    workload = batchlab.load_workload("digits-mlp")
    model = _HFModel(fresh_model(workload, 0, torch.device("cpu")), workload.loss)
    data = [{"x": x, "labels": y} for x, y in (workload.train_data[i] for i in range(workload.train_size))]
    optimizer = workload.optimizer(model.parameters(), workload.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    with tempfile.TemporaryDirectory() as folder:
        args = transformers.TrainingArguments(
            output_dir=folder, per_device_train_batch_size=MICRO, gradient_accumulation_steps=K,
            max_steps=STEPS, max_grad_norm=0.0, report_to=[], use_cpu=True, save_strategy="no",
            disable_tqdm=True, logging_steps=STEPS, seed=2,
        )  # fmt: skip
        callback = NoiseScaleCallback()
        trainer = transformers.Trainer(
            model=model,
            args=args,
            train_dataset=data,
            optimizers=(optimizer, scheduler),
            callbacks=[callback],
        )
        trainer.train()
    assert callback.latest is not None
    return {"b_simple": callback.latest.b_simple, "stderr": callback.latest.b_simple_stderr}


def main() -> None:
    ways = {
        "batchlab.train --track-noise": with_train,
        "own loop + NoiseMonitor": own_loop,
        "Lightning + NoiseScaleCallback": lightning,
        "Hugging Face Trainer + NoiseScaleCallback": hugging_face,
    }
    figures = {name: way() for name, way in ways.items()}
    table = [
        f"# digits-mlp's noise scale four ways (batch 64 = 4 x 16, SGD 0.05, {STEPS} steps; "
        f"{time.strftime('%Y-%m-%d')})",
        "",
        "| measured by | B_simple | standard error |",
        "|---|---|---|",
        *[f"| {name} | {f['b_simple']:.1f} | {f['stderr']:.1f} |" for name, f in figures.items()],
    ]
    write("noise_four_ways", {"ways": figures}, table)


if __name__ == "__main__":
    main()
