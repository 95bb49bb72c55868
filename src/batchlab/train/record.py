"""Training runs (and other measurements) recorded in the store as they go, and reused when
already finished."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from batchlab.core import dist as _dist
from batchlab.core.store import Store, run_key
from batchlab.train.result import CURVE_VERSION, TrainResult
from batchlab.train.run import train
from batchlab.workload import Workload


def run_config(workload: Workload, settings: dict[str, Any]) -> dict[str, Any]:
    """What identifies a run: its workload, its settings (not the device it ran on), and the
    version of what its curve points mean."""
    config = {"workload": workload.name, "curve_version": CURVE_VERSION, **settings}
    if workload.schedule is not None or workload.clip_grad_norm is not None:  # the recipe is the run's too
        config["recipe"] = {
            "schedule": None if workload.schedule is None else workload.schedule.to_dict(),
            "clip_grad_norm": workload.clip_grad_norm,
        }
    config.pop("device", None)
    return config


def finished(store: Store | None, key: str) -> dict[str, Any] | None:
    """The finished result stored under `key`, if any. Under torchrun rank 0 alone holds the store
    (the others pass None): it decides whether a result is reused and tells the others, so that
    every rank does the same work."""
    return _dist.broadcast(store.finished(key) if store is not None else None)


def recorded(
    store: Store | None,
    workload: Workload,
    *,
    kind: str,
    config: dict[str, Any],
    compute: Callable[[], dict[str, Any]],
) -> dict[str, Any]:
    """A measurement that is not a training run (no curve): `compute()`'s result, recorded in
    `store` under `kind` and `config`, or the finished one already there."""
    key = run_key(kind, config)
    done = finished(store, key)
    if done is not None:
        return done
    if store is None:
        return compute()
    run_id = store.begin_run(key, kind=kind, workload=workload.name, config=config)
    result = compute()
    store.finish_run(run_id, result)
    return result


def recorded_train(
    store: Store | None, workload: Workload, *, kind: str, progress: Any = None, **settings: Any
) -> tuple[TrainResult, bool]:
    """Train with `settings`, writing every curve point to `store`; reuse a finished identical run.

    Under torchrun rank 0 alone holds the store (see `finished`). Returns the result and whether it
    was reused from the store.
    """
    config = run_config(workload, settings)
    key = run_key(kind, config)
    done = finished(store, key)
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
