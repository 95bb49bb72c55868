"""The Workload validates itself, and load_workload finds workloads by name, module or file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from batchlab import ConfigError, Target, Workload, WorkloadError, load_workload
from batchlab.workloads import BUILTINS

DATA = Path(__file__).parent / "data"


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> Workload:
    monkeypatch.syspath_prepend(str(DATA))
    return load_workload("user_workloads:tiny")


def test_builtins_load_and_describe_themselves() -> None:
    """Every built-in loads, and its reference batch fits its training set."""
    for name in BUILTINS:
        workload = load_workload(name)
        assert workload.name == name
        assert 1 <= workload.batch_size <= workload.train_size
        assert workload.to_dict()["target"]["metric"] == workload.target.metric


def test_loads_module_function(tiny: Workload) -> None:
    """'package.module:function' imports the module and calls the function."""
    assert tiny.name == "tiny <b>&</b>"
    assert tiny.train_size == 64


def test_loads_file_function() -> None:
    """'path/to/file.py:function' works without the folder on sys.path."""
    workload = load_workload(f"{DATA / 'user_workloads.py'}:tiny")
    assert workload.batch_size == 8


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nope", "is not a built-in (digits-mlp"),
        ("user_workloads:missing", "has no function 'missing'"),
        ("user_workloads:NOT_CALLABLE", "has no function 'NOT_CALLABLE'"),
        ("user_workloads:not_a_workload", "returned dict, not a batchlab.Workload"),
        ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
        ("missing_file.py:f", "file 'missing_file.py' does not exist"),
    ],
)
def test_bad_specs_name_the_problem(spec: str, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each bad spec raises a WorkloadError whose one line says what was wrong."""
    monkeypatch.syspath_prepend(str(DATA))
    with pytest.raises(WorkloadError) as info:
        load_workload(spec)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("batch_size", 0, "workload.batch_size must be an integer >= 1 (got 0)"),
        ("batch_size", -4, "workload.batch_size must be an integer >= 1 (got -4)"),
        ("batch_size", 2.5, "workload.batch_size must be a whole number (got 2.5)"),
        ("batch_size", 65, "workload.batch_size must be at most the training set's size, 64 (got 65)"),
        ("lr", 0.0, "workload.lr must be a finite number > 0 and <= 1e+30 (got 0.0)"),
        ("lr", -1.0, "workload.lr must be a finite number > 0 and <= 1e+30 (got -1.0)"),
        ("loss", None, "workload.loss must be callable (got None)"),
        ("name", "", "workload.name must be a non-empty string"),
    ],
)
def test_workload_validates_its_fields(tiny: Workload, field: str, value: object, message: str) -> None:
    """A bad field raises a ConfigError that names the field and the bad value."""
    with pytest.raises(ConfigError) as info:
        dataclasses.replace(tiny, **{field: value})
    assert message in str(info.value)


def test_target_checks_mode_and_direction() -> None:
    """A target's mode is min or max, and `reached` compares in that direction."""
    with pytest.raises(ConfigError, match=r"target\.mode must be 'min' or 'max'"):
        Target(metric="eval_loss", value=1.0, mode="lowest")
    assert Target(metric="eval_loss", value=1.0).reached(1.0)
    assert not Target(metric="eval_loss", value=1.0).reached(1.01)
    assert Target(metric="eval_accuracy", value=0.9, mode="max").reached(0.95)


def test_eval_metric_needs_eval_data(tiny: Workload) -> None:
    """A target on eval_* without eval data is refused up front."""
    with pytest.raises(ConfigError, match=r"workload\.target\.metric must be 'train_loss'"):
        dataclasses.replace(tiny, eval_data=None)
