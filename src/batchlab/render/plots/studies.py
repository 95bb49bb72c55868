"""Figures of the studies: curves and overlays, schedules, bars, the noise law, the critical batch."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from batchlab.render.plots.figure import figure, png


def study_curves(runs: list[dict[str, Any]], *, x: str = "epoch", y: str = "eval_loss") -> bytes:
    """A study's curves: one panel per group of arms, one line per arm, `y` against `x` (log y)."""
    groups = list(dict.fromkeys(r["group"] for r in runs))
    with figure(len(groups)) as (fig, axes):
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
        return png(fig)


def study_overlay(runs: list[dict[str, Any]], *, y: str = "eval_loss") -> bytes:
    """Every arm on shared axes: `y` against epochs and against parameter updates."""
    with figure(2) as (fig, (by_epoch, by_step)):
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
        return png(fig)


def study_schedules(runs: list[dict[str, Any]]) -> bytes:
    """Batch size and learning rate against epochs, one line per arm."""
    with figure(2) as (fig, (batch_ax, lr_ax)):
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
        return png(fig)


def study_bars(rows: list[dict[str, Any]], keys: list[str]) -> bytes:
    """One panel per quantity (e.g. the generalization gap, sharpness), one bar per arm."""
    with figure(len(keys)) as (fig, axes):
        labels = [r["arm"] for r in rows]
        for ax, key in zip(axes, keys, strict=True):
            values = [float(r[key]) if r.get(key) is not None else 0.0 for r in rows]
            ax.barh(range(len(rows)), values, color="tab:blue")
            ax.set_yticks(range(len(rows)), labels, fontsize=7)
            ax.invert_yaxis()
            ax.set_title(key.replace("_", " "))
        return png(fig)


def noise_vs_batch(rows: list[dict[str, Any]], grad_norm: float, b_simple: float) -> bytes:
    """|g_B - G| against B (log-log) with standard errors, the law, and |G| (they cross near B_simple)."""
    with figure() as (fig, (ax,)):
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
        return png(fig)


def critical_batch(rows: list[dict[str, Any]]) -> bytes:
    """The branched critical batch and B_simple (with its standard error) at each checkpoint, against
    the examples trained and against the loss there. A critical batch at the largest branch tried is
    a lower bound: drawn as an upward triangle."""
    with figure(2) as (fig, (by_examples, by_loss)):
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
        return png(fig)


def branch_progress(branches: list[dict[str, Any]], epsilon: float) -> bytes:
    """Each branch's progress over the k = 1 branch's, against its batch, one line per checkpoint
    through the rates kept (hollow: the rate not kept); the rule's threshold 1 - epsilon as a dashed
    line (values below -0.5 are drawn at the edge)."""
    with figure() as (fig, (ax,)):
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
        return png(fig)
