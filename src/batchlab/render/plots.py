"""The figures batchlab draws, each a function from plain result dicts to PNG bytes.

They take the JSON form of results (what the store and the report hold), so a report can be drawn
again from a results folder alone. Matplotlib runs headless (Agg); nothing is shown on screen.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.ticker import Formatter, LogFormatter, ScalarFormatter

from batchlab.core.units import format_bytes, format_number

Figure = dict[str, Any]


@contextmanager
def _figure(ncols: int = 1) -> Iterator[tuple[Any, list[Axes]]]:
    fig, axes = plt.subplots(1, ncols, figsize=(5.2 * ncols, 3.6), squeeze=False)
    try:
        yield fig, list(axes[0])
    finally:
        plt.close(fig)


class _PlainNumbers(Formatter):
    """Tick labels as people write numbers (800,000; 0.04; 1,024), not 8e5, 4x10^-2 or 2^10.
    Which ticks get a label stays the decision of the formatter it wraps."""

    def __init__(self, inner: Formatter) -> None:
        self.inner = inner

    def set_axis(self, axis: Any) -> None:
        super().set_axis(axis)
        self.inner.set_axis(axis)

    def set_locs(self, locs: Any) -> None:
        super().set_locs(locs)
        self.inner.set_locs(locs)

    def __call__(self, x: float, pos: int | None = None) -> str:
        return format_number(x) if self.inner(x, pos) else ""


def _plain_numbers(fig: Any) -> None:
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            for get, put in (
                (axis.get_major_formatter, axis.set_major_formatter),
                (axis.get_minor_formatter, axis.set_minor_formatter),
            ):
                inner = get()
                if isinstance(inner, (ScalarFormatter, LogFormatter)):
                    put(_PlainNumbers(inner))


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    _plain_numbers(fig)
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def loss_curves(runs: list[dict[str, Any]], target: dict[str, Any]) -> bytes:
    """Loss against steps and against examples, one line per batch size (its best run)."""
    metric = target["metric"] if target["metric"] in ("eval_loss", "train_loss") else "eval_loss"
    with _figure(2) as (fig, (by_step, by_examples)):
        colors = plt.cm.viridis([i / max(len(runs) - 1, 1) for i in range(len(runs))])
        for run, color in zip(runs, colors, strict=True):
            points = [p for p in run["curve"] if p.get(metric) is not None and p["step"] > 0]
            label = f"B={run['batch_size']}, lr={run['lr']:.3g}"
            by_step.plot([p["step"] for p in points], [p[metric] for p in points], color=color, label=label)
            by_examples.plot([p["examples"] for p in points], [p[metric] for p in points], color=color)
        for ax, xlabel in ((by_step, "steps"), (by_examples, "examples")):
            ax.set_xscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(metric.replace("_", " "))
            if metric == target["metric"]:
                ax.axhline(target["value"], color="grey", linestyle=":", linewidth=1)
        by_step.legend(fontsize=7)
        by_step.set_title("loss against steps")
        by_examples.set_title("loss against examples")
        return _png(fig)


def steps_to_target(best: list[dict[str, Any]], fit: dict[str, Any]) -> bytes:
    """Steps to target against batch size (log-log), with perfect scaling and the fitted curve."""
    reached = [r for r in best if r["steps_to_target"] is not None]
    with _figure() as (fig, (ax,)):
        if reached:
            sizes = [r["batch_size"] for r in reached]
            ax.plot(sizes, [r["steps_to_target"] for r in reached], "o", color="black", label="measured")
            first = reached[0]
            span = [min(sizes), max(sizes)]
            ax.plot(
                span,
                [first["steps_to_target"] * first["batch_size"] / b for b in span],
                "--",
                color="grey",
                label="perfect scaling",
            )
            if fit.get("ok"):
                grid = (
                    [span[0] * (span[1] / span[0]) ** (i / 50) for i in range(51)]
                    if span[1] > span[0]
                    else span
                )
                ax.plot(
                    grid,
                    [fit["s_min"] * (1 + fit["b_crit"] / b) for b in grid],
                    color="tab:blue",
                    label=f"fit: B_crit = {fit['b_crit']:.3g}",
                )
                ax.axvline(fit["b_crit"], color="tab:blue", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel("steps to target")
        ax.set_title("steps to target")
        if reached:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no run reached the target", ha="center", va="center", transform=ax.transAxes)
        return _png(fig)


def memory_scale(profile: dict[str, Any]) -> tuple[float, bool]:
    """The memory plot's top (MiB) and whether the limit is off the scale: a limit more than twice
    the highest point or model value is written, not drawn, and the axis ends 30% above the data."""
    mib = 1024**2
    limit = (profile["limit_bytes"] - profile.get("reserve_bytes", 0)) / mib
    values = [t["peak_bytes"] / mib for t in profile["trials"] if t["fits"] and t["peak_bytes"]]
    if profile.get("per_sample_bytes") is not None:
        top_batch = max([t["batch_size"] for t in profile["trials"]] + [1])
        values.append((profile["fixed_bytes"] + profile["per_sample_bytes"] * top_batch) / mib)
    highest = max(values, default=limit)
    return (highest * 1.3, True) if limit > 2 * highest else (limit, False)


def memory(profile: dict[str, Any]) -> bytes:
    """Peak memory against batch size for each trial, the fitted model, and the limit. A limit far
    above every point (the machine's memory, on a CPU) is written on the plot, not drawn: drawn,
    it would flatten the points onto the axis."""
    mib = 1024**2
    with _figure() as (fig, (ax,)):
        fits = [t for t in profile["trials"] if t["fits"] and t["peak_bytes"]]
        fails = [t for t in profile["trials"] if not t["fits"]]
        limit = (profile["limit_bytes"] - profile.get("reserve_bytes", 0)) / mib
        top_batch = max([t["batch_size"] for t in profile["trials"]] + [1])
        model = None
        if profile.get("per_sample_bytes") is not None:
            model = [
                profile["fixed_bytes"] / mib,
                (profile["fixed_bytes"] + profile["per_sample_bytes"] * top_batch) / mib,
            ]
        ceiling, far = memory_scale(profile)
        ax.plot(
            [t["batch_size"] for t in fits],
            [t["peak_bytes"] / mib for t in fits],
            "o",
            color="tab:green",
            label="fits",
        )
        ax.plot(
            [t["batch_size"] for t in fails],
            [ceiling] * len(fails),
            "x",
            color="tab:red",
            label="does not fit",
        )
        if far:
            ax.set_ylim(0, ceiling * 1.08)
            ax.text(
                0.02,
                0.97,
                f"limit {format_bytes(profile['limit_bytes'] - profile.get('reserve_bytes', 0))}: "
                "far above (off the scale)",
                transform=ax.transAxes,
                va="top",
                color="tab:red",
                fontsize=8,
            )
        else:
            ax.axhline(limit, color="tab:red", linestyle=":", label="limit")
        if model is not None:
            ax.plot([0, top_batch], model, color="grey", linewidth=1, label="fixed + per-sample x B")
        if profile.get("max_batch_size"):
            ax.axvline(profile["max_batch_size"], color="black", linestyle="--", linewidth=1)
        ax.set_xlabel("batch size")
        ax.set_ylabel("peak memory (MiB)")
        if profile.get("probed_no_further"):
            ax.set_title(f"memory: batch {profile.get('max_batch_size')} fits (probed no further)")
        else:
            ax.set_title(f"memory: largest batch {profile.get('max_batch_size')}")
        ax.legend(fontsize=7, loc="lower right")
        return _png(fig)


def throughput(profile: dict[str, Any]) -> bytes:
    """Samples/s against batch size, with the knee marked."""
    with _figure() as (fig, (ax,)):
        points = [p for p in profile["points"] if p["samples_per_second"]]
        ax.plot([p["batch_size"] for p in points], [p["samples_per_second"] for p in points], "o-")
        if profile.get("knee_batch_size"):
            ax.axvline(
                profile["knee_batch_size"],
                color="tab:orange",
                linestyle="--",
                label=f"knee: {profile['knee_batch_size']}",
            )
            ax.legend(fontsize=7)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel("samples / s")
        ax.set_title("throughput")
        return _png(fig)


def noise_history(estimate: dict[str, Any]) -> bytes:
    """The running B_simple (an EMA, so it lags behind the parameters), the value measured at the
    final parameters, and the training loss, against steps."""
    with _figure() as (fig, (ax,)):
        points = [p for p in estimate["history"] if p.get("b_simple") is not None and p["b_simple"] > 0]
        values = [p["b_simple"] for p in points]
        ax.plot([p["step"] for p in points], values, color="tab:purple", label="running estimate (EMA, lags)")
        final = estimate["b_simple"]
        ax.axhline(final, color="tab:purple", linestyle=":", label=f"at the final parameters: {final:.3g}")
        if values and final > 0:
            low, high = min([*values, final]), max([*values, final])
            ax.set_ylim(low / 1.3, high * 1.3)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("B_simple")
        loss_ax = ax.twinx()
        losses = [p for p in estimate["history"] if p["train_loss"] is not None]
        loss_ax.plot([p["step"] for p in losses], [p["train_loss"] for p in losses], color="grey", alpha=0.6)
        loss_ax.set_ylabel("train loss", color="grey")
        ax.set_title("gradient noise scale over training")
        ax.legend(fontsize=7, loc="upper center")
        return _png(fig)


def time_to_target(advice: dict[str, Any]) -> bytes:
    """Predicted seconds to target against batch size, the recommendation, and measured points."""
    with _figure() as (fig, (ax,)):

        def timed(points: list[dict[str, Any]]) -> tuple[list[int], list[float]]:
            kept = [p for p in points if p["seconds_to_target"] is not None]
            return [p["batch_size"] for p in kept], [p["seconds_to_target"] for p in kept]

        sizes, seconds = timed(advice["predictions"])
        ax.plot(sizes, seconds, "-", color="tab:blue", label="predicted")
        past_sizes, past_seconds = timed(advice.get("predictions_past_cap") or [])
        if past_sizes:  # where the curve goes past the cap: the batches that do not fit, or were not probed
            ax.plot(
                sizes[-1:] + past_sizes,
                seconds[-1:] + past_seconds,
                "--",
                color="tab:gray",
                label="predicted, past the cap",
            )
        ax.axvline(
            advice["batch_size"], color="tab:green", linestyle="--", label=f"advice: {advice['batch_size']}"
        )
        if advice.get("max_batch_size"):
            lower_bound = advice.get("max_batch_size_is_lower_bound")
            cap_label = "fits (probed no further)" if lower_bound else "memory cap"
            ax.axvline(advice["max_batch_size"], color="tab:red", linestyle=":", label=cap_label)
        measured = advice.get("measured") or []
        if measured:
            ax.plot(
                [m["batch_size"] for m in measured],
                [m["seconds_to_target"] for m in measured],
                "o",
                color="black",
                label="measured",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel("seconds to target")
        ax.set_title("time to target")
        ax.legend(fontsize=7)
        return _png(fig)


def study_curves(runs: list[dict[str, Any]], *, x: str = "epoch", y: str = "eval_loss") -> bytes:
    """A study's curves: one panel per group of arms, one line per arm, `y` against `x` (log y)."""
    groups = list(dict.fromkeys(r["group"] for r in runs))
    with _figure(len(groups)) as (fig, axes):
        for ax, group in zip(axes, groups, strict=True):
            members = [r for r in runs if r["group"] == group]
            colors = plt.cm.viridis([i / max(len(members) - 1, 1) for i in range(len(members))])
            for run, color in zip(members, colors, strict=True):
                points = [p for p in run["curve"] if p.get(y) is not None and p[y] > 0 and p["step"] > 0]
                ax.plot([p[x] for p in points], [p[y] for p in points], color=color, label=run["label"])
            ax.set_yscale("log")
            ax.set_xlabel("epochs" if x == "epoch" else "parameter updates")
            ax.set_ylabel(y.replace("_", " "))
            ax.set_title(f"lr {group}" if group in ("fixed", "scaled") else group)
            ax.legend(fontsize=7)
        return _png(fig)


def study_overlay(runs: list[dict[str, Any]], *, y: str = "eval_loss") -> bytes:
    """Every arm on shared axes: `y` against epochs and against parameter updates."""
    with _figure(2) as (fig, (by_epoch, by_step)):
        colors = plt.cm.tab10(range(len(runs)))
        for run, color in zip(runs, colors, strict=True):
            points = [p for p in run["curve"] if p.get(y) is not None and p[y] > 0 and p["step"] > 0]
            style = "--" if "longer" in run["group"] else "-"  # a longer run retraces its shorter twin first
            by_epoch.plot(
                [p["epoch"] for p in points], [p[y] for p in points], style, color=color, label=run["label"]
            )
            by_step.plot([p["step"] for p in points], [p[y] for p in points], style, color=color)
        for ax, xlabel in ((by_epoch, "epochs"), (by_step, "parameter updates")):
            ax.set_yscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(y.replace("_", " "))
        by_step.set_xscale("log")
        by_epoch.legend(fontsize=7)
        return _png(fig)


def study_schedules(runs: list[dict[str, Any]]) -> bytes:
    """Batch size and learning rate against epochs, one line per arm."""
    with _figure(2) as (fig, (batch_ax, lr_ax)):
        colors = plt.cm.tab10(range(len(runs)))
        for run, color in zip(runs, colors, strict=True):
            points = [p for p in run["curve"] if p["step"] > 0]
            epochs = [p["epoch"] for p in points]
            batch_ax.step(
                epochs, [p["batch_size"] for p in points], where="post", color=color, label=run["label"]
            )
            lr_ax.step(epochs, [p["lr"] for p in points], where="post", color=color)
        for ax, ylabel in ((batch_ax, "batch size"), (lr_ax, "learning rate")):
            ax.set_yscale("log")
            ax.set_xlabel("epochs")
            ax.set_ylabel(ylabel)
        batch_ax.legend(fontsize=7)
        return _png(fig)


def study_bars(rows: list[dict[str, Any]], keys: list[str]) -> bytes:
    """One panel per quantity (e.g. the generalization gap, sharpness), one bar per arm."""
    with _figure(len(keys)) as (fig, axes):
        labels = [r["arm"] for r in rows]
        for ax, key in zip(axes, keys, strict=True):
            values = [float(r[key]) if r.get(key) is not None else 0.0 for r in rows]
            ax.barh(range(len(rows)), values, color="tab:blue")
            ax.set_yticks(range(len(rows)), labels, fontsize=7)
            ax.invert_yaxis()
            ax.set_title(key.replace("_", " "))
        return _png(fig)


def noise_vs_batch(rows: list[dict[str, Any]], grad_norm: float, b_simple: float) -> bytes:
    """|g_B - G| against B (log-log) with standard errors, the law, and |G| (they cross near B_simple)."""
    with _figure() as (fig, (ax,)):
        sizes = [r["batch_size"] for r in rows]
        low = [r["spread"] - (max(r["mean_sq_error"] - r["mean_sq_stderr"], 0)) ** 0.5 for r in rows]
        high = [(r["mean_sq_error"] + r["mean_sq_stderr"]) ** 0.5 - r["spread"] for r in rows]
        ax.errorbar(
            sizes, [r["spread"] for r in rows], yerr=[low, high], fmt="o", color="black", label="measured"
        )
        ax.plot(
            sizes,
            [r["law_spread"] for r in rows],
            color="tab:blue",
            label="law: sqrt(tr(Sigma)/B (N-B)/(N-1))",
        )
        ax.axhline(grad_norm, color="tab:green", linestyle="--", label="|G|")
        ax.axvline(b_simple, color="tab:green", linestyle=":", label=f"B_simple = {b_simple:.3g}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel("|g_B - G|")
        ax.set_title("spread of the batch gradient")
        ax.legend(fontsize=7)
        return _png(fig)


__all__ = [
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


def critical_batch(rows: list[dict[str, Any]]) -> bytes:
    """The branched critical batch and B_simple (with its standard error) at each checkpoint, against
    the examples trained and against the loss there. A critical batch at the largest branch tried is
    a lower bound: drawn as an upward triangle."""
    with _figure(2) as (fig, (by_examples, by_loss)):
        for ax, key in ((by_examples, "examples"), (by_loss, "loss")):
            measured = [r for r in rows if r["critical_batch"] is not None]
            xs = [r[key] for r in measured]
            ax.plot(xs, [r["critical_batch"] for r in measured], "-", color="tab:red", label="branched")
            for r in measured:
                ax.plot(r[key], r["critical_batch"], "^" if r["lower_bound"] else "o", color="tab:red")
            ax.errorbar(
                [r[key] for r in rows],
                [r["b_simple"] for r in rows],
                yerr=[r["b_simple_stderr"] for r in rows],
                fmt="s--",
                color="tab:blue",
                capsize=3,
                label="B_simple",
            )
            ax.set_yscale("log", base=2)
            ax.set_ylabel("batch size")
        by_examples.set_xlabel("examples trained (reference run)")
        by_loss.set_xlabel("loss at the checkpoint")
        by_loss.invert_xaxis()  # training runs left to right in both panels
        by_examples.legend(fontsize=7)
        return _png(fig)


def branch_progress(branches: list[dict[str, Any]], epsilon: float) -> bytes:
    """Each branch's progress over the k = 1 branch's, against its batch, one line per checkpoint
    through the rates kept (hollow: the rate not kept); the rule's threshold 1 - epsilon as a dashed
    line (values below -0.5 are drawn at the edge)."""
    with _figure() as (fig, (ax,)):
        steps = list(dict.fromkeys(b["step"] for b in branches))
        colors = plt.cm.viridis([i / max(len(steps) - 1, 1) for i in range(len(steps))])
        for step, color in zip(steps, colors, strict=True):
            arms = [b for b in branches if b["step"] == step and b["progress_ratio"] is not None]
            kept = [b for b in arms if b.get("chosen", True)]
            ax.plot(
                [b["batch_size"] for b in kept],
                [max(b["progress_ratio"], -0.5) for b in kept],
                "o-",
                color=color,
                label=f"from step {step}",
            )
            other = [b for b in arms if not b.get("chosen", True)]  # the rate a branch did not keep
            ax.plot(
                [b["batch_size"] for b in other],
                [max(b["progress_ratio"], -0.5) for b in other],
                "o",
                color=color,
                fillstyle="none",
                label="the rate not kept" if step == steps[-1] and other else None,
            )
        ax.axhline(1 - epsilon, linestyle="--", color="gray", label=f"1 - epsilon = {1 - epsilon:g}")
        ax.set_xscale("log", base=2)
        top = max([b["progress_ratio"] for b in branches if b["progress_ratio"] is not None] + [1.0])
        ax.set_ylim(-0.55, min(3.0, top) + 0.15)
        ax.set_xlabel("branch batch size")
        ax.set_ylabel("progress / progress at k = 1")
        ax.legend(fontsize=7)
        return _png(fig)
