"""Interrupted runs resume exactly: SIGKILL or SIGINT, then ``--resume``, gives the uninterrupted
run's weights, history and test metrics (single size and several training sizes)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from checkpoint import load_checkpoint
from helpers import ROOT, TINY, read_metrics, run_tool


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)


def start_run(name, cwd, args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), name, *TINY, *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


RESUMABLE = ["--num_epochs=6", "--mask_mode=random", "--figures=false"]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("straight")
    result = run_tool("train.py", ["run", *TINY, *RESUMABLE], cwd)
    assert result.returncode == 0, result.stderr[-2000:]
    return read_metrics(cwd / "output" / "run")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_interrupted_run_resumes_to_the_same_result(tmp_path, straight_run, sig):
    process = start_run("run", tmp_path, RESUMABLE)
    last = tmp_path / "output" / "run" / "last.pt"
    wait_for(last, process)
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == (-9 if sig == signal.SIGKILL else 130), stderr[-2000:]
    state = load_checkpoint(last)["state"]
    assert state["epoch"] < 6, "the run must be interrupted before it ends"
    if sig == signal.SIGINT:
        assert "plus --resume" in stdout + stderr
    report = tmp_path / "output" / "run" / "output.txt"
    header = report.read_text().split("\n\n")[0].splitlines() if report.exists() else []
    resumed = run_tool("train.py", ["run", *TINY, *RESUMABLE, "--resume"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    lines = report.read_text().splitlines()
    assert lines[:len(header)] == header, "output.txt keeps the original run's header"
    assert not header or lines[len(header)].startswith("resumed: cinerecon run run, started")
    metrics = read_metrics(tmp_path / "output" / "run")
    assert [row["epoch"] for row in metrics["history"]] == list(range(1, 7))
    np.testing.assert_allclose(metrics["test"]["psnr"], straight_run["test"]["psnr"], rtol=1e-5)
    np.testing.assert_allclose(metrics["test"]["ssim"], straight_run["test"]["ssim"], rtol=1e-5)
    assert metrics["best_epoch"] == straight_run["best_epoch"]


def test_interrupted_multi_size_run_resumes_to_the_same_result(tmp_path):
    sizes = [*RESUMABLE, "--train_sizes=32,48"]
    straight = run_tool("train.py", ["straight", *TINY, *sizes], tmp_path)
    assert straight.returncode == 0, straight.stderr[-2000:]
    process = start_run("run", tmp_path, sizes)
    last = tmp_path / "output" / "run" / "last.pt"
    wait_for(last, process)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=120)
    assert load_checkpoint(last)["state"]["epoch"] < 6, "the run must be interrupted before it ends"
    resumed = run_tool("train.py", ["run", *TINY, *sizes, "--resume"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    metrics, expected = (read_metrics(tmp_path / "output" / name) for name in ("run", "straight"))
    np.testing.assert_allclose(metrics["test"]["psnr"], expected["test"]["psnr"], rtol=1e-5)
    assert [row["train_loss"] for row in metrics["history"]] == pytest.approx(
        [row["train_loss"] for row in expected["history"]], rel=1e-5)
