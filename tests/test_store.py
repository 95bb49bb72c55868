"""The SQLite store: points written as they happen, finished runs reused, unfinished ones restarted."""

from __future__ import annotations

from pathlib import Path

from batchlab import load_workload
from batchlab.core.store import Store, run_key
from batchlab.train.record import recorded_train, run_config


def test_run_key_is_stable_and_sensitive() -> None:
    assert run_key("sweep", {"b": 1, "a": 2}) == run_key("sweep", {"a": 2, "b": 1})
    assert run_key("sweep", {"a": 2}) != run_key("sweep", {"a": 3})


def test_finished_run_is_reused(tmp_path: Path) -> None:
    """The same settings twice train once; the second call reads the first's result."""
    workload = load_workload("linreg")
    with Store(tmp_path) as store:
        first, reused_first = recorded_train(
            store, workload, kind="t", batch_size=32, max_steps=20, device="cpu"
        )
        second, reused_second = recorded_train(
            store, workload, kind="t", batch_size=32, max_steps=20, device="cpu"
        )
        assert (reused_first, reused_second) == (False, True)
        assert second.curve == first.curve
        assert store.count_runs("done") == 1


def test_unfinished_run_is_restarted_whole(tmp_path: Path) -> None:
    """A run left 'running' (its process killed) is discarded with its points, then run again."""
    workload = load_workload("linreg")
    settings = run_config(workload, {"batch_size": 32, "max_steps": 20})
    with Store(tmp_path) as store:
        stale = store.begin_run(run_key("t", settings), kind="t", workload="linreg", config=settings)
        store.add_point(stale, {"step": 0, "eval_loss": 9.0})
        result, reused = recorded_train(store, workload, kind="t", batch_size=32, max_steps=20, device="cpu")
        assert not reused
        assert store.count_runs("running") == 0
        assert store.points(stale) == []
        assert store.runs("t")[0]["steps"] == result.steps == 20
