"""batchlab: which batch size, and which learning rate to go with it, measured on your own workload.

The package reads in layers, each importing only from the ones below it (`make lint` checks it):

    errors.py     the one-line errors every check raises (`bad`)
    core/         devices, ranks, data, precision, the results store, the training step, the
                  gradient-noise estimator and the NoiseMonitor any loop can carry
    recipe.py     a training recipe's rate schedule (LrSchedule), in examples
    workload.py   the seam to the user's code (Workload, Target); workloads/: the built-ins and
                  load_workload; lr.py (scaling rules, and the one place a rule is picked),
                  schedule.py (batch schedules), ghost_bn.py, sharpness.py
    train/        one run: `train()` (run.py), its options (config.py), the loop, the step's rate
                  and clip (rate.py), how it is judged (evaluation.py), what it returns
                  (result.py), checkpoints, runs recorded in the store
    measure/      one module per measurement: memory (a pure search over trials run in child
                  processes), strategies, throughput, noise, the learning-rate search, the
                  critical batch by branched training
    advise/       the main job: pipeline.py runs the phases, model.py is the pure model
                  (predictions, the throughput stop, the forecast), then choice, evidence, rationale
    studies/      the folklore tested on your model, one module per study; sweep.py
    integrations/ Lightning, Hugging Face, TensorBoard
    render/       console tables, the HTML report, plots
    cli/          the `batchlab` command: shell.py (the app, one line per failure), one module
                  per group of commands

Start with workload.py (what you hand batchlab), then train/run.py and train/loop.py (what it does
with it), then advise/pipeline.py (the main job). The public API is the names below.
"""

from batchlab import _startup  # noqa: F401  (first: a Ctrl-C while torch is imported ends the command in one line)
from batchlab.advise.pipeline import AdviseConfig, advise
from batchlab.advise.result import Advice
from batchlab.core.monitor import NoiseMonitor, NoiseReading
from batchlab.core.store import Store
from batchlab.errors import BatchlabError, ConfigError, WorkloadError
from batchlab.ghost_bn import GhostBatchNorm, use_ghost_batch_norm
from batchlab.lr import LrRule, scale_lr
from batchlab.measure.memory import MemoryProfile, probe_memory
from batchlab.measure.memory_trial import MemoryTrial
from batchlab.measure.noise import NoiseEstimate, measure_noise
from batchlab.measure.throughput import ThroughputPoint, ThroughputProfile, profile_throughput
from batchlab.recipe import Decay, LrSchedule
from batchlab.schedule import BatchSchedule, Phase, ScheduledBatchSampler
from batchlab.sharpness import Sharpness, epsilon_sharpness, sharpness
from batchlab.studies.arms import StudyResult
from batchlab.studies.run import run_study
from batchlab.studies.sweep import SweepResult, TradeoffFit, fit_tradeoff, run_sweep
from batchlab.train.config import TrainConfig
from batchlab.train.result import CurvePoint, TrainResult
from batchlab.train.run import train
from batchlab.workload import Target, Workload
from batchlab.workloads import load_workload

__all__ = [
    "Advice",
    "AdviseConfig",
    "BatchSchedule",
    "BatchlabError",
    "ConfigError",
    "CurvePoint",
    "Decay",
    "GhostBatchNorm",
    "LrRule",
    "LrSchedule",
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
    "TrainConfig",
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
