"""Shared helpers for tests that run the command-line tools in a subprocess."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--num_samples=14", "--image_size=32", "--in_channels=6", "--out_channels=6", "--init_features=4",
        "--resnet_features=4", "--resnet_blocks=1", "--batch_size=2", "--center_lines=2", "--initial_lr=3e-3", "--scale=full",
        "--device=cpu", "--amp=none", "--channels_last=false", "--iterations=2"]


def run_tool(script, args, cwd, timeout=300, env_extra=None, **kwargs):
    """Run ``python ROOT/script args`` in ``cwd``; returns the CompletedProcess (text)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, **kwargs)


def read_metrics(run_dir):
    return json.loads((Path(run_dir) / "metrics.json").read_text())


def train_defaults(**values):
    """The keyword values of train.py's train(...) call, with ``values`` replacing some."""
    from settings import train_defaults as defaults
    return {**defaults(), **values}


def project_sources(root=ROOT) -> list[Path]:
    """The project's own .py files under ``root``: those git tracks or would track (not ignored),
    never a virtualenv's or a build's inside the repository."""
    listed = subprocess.run(["git", "-C", str(root), "ls-files", "--cached", "--others", "--exclude-standard",
                             "*.py"], capture_output=True, text=True, check=True).stdout.splitlines()
    return [Path(root) / name for name in listed if (Path(root) / name).is_file()]
