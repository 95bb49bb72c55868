"""batchlab: which batch size, and which learning rate to go with it, measured on your own workload."""

from . import _startup  # noqa: F401  (first: a Ctrl-C while torch is imported ends the command in one line)
from ._errors import BatchlabError, ConfigError, WorkloadError
from .advise import Advice, advise
from .generalization import GhostBatchNorm, Sharpness, epsilon_sharpness, sharpness, use_ghost_batch_norm
from .lr import LrRule, scale_lr
from .memory import MemoryProfile, MemoryTrial, probe_memory
from .monitor import NoiseMonitor, NoiseReading
from .noise import NoiseEstimate, measure_noise
from .schedule import BatchSchedule, Phase, ScheduledBatchSampler
from .store import Store
from .study import StudyResult, run_study
from .sweep import SweepResult, TradeoffFit, fit_tradeoff, run_sweep
from .throughput import ThroughputPoint, ThroughputProfile, profile_throughput
from .train import CurvePoint, TrainResult, train
from .workload import Target, Workload, load_workload

__all__ = [
    "Advice",
    "BatchSchedule",
    "BatchlabError",
    "ConfigError",
    "CurvePoint",
    "GhostBatchNorm",
    "LrRule",
    "MemoryProfile",
    "MemoryTrial",
    "NoiseEstimate",
    "NoiseMonitor",
    "NoiseReading",
    "Phase",
    "ScheduledBatchSampler",
    "Sharpness",
    "Store",
    "StudyResult",
    "SweepResult",
    "Target",
    "ThroughputPoint",
    "ThroughputProfile",
    "TradeoffFit",
    "TrainResult",
    "Workload",
    "WorkloadError",
    "advise",
    "epsilon_sharpness",
    "fit_tradeoff",
    "load_workload",
    "measure_noise",
    "probe_memory",
    "profile_throughput",
    "run_study",
    "run_sweep",
    "scale_lr",
    "sharpness",
    "train",
    "use_ghost_batch_norm",
]
__version__ = "0.1.0"
