"""A helper process that runs memory trials: `python -m batchlab.measure.trials`.

It imports torch once, then for each JSON plan on stdin forks a child that runs one trial and
writes one JSON line back through a pipe; the server answers on stdout with that line, or with how
the child died. Plain JSON both ways (no pickle), and the caller's `__main__` is never re-imported.
The server is started with glibc's mmap threshold fixed (see memory_trial.py), in its own environment.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any, TextIO


def _serve() -> None:
    # Interrupts are the parent's to handle (it kills this server); a Ctrl-C at the terminal
    # reaches the whole process group, and must not print a traceback from here.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # stdout is the answers' channel: the user's code (a model that prints its size, a progress bar)
    # writes to file descriptor 1 in this server and in every forked trial, so that descriptor
    # becomes stderr and the answers keep a copy of the pipe of their own.
    sys.stdout.flush()
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    die_with(int(os.environ.get("BATCHLAB_PARENT_PID", os.getppid())))
    try:
        _serve_plans(answers)
    except BrokenPipeError:  # the parent went away: nothing left to answer
        os._exit(0)


def die_with(parent: int) -> None:
    """End this process when `parent` ends, however it ends (SIGKILL included), so that no trial
    lives on as an orphan holding memory or writing to a terminal its parent has left. Linux:
    the kernel's parent-death signal; elsewhere, a thread that watches the parent's pid."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0) == 0:
            if os.getppid() != parent:  # it died before the signal was armed
                os._exit(1)
            return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _serve_plans(answers: TextIO) -> None:
    import torch  # imported once here, shared by every forked trial

    # GNU OpenMP's thread pool does not survive fork: the server never starts it (one thread),
    # and each child restores the usual count before it runs anything.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    _warm_up(torch)

    from batchlab.core.device import is_out_of_memory
    from batchlab.measure.memory_trial import TrialPlan, trial_steps
    from batchlab.workload import Workload
    from batchlab.workloads import load_workload

    workloads: dict[str, Workload] = {}
    for line in sys.stdin:
        plan = TrialPlan(**json.loads(line))
        if plan.spec not in workloads:  # loaded once in the server; every child inherits the data
            try:
                workloads[plan.spec] = load_workload(plan.spec)
            except Exception as exc:  # the parent reports it as the workload's failure
                _answer(answers, {"failure": _last_line(exc)})
                continue
        read_fd, write_fd = os.pipe()
        server = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: one trial, one answer, then exit without cleanup handlers
            die_with(server)
            os.close(read_fd)
            torch.set_num_threads(threads)
            message = _child(plan, workloads[plan.spec], trial_steps, is_out_of_memory)
            os.write(write_fd, json.dumps(message).encode())
            os._exit(0)
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as reader:
            raw = reader.read()
        _, status = os.waitpid(pid, 0)
        if raw:
            _answer(answers, json.loads(raw))
        elif os.WIFSIGNALED(status):
            _answer(answers, {"signal": os.WTERMSIG(status)})
        else:
            _answer(answers, {"exit_code": os.WEXITSTATUS(status)})


def _warm_up(torch: Any) -> None:
    """The first optimizer step in a process imports torch._dynamo and more (about a second here):
    pay it once in the server with a throwaway model, not again in every forked trial."""
    model = torch.nn.Linear(2, 2)
    for optimizer in (torch.optim.SGD(model.parameters(), lr=0.1), torch.optim.AdamW(model.parameters())):
        model(torch.zeros(1, 2)).sum().backward()
        optimizer.step()


def _child(plan: Any, workload: Any, trial_steps: Any, is_out_of_memory: Any) -> dict[str, Any]:
    import torch

    try:
        peak, steps, error, step_seconds = trial_steps(workload, plan, torch.device(plan.device))
        return {"peak_bytes": peak, "steps": steps, "error": error, "step_seconds": step_seconds}
    except BaseException as exc:  # classified here: out-of-memory, or the workload's own failure
        if is_out_of_memory(exc):
            return {"peak_bytes": None, "steps": 0, "error": "out_of_memory"}
        return {"failure": _last_line(exc)}


def _last_line(exc: BaseException) -> str:
    """The error's last line and, when it came from the user's code, where (file:line, function)."""
    from batchlab.core.guard import user_frames

    line = traceback.format_exception_only(type(exc), exc)[-1].strip()
    frames = user_frames(exc.__traceback__)
    if frames:
        line += f" ({frames[-1].filename}:{frames[-1].lineno}, in {frames[-1].name})"
    return line


def _answer(answers: TextIO, message: dict[str, Any]) -> None:
    answers.write(json.dumps(message) + "\n")
    answers.flush()


if __name__ == "__main__":
    _serve()
