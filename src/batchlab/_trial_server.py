"""A helper process that runs memory trials: `python -m batchlab._trial_server`.

It imports torch once, then for each JSON plan on stdin forks a child that runs one trial and
writes one JSON line back through a pipe; the server answers on stdout with that line, or with how
the child died. Plain JSON both ways (no pickle), and the caller's `__main__` is never re-imported.
The server is started with glibc's mmap threshold fixed (see memory.py), in its own environment.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Any


def _serve() -> None:
    import torch  # imported once here, shared by every forked trial

    # GNU OpenMP's thread pool does not survive fork: the server never starts it (one thread),
    # and each child restores the usual count before it runs anything.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    _warm_up(torch)

    from .memory import TrialPlan, is_out_of_memory, trial_steps
    from .workload import Workload, load_workload

    workloads: dict[str, Workload] = {}
    for line in sys.stdin:
        plan = TrialPlan(**json.loads(line))
        if plan.spec not in workloads:  # loaded once in the server; every child inherits the data
            try:
                workloads[plan.spec] = load_workload(plan.spec)
            except Exception as exc:  # the parent reports it as the workload's failure
                _answer({"failure": _last_line(exc)})
                continue
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: one trial, one answer, then exit without cleanup handlers
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
            _answer(json.loads(raw))
        elif os.WIFSIGNALED(status):
            _answer({"signal": os.WTERMSIG(status)})
        else:
            _answer({"exit_code": os.WEXITSTATUS(status)})


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
        peak, steps, error = trial_steps(workload, plan, torch.device(plan.device))
        return {"peak_bytes": peak, "steps": steps, "error": error}
    except BaseException as exc:  # classified here: out-of-memory, or the workload's own failure
        if is_out_of_memory(exc):
            return {"peak_bytes": None, "steps": 0, "error": "out_of_memory"}
        return {"failure": _last_line(exc)}


def _last_line(exc: BaseException) -> str:
    return traceback.format_exception_only(type(exc), exc)[-1].strip()


def _answer(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    _serve()
