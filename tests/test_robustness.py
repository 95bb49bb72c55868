"""Nothing lost, nothing left running, never a traceback: real processes, real signals.

Each test starts `python -m batchlab` as a user's shell would (its own session, so that a signal to
its process group reaches its children as Ctrl-C at a terminal does) and watches its children in
/proc. The workloads that stall or fail on purpose are in tests/data/failing_workloads.py.
"""

from __future__ import annotations

import os
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from batchlab.core.store import APPLICATION_ID, SCHEMA_VERSION, Store, StoreError

from .helpers import assert_one_line_error, invoke

DATA = Path(__file__).parent / "data"
FAILING = DATA / "failing_workloads.py"
SRC = Path(__file__).parent.parent / "src"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def start(*args: str, cwd: Path, preexec_fn: Callable[[], None] | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, "-m", "batchlab", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=preexec_fn,
    )


def descendants(pid: int) -> list[int]:
    """Live processes below `pid` (zombies count as gone), from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            parents[int(entry.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent]
        found += children
        frontier += children
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def wait_for(condition: Callable[[], object], what: str, timeout: float = 90) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def finish(proc: subprocess.Popen[str], timeout: float = 30) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def last_line(text: str) -> str:
    return [line for line in text.splitlines() if line.strip()][-1]


def memory_probe_with_a_trial_running(tmp_path: Path) -> tuple[subprocess.Popen[str], list[int]]:
    """`batchlab memory` on a workload whose steps sleep: returns once its trial server has forked a
    trial (the server and the trial: two processes below the command)."""
    proc = start("memory", "--workload", f"{FAILING}:slow", "--memory-limit", "2GiB", cwd=tmp_path)
    children = wait_for(lambda: len(d := descendants(proc.pid)) >= 2 and d, "a trial to start")
    assert isinstance(children, list)
    return proc, children


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_an_interrupted_memory_probe_says_one_line_and_leaves_nothing_running(
    tmp_path: Path, signum: int, code: int
) -> None:
    """SIGTERM to the command alone (a scheduler) or SIGINT to its process group (Ctrl-C at a
    terminal): one line, exit 128 + signal, and its trial server and trial gone within 2 s, without a
    word from them (before: they lived on and printed a BrokenPipeError traceback)."""
    proc, children = memory_probe_with_a_trial_running(tmp_path)
    if signum == signal.SIGINT:
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)
    rc, _, err = finish(proc)
    assert rc == code, err
    assert last_line(err).startswith(f"stopped: interrupted by {'SIGTERM' if code == 143 else 'Ctrl-C'}")
    assert "nothing was saved (no --out given)" in last_line(err)
    wait_for(lambda: not any(alive(p) for p in children), "the children to end", timeout=2)
    assert "Traceback" not in err and "Error" not in err, err


def test_children_die_with_a_killed_parent(tmp_path: Path) -> None:
    """SIGKILL leaves the parent no chance to clean up: the kernel's parent-death signal ends the
    server, and the server's death ends the trial, within 2 s."""
    proc, children = memory_probe_with_a_trial_running(tmp_path)
    proc.kill()
    rc, _, err = finish(proc)
    assert rc == -signal.SIGKILL
    wait_for(lambda: not any(alive(p) for p in children), "the children to end", timeout=2)
    assert "Traceback" not in err


def test_a_second_ctrl_c_exits_at_once(tmp_path: Path) -> None:
    """The stubborn workload takes 30 s to clean up after an interrupt; a second Ctrl-C ends the
    process at once, in one line."""
    proc = start("train", "-w", f"{FAILING}:stubborn", "--max-steps", "100", "--out", "out", cwd=tmp_path)
    # A first signal before the steps (loading the workload, under load) ends the run at once, and the
    # second then lands in the interpreter's exit, after it has restored the default handlers.
    wait_for(lambda: (tmp_path / "stubborn-forward-began").is_file(), "a forward to begin")
    time.sleep(0.2)  # inside the forward's 1 s sleep
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)
    began = time.monotonic()
    rc, _, err = finish(proc, timeout=10)
    assert time.monotonic() - began < 3
    assert rc == 130
    assert "again: stopped at once" in err and "Traceback" not in err, err


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="sees torch's library loaded through /proc")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_torch_is_imported_ends_the_command_in_one_line(tmp_path: Path, signum: int) -> None:
    """Ctrl-C in the first seconds, while torch is still being imported (its library is loaded and
    its Python modules are not, ~1 s on this machine): one line, exit 128 + signal, no traceback."""
    proc = start("train", "-w", "linreg", "--max-steps", "10", cwd=tmp_path)
    maps = Path(f"/proc/{proc.pid}/maps")
    wait_for(lambda: "libtorch" in maps.read_text(errors="replace"), "torch's library to be loaded")
    os.killpg(proc.pid, signum)
    rc, _, err = finish(proc)
    assert rc == 128 + signum, err
    assert err.strip().splitlines() == [
        f"stopped: interrupted by {signal.Signals(signum).name} while batchlab was starting; nothing ran"
    ]


def test_a_second_command_on_the_same_folder_is_refused_and_the_first_resumes(tmp_path: Path) -> None:
    """Two commands on one --out: the second is refused with the first's pid and command line; the
    first, interrupted, names its store and how to resume; the store then opens with its finished
    run and a resumed command reuses it (nothing trained twice)."""
    first = ["train", "-w", "linreg", "--max-steps", "40", "--out", "out"]
    rc, _, err = finish(start(*first, cwd=tmp_path), timeout=120)
    assert rc == 0, err
    long = ["train", "-w", "linreg", "--max-steps", "100000000", "--out", "out"]
    holder = start(*long, cwd=tmp_path)
    lock = tmp_path / "out" / ".batchlab.lock"
    wait_for(lambda: lock.is_file() and str(holder.pid) in lock.read_text(), "the lock to be taken")
    rc, _, err = finish(start(*first, cwd=tmp_path), timeout=120)
    assert rc == 2
    assert f"out is in use by pid {holder.pid} (`batchlab {' '.join(long)}`" in last_line(err)
    holder.send_signal(signal.SIGTERM)
    rc, _, err = finish(holder)
    assert rc == 143, err
    assert last_line(err).endswith(
        "finished runs are kept in out/results.db: run the same command again to resume"
    )
    with Store(tmp_path / "out") as store:
        assert len(store.runs("train")) == 1
        assert store.count_runs("running") == 1  # the interrupted one: restarted whole next time
    rc, _, err = finish(start(*first, "--json", cwd=tmp_path), timeout=120)
    assert rc == 0, err
    with Store(tmp_path / "out") as store:
        assert len(store.runs("train")) == 1  # reused, not trained again


def test_a_full_disk_loses_no_committed_run(tmp_path: Path) -> None:
    """A sweep writing into a store under a file-size limit (the disk filling up): one line, exit
    2, and the run committed before it is still there."""
    rc, _, err = finish(start("train", "-w", "linreg", "--max-steps", "40", "--out", "out", cwd=tmp_path))
    assert rc == 0, err
    store = tmp_path / "out" / "results.db"
    limit = store.stat().st_size + 16 * 1024  # room for a few pages of the write-ahead log, not a sweep

    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    sweep = ["sweep", "-w", "linreg", "--batch-sizes", "4,8,16,32", "--out", "out", "--no-sharpness"]
    rc, _, err = finish(start(*sweep, cwd=tmp_path, preexec_fn=small_disk), timeout=300)
    assert rc == 2, err
    assert "Traceback" not in err
    assert last_line(err).startswith("error: cannot write"), err
    assert "runs committed before are kept" in last_line(err)
    with Store(tmp_path / "out") as reopened:
        assert len(reopened.runs("train")) == 1


# Broken stores: refused in one line, the file untouched -------------------------------------------


def _random_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(4096))


def _foreign(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE runs (x)")
    db.execute("INSERT INTO runs VALUES (1)")
    db.commit()
    db.close()


def _newer(path: Path) -> None:
    Store(path.parent).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()


def _read_only(path: Path) -> None:
    Store(path.parent).close()
    path.chmod(0o444)  # refused even for root, whom the kernel would let write


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (_random_bytes, "is not a batchlab results store (not an SQLite file)"),
        (_foreign, "is another program's SQLite file"),
        (_newer, f"was written by a newer batchlab (store schema {SCHEMA_VERSION + 1}"),
        (_read_only, "is read-only"),
    ],
)
def test_a_broken_store_is_refused_untouched(
    tmp_path: Path, make: Callable[[Path], None], fragment: str
) -> None:
    path = tmp_path / "results.db"
    make(path)
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    result = invoke("train", "-w", "linreg", "--max-steps", "3", "--out", str(tmp_path))
    assert_one_line_error(result, str(path), fragment, "pass another --out")
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    with pytest.raises(StoreError, match="pass another --out"):
        Store(tmp_path)


def test_a_store_from_before_the_schema_version_is_adopted(tmp_path: Path) -> None:
    """Stores written before the application id and version existed are ours: opened, marked."""
    with Store(tmp_path) as store:
        store.save_result("noise", "w", {"b": 1})
    db = sqlite3.connect(tmp_path / "results.db")
    db.execute("PRAGMA application_id = 0")
    db.execute("PRAGMA user_version = 0")
    db.close()
    with Store(tmp_path) as store:
        assert store.latest_result("noise") == {"b": 1}
    db = sqlite3.connect(tmp_path / "results.db")
    assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    db.close()


def test_out_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    assert_one_line_error(invoke("noise", "-w", "linreg", "--out", str(tmp_path / "f")), "--out", "a folder")


# User code that fails -------------------------------------------------------------------------------


def test_a_workload_file_that_does_not_parse_names_its_line(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("import torch\n\ndef workload(:\n    pass\n")
    result = invoke("train", "-w", f"{tmp_path / 'broken.py'}:workload")
    assert_one_line_error(result, "broken.py line 3 does not parse", "def workload(:")


def test_a_workload_file_that_raises_on_import_names_where(tmp_path: Path) -> None:
    (tmp_path / "raises.py").write_text("x = 1\nraise RuntimeError('no data here')\n")
    result = invoke("noise", "-w", f"{tmp_path / 'raises.py'}:workload")
    assert_one_line_error(result, "RuntimeError: no data here", "raises.py:2, in <module>", "--debug")


def test_a_step_that_raises_is_one_line_and_its_frames_only_with_debug(tmp_path: Path) -> None:
    line = next(i for i, text in enumerate(FAILING.read_text().splitlines(), 1) if "RAISES_LINE" in text)
    spec = f"{FAILING}:raises"
    result = invoke("train", "-w", spec, "--max-steps", "3")
    assert_one_line_error(result, "ValueError: a bug in the user's forward", f"failing_workloads.py:{line}")
    debug = invoke("--debug", "train", "-w", spec, "--max-steps", "3")
    assert debug.exit_code == 2
    assert "Traceback (your code's frames)" in debug.stderr
    assert f'failing_workloads.py", line {line}, in forward' in debug.stderr
    assert "batchlab/train.py" not in debug.stderr  # the user's frames, not ours


def test_a_step_that_raises_in_a_memory_trial_names_where(tmp_path: Path) -> None:
    line = next(i for i, text in enumerate(FAILING.read_text().splitlines(), 1) if "RAISES_LINE" in text)
    result = invoke("memory", "-w", f"{FAILING}:raises", "--memory-limit", "1GiB")
    assert_one_line_error(result, "ValueError: a bug in the user's forward", f"failing_workloads.py:{line}")


def test_debug_is_taken_after_the_command_name(tmp_path: Path) -> None:
    rc, _, err = finish(
        start("train", "-w", f"{FAILING}:raises", "--max-steps", "2", "--debug", cwd=tmp_path)
    )
    assert rc == 2
    assert "Traceback (your code's frames)" in err
