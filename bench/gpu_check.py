"""`make gpu-check`: every CUDA path of batchlab, proved on the GPU at hand in minutes, with the
batch-size finders of Lightning and Accelerate measured beside it on the same model and limit.

Writes bench/results/gpu.md (a table a person reads) and gpu.json (every figure), each check's
outcome recorded whether it passed or not; exits 1 if any failed. On a machine without CUDA it
says so in one line and exits 0. Peers are optional (`pip install -e .[peers]`); without them
their rows say "not installed".

Checks (each a separate process where a fresh one matters):
- memory on digits-cnn and charlm under LIMIT (the per-process memory fraction): the answer, its
  trials and wall time; then, each in a fresh process under the same limit, 200 training steps and
  an evaluation at the answer (must not run out of memory) and a few at the next batch up (must).
- peers on the same model and limit: Lightning's Tuner.scale_batch_size (power, binsearch) and
  Accelerate's find_executable_batch_size: answers, batches tried, wall time, and whether 200 steps
  at their answer then run out of memory in the same process and in a fresh one.
- train --precision fp16 and bf16 to the target on digits-cnn; memory --strategies on charlm;
  throughput (synchronized timings); noise; advise --validate on charlm; torchrun with NCCL on one
  process, and 2 gloo ranks sharing the GPU.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import RESULTS, machine

LIMIT = "4GiB"
DEVICE = "cuda"  # the tests point the checks that a CPU can run at "cpu"
NOISE_WORKLOAD = "digits-cnn"  # the tests, on a CPU, read the same fields from linreg's (7 s, not 15)
FOLLOW_STEPS = 200  # steps at an answer, in a fresh process, that must not run out of memory
CHECK_TIMEOUT = 900  # seconds for any one command
SRC = Path(__file__).parents[1] / "src"

Check = Callable[[], dict[str, Any]]


# Running batchlab and the fresh-process follow-up -------------------------------------------------


def batchlab(*args: str, timeout: float = CHECK_TIMEOUT) -> dict[str, Any]:
    """`batchlab ARGS --json` in a fresh process: its JSON, or an error naming its last line."""
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "batchlab", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
    )
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"`batchlab {' '.join(args)}` exited {done.returncode}: {last}")
    return {"data": json.loads(done.stdout), "seconds": seconds}


def torchrun(nproc: int, *args: str, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
         "-m", "batchlab", *args, "--json"],
        capture_output=True, text=True, timeout=CHECK_TIMEOUT, env={**_env(), **(extra_env or {})},
    )  # fmt: skip
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"torchrun {nproc} x `batchlab {' '.join(args)}` exited {done.returncode}: {last}")
    return {"data": json.loads(done.stdout), "seconds": time.perf_counter() - began}


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}


def steps_at(workload: str, batch_size: int, limit: str, steps: int, device: str = "cuda") -> dict[str, Any]:
    """`steps` training steps and an evaluation forward at `batch_size` in THIS process under
    `limit` (on CUDA, the per-process memory fraction): whether it fit, and the peak."""
    from batchlab import load_workload
    from batchlab.core.device import is_out_of_memory
    from batchlab.train.model import fresh_model

    wl = load_workload(workload)
    dev = torch.device(device)
    if dev.type == "cuda":
        limit_this_process(limit, dev)
    model = fresh_model(wl, 0, dev)
    optimizer = wl.optimizer(model.parameters(), wl.lr)
    generator = torch.Generator().manual_seed(0)
    try:
        for _ in range(steps):
            indices = torch.randint(0, wl.train_size, (batch_size,), generator=generator).tolist()
            x, y = _batch(wl, indices, dev)
            optimizer.zero_grad(set_to_none=True)
            wl.loss(model(x), y).backward()
            optimizer.step()
        with torch.no_grad():
            model.eval()
            model(x)
    except BaseException as error:
        if is_out_of_memory(error) or isinstance(error, torch.cuda.OutOfMemoryError):
            return {"fits": False, "steps": steps, "error": "out_of_memory"}
        raise
    peak = torch.cuda.max_memory_reserved(dev) if dev.type == "cuda" else None
    return {"fits": True, "steps": steps, "peak_bytes": peak}


def limit_this_process(limit: str, dev: torch.device) -> None:
    """The limit as CUDA's per-process memory fraction: allocations past it raise out-of-memory."""
    from batchlab.core.units import parse_bytes

    total = torch.cuda.get_device_properties(dev).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, parse_bytes(limit) / total), dev)


def _batch(wl: Any, indices: list[int], dev: torch.device) -> tuple[Any, Any]:
    from torch.utils.data import DataLoader, Subset

    from batchlab.core.data import to_device

    x, y = next(iter(DataLoader(Subset(wl.train_data, indices), batch_size=len(indices))))
    return to_device(x, dev), to_device(y, dev)


def fresh_steps(workload: str, batch_size: int, steps: int, limit: str = LIMIT) -> dict[str, Any]:
    """steps_at in a fresh process (this script, `--steps-at`)."""
    done = subprocess.run(
        [sys.executable, __file__, "--steps-at", workload, str(batch_size), limit, str(steps)],
        capture_output=True, text=True, timeout=CHECK_TIMEOUT, env=_env(),
    )  # fmt: skip
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"steps at batch {batch_size} exited {done.returncode}: {last}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


# The checks -------------------------------------------------------------------------------------------


def memory_check(workload: str) -> Check:
    def check() -> dict[str, Any]:
        run = batchlab("memory", "--workload", workload, "--device", DEVICE, "--memory-limit", LIMIT)
        data = run["data"]
        answer = data["max_batch_size"]
        out = {"answer": answer, "trials": data["trial_count"], "seconds": round(run["seconds"], 1)}
        if answer is None:
            raise RuntimeError(f"no batch of {workload} fits in {LIMIT}")
        out[f"{FOLLOW_STEPS} steps at the answer"] = fresh_steps(workload, answer, FOLLOW_STEPS)["fits"]
        if data["capped_by_dataset"]:
            out["one past"] = "the whole training set fits: no batch past it"
        else:
            out["one past fits"] = fresh_steps(workload, answer + data["granularity"], 5)["fits"]
        if not out[f"{FOLLOW_STEPS} steps at the answer"]:
            raise RuntimeError(f"{FOLLOW_STEPS} steps at the answer {answer} ran out of memory: {out}")
        if out.get("one past fits") is True:
            raise RuntimeError(f"the batch past the answer {answer} fits too: the answer is not the edge")
        return out

    return check


def peer_summary(answer: int | None, attempts: list[int], seconds: float) -> dict[str, Any]:
    """A peer's run, as the table shows it: its answer, the batch sizes it tried in order, how many
    of them were past its answer (calls that failed), and its wall time."""
    failed = sum(1 for a in attempts if answer is not None and a > answer)
    return {"answer": answer, "tried": len(attempts), "failed calls": failed, "seconds": round(seconds, 1)}


def peer_check(peer: str, workload: str) -> Check:
    """A peer's run in a process of its own (its memory fraction and leftovers stay there)."""

    def check() -> dict[str, Any]:
        done = subprocess.run(
            [sys.executable, __file__, "--peer", peer, workload],
            capture_output=True, text=True, timeout=CHECK_TIMEOUT, env=_env(),
        )  # fmt: skip
        lines = done.stdout.strip().splitlines()
        if done.returncode == 3:  # the peer's package is missing
            raise ImportError(lines[-1] if lines else peer, name=lines[-1] if lines else peer)
        if done.returncode != 0 or not lines:
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise RuntimeError(f"{peer} exited {done.returncode}: {last}")
        return dict(json.loads(lines[-1]))

    return check


def run_peer(peer: str, workload: str) -> dict[str, Any]:
    if peer.startswith("lightning-"):
        return lightning_peer(workload, peer.removeprefix("lightning-"))
    if peer == "accelerate":
        return accelerate_peer(workload)
    raise ValueError(f"unknown peer {peer!r}")


def lightning_peer(workload: str, mode: str) -> dict[str, Any]:
    import lightning as L  # the [peers] extra
    from lightning.pytorch.tuner import Tuner

    from batchlab import load_workload
    from batchlab.train.model import fresh_model

    wl = load_workload(workload)
    limit_this_process(LIMIT, torch.device("cuda", 0))
    attempts: list[int] = []

    class Module(L.LightningModule):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.batch_size = wl.batch_size
            self.model = fresh_model(wl, 0, torch.device("cpu"))

        def training_step(self, batch: Any, _: int) -> torch.Tensor:
            if not attempts or attempts[-1] != self.batch_size:
                attempts.append(self.batch_size)
            x, y = batch
            return wl.loss(self.model(x), y)

        def configure_optimizers(self) -> Any:
            return wl.optimizer(self.model.parameters(), wl.lr)

        def train_dataloader(self) -> Any:
            return torch.utils.data.DataLoader(wl.train_data, batch_size=self.batch_size, shuffle=True)

    module = Module()
    trainer = L.Trainer(
        accelerator="gpu", devices=1, max_steps=FOLLOW_STEPS, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    began = time.perf_counter()
    answer = Tuner(trainer).scale_batch_size(module, mode=mode, max_trials=25, steps_per_trial=3)
    out = peer_summary(answer, attempts, time.perf_counter() - began)
    try:
        trainer.fit(module)
        out[f"{FOLLOW_STEPS} steps, same process"] = "fits"
    except torch.cuda.OutOfMemoryError:
        out[f"{FOLLOW_STEPS} steps, same process"] = "out of memory"
    if answer:
        fresh = fresh_steps(workload, answer, FOLLOW_STEPS)["fits"]
        out[f"{FOLLOW_STEPS} steps, fresh process"] = "fits" if fresh else "out of memory"
    return out


def accelerate_peer(workload: str) -> dict[str, Any]:
    from accelerate.utils import find_executable_batch_size  # the [peers] extra

    limit_this_process(LIMIT, torch.device("cuda", 0))
    attempts: list[int] = []
    start = 1 << 16

    @find_executable_batch_size(starting_batch_size=start)  # type: ignore[misc]
    def run(batch_size: int) -> int:
        attempts.append(batch_size)
        steps_at(workload, batch_size, LIMIT, 3)["fits"] or _raise_oom()
        return batch_size

    began = time.perf_counter()
    answer = run()
    out = peer_summary(answer, attempts, time.perf_counter() - began)
    same = steps_at(workload, answer, LIMIT, FOLLOW_STEPS)["fits"]
    out[f"{FOLLOW_STEPS} steps, same process"] = "fits" if same else "out of memory"
    fresh = fresh_steps(workload, answer, FOLLOW_STEPS)["fits"]
    out[f"{FOLLOW_STEPS} steps, fresh process"] = "fits" if fresh else "out of memory"
    return out


def _raise_oom() -> bool:
    raise torch.cuda.OutOfMemoryError("CUDA out of memory (steps_at)")


def precision_check(precision: str) -> Check:
    def check() -> dict[str, Any]:
        run = batchlab("train", "--workload", "digits-cnn", "--device", DEVICE, "--precision", precision,
                       "--until-target")  # fmt: skip
        data = run["data"]
        if not data["reached_target"]:
            raise RuntimeError(
                f"{precision} did not reach the target (final eval loss {data['final_eval_loss']})"
            )
        return {"steps to target": data["steps_to_target"], "seconds": round(run["seconds"], 1)}

    return check


def strategies_check() -> dict[str, Any]:
    run = batchlab(
        "memory", "--workload", "charlm", "--device", DEVICE, "--memory-limit", LIMIT, "--strategies"
    )
    rows = {r["strategy"]: r["max_batch_size"] for r in run["data"]["strategies"]}
    return {**rows, "seconds": round(run["seconds"], 1)}


def throughput_check() -> dict[str, Any]:
    run = batchlab("throughput", "--workload", "charlm", "--device", DEVICE)
    data = run["data"]
    best = max(p["samples_per_second"] or 0 for p in data["points"])
    return {
        "knee": data["knee_batch_size"],
        "best samples/s": round(best),
        "seconds": round(run["seconds"], 1),
    }


def noise_check() -> dict[str, Any]:
    run = batchlab("noise", "--workload", NOISE_WORKLOAD, "--device", DEVICE)
    data = run["data"]
    return {"B_simple": round(data["b_simple"], 1), "stderr": round(data["b_simple_stderr"], 1)}


def advise_check() -> dict[str, Any]:
    folder = tempfile.mkdtemp(prefix="gpu-check-")
    try:
        run = batchlab("advise", "--workload", "charlm", "--device", DEVICE, "--validate", "--out", folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    data = run["data"]
    return {
        "batch": data["batch_size"],
        "predicted speedup": data["predicted_speedup"],
        "measured speedup": data.get("measured_speedup"),
        "seconds": round(run["seconds"], 1),
    }


def nccl_check() -> dict[str, Any]:
    run = torchrun(1, "train", "--workload", "digits-mlp", "--device", DEVICE, "--max-steps", "50")
    return {"steps": run["data"]["steps"], "seconds": round(run["seconds"], 1)}


def gloo_two_ranks_check() -> dict[str, Any]:
    run = torchrun(2, "train", "--workload", "digits-mlp", "--device", DEVICE, "--max-steps", "50",
                   extra_env={"BATCHLAB_DIST_BACKEND": "gloo"})  # fmt: skip
    return {"steps": run["data"]["steps"], "seconds": round(run["seconds"], 1)}


CHECKS: list[tuple[str, Check]] = [
    ("memory digits-cnn", memory_check("digits-cnn")),
    ("memory charlm", memory_check("charlm")),
    ("Lightning power, charlm", peer_check("lightning-power", "charlm")),
    ("Lightning binsearch, charlm", peer_check("lightning-binsearch", "charlm")),
    ("Accelerate, charlm", peer_check("accelerate", "charlm")),
    ("train fp16 digits-cnn", precision_check("fp16")),
    ("train bf16 digits-cnn", precision_check("bf16")),
    ("memory --strategies charlm", strategies_check),
    ("throughput charlm", throughput_check),
    ("noise digits-cnn", noise_check),
    ("advise --validate charlm", advise_check),
    ("torchrun 1 x NCCL", nccl_check),
    ("torchrun 2 gloo ranks, one GPU", gloo_two_ranks_check),
]


# Running them all and writing the results --------------------------------------------------------------


def run_checks(checks: list[tuple[str, Check]]) -> list[dict[str, Any]]:
    """Each check's outcome: passed (its figures), failed (its error), or skipped (a peer not installed)."""
    results = []
    for name, check in checks:
        began = time.perf_counter()
        try:
            figures, status, error = check(), "passed", None
        except ImportError as missing:
            figures, status, error = {}, "skipped", f"not installed ({missing.name}): pip install -e .[peers]"
        except Exception as failure:  # recorded, and the other checks still run
            figures, status, error = {}, "failed", f"{type(failure).__name__}: {failure}"[:400]
        results.append(
            {"check": name, "status": status, "error": error, "figures": figures,
             "wall_seconds": round(time.perf_counter() - began, 1)}
        )  # fmt: skip
        print(f"{status:>7}  {name}  {error or figures}", flush=True)
    return results


def markdown(results: list[dict[str, Any]], about: dict[str, Any]) -> list[str]:
    lines = [
        f"# gpu-check: {about.get('cuda')} (torch {about.get('torch')}, CUDA {about.get('cuda_version')})",
        "",
        f"{about.get('date')}; limit {LIMIT} per process; `make gpu-check`.",
        "",
        "| check | status | figures | wall s |",
        "|---|---|---|---|",
    ]
    for r in results:
        figures = r["error"] or ", ".join(f"{k}: {v}" for k, v in r["figures"].items())
        lines.append(f"| {r['check']} | {r['status']} | {figures.replace('|', '/')} | {r['wall_seconds']} |")
    return lines


def main(argv: list[str]) -> int:
    if argv[:1] == ["--steps-at"]:  # the fresh-process follow-up: WORKLOAD BATCH LIMIT STEPS [DEVICE]
        workload, batch, limit, steps, *device = argv[1:]
        print(json.dumps(steps_at(workload, int(batch), limit, int(steps), *device)))
        return 0
    if argv[:1] == ["--peer"]:  # one peer's run in this process: PEER WORKLOAD
        try:
            print(json.dumps(run_peer(argv[1], argv[2])))
        except ImportError as missing:
            print(f"not installed ({missing.name}): pip install -e .[peers]")
            return 3
        return 0
    if not torch.cuda.is_available():
        print(
            f"gpu-check: no CUDA device here (torch {torch.__version__}): nothing to check; run it on a GPU"
        )
        return 0
    about = {**machine(), "cuda_version": torch.version.cuda}
    results = run_checks(CHECKS)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gpu.json").write_text(json.dumps({"machine": about, "checks": results}, indent=2) + "\n")
    (RESULTS / "gpu.md").write_text("\n".join(markdown(results, about)) + "\n")
    print("\n".join(markdown(results, about)))
    return 1 if any(r["status"] == "failed" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
