"""batchlab: which batch size, and which learning rate to go with it, measured on your own workload."""

from ._errors import BatchlabError, ConfigError, WorkloadError
from .lr import LrRule, scale_lr
from .train import CurvePoint, TrainResult, train
from .workload import Target, Workload, load_workload

__all__ = [
    "BatchlabError",
    "ConfigError",
    "CurvePoint",
    "LrRule",
    "Target",
    "TrainResult",
    "Workload",
    "WorkloadError",
    "load_workload",
    "scale_lr",
    "train",
]
__version__ = "0.1.0"
