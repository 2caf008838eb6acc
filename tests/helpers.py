"""Shared helpers for the tests: running the command-line tools in a subprocess, tiny phantom problems."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

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
    """The project's own .py files under ``root``: those git tracks, never a virtualenv's (whatever
    its name: .venv, venv, env) or a build's inside the repository. Outside a git checkout (an
    unpacked archive), every .py file outside hidden folders and virtualenvs (a pyvenv.cfg)."""
    try:
        listed = subprocess.run(["git", "-C", str(root), "ls-files", "--cached", "-z", "*.py"], capture_output=True,
                                check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):  # no git, or not a git checkout
        return sorted(_python_files(Path(root)))
    return [Path(root) / name for name in listed if name and (Path(root) / name).is_file()]


def _python_files(folder: Path):
    """The .py files under ``folder``, skipping hidden folders and virtualenvs."""
    for path in folder.iterdir():
        if path.is_dir() and not path.name.startswith(".") and not (path / "pyvenv.cfg").exists():
            yield from _python_files(path)
        elif path.is_file() and path.suffix == ".py":
            yield path


def write_mat73(path, variables, precision="<f8"):
    """A MATLAB v7.3 file as MATLAB writes it: HDF5 after a 512-byte header, every array stored with its
    axes reversed (column-major), complex arrays as (real, imag) compounds of ``precision`` ("<f4": single,
    as CMRxRecon's k-space), a MATLAB_class attribute."""
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w", userblock_size=512) as file:
        for name, value in variables.items():
            stored = value.T
            if np.iscomplexobj(value):
                compound = np.empty(stored.shape, [("real", precision), ("imag", precision)])
                compound["real"], compound["imag"] = stored.real, stored.imag
                stored = compound
            kind = "single" if precision == "<f4" and np.iscomplexobj(value) else "double"
            file.create_dataset(name, data=stored).attrs["MATLAB_class"] = np.bytes_(kind)
        file.create_dataset("label", data=np.frombuffer(b"cine", np.uint8).astype(np.uint16)).attrs[
            "MATLAB_class"] = np.bytes_("char")
    with open(path, "r+b") as file:
        file.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 .")


def tiny_problem(size: int, acceleration: float):
    """Two phantom cines ``[2, 6, size, size]`` (real, seed 3), their own variable-density masks
    (2 centre lines, seeds 1 and 2), zero-filled images and k-space: ``(target, mask, aliased, kspace)``."""
    import torch

    from phantom import make_phantom_dataset
    from sampling import undersample, variable_density_mask
    target = torch.from_numpy(make_phantom_dataset(2, frames=6, size=size, seed=3, complex_phase=False))
    mask = torch.from_numpy(np.stack([variable_density_mask((6, size, size), acceleration, 2, seed=s) for s in (1, 2)]))
    aliased, kspace = undersample(target, mask)
    return target, mask, aliased, kspace


def fit(net, optimizer, aliased, kspace, mask, target, steps: int) -> list[float]:
    """``steps`` Adam steps of ``net`` on the L1 error to ``target``; the losses before each step."""
    errors = []
    for _ in range(steps):
        loss = (net(aliased, kspace, mask) - target).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        errors.append(loss.item())
    return errors
