"""Figures of the measurements and the advice: loss curves, steps to target, memory, throughput, noise."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from batchlab.core.units import format_bytes
from batchlab.render.plots.figure import figure, png


def loss_curves(runs: list[dict[str, Any]], target: dict[str, Any]) -> bytes:
    """Loss against steps and against examples, one line per batch size (its best run)."""
    metric = target["metric"] if target["metric"] in ("eval_loss", "train_loss") else "eval_loss"
    with figure(2) as (fig, (by_step, by_examples)):
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
        return png(fig)


def steps_to_target(best: list[dict[str, Any]], fit: dict[str, Any]) -> bytes:
    """Steps to target against batch size (log-log), with perfect scaling and the fitted curve."""
    reached = [r for r in best if r["steps_to_target"] is not None]
    with figure() as (fig, (ax,)):
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
        return png(fig)


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
    with figure() as (fig, (ax,)):
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
        return png(fig)


def throughput(profile: dict[str, Any]) -> bytes:
    """Samples/s against batch size, with the knee marked."""
    with figure() as (fig, (ax,)):
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
        return png(fig)


def noise_history(estimate: dict[str, Any]) -> bytes:
    """The running B_simple (an EMA, so it lags behind the parameters), the value measured at the
    final parameters, and the training loss, against steps."""
    with figure() as (fig, (ax,)):
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
        return png(fig)


def time_to_target(advice: dict[str, Any]) -> bytes:
    """Predicted seconds to target against batch size, the recommendation, and measured points."""
    with figure() as (fig, (ax,)):

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
        return png(fig)
