"""Training runs recorded in the store as they go, and reused when already finished."""

from __future__ import annotations

from typing import Any

from . import _dist
from .store import Store, run_key
from .train import CURVE_VERSION, TrainResult, train
from .workload import Workload


def run_config(workload: Workload, settings: dict[str, Any]) -> dict[str, Any]:
    """What identifies a run: its workload, its settings (not the device it ran on), and the
    version of what its curve points mean."""
    config = {"workload": workload.name, "curve_version": CURVE_VERSION, **settings}
    config.pop("device", None)
    return config


def recorded_train(
    store: Store | None, workload: Workload, *, kind: str, progress: Any = None, **settings: Any
) -> tuple[TrainResult, bool]:
    """Train with `settings`, writing every curve point to `store`; reuse a finished identical run.

    Under torchrun, rank 0 alone holds the store (the others pass None): it decides whether a run
    is reused and tells the others, so that every rank trains the same runs.
    Returns the result and whether it was reused from the store.
    """
    config = run_config(workload, settings)
    key = run_key(kind, config)
    done = _dist.broadcast(store.finished(key) if store is not None else None)
    if done is not None:
        return TrainResult.from_dict(done), True
    if store is None:
        return train(workload, progress=progress, **settings), False
    run_id = store.begin_run(key, kind=kind, workload=workload.name, config=config)
    result = train(
        workload, progress=progress, on_point=lambda p: store.add_point(run_id, p.to_dict()), **settings
    )
    store.finish_run(run_id, result.to_dict())
    return result, False
