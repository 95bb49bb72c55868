"""--json prints exactly one JSON object on stdout, whatever the user's code prints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import invoke

PRINTING = f"{Path(__file__).parent / 'data' / 'user_workloads.py'}:printing"


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--max-steps", "20"],
        ["throughput", "--batch-sizes", "8,32", "--repeats", "1"],
        ["noise", "--steps", "20"],
        ["sweep", "--batch-sizes", "32,64", "--max-steps", "40"],
        ["advise"],
        ["study", "lr-scaling", "--epochs", "1", "--batch-sizes", "32,64"],
    ],
    ids=lambda args: args[0] if args[0] != "study" else "study",
)
def test_the_users_prints_go_to_stderr_under_json(args: list[str], tmp_path: Path) -> None:
    """A workload that prints from its dataset, its model factory and its loss: stdout parses as one
    JSON object, and the prints are on stderr."""
    result = invoke(*args, "--workload", PRINTING, "--out", str(tmp_path / "out"), "--json")
    assert result.exit_code == 0, result.output
    json.loads(result.stdout)  # one object, nothing else
    assert "PRINTED" not in result.stdout
    assert "PRINTED number of parameters" in result.stderr


@pytest.mark.parametrize("args", [["train", "--max-steps", "20"], ["memory", "--max-batch-size", "64"]])
def test_prints_from_c_code_and_child_processes_go_to_stderr_too(args: list[str], tmp_path: Path) -> None:
    """In a real process stdout is redirected at its file descriptor, so the memory probe's trial
    server and its forked trials (which build the model, and print) keep off it too; before, the
    trial server's own protocol read the user's print and the probe failed."""
    done = subprocess.run(
        [sys.executable, "-m", "batchlab", *args, "--workload", PRINTING, "--json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    json.loads(done.stdout)
    assert "PRINTED number of parameters" in done.stderr
