"""One memory trial: a plan, the steps it runs until its peak stops growing, the memory it reads, and the
client of the server process that runs each trial in a forked child (`trials.py`)."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from batchlab.core.data import to_device
from batchlab.core.precision import Amp, Precision, optimizer_step
from batchlab.core.step import backward, clip_step
from batchlab.core.stream import StreamData
from batchlab.errors import WorkloadError
from batchlab.train.model import fresh_model
from batchlab.workload import Workload

# glibc reads these at start-up: the trial server is started with them, and every forked trial inherits them.
CPU_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


MIN_STEPS = 4  # a trial runs at least this many steps...


MAX_STEPS = 40  # ...and at most this many, waiting for its peak to stop growing


STABLE_WINDOW = 3  # the peak is stable when it grew by at most STABLE_BYTES over this many steps


CPU_STABLE_BYTES = 256 * 1024  # resident memory moves by a few pages as Python objects come and go


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def _address_space_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None


def available_cpu_bytes() -> int:
    """MemAvailable from /proc/meminfo, else physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@dataclass(frozen=True)
class TrialPlan:
    spec: str
    batch_size: int
    device: str
    limit_bytes: int
    include_eval: bool
    min_steps: int
    max_steps: int
    precision: str = "fp32"
    checkpoint: bool = False


def trial_steps(
    workload: Workload, plan: TrialPlan, device: torch.device
) -> tuple[int, int, str | None, float | None]:
    """Run training steps at the plan's batch size until the peak settles; (peak, steps, error,
    seconds of its fastest step)."""

    cuda = device.type == "cuda"
    if cuda:
        _, total = torch.cuda.mem_get_info(device)
        torch.cuda.set_per_process_memory_fraction(min(1.0, plan.limit_bytes / total), device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        space = _address_space_bytes()
        if space is not None:  # a safety net far above the limit: a runaway allocation fails cleanly
            cap = space + 2 * plan.limit_bytes
            resource.setrlimit(resource.RLIMIT_AS, (cap, resource.getrlimit(resource.RLIMIT_AS)[1]))
    model = fresh_model(workload, 0, device, checkpoint=plan.checkpoint)
    optimizer = workload.optimizer(model.parameters(), workload.lr)
    precision = Precision(plan.precision)
    amp = None if precision is Precision.FP32 else Amp(precision, device)
    x, y = _gather(workload, plan.batch_size, device)
    stable_bytes = 0 if cuda else CPU_STABLE_BYTES
    peaks: list[int] = []
    durations: list[float] = []
    for _ in range(plan.max_steps):
        began = time.perf_counter()
        model.train()
        optimizer.zero_grad(set_to_none=True)
        backward(model, workload.loss, (x, y), micro_batches=1, amp=amp)
        clip_step(model, optimizer, amp, workload.clip_grad_norm)
        optimizer_step(optimizer, amp)
        if plan.include_eval:
            model.eval()
            with torch.no_grad(), amp.autocast() if amp is not None else nullcontext():
                model(x)
        if cuda:
            torch.cuda.synchronize(device)
            peaks.append(int(torch.cuda.max_memory_reserved(device)))
        else:
            peaks.append(_peak_rss_bytes())
        durations.append(time.perf_counter() - began)
        if peaks[-1] > plan.limit_bytes:
            return peaks[-1], len(peaks), "over_limit", None
        settled = len(peaks) > STABLE_WINDOW and peaks[-1] - peaks[-1 - STABLE_WINDOW] <= stable_bytes
        if len(peaks) >= plan.min_steps and settled:
            break
    # The fastest step after the first (which allocates and warms up): the step's own cost.
    return peaks[-1], len(peaks), None, min(durations[1:] or durations)


def _gather(workload: Workload, batch_size: int, device: torch.device) -> tuple[Any, Any]:
    """The trial's batch: the first `batch_size` examples, from the start again where the data is
    shorter (the memory a step takes does not depend on which examples it holds)."""
    from torch.utils.data import DataLoader, Subset

    if workload.stream:
        return StreamData(workload.train_data, device).first(batch_size)
    indices = torch.arange(batch_size) % workload.train_size
    subset = Subset(workload.train_data, indices.tolist())
    x, y = next(iter(DataLoader(subset, batch_size=len(indices))))
    return to_device(x, device), to_device(y, device)


class TrialServer:
    """The helper process that runs trials (see _trial_server.py); one per probe."""

    def __init__(self) -> None:
        env = {**os.environ, **CPU_MALLOC_ENV}
        src = str(Path(__file__).resolve().parents[2])  # the folder that holds the batchlab package
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, *sys.path, env.get("PYTHONPATH", "")) if p)
        env["BATCHLAB_PARENT_PID"] = str(os.getpid())  # the server ends when this process does
        self.process = subprocess.Popen(
            [sys.executable, "-m", "batchlab.measure.trials"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )

    def run(self, plan: TrialPlan, *, confirmation: bool) -> MemoryTrial:
        """One trial in a fresh child. A failure other than out-of-memory is raised here."""
        assert self.process.stdin is not None and self.process.stdout is not None
        started = time.perf_counter()
        self.process.stdin.write(json.dumps(asdict(plan)) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        seconds = time.perf_counter() - started
        if not line:
            raise WorkloadError(
                f"the trial server stopped at batch size {plan.batch_size} "
                f"(exit code {self.process.poll()}); check that the workload imports cleanly"
            )
        message = json.loads(line)
        if "failure" in message:
            raise WorkloadError(f"the workload failed at batch size {plan.batch_size}: {message['failure']}")
        if message.get("signal") == signal.SIGKILL:  # the kernel's OOM killer's signature
            message = {"peak_bytes": None, "steps": 0, "error": "killed"}
        elif "signal" in message or "exit_code" in message:
            how = (
                f"signal {message['signal']}" if "signal" in message else f"exit code {message['exit_code']}"
            )
            raise WorkloadError(
                f"the workload failed at batch size {plan.batch_size}: its process died "
                f"({how}); run `batchlab train --batch-size {plan.batch_size} --max-steps 1`"
            )
        error = message["error"]
        return MemoryTrial(
            batch_size=plan.batch_size,
            fits=error is None,
            peak_bytes=message["peak_bytes"],
            seconds=seconds,
            steps=message["steps"],
            error=error,
            confirmation=confirmation,
            step_seconds=message.get("step_seconds"),
        )

    def __enter__(self) -> TrialServer:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.close(kill=exc_type is not None)

    def close(self, *, kill: bool = False) -> None:
        """Stop the server: at once with `kill` (an interrupt or an error: the trial in hand is
        dropped, and the trial's own process dies with the server, see _trial_server.py), else
        when it has read to the end of its input."""
        if kill:
            self.process.kill()
        try:
            if self.process.stdin is not None:
                self.process.stdin.close()
        except BrokenPipeError:  # it had already stopped
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


@dataclass(frozen=True, kw_only=True)
class MemoryTrial:
    """One batch size tried: whether it fit, its peak, and how many steps the peak took to settle."""

    batch_size: int
    fits: bool
    peak_bytes: int | None
    seconds: float
    steps: int
    error: str | None = None  # "out_of_memory", "over_limit" or "killed" when it did not fit
    confirmation: bool = False
    step_seconds: float | None = None  # its fastest whole step (training + evaluation), when timed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
