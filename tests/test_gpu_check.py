"""`make gpu-check` as far as a CPU can take it: its CUDA-less path, its fresh-process follow-up,
how it reads peers' runs, and how it records checks that pass, fail or lack a package."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parents[1] / "bench" / "gpu_check.py"
spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
assert spec is not None and spec.loader is not None
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the real check runs")
def test_without_cuda_it_says_so_in_one_line_and_exits_0() -> None:
    results = gpu_check.RESULTS
    before = {p.name: p.stat().st_mtime_ns for p in results.glob("gpu.*")}
    done = run()
    assert done.returncode == 0
    assert done.stdout.strip().splitlines() == [
        f"gpu-check: no CUDA device here (torch {torch.__version__}): nothing to check; run it on a GPU"
    ]
    assert {p.name: p.stat().st_mtime_ns for p in results.glob("gpu.*")} == before  # nothing written


def test_the_fresh_process_follow_up_trains_and_reports() -> None:
    done = run("--steps-at", "linreg", "16", "1GiB", "5", "cpu")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == '{"fits": true, "steps": 5, "peak_bytes": null}'


def test_a_peer_run_is_read_as_its_answer_tries_and_failed_calls() -> None:
    """Accelerate from 512 down by 10% a failure until 307 fits: 6 calls, 5 of them past the answer."""
    tried = [512, 460, 414, 372, 335, 307]
    assert gpu_check.peer_summary(307, tried, 12.345) == {
        "answer": 307,
        "tried": 6,
        "failed calls": 5,
        "seconds": 12.3,
    }
    assert gpu_check.peer_summary(None, [2, 4], 1.0)["failed calls"] == 0


def test_checks_are_recorded_passed_failed_or_skipped() -> None:
    def passes() -> dict[str, object]:
        return {"answer": 42}

    def lacks() -> dict[str, object]:
        raise ImportError("no module", name="lightning")

    def fails() -> dict[str, object]:
        raise RuntimeError("ran out of memory at the answer")

    results = gpu_check.run_checks([("a", passes), ("b", lacks), ("c", fails)])
    assert [(r["check"], r["status"]) for r in results] == [
        ("a", "passed"),
        ("b", "skipped"),
        ("c", "failed"),
    ]
    assert results[1]["error"] == "not installed (lightning): pip install -e .[peers]"
    table = gpu_check.markdown(results, {"cuda": "GPU", "torch": "2", "cuda_version": "12", "date": "d"})
    assert "| a | passed | answer: 42 |" in table[6]
    assert table[8].startswith("| c | failed | RuntimeError: ran out of memory at the answer |")


@pytest.mark.skipif(importlib.util.find_spec("accelerate") is not None, reason="the peer is installed")
def test_a_missing_peer_is_skipped_with_the_install_command() -> None:
    results = gpu_check.run_checks([("Accelerate", gpu_check.peer_check("accelerate", "linreg"))])
    assert results[0]["status"] == "skipped"
    assert "pip install -e .[peers]" in results[0]["error"]


def test_checks_read_batchlab_s_json_through_a_fresh_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """The noise and torchrun checks, pointed at the CPU: the same commands and JSON fields the GPU
    run reads (the torchrun one on gloo, as on a CPU it must be)."""
    monkeypatch.setattr(gpu_check, "DEVICE", "cpu")
    monkeypatch.setattr(gpu_check, "NOISE_WORKLOAD", "linreg")
    noise = gpu_check.noise_check()
    assert noise["B_simple"] > 0 and noise["stderr"] > 0
    assert gpu_check.nccl_check()["steps"] == 50
