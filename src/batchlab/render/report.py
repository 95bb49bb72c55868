"""One self-contained HTML report: every plot embedded as a data URI, no external URL, and every
string that batchlab did not write itself escaped (workload names, metric names, messages)."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from batchlab.core.store import Store
from batchlab.core.units import format_number
from batchlab.errors import bad
from batchlab.lr import rate_source
from batchlab.render import plots

STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
.answer { font-size: 1.3em; background: #eef6ee; padding: .8em 1em; border-radius: 6px; }
table { border-collapse: collapse; margin: .5em 0; font-size: 13px; }
td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: right; } th { background: #f5f5f5; }
img { max-width: 100%; } .wide { overflow-x: auto; max-width: 100%; }
.note { color: #666; font-size: 13px; } li { margin: .2em 0; } .settings td { text-align: left; }
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return esc(value)
    if isinstance(value, float) or (isinstance(value, int) and abs(value) >= 10_000):
        return esc(format_number(value, digits))
    return esc(value)


def figure(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A table in a box that scrolls by itself when it is wider than the page; headers read as
    words ("final eval loss", not "final_eval_loss"), yes/no for booleans."""
    head = "".join(f"<th>{esc(h.replace('_', ' '))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<div class="wide"><table><tr>{head}</tr>{body}</table></div>'


def cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (dict, list, tuple)):
        return esc(format_value(value))
    return num(value)


def format_value(value: Any) -> str:
    """A setting as words: {"batch_size": 32, "lr": 0.05} -> "batch size 32, lr 0.05"; a list of
    such -> their texts joined by "; "."""
    if isinstance(value, float):
        return format_number(value)
    if isinstance(value, dict):
        return ", ".join(f"{str(k).replace('_', ' ')} {format_value(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        joiner = "; " if any(isinstance(v, dict) for v in value) else ", "
        return joiner.join(format_value(v) for v in value)
    return str(value)


def seeds_spread(advice: dict[str, Any]) -> str:
    spread = advice.get("predicted_speedup_range")
    if not spread:
        return ""
    return f"; its seeds alone move it between {num(spread[0], 2)}x and {num(spread[1], 2)}x"


def advice_section(advice: dict[str, Any], sweep: dict[str, Any] | None) -> list[str]:
    ref = advice["reference"]
    parts = [
        f'<p class="answer">Use batch size <b>{num(advice["batch_size"])}</b> with learning rate '
        f"<b>{num(advice['lr'], 3)}</b> ({esc(rate_source(advice))}). Predicted time to target "
        f"{num(advice['predicted_seconds_to_target'], 3)} s, "
        f"{num(advice['predicted_speedup'], 3)}x the reference "
        f"(batch {num(ref['batch_size'])}, lr {num(ref['lr'], 3)}){seeds_spread(advice)}.</p>"
    ]
    if advice.get("measured_speedup") is not None:
        parts.append(
            f"<p>Validated by training both to the target: measured speedup "
            f"<b>{num(advice['measured_speedup'], 3)}x</b> "
            f"(predicted {num(advice['predicted_speedup'], 3)}x).</p>"
        )
    parts.append(
        "<h2>Why</h2><ul>" + "".join(f"<li>{esc(line)}</li>" for line in advice["rationale"]) + "</ul>"
    )
    if advice["limitations"]:
        parts.append(
            "<h2>Limits of this advice</h2><ul>"
            + "".join(f"<li>{esc(line)}</li>" for line in advice["limitations"])
            + "</ul>"
        )
    if advice.get("schedule"):
        parts += schedule_section(advice["schedule"])
    if advice["predictions"]:
        measured = [
            {"batch_size": m["batch_size"], "seconds_to_target": m["seconds_to_target"]}
            for m in advice.get("measured", [])
            if m["seconds_to_target"]
        ]
        if sweep:
            measured += [
                {"batch_size": r["batch_size"], "seconds_to_target": r["seconds_to_target"]}
                for r in sweep["runs"]
                if r["seconds_to_target"]
            ]
        parts.append("<h2>Predicted time to target</h2>")
        parts.append(
            figure(plots.time_to_target({**advice, "measured": measured}), "predicted time to target")
        )
        parts.append(
            table(
                ["batch", "lr", "steps", "step ms", "seconds to target"],
                [
                    [
                        p["batch_size"],
                        p["lr"],
                        p["steps_to_target"],
                        p["step_seconds"] * 1e3,
                        p["seconds_to_target"],
                    ]
                    for p in advice["predictions"]
                ],
            )
        )
    return parts


def schedule_section(plan: dict[str, Any]) -> list[str]:
    """`advise --schedule`: the ramp beside the constant advice, and the measurements behind it."""
    parts = [
        "<h2>A batch ramp</h2>",
        f"<p>{'Offered' if plan['offered'] else 'Not offered'}: {esc(plan['why'])}.</p>",
    ]
    if plan.get("ramp"):
        parts.append(
            table(
                ["from example", "batch", "lr"],
                [
                    [p["start_examples"], p["batch_size"], plan["lr"] * p["lr_factor"]]
                    for p in plan["ramp"]["phases"]
                ],
            )
        )
    if plan.get("points"):
        parts.append(
            figure(plots.critical_batch(plan["points"]), "critical batch and B_simple over training")
        )
    return parts


def measurement_sections(
    memory: dict[str, Any] | None, throughput: dict[str, Any] | None, noise: dict[str, Any] | None
) -> list[str]:
    parts = []
    if memory and not memory["trials"] and memory.get("stopped_because"):  # the advice did not probe
        parts += [
            f"<h2>Memory on {esc(memory['device'])}</h2>",
            f'<p class="note">Memory was {esc(memory["stopped_because"])}.</p>',
        ]
    elif memory:
        parts += [
            f"<h2>Memory on {esc(memory['device'])}</h2>",
            figure(plots.memory(memory), "memory against batch size"),
            table(
                ["batch", "fits", "peak MiB", "steps", "error"],
                [
                    [
                        t["batch_size"],
                        "yes" if t["fits"] else "no",
                        None if t["peak_bytes"] is None else t["peak_bytes"] / 1024**2,
                        t["steps"],
                        t["error"] or "",
                    ]
                    for t in memory["trials"]
                ],
            ),
        ]
    if throughput:
        parts += [
            "<h2>Throughput</h2>",
            figure(plots.throughput(throughput), "samples per second"),
            table(
                ["batch", "step ms", "samples/s"],
                [
                    [
                        p["batch_size"],
                        None if p["step_seconds"] is None else p["step_seconds"] * 1e3,
                        p["samples_per_second"],
                    ]
                    for p in throughput["points"]
                ],
            ),
        ]
        if throughput.get("stopped_because"):
            parts.append(f"<p>The profile {html.escape(throughput['stopped_because'])}.</p>")
    if noise and noise.get("history"):
        parts += [
            "<h2>Gradient noise scale</h2>",
            figure(plots.noise_history(noise), "B_simple over training"),
            f"<p>B_simple = {num(noise['b_simple'])} ± {num(noise.get('b_simple_stderr'), 2)} "
            f"(|G|<sup>2</sup> = {num(noise['grad_sq'])}, tr(Σ) = {num(noise['trace_sigma'])}).</p>",
        ]
    return parts


def sweep_section(sweep: dict[str, Any]) -> list[str]:
    fit = sweep["fit"]
    best_runs = [
        r
        for r in sweep["runs"]
        if any(r["batch_size"] == b["batch_size"] and r["lr"] == b["lr"] for b in sweep["best"])
    ]
    caption = (
        f"B_crit = {num(fit['b_crit'], 3)} "
        f"(one sigma {num(fit['b_crit_low'], 3)} to {num(fit['b_crit_high'], 3)}), "
        f"S_min = {num(fit['s_min'], 3)}, E_min = {num(fit['e_min'], 3)}"
        if fit["ok"]
        else f"No fit: {fit['reason']}"
    )
    return [
        "<h2>Convergence sweep</h2>",
        f"<p>{esc(caption)}</p>",
        f'<p class="note">{esc(fit["note"])}</p>' if fit.get("note") else "",
        figure(plots.steps_to_target(sweep["best"], fit), "steps to target"),
        figure(plots.loss_curves(best_runs, sweep["target"]), "loss curves"),
        table(
            ["batch", "lr", "seed", "steps to target", "seconds", "train loss", "eval loss", "diverged"],
            [
                [
                    r["batch_size"],
                    r["lr"],
                    r["seed"],
                    r["steps_to_target"],
                    r["seconds_to_target"],
                    r["final_train_loss"],
                    r["final_eval_loss"],
                    "yes" if r["diverged"] else "no",
                ]
                for r in sweep["runs"]
            ],
        ),
    ]


def render_report(
    *,
    workload: str,
    advice: dict[str, Any] | None = None,
    memory: dict[str, Any] | None = None,
    throughput: dict[str, Any] | None = None,
    noise: dict[str, Any] | None = None,
    sweep: dict[str, Any] | None = None,
    target: dict[str, Any] | None = None,
) -> str:
    parts = [f"<h1>batchlab: {esc(workload)}</h1>"]
    if target:
        op = "&le;" if target["mode"] == "min" else "&ge;"
        parts.append(f'<p class="note">Target: {esc(target["metric"])} {op} {num(target["value"])}.</p>')
    if advice:
        parts += advice_section(advice, sweep)
        memory, throughput, noise = advice.get("memory"), advice.get("throughput"), advice.get("noise")
        if memory and advice.get("max_batch_size_is_lower_bound"):
            memory = {**memory, "probed_no_further": True}
    parts += measurement_sections(memory, throughput, noise)
    if sweep:
        parts += sweep_section(sweep)
    body = "\n".join(parts)
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>batchlab: {esc(workload)}</title>'
        f"<style>{STYLE}</style></head><body>{body}</body></html>\n"
    )


def write_report(out: Path) -> Path:
    """Draw DIR/report.html from what DIR/results.db holds: the latest advice, sweep and measurements."""
    with Store(out, lock=False) as store:  # a reader: fine beside a running command
        advice = store.latest_result("advice")
        workload = advice["workload"] if advice else None
        sweep = store.latest_result("sweep", workload)
        memory = store.latest_result("memory", workload)
        throughput = store.latest_result("throughput", workload)
        noise = store.latest_result("noise", workload)
    name = workload or next((r["workload"] for r in (sweep, memory, throughput, noise) if r), None)
    if name is None:
        raise bad(
            "report folder",
            str(out),
            "a folder with results in results.db",
            "run `batchlab advise --out DIR` or `batchlab sweep --out DIR` first",
        )
    target = (advice or {}).get("target") or (sweep or {}).get("target")
    page = render_report(
        workload=name,
        advice=advice,
        memory=memory,
        throughput=throughput,
        noise=noise,
        sweep=sweep,
        target=target,
    )
    path = Path(out) / "report.html"
    path.write_text(page)
    return path


def render_study(study: dict[str, Any]) -> str:
    """A study's page: the question, the findings, the plots, the table of arms, the settings."""
    name = study["study"]
    rows, runs = study["rows"], study["runs"]
    parts = [
        f"<h1>batchlab study {esc(name)}: {esc(study['workload'])}</h1>",
        f"<p><b>{esc(study['question'])}</b></p>",
        "<h2>What it found</h2><ul>"
        + "".join(f"<li>{esc(line)}</li>" for line in study["findings"])
        + "</ul>",
    ]
    figures: list[tuple[bytes, str]] = []
    if name == "lr-scaling":
        figures.append((plots.study_curves(runs), "eval loss against epochs, lr fixed and scaled"))
    elif name == "increase-batch":
        figures.append((plots.study_overlay(runs), "eval loss against epochs and against updates"))
        figures.append((plots.study_schedules(runs), "batch size and learning rate against epochs"))
    elif name == "generalization":
        figures.append((plots.study_overlay(runs), "eval loss against epochs and against updates"))
        keys = [
            k for k in ("generalization_gap", "sharpness", "epsilon_sharpness") if any(k in r for r in rows)
        ]
        figures.append((plots.study_bars(rows, keys), "gap and sharpness of each arm"))
    elif name == "noise-vs-batch":
        extra = study["extra"]
        figures.append(
            (plots.noise_vs_batch(rows, extra["grad_norm"], extra["b_simple"]), "spread against B")
        )
    elif name == "critical-batch":
        extra, metric = study["extra"], study["settings"]["loss_metric"]
        figures.append((plots.critical_batch(rows), "critical batch and B_simple over training"))
        figures.append(
            (plots.branch_progress(extra["branches"], study["settings"]["epsilon"]), "branch progress")
        )
        figures.append((plots.study_overlay(runs, y=metric), "the ramp against the constant batch"))
        figures.append((plots.study_schedules(runs), "batch size and learning rate of each arm"))
    parts += ["<h2>Evidence</h2>"] + [figure(png, alt) for png, alt in figures]
    headers = list(dict.fromkeys(k for r in rows for k in r if k != "group"))
    parts.append(table(headers, [[r.get(h) for h in headers] for r in rows]))
    if name == "critical-batch":
        validation = study["extra"]["validation"]
        headers = [k for k in validation[0] if k not in ("group", "per_seed")]
        parts.append("<h2>The ramp against the constant batch</h2>")
        parts.append(table(headers, [[v.get(h) for h in headers] for v in validation]))
        seeds = [{"arm": v["arm"], **s} for v in validation for s in v.get("per_seed", [])]
        if seeds:
            headers = list(seeds[0])
            parts.append("<h3>Each seed</h3>")
            parts.append(table(headers, [[s.get(h) for h in headers] for s in seeds]))
        tuning = study["extra"].get("lr_tuning") or []
        if tuning:  # the doubling search that chose the reference batch's rate
            headers = list(tuning[0])
            parts.append("<h3>The reference batch's rate: each run of its tuning</h3>")
            parts.append(table(headers, [[t.get(h) for h in headers] for t in tuning]))
    parts.append(
        '<h2>Settings</h2><table class="settings">'
        + "".join(
            f"<tr><th>{esc(k.replace('_', ' '))}</th><td>{cell(v)}</td></tr>"
            for k, v in study["settings"].items()
        )
        + f"</table><p class='note'>Ran in {num(study['seconds'], 3)} s.</p>"
    )
    body = "\n".join(parts)
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>batchlab study {esc(name)}: {esc(study['workload'])}</title>"
        f"<style>{STYLE}</style></head><body>{body}</body></html>\n"
    )
