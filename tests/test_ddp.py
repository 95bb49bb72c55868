"""Data-parallel runs: 2 gloo ranks on 127.0.0.1, started with torchrun's environment (a killed
rank's test under torchrun itself), each launch bounded in time and on its own free port. Compared
with one process at the same global batch, to float tolerance."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from batchlab import LrSchedule, load_workload, train
from batchlab.core.store import Store

LAUNCH_TIMEOUT = 180


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _torchrun(*args: str, nproc: int = 2) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "batchlab", *args,
    ]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(*args: str, nproc: int = 2) -> subprocess.CompletedProcess[str]:
    """The ranks started as torchrun starts them (its environment: RANK, WORLD_SIZE, MASTER_ADDR...),
    without its agent, whose own import of torch costs ~3 s a launch on this machine. What torchrun
    itself does (ends the other ranks when one dies) is tested under torchrun, below. Returns rank
    0's stdout, every rank's stderr, and the first non-zero exit code."""
    port = str(_free_port())
    with tempfile.TemporaryDirectory() as folder:
        outs = [Path(folder, f"rank{r}.out") for r in range(nproc)]
        errs = [Path(folder, f"rank{r}.err") for r in range(nproc)]
        ranks = []
        for rank in range(nproc):
            env = {
                **_env(), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc),
                "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
            }  # fmt: skip
            with outs[rank].open("w") as out, errs[rank].open("w") as err:
                command = [sys.executable, "-m", "batchlab", *args]
                ranks.append(subprocess.Popen(command, stdout=out, stderr=err, text=True, env=env))
        codes = _wait_like_torchrun(ranks)
        stdout = outs[0].read_text()
        stderr = "".join(e.read_text() for e in errs)
    code = next((c for c in codes if c != 0), 0)
    return subprocess.CompletedProcess(args, code, stdout, stderr)


def _wait_like_torchrun(ranks: list[subprocess.Popen[str]]) -> list[int]:
    """Wait for every rank; once one has failed, the others get SIGTERM after 5 s, as torchrun's
    agent would send it (they may be waiting on the failed rank in a collective)."""
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    failed_at: float | None = None
    stopped = False
    while any(r.poll() is None for r in ranks):
        now = time.monotonic()
        if failed_at is None and any(r.poll() not in (None, 0) for r in ranks):
            failed_at = now
        if now > deadline:  # past the launch's time, or 30 s after the SIGTERM: killed
            for r in ranks:
                if r.poll() is None:
                    r.kill()
        elif not stopped and failed_at is not None and now > failed_at + 5:
            for r in ranks:
                if r.poll() is None:
                    r.send_signal(signal.SIGTERM)
            stopped, deadline = True, min(deadline, now + 30)
        time.sleep(0.05)
    return [r.returncode for r in ranks]


def test_two_ranks_train_like_one_process_with_the_same_global_batch(tmp_path: Path) -> None:
    """Global batch 64 over 2 ranks x accumulation 2 = micro-batches of 16. The curve equals one
    process's at batch 64 with accumulation 4 (the same four 16-example parts; float32 sums in a
    different order: 1e-5 relative). The noise scale from the ranks (each rank's micro-batch
    gradients of 16, seen by the monitor's hooks before DDP averages them, against the all-reduced
    64) equals the one-process estimate from its four micro-batches of 16 to the same tolerance: the
    issue asks for 15%, the arithmetic is identical. The recipe rides along: a cosine schedule after
    256 warm-up examples, and a clip at 0.5 on the all-reduced gradient, once a step (a clip of each
    rank's own part would clip other steps, by other factors: the curves would part)."""
    done = _run(
        "train", "--workload", "digits-mlp", "--batch-size", "64", "--accumulation", "2", "--max-steps", "40",
        "--eval-every", "10", "--track-noise", "--device", "cpu", "--json", "--out", str(tmp_path),
        "--lr-schedule", "cosine", "--warmup-examples", "256", "--clip", "0.5",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads(done.stdout)  # rank 0 alone printed: exactly one JSON object
    assert (data["batch_size"], data["world_size"], data["accumulation"], data["micro_batch_size"]) == (
        64,
        2,
        2,
        16,
    )
    wl = dataclasses.replace(
        load_workload("digits-mlp"),
        schedule=LrSchedule(decay="cosine", warmup_examples=256),
        clip_grad_norm=0.5,
    )
    one = train(wl, batch_size=64, accumulation=4, max_steps=40, eval_every=10, device="cpu")
    assert data["clipped_fraction"] == one.clipped_fraction and 0 < data["clipped_fraction"] < 1
    for ours, theirs in zip(data["curve"], one.curve, strict=True):
        assert ours["step"] == theirs.step and ours["examples"] == theirs.examples and ours["lr"] == theirs.lr
        assert ours["eval_loss"] == pytest.approx(theirs.eval_loss, rel=1e-5)
        if theirs.train_loss is not None:
            assert ours["train_loss"] == pytest.approx(theirs.train_loss, rel=1e-5)
    split = train(wl, batch_size=64, accumulation=4, max_steps=40, track_noise=True, device="cpu")
    assert split.noise is not None
    assert data["noise"]["b_simple"] == pytest.approx(split.noise["b_simple"], rel=0.15)
    assert data["noise"]["b_simple"] == pytest.approx(split.noise["b_simple"], rel=1e-4)
    assert json.loads((tmp_path / "train.json").read_text())["world_size"] == 2


def test_a_global_batch_that_does_not_split_is_refused() -> None:
    done = _run(
        "train", "--workload", "digits-mlp", "--batch-size", "30", "--accumulation", "2", "--max-steps", "1"
    )
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert lines and all("world size 2 x accumulation 2 = 4" in line for line in lines), done.stderr[-2000:]
    assert "Traceback" not in "".join(line for line in done.stderr.splitlines() if "batchlab" in line)


def _rank_pid(parent: int, rank: int) -> int | None:
    """The pid of torchrun's worker with RANK=rank (a child of its agent, which is `parent`)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


def test_torchruns_stop_landing_while_a_lost_peer_is_described_still_ends_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The race CI met once: rank 0's collective fails (its peer was killed), and torchrun's SIGTERM,
    whose handler raises RankStopped, lands while the guard is still classifying that failure. The
    signal's timing cannot be produced on demand, so the handler's raise is placed exactly there
    (inside `lost_peer`); the rest is the real guard. One line, exit 2, no traceback."""
    from batchlab.cli import shell as cli
    from batchlab.core import dist as _dist

    def lands_here(error: BaseException) -> bool:
        raise cli.RankStopped("stopped by torchrun")

    monkeypatch.setattr(_dist, "active", lambda: True)
    monkeypatch.setattr(_dist, "rank", lambda: 0)
    monkeypatch.setattr(_dist, "lost_peer", lands_here)
    previous = signal.getsignal(signal.SIGTERM)

    @cli.guarded(lock=False)
    def sweep_command() -> None:
        raise RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer")

    try:
        with pytest.raises(cli.typer.Exit) as ended:
            sweep_command()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert ended.value.exit_code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: rank 0: another rank stopped (stopped by torchrun)"
    )
    assert "run the same command again to resume" in lines[0]


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the rank's process through /proc")
def test_a_killed_rank_ends_the_other_and_the_sweep_resumes(tmp_path: Path) -> None:
    """SIGKILL rank 1 mid-sweep: rank 0 exits within 60 s with a one-line error; the store has the
    finished runs and no half-written result; the same command again reuses them and finishes."""
    args = (
        "sweep", "--workload", "digits-mlp", "--batch-sizes", "16,64,256", "--no-sharpness",
        "--device", "cpu", "--out", str(tmp_path), "--json",
    )  # fmt: skip
    process = subprocess.Popen(
        _torchrun(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
    )
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    while time.monotonic() < deadline:
        if (tmp_path / "results.db").exists():
            with Store(tmp_path, lock=False) as store:  # a reader beside the sweep
                if store.count_runs("done") >= 1 and store.count_runs("running") == 1:
                    break
        time.sleep(0.05)
    victim = _rank_pid(process.pid, 1)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    _, stderr = process.communicate(timeout=90)
    assert time.monotonic() - killed_at < 60
    assert process.returncode != 0
    errors = [line for line in stderr.splitlines() if line.startswith("error: rank 0")]
    assert len(errors) == 1 and "run the same command again to resume" in errors[0], stderr[-3000:]
    with Store(tmp_path) as store:
        done_before = store.count_runs("done")
        assert 1 <= done_before < 3
    again = _run(*args)
    assert again.returncode == 0, again.stderr[-2000:]
    data = json.loads(again.stdout)
    assert sum(r["reused"] for r in data["runs"]) == done_before
    assert all(r["reached_target"] for r in data["runs"])
    with Store(tmp_path) as store:
        assert store.count_runs("done") == 3 and store.count_runs("running") == 0


def test_throughput_across_two_ranks_reports_scaling_efficiency() -> None:
    """Global batches over 2 ranks: samples/s of the pair, of one rank alone at the per-device batch,
    and their ratio over 2. The arithmetic is checked, not the speed (the machine is shared)."""
    done = _run(
        "throughput", "--workload", "digits-mlp", "--batch-sizes", "64,256", "--device", "cpu", "--json"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads(done.stdout)
    assert data["world_size"] == 2 and [p["batch_size"] for p in data["points"]] == [64, 256]
    for p in data["points"]:
        assert p["samples_per_second"] == pytest.approx(p["batch_size"] / p["step_seconds"])
        assert p["scaling_efficiency"] == pytest.approx(
            p["samples_per_second"] / (2 * p["single_rank_samples_per_second"])
        )
        assert 0 < p["scaling_efficiency"] < 2


def test_the_memory_probe_decides_for_all_ranks_together() -> None:
    """Rank 1's (fake) device runs out above 300, rank 0's above 500: both ranks answer 300, and a
    batch that fit on rank 0 alone is recorded as failing because of the other rank."""
    workload = f"{Path(__file__).parent / 'data' / 'memory_workloads.py'}:rank_oom"
    done = _run("memory", "--workload", workload, "--device", "cpu", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads(done.stdout)
    assert data["max_batch_size"] == 300 and data["world_size"] == 2
    assert any(t["error"] == "another_rank" and 300 < t["batch_size"] <= 500 for t in data["trials"])
    assert all(not t["fits"] for t in data["trials"] if t["batch_size"] > 300)


def test_noise_under_two_ranks_agrees_with_one_process() -> None:
    """linreg, global batch 64 = 2 ranks x 2 micro-batches: the ranks train the same parameters as
    one process with 2 micro-batches, so the final pass (micro-batches of 32 over the whole set)
    reads the same B_simple; the issue allows 15%, the float difference is far below 1%. Along the
    way the monitor sees four micro-batches of 16 (2 a rank), as one process with 4 does: the same
    history, to float rounding."""
    from batchlab import measure_noise

    args = ("noise", "--workload", "linreg", "--batch-size", "64", "--micro-batches", "2", "--steps", "150")
    done = _run(*args, "--device", "cpu", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    ranks = json.loads(done.stdout)
    one, _ = measure_noise("linreg", batch_size=64, micro_batches=2, steps=150, device="cpu")
    assert ranks["b_simple"] == pytest.approx(one.b_simple, rel=0.01)
    four, _ = measure_noise("linreg", batch_size=64, micro_batches=4, steps=150, device="cpu")
    assert ranks["history"][-1]["b_simple"] == pytest.approx(four.history[-1].b_simple, rel=1e-3)


def test_advise_under_two_ranks_advises_a_global_batch(tmp_path: Path) -> None:
    """The main job on 2 ranks: every batch it considers splits over the ranks, the memory cap is the
    per-device answer times 2, rank 0 writes the report, and the chosen batch reached the target."""
    done = _run("advise", "--workload", "digits-mlp", "--device", "cpu", "--out", str(tmp_path), "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads(done.stdout)
    assert data["world_size"] == 2 and data["batch_size"] % 2 == 0
    assert all(p["batch_size"] % 2 == 0 for p in data["predictions"])
    per_device = data["memory"]["max_batch_size"]
    assert data["max_batch_size"] == min(2 * per_device, 1438) // 2 * 2
    # Reached on some seed (a run on another seed may have stopped where it could no longer win);
    # the reference point's own run reached it where the advice kept the reference point.
    at_rate = [
        m for m in data["lr_checks"] if m["batch_size"] == data["batch_size"] and m["lr"] == data["lr"]
    ]
    reference = data["reference"]
    kept = (data["batch_size"], data["lr"]) == (reference["batch_size"], reference["lr"])
    assert any(m["steps_to_target"] is not None for m in at_rate) or (
        kept and reference["steps_to_target"] is not None
    )
    assert (tmp_path / "report.html").is_file() and (tmp_path / "advice.json").is_file()


def test_a_study_under_two_ranks_matches_one_process(tmp_path: Path) -> None:
    """increase-batch over 2 ranks: every arm takes the same updates and ends at the same eval loss
    as in one process (the same global batches; float tolerance); rank 0 writes the report."""
    from batchlab import run_study

    args = ("study", "increase-batch", "--workload", "digits-mlp", "--epochs", "4", "--milestones", "1,2,3")
    done = _run(*args, "--device", "cpu", "--out", str(tmp_path), "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    ranks = json.loads(done.stdout)
    one = run_study("increase-batch", "digits-mlp", device="cpu", epochs=4, milestones=[1, 2, 3])
    for ours, theirs in zip(ranks["rows"], one.rows, strict=True):
        assert ours["updates"] == theirs["updates"]
        assert ours["final_eval_loss"] == pytest.approx(theirs["final_eval_loss"], rel=1e-4)
    assert (tmp_path / "report.html").is_file() and (tmp_path / "study.json").is_file()


def test_strategies_under_two_ranks() -> None:
    """memory --strategies over 2 ranks: per-device answers, data-parallel speeds, and accumulation's
    global batch = micro-batch x 4 x 2 ranks (capped by the training set)."""
    done = _run("memory", "--workload", "digits-mlp", "--strategies", "--device", "cpu", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads(done.stdout)
    assert data["world_size"] == 2
    rows = {r["strategy"]: r for r in data["strategies"]}
    assert {"fp32", "bf16"} <= set(rows)
    for row in data["strategies"]:
        assert {"strategy", "max_batch_size", "per_sample_bytes", "samples_per_second"} <= set(row)
    fp32 = rows["fp32"]["max_batch_size"]
    assert rows["fp32 + accumulation x4"]["max_batch_size"] == min(fp32 * 4 * 2, 1438)


def test_report_refuses_torchrun(tmp_path: Path) -> None:
    done = _run("report", str(tmp_path))
    assert done.returncode != 0
    assert any(line.startswith("error: torchrun") for line in done.stderr.splitlines()), done.stderr[-2000:]
