"""The workload: everything batchlab needs to train the user's model from scratch, many times.

A workload is the one seam between batchlab and a user's code. Every trial builds fresh objects
from it (a seeded model, a new optimizer); batchlab never mutates a user's trainer.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from batchlab.errors import ConfigError, WorkloadError, bad

LossFn = Callable[[Any, Any], torch.Tensor]
OptimizerFactory = Callable[[Any, float], torch.optim.Optimizer]
MetricsFn = Callable[[Any, Any], Mapping[str, float]]

# Metrics a target may name, beside "eval_<name>" (on the evaluation set) and "train_<name>" (on a
# fixed sample of the training set) for each name the workload's metrics return.
BASE_METRICS = ("train_loss", "eval_loss")


@dataclass(frozen=True, kw_only=True)
class Target:
    """What counts as "trained": `metric` at or below (mode "min") or above (mode "max") `value`."""

    metric: str
    value: float
    mode: str = "min"

    def __post_init__(self) -> None:
        if not isinstance(self.metric, str) or not self.metric:
            raise bad("target.metric", self.metric, "a metric name such as 'eval_loss'")
        if not isinstance(self.value, (int, float)) or not math.isfinite(self.value):
            raise bad("target.value", self.value, "a finite number")
        if self.mode not in ("min", "max"):
            raise bad("target.mode", self.mode, "'min' or 'max'")

    def reached(self, value: float) -> bool:
        """True when `value` of the metric counts as trained."""
        return value <= self.value if self.mode == "min" else value >= self.value

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "value": self.value, "mode": self.mode}


def _is_dataset(data: object) -> bool:
    return hasattr(data, "__getitem__") and hasattr(data, "__len__")


@dataclass(frozen=True, kw_only=True)
class Workload:
    """A model, its data, loss and optimizer, a reference point known to train, and a target.

    `model` is called with no arguments for a fresh model; batchlab seeds torch before each call.
    `optimizer(params, lr)` builds the optimizer. `batch_size` and `lr` are the reference point:
    learning-rate rules scale from it. `metrics(outputs, targets)` may return extra batch means
    (such as accuracy), reported as "eval_<name>" on the evaluation set and "train_<name>" on a
    fixed sample of the training set; a target may name either.
    """

    name: str
    model: Callable[[], nn.Module]
    train_data: Dataset[Any]
    eval_data: Dataset[Any] | None
    loss: LossFn
    optimizer: OptimizerFactory
    batch_size: int
    lr: float
    target: Target
    metrics: MetricsFn | None = None
    description: str = ""
    extras: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    # How load_workload found it ("digits-mlp", "pkg.mod:fn"): lets a child process rebuild it.
    spec: str | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise bad("workload.name", self.name, "a non-empty string")
        for name in ("model", "loss", "optimizer"):
            if not callable(getattr(self, name)):
                raise bad(f"workload.{name}", getattr(self, name), "callable")
        if self.metrics is not None and not callable(self.metrics):
            raise bad("workload.metrics", self.metrics, "callable or None")
        if not _is_dataset(self.train_data) or len(self.train_data) == 0:  # type: ignore[arg-type]
            raise bad("workload.train_data", type(self.train_data).__name__, "a non-empty map-style Dataset")
        if self.eval_data is not None and (
            not _is_dataset(self.eval_data) or len(self.eval_data) == 0  # type: ignore[arg-type]
        ):
            raise bad(
                "workload.eval_data", type(self.eval_data).__name__, "a non-empty map-style Dataset or None"
            )
        check_batch_size(self.batch_size, self.train_size, field="workload.batch_size")
        check_lr(self.lr, field="workload.lr")
        if not isinstance(self.target, Target):
            raise bad("workload.target", self.target, "a batchlab.Target")
        if self.eval_data is None and self.target.metric.startswith("eval_"):
            raise bad("workload.target.metric", self.target.metric, "'train_loss' when eval_data is None")

    @property
    def train_size(self) -> int:
        return len(self.train_data)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "train_size": self.train_size,
            "eval_size": None if self.eval_data is None else len(self.eval_data),  # type: ignore[arg-type]
            "batch_size": self.batch_size,
            "lr": self.lr,
            "target": self.target.to_dict(),
        }


def check_batch_size(batch_size: object, train_size: int, *, field: str = "batch_size") -> int:
    """A batch size is an integer from 1 to the training set's size."""
    flag = "--" + field.rsplit(".", 1)[-1].replace("_", "-")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise bad(field, batch_size, "a whole number", f"pass {flag} 32")
    if batch_size < 1:
        raise bad(field, batch_size, "an integer >= 1", f"pass {flag} 1 or larger")
    if batch_size > train_size:
        raise bad(
            field,
            batch_size,
            f"at most the training set's size, {train_size}",
            f"pass {flag} {train_size} or smaller",
        )
    return batch_size


MAX_LR = 1e30  # past ~3.4e38 an optimizer cannot even form lr x gradient in float32: it raises


def check_lr(lr: object, *, field: str = "lr") -> float:
    """A learning rate is a finite number greater than zero (and at most MAX_LR: a rate that large
    diverges at once, as a result; a larger one makes the optimizer raise instead)."""
    if (
        isinstance(lr, bool)
        or not isinstance(lr, (int, float))
        or not math.isfinite(lr)
        or not 0 < lr <= MAX_LR
    ):
        raise bad(field, lr, f"a finite number > 0 and <= {MAX_LR:g}", "pass --lr 0.01, say")
    return float(lr)


def load_workload(spec: str | Workload) -> Workload:
    """A built-in name, 'package.module:function' or 'path/to/file.py:function' -> a Workload."""
    if isinstance(spec, Workload):
        return spec
    from batchlab.workloads import BUILTINS

    if not isinstance(spec, str) or not spec.strip():
        raise WorkloadError(
            "workload must be a name or module:function (got an empty value); "
            f"pass --workload {next(iter(BUILTINS))}"
        )
    if spec in BUILTINS:
        return _with_spec(BUILTINS[spec].factory(), spec)
    if ":" not in spec:
        names = ", ".join(BUILTINS)
        raise WorkloadError(
            f"workload {spec!r} is not a built-in ({names}) nor a 'module:function' or "
            "'file.py:function' spec; run `batchlab workloads` to list the built-ins"
        )
    where, _, func_name = spec.rpartition(":")
    if not where.strip() or not func_name.strip():
        raise WorkloadError(
            f"workload {spec!r} names no {'module or file' if not where.strip() else 'function'}; "
            "pass 'package.module:function' or 'file.py:function'"
        )
    module = _import_file(where, spec) if where.endswith(".py") else _import_module(where, spec)
    factory = getattr(module, func_name, None)
    if factory is None or not callable(factory):
        raise WorkloadError(
            f"workload {spec!r}: {where} has no function {func_name!r}; "
            "name a function that returns a batchlab.Workload"
        )
    try:
        workload = factory()
    except ConfigError:
        raise
    except TypeError as error:
        raise WorkloadError(f"workload {spec!r}: calling {func_name}() failed: {error}") from None
    if not isinstance(workload, Workload):
        raise WorkloadError(
            f"workload {spec!r}: {func_name}() returned {type(workload).__name__}, not a "
            "batchlab.Workload; return Workload(name=..., model=..., ...)"
        )
    if ".py:" in spec:
        where = str(Path(where).resolve())
    return _with_spec(workload, f"{where}:{func_name}")


def _with_spec(workload: Workload, spec: str) -> Workload:
    object.__setattr__(workload, "spec", spec)  # frozen; set once, right after construction
    return workload


def _import_module(name: str, spec: str) -> Any:
    try:
        return importlib.import_module(name)
    except (ImportError, ValueError, TypeError) as error:  # missing, empty or relative names
        raise WorkloadError(
            f"workload {spec!r}: cannot import module {name!r} ({error}); "
            "check the name, or that its folder is on PYTHONPATH"
        ) from None


def _import_file(path: str, spec: str) -> Any:
    file = Path(path)
    if not file.is_file():
        raise WorkloadError(f"workload {spec!r}: file {path!r} does not exist; check the path")
    module_name = f"_batchlab_user_{abs(hash(str(file.resolve())))}"
    loader_spec = importlib.util.spec_from_file_location(module_name, file)
    if loader_spec is None or loader_spec.loader is None:
        raise WorkloadError(f"workload {spec!r}: cannot load {path!r} as Python")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module  # child processes and pickling-free lookups find it by name
    try:
        loader_spec.loader.exec_module(module)
    except SyntaxError as error:  # no frame of the user's to point at: name the file and line here
        del sys.modules[module_name]
        code = (error.text or "").strip()
        raise WorkloadError(
            f"workload {spec!r}: {error.filename or path} line {error.lineno} does not parse: "
            f"{error.msg}" + (f" ({code[:80]})" if code else "") + "; fix the file"
        ) from None
    except BaseException:
        del sys.modules[module_name]
        raise
    return module
