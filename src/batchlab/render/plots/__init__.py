"""The figures batchlab draws, each a function from plain result dicts to PNG bytes.

They take the JSON form of results (what the store and the report hold), so a report can be drawn
again from a results folder alone. Matplotlib runs headless (Agg); nothing is shown on screen.
"""

from batchlab.render.plots.measurements import (
    loss_curves,
    memory,
    noise_history,
    steps_to_target,
    throughput,
    time_to_target,
)
from batchlab.render.plots.studies import (
    branch_progress,
    critical_batch,
    noise_vs_batch,
    study_bars,
    study_curves,
    study_overlay,
    study_schedules,
)

__all__ = [
    "branch_progress",
    "critical_batch",
    "loss_curves",
    "memory",
    "noise_history",
    "noise_vs_batch",
    "steps_to_target",
    "study_bars",
    "study_curves",
    "study_overlay",
    "study_schedules",
    "throughput",
    "time_to_target",
]
