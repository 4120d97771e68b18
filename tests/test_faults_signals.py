"""The fault suite of issue 23, signals: the real program in a subprocess, a real signal, bounded waits.

Each test runs ``cxr-dataset`` as the console script does (tests/interrupted_program.py adds a hook
where a test needs one), sends SIGINT (to the whole process group, as a terminal's Ctrl-C does) or
SIGTERM (to the program alone, as ``kill`` does), and asserts what the user sees: the exit code, one
line and no traceback, no worker process left (read from /proc), and nothing half-written on disk.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loopback import LoopbackServer
from synthetic import COHEN, EXPECTED

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc (Linux)")

REPO = Path(__file__).resolve().parents[1]
PROGRAM = Path(__file__).with_name("interrupted_program.py")
SLOW_IMAGE = f"/{COHEN[0]}/{COHEN[1]}/images/c9.jpg"


@pytest.fixture
def server(world):
    with LoopbackServer(dict(world.served)) as running:
        yield running


def start(args: list[str], tmp_path: Path, **hooks: str) -> subprocess.Popen:
    """The program in its own process group (so a test can send the group a terminal's Ctrl-C)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), **hooks)
    return subprocess.Popen([sys.executable, str(PROGRAM), *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(process: subprocess.Popen, timeout: float) -> tuple[str, str, float]:
    """(stdout, stderr, seconds) once the program exits; killed (and the test failed) past ``timeout``."""
    started = time.monotonic()
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"the program did not exit within {timeout} s of the signal")
    return stdout, stderr, time.monotonic() - started


def children(pid: int) -> list[int]:
    """The live processes whose parent is ``pid`` (zombies are dead), from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry))
    return found


def alive(pids: list[int]) -> list[int]:
    def live(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False
    return [pid for pid in pids if live(pid)]


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def build_args(world, server, tmp_path: Path) -> list[str]:
    return ["build", "--manifest", str(world.manifest_dir), "--mirror", server.base_url, "--cache-dir",
            str(tmp_path / "cache"), "-q", "--workers", "2", "--out", str(tmp_path / "out"), "--kaggle-archive",
            str(world.kaggle_zip)]


def no_traceback(stderr: str) -> None:
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr


def leftovers(tmp_path: Path) -> list[str]:
    """What a stopped build left beside --out: the lock file (kept, as after a build that succeeded:
    removing a lock file races with a build opening it) and nothing else."""
    return sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out"))


# ---- while the program loads --------------------------------------------------------------------


@pytest.mark.parametrize("module, args", [
    ("click", ["manifests"]),                       # the command line library, before any command
    ("covid19_cxr_dataset.cli", ["manifests"]),     # the package's commands
    ("pandas", ["plan", "--version", "1.0.0"]),     # what a command imports when it starts
])
def test_ctrl_c_while_the_program_loads_is_one_line_and_exit_130(tmp_path, module, args):
    process = start(args, tmp_path, CXR_TEST_SIGNAL_ON_IMPORT=module)
    stdout, stderr, _ = finish(process, timeout=60)
    no_traceback(stderr)
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1].startswith("interrupted"), stderr
    assert stdout == ""


# ---- during a download ------------------------------------------------------------------------------


def test_ctrl_c_during_a_download_exits_130_and_leaves_no_partial_release(world, server, tmp_path):
    server.stall(SLOW_IMAGE, 30.0)
    process = start(build_args(world, server, tmp_path), tmp_path)
    wait_for(lambda: server.requests_for(SLOW_IMAGE) or process.poll() is not None, 120, "the download to start")
    os.killpg(process.pid, signal.SIGINT)
    _, stderr, took = finish(process, timeout=30)
    no_traceback(stderr)
    assert process.returncode == 130 and "interrupted: nothing was written to the output folder" in stderr
    assert took < 15
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) in ([], [".out.lock"])


# ---- during conversion: Ctrl-C, a double Ctrl-C, SIGTERM --------------------------------------------


@pytest.mark.parametrize("how", ["sigterm", "ctrl-c", "double-ctrl-c"])
def test_a_signal_during_conversion_stops_at_once_cleans_up_and_leaves_no_worker(world, server, tmp_path, how):
    process = start(build_args(world, server, tmp_path), tmp_path, CXR_TEST_SLOW_CONVERT="1.0")
    wait_for(lambda: any(tmp_path.glob(".out.partial-*/data")) or process.poll() is not None, 120, "the conversion")
    wait_for(lambda: len(children(process.pid)) >= 2 or process.poll() is not None, 30, "two worker processes")
    workers = children(process.pid)
    assert process.poll() is None and len(workers) >= 2
    if how == "sigterm":
        process.send_signal(signal.SIGTERM)  # `kill PID`: the program alone, not its workers
    else:
        os.killpg(process.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches every process of the group
        if how == "double-ctrl-c":
            time.sleep(0.2)
            os.killpg(process.pid, signal.SIGINT)
    _, stderr, took = finish(process, timeout=30)
    no_traceback(stderr)
    expected = (143, "terminated (SIGTERM): nothing was written") if how == "sigterm" else (130, "interrupted: nothing was written")
    assert process.returncode == expected[0] and expected[1] in stderr, stderr
    assert took < 10  # 24 queued conversions of 1 s each are dropped, not waited for
    wait_for(lambda: not alive(workers), 2, f"the workers {workers} to end")
    assert not (tmp_path / "out").exists()
    assert leftovers(tmp_path) == [".out.lock"]  # no .out.partial-* folder


# ---- once the release is in place -------------------------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_after_the_release_is_in_place_exits_0_even_while_python_shuts_down(world, server, tmp_path):
    process = start(build_args(world, server, tmp_path), tmp_path, CXR_TEST_SIGNAL_AFTER_RELEASE="1")
    stdout, stderr, _ = finish(process, timeout=300)
    no_traceback(stderr)
    assert process.returncode == 0, stderr
    assert f"wrote {tmp_path / 'out'}" in stdout
    assert json.loads((tmp_path / "out" / "build_report.json").read_text())["counts"] == EXPECTED
    assert leftovers(tmp_path) == [".out.lock"]
