"""The rich tables a command prints as its human summary, one per result."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from batchlab.core.units import format_bytes, format_number
from batchlab.lr import rate_source
from batchlab.measure.throughput import ThroughputProfile


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return format_number(value, digits)
    return str(value)


def render(table: Table) -> None:
    table.caption_justify = "left"  # captions are sentences: read from the left, not centred
    Console().print(table)


def train_table(data: dict[str, Any]) -> Table:
    table = Table(
        title=f"{data['workload']}: batch {data['batch_size']}, lr {fmt(data['lr'])} ({data['lr_rule']})"
    )
    table.add_column("quantity")
    table.add_column("value", justify="right")
    target = data["target"]
    rows = [
        ("target", f"{target['metric']} {'<=' if target['mode'] == 'min' else '>='} {target['value']}"),
        ("reached", fmt(data["reached_target"])),
        ("steps to target", fmt(data["steps_to_target"])),
        ("examples to target", fmt(data["examples_to_target"])),
        ("seconds to target", fmt(data["seconds_to_target"], 3)),
        ("steps run", fmt(data["steps"])),
        ("final train loss", fmt(data["final_train_loss"])),
        ("final eval loss", fmt(data["final_eval_loss"])),
        ("diverged", fmt(data["diverged"])),
    ]
    rows += [(name, fmt(value)) for name, value in data["final_metrics"].items()]
    if data.get("noise"):
        rows.append(
            ("B_simple", f"{fmt(data['noise']['b_simple'], 3)} ± {fmt(data['noise']['b_simple_stderr'], 2)}")
        )
    if data.get("sharpness"):
        rows.append(("sharpness (top Hessian eigenvalue)", fmt(data["sharpness"]["top_eigenvalue"])))
        rows.append(("epsilon-sharpness", fmt(data["sharpness"]["epsilon_sharpness"])))
    for phase in (data.get("batch_schedule") or {}).get("phases", []):
        start = phase.get("start_examples")
        rows.append(
            (
                f"from epoch {phase['start_epoch']}" if start is None else f"from example {start:,}",
                f"batch {phase['batch_size']}, lr x {fmt(phase['lr_factor'], 3)}",
            )
        )
    per = data.get("tokens_per_example")
    if per:
        rows.insert(
            4,
            (
                "tokens to target",
                fmt(None if data["examples_to_target"] is None else data["examples_to_target"] * per),
            ),
        )
    if data.get("clipped_fraction") is not None:
        rows.append(("steps clipped", f"{100 * data['clipped_fraction']:.0f}%"))
    for name, value in rows:
        table.add_row(name, value)
    if data.get("data_order"):
        table.caption = data["data_order"]
    return table


def strategies_table(data: dict[str, Any]) -> Table:

    table = Table(
        title=f"{data['workload']} on {data['device']}: memory strategies, limit "
        f"{format_bytes(data['limit_bytes'])}"
    )
    for column in ("strategy", "largest batch", "per sample", "samples/s"):
        table.add_column(column, justify="right")
    table.add_column("note", justify="left", ratio=1)
    for r in data["strategies"]:
        per_sample = "-" if r["per_sample_bytes"] is None else format_bytes(r["per_sample_bytes"])
        largest = fmt(r["max_batch_size"])
        if r.get("is_lower_bound"):
            largest = f"at least {largest}"
        table.add_row(r["strategy"], largest, per_sample, fmt(r["samples_per_second"], 4), r["note"])
    table.caption = f"samples/s timed at batch {data['common_batch_size']} for every strategy"
    return table


def memory_table(data: dict[str, Any]) -> Table:

    table = Table(title=f"{data['workload']} on {data['device']}: limit {format_bytes(data['limit_bytes'])}")
    for column in ("batch", "fits", "peak", "steps", "seconds"):
        table.add_column(column, justify="right")
    for t in data["trials"]:
        label = f"{t['batch_size']}" + (" (confirm)" if t["confirmation"] else "")
        fits = "yes" if t["fits"] else f"no: {t['error']}"
        peak = "-" if t["peak_bytes"] is None else format_bytes(t["peak_bytes"])
        table.add_row(label, fits, peak, str(t["steps"]), f"{t['seconds']:.1f}")
    answer = data["max_batch_size"]
    caption = [f"largest batch that fits: [bold]{answer if answer is not None else 'none'}[/]"]
    if data["capped_by_dataset"]:
        caption.append("(the whole training set: memory is not the limit)")
    world = data.get("world_size", 1)
    if world > 1 and answer is not None:
        caption.append(f"per device, on every one of {world} ranks: a global batch of {answer * world}")
    if data["per_sample_bytes"] is not None:
        caption.append(
            f"\nmemory model: {format_bytes(data['fixed_bytes'])} + "
            f"{format_bytes(data['per_sample_bytes'])} x B, {data['trial_count']} trials"
        )
    table.caption = " ".join(caption)
    return table


def sweep_table(data: dict[str, Any]) -> Table:
    target = data["target"]
    table = Table(
        title=f"{data['workload']}: to {target['metric']} {'<=' if target['mode'] == 'min' else '>='} "
        f"{target['value']}, lr rule {data['lr_rule']}"
    )
    columns = (
        "batch",
        "lr",
        "seed",
        "steps",
        "examples",
        "seconds",
        "train loss",
        "eval loss",
        "gap",
        "sharpness",
    )
    for column in columns:
        table.add_column(column, justify="right")
    for r in data["runs"]:
        steps = (
            "diverged"
            if r["diverged"]
            else fmt(r["steps_to_target"])
            if r["reached_target"]
            else "not reached"
        )
        table.add_row(
            str(r["batch_size"]),
            fmt(r["lr"], 3),
            str(r["seed"]),
            steps,
            fmt(r["examples_to_target"]),
            fmt(r["seconds_to_target"], 3),
            fmt(r["final_train_loss"], 3),
            fmt(r["final_eval_loss"], 3),
            fmt(r["generalization_gap"], 2),
            fmt(r["sharpness"], 3),
        )
    fit = data["fit"]
    if fit["ok"]:
        table.caption = (
            f"S(B) = {fit['s_min']:.3g} (1 + {fit['b_crit']:.3g} / B): B_crit = {fit['b_crit']:.3g} "
            f"(1 sigma {fit['b_crit_low']:.3g}..{fit['b_crit_high']:.3g}), E_min = {fit['e_min']:.3g}"
        )
    else:
        table.caption = f"no fit: {fit['reason']}"
    if fit.get("note"):
        table.caption += f"\nnote: {fit['note']}"
    return table


def advice_table(data: dict[str, Any]) -> Table:
    ref = data["reference"]
    table = Table(title=f"{data['workload']} on {data['device']}: advice")
    table.add_column("")
    table.add_column("advice", justify="right", style="bold green")
    table.add_column("reference", justify="right")
    table.add_row("batch size", str(data["batch_size"]), str(ref["batch_size"]))
    table.add_row("learning rate", f"{fmt(data['lr'], 3)} ({rate_source(data)})", fmt(ref["lr"], 3))
    table.add_row(
        "seconds to target",
        f"{fmt(data['predicted_seconds_to_target'], 3)} (predicted)",
        f"{fmt(ref['seconds_to_target'], 3)} (measured steps)",
    )
    spread = data.get("predicted_speedup_range")
    seeds = f"; seeds {fmt(spread[0], 2)}-{fmt(spread[1], 2)}x" if spread else ""
    table.add_row("speedup", f"{fmt(data['predicted_speedup'], 3)}x (predicted{seeds})", "1x")
    if data.get("measured_speedup") is not None:
        table.add_row("measured speedup", f"{fmt(data['measured_speedup'], 3)}x", "")
    fits = fmt(data["max_batch_size"])
    if data.get("max_batch_size_is_lower_bound"):
        fits = f"at least {fits} (probed no further)"
    table.add_row("largest batch that fits", fits, "")
    table.add_row("B_noise", fmt(data["b_noise"], 3), "")
    knee = fmt(data["knee_batch_size"])
    if data["knee_batch_size"] is None and (data.get("throughput") or {}).get("stopped_because"):
        knee = f"unknown: timed up to batch {ThroughputProfile.from_dict(data['throughput']).largest_timed}"
    table.add_row("throughput knee", knee, "")
    if data.get("schedule"):
        plan = data["schedule"]
        ramp = " -> ".join(str(p["batch_size"]) for p in plan["ramp"]["phases"]) if plan.get("ramp") else "-"
        table.add_row("batch ramp", ramp if plan["offered"] else "not offered", "")
    lines = data["rationale"] + [f"note: {line}" for line in data["limitations"]]
    if data.get("schedule"):
        lines.append(f"schedule: {data['schedule']['why']}")
    table.caption = "\n".join(lines)
    return table


def study_table(data: dict[str, Any]) -> Table:
    table = Table(title=f"study {data['study']} on {data['workload']}: {data['question']}")
    keys = ["arm", "batch_size", "lr", "updates", "final_train_loss", "final_eval_loss", "generalization_gap"]
    if data["study"] == "noise-vs-batch":
        keys = ["batch_size", "spread", "law_spread", "ratio", "z"]
    if data["study"] == "critical-batch":
        keys = ["point", "step", "examples", "loss", "critical_batch", "b_simple", "b_simple_stderr"]
    for extra in ("curve_distance", "sharpness", "epsilon_sharpness"):
        if any(extra in r for r in data["rows"]):
            keys.append(extra)
    for key in keys:
        table.add_column(key.replace("_", " "), justify="left" if key == "arm" else "right")
    for row in data["rows"]:
        cells = [fmt(row.get(k), 3) for k in keys]
        if row.get("lower_bound"):  # every branch kept up: the critical batch is at least this
            cells[keys.index("critical_batch")] = ">= " + cells[keys.index("critical_batch")]
        table.add_row(*cells)
    return table


def validation_table(data: dict[str, Any]) -> Table:
    seeds = data["extra"]["validation"][0].get("seeds", 1)
    rows = data["extra"]["validation"]
    table = Table(
        title=f"the ramp against the constant batch ({seeds} seeds: median updates, examples and seconds "
        f"to target; mean final loss after {rows[0]['examples']:,} examples)"
    )
    columns = {  # short headers: seven columns fit in 80 characters
        "arm": "arm",
        "reached": "reached",
        "updates_to_target": "updates",
        "examples_to_target": "examples",
        "seconds_to_target": "seconds",
        "final_loss": "final loss",
        "final_loss_spread": "+- (sd)",
    }
    for key, header in columns.items():
        table.add_column(header, justify="left" if key == "arm" else "right")
    for row in rows:
        cells = [fmt(row.get(k), 4) for k in columns]
        cells[1] = f"{row.get('reached', '?')}/{row.get('seeds', 1)}"
        table.add_row(*cells)
    return table


def throughput_table(data: dict[str, Any]) -> Table:
    world = data.get("world_size", 1)
    where = f"{world} ranks" if world > 1 else data["device"]
    table = Table(title=f"{data['workload']} on {where}: whole training steps")
    columns = ["batch", "step ms", "min..max ms", "samples/s"]
    if world > 1:
        columns += ["per device", "one rank samples/s", "scaling efficiency"]
    for column in columns:
        table.add_column(column, justify="right")
    for p in data["points"]:
        if not p["fits"]:
            table.add_row(str(p["batch_size"]), "out of memory", *[""] * (len(columns) - 2))
            continue
        marker = " <- knee" if p["batch_size"] == data["knee_batch_size"] else ""
        cells = [
            f"{p['batch_size']}{marker}",
            f"{p['step_seconds'] * 1e3:.3f}",
            f"{p['step_seconds_min'] * 1e3:.3f}..{p['step_seconds_max'] * 1e3:.3f}",
            f"{p['samples_per_second']:,.0f}",
        ]
        if world > 1:
            cells += [
                str(p["batch_size"] // world),
                fmt(p["single_rank_samples_per_second"], 4),
                fmt(p["scaling_efficiency"], 3),
            ]
        table.add_row(*cells)
    table.caption = (
        f"knee: batch {data['knee_batch_size']} (doubling past it raises samples/s by "
        f"less than {data['knee_gain']:.0%})"
    )
    return table


def noise_table(data: dict[str, Any]) -> Table:
    table = Table(
        title=f"{data['workload']}: gradient noise scale at batch {data['batch_size']}, lr {fmt(data['lr'])}"
    )
    table.add_column("step", justify="right")
    table.add_column("train loss", justify="right")
    table.add_column("B_simple (running)", justify="right")
    history = data["history"]
    for p in history[:: max(1, len(history) // 12)]:
        table.add_row(str(p["step"]), fmt(p["train_loss"]), fmt(p["b_simple"], 3))
    table.caption = (
        f"at the final parameters ({data['measured_examples']} examples): B_simple = "
        f"{fmt(data['b_simple'], 4)} ± {fmt(data['b_simple_stderr'], 2)}  "
        f"(|G|^2 = {fmt(data['grad_sq'])}, tr(Sigma) = {fmt(data['trace_sigma'])})"
    )
    return table
