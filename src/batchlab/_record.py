"""Training runs recorded in the store as they go, and reused when already finished."""

from __future__ import annotations

from typing import Any

from .store import Store, run_key
from .train import TrainResult, train
from .workload import Workload


def recorded_train(
    store: Store | None, workload: Workload, *, kind: str, progress: Any = None, **settings: Any
) -> tuple[TrainResult, bool]:
    """Train with `settings`, writing every curve point to `store`; reuse a finished identical run.

    Returns the result and whether it was reused from the store.
    """
    if store is None:
        return train(workload, progress=progress, **settings), False
    config = {"workload": workload.name, **settings}
    config.pop("device", None)  # a run's identity is its settings, not where it ran
    key = run_key(kind, config)
    done = store.finished(key)
    if done is not None:
        return TrainResult.from_dict(done), True
    run_id = store.begin_run(key, kind=kind, workload=workload.name, config=config)
    result = train(
        workload, progress=progress, on_point=lambda p: store.add_point(run_id, p.to_dict()), **settings
    )
    store.finish_run(run_id, result.to_dict())
    return result, False
