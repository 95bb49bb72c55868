"""The CLI: JSON output, one-line errors with exit code 2, and results written to --out."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchlab.core.store import Store

from .helpers import assert_one_line_error, invoke, invoke_json

DATA = Path(__file__).parent / "data"


def test_workloads_lists_the_builtins() -> None:
    data = invoke_json("workloads")
    assert [w["name"] for w in data["workloads"]] == ["digits-mlp", "digits-cnn", "linreg", "charlm"]


def test_train_until_target_json(tmp_path: Path) -> None:
    """train --until-target --json prints the documented keys; --out keeps the run in the store."""
    data = invoke_json(
        "train", "--workload", "digits-mlp", "--batch-size", "32", "--until-target", "--out", str(tmp_path)
    )
    for key in (
        "workload",
        "batch_size",
        "lr",
        "steps_to_target",
        "examples_to_target",
        "seconds_to_target",
        "diverged",
        "curve",
    ):
        assert key in data
    assert data["workload"] == "digits-mlp"
    assert data["steps_to_target"] is not None and data["diverged"] is False
    assert data["examples_to_target"] == 32 * data["steps_to_target"]
    assert set(data["curve"][1]) >= {"step", "examples", "seconds", "train_loss", "eval_loss"}
    with Store(tmp_path) as store:
        assert len(store.runs("train")) == 1
    assert (tmp_path / "train.json").is_file()


def test_divergence_exits_zero() -> None:
    """A huge learning rate is a result: diverged true, exit code 0."""
    data = invoke_json("train", "--workload", "linreg", "--lr", "10000", "--max-steps", "300")
    assert data["diverged"] is True


def test_human_table() -> None:
    result = invoke("train", "--workload", "linreg", "--max-steps", "20")
    assert result.exit_code == 0
    assert "final eval loss" in result.stdout


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--workload", "nope"], ["workload 'nope' is not a built-in", "batchlab workloads"]),
        (["--workload", "user_workloads:missing"], ["has no function 'missing'"]),
        (["--workload", "user_workloads:not_a_workload"], ["returned dict, not a batchlab.Workload"]),
        (["--batch-size", "0"], ["batch_size must be an integer >= 1 (got 0)", "--batch-size 1"]),
        (["--batch-size", "-3"], ["batch_size must be an integer >= 1 (got -3)"]),
        (["--batch-size", "2.5"], ["batch_size must be a whole number (got '2.5')", "--batch-size"]),
        (["--batch-size", "5000"], ["at most the training set's size, 1438 (got 5000)", "--batch-size 1438"]),
        (["--lr", "0"], ["lr must be a finite number > 0 and <= 1e+30 (got 0.0)", "--lr"]),
        (["--lr", "-0.1"], ["lr must be a finite number > 0 and <= 1e+30 (got -0.1)"]),
        (["--device", "tpu:0"], ["device must be"]),
        (["--ghost-batch-size", "[/x]"], ["ghost_batch_size must be a whole number (got '[/x]')"]),
        (["--ghost-batch-size", "16"], ["ghost_batch_size must be used with a model that has BatchNorm"]),
        (["--milestones", "5,5"], ["milestones must be strictly increasing epochs"]),
        (["--milestones", "5", "--factor", "1"], ["factor must be a number > 1 (got 1.0)"]),
        (["--max-batch-size", "64"], ["max_batch_size must be used with --milestones"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    args: list[str], fragments: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each bad input gets one line naming the problem and the fix, exit code 2, no traceback."""
    monkeypatch.syspath_prepend(str(DATA))
    result = invoke("train", *args, "--max-steps", "1")
    assert_one_line_error(result, *fragments)


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["train", "--nope", "1"], ["--nope is not an option of `batchlab train`", "batchlab train --help"]),
        (["train", "--max-steps", "ten"], ["max_steps must be a whole number (got 'ten')", "--max-steps"]),
        (["nosuch"], ["No such command 'nosuch'"]),
        (["noise", "--batch-sizes", "8"], ["another command: sweep, throughput"]),
        # Past torch's int64 a seed overflowed inside manual_seed (found by test_fuzz).
        (
            ["study", "noise-vs-batch", "--seed", str(-(2**63) - 1)],
            ["seed must be a whole number from 0 to 4294967295", "--seed 0"],
        ),
        (["train", "--seed", str(2**32)], ["seed must be a whole number from 0 to 4294967295"]),
        (["sweep", "--seeds", "0,-1"], ["seeds must be a whole number from 0 to 4294967295 (got -1)"]),
    ],
)
def test_usage_errors_are_one_line_too(args: list[str], fragments: list[str]) -> None:
    """What the option parser refuses (an unknown option or command, a value that is not a number)
    ends like every other bad input: one line, exit code 2."""
    assert_one_line_error(invoke(*args), *fragments)
