"""What a training epoch of the learned L+S (``--arch=lsnet``, and the default call's cascades that it
starts) costs at 64, 128 and 192 px, against the cascades started from the view-shared cine (the
previous default, the reference) measured in the same run.

    python benchmarks/bench_lsnet.py [--sizes=64,128,192] [--steps=3] [--cines=57] [--threads=0]

Every network trains on the same batches (4 phantom-like cines of 20 frames, random masks at 5x):
``--steps`` timed optimisation steps (``engine.train_step``, float32) after one warm-up step, at
each size. An epoch is ``cines / batch`` steps (57 training cines at the CPU scale-down). Printed:
seconds per step and per epoch, and each network's time as a multiple of the reference's (the
CPU-scale dual UNet, 3 cascades, from view sharing). ``--threads=0`` keeps torch's default.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cli import UserError, cli_errors, non_negative, positive, run_command  # noqa: E402
from engine import cpu_model, lr_factor, train_step  # noqa: E402
from models import build_model, parameter_groups  # noqa: E402
from phantom import make_phantom_dataset  # noqa: E402
from sampling import scaled_center_lines, undersample, variable_density_mask  # noqa: E402
from settings import resolve_config, train_defaults  # noqa: E402

NETWORKS = {  # label -> options over the CPU-scale call of train.py
    "cascades from view sharing (reference)": {"prior": None},
    "default call: cascades from lsnet": {},
    "lsnet (10 iterations)": {"arch": "lsnet"},
    "lsnet + sparse CNN (8 features)": {"arch": "lsnet", "sparse_features": 8},
}
BATCH = 4


def batch_of(size: int, frames: int = 20) -> dict:
    """A training batch ``[4, T, H, W]``: phantom cines with their own masks."""
    target = torch.from_numpy(make_phantom_dataset(BATCH, frames=frames, size=size, seed=size))
    lines = scaled_center_lines(size)
    mask = torch.from_numpy(np.stack([variable_density_mask((frames, size, size), acceleration=5,
                                                            center_lines=lines, seed=i) for i in range(BATCH)]))
    aliased, kspace = undersample(target, mask)
    return {"aliased": aliased.to(torch.complex64), "kspace": kspace.to(torch.complex64), "mask": mask,
            "target": target}


def step_seconds(options: dict, batch: dict, steps: int) -> float:
    """Median seconds of one optimisation step of the network ``options`` on ``batch``."""
    config = resolve_config(train_defaults(), {"device": "cpu", "amp": "none", "scale": "cpu", **options})[0]
    torch.manual_seed(0)
    model = build_model(config).train()
    optimizer = torch.optim.Adam(parameter_groups(model, config["initial_lr"], config["weight_decay"]))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor("constant", 1, 0.0))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    params = list(model.parameters())
    times = []
    for _ in range(steps + 1):  # the first step warms up
        started = time.perf_counter()
        train_step(model, optimizer, scheduler, scaler, batch, params, config, None)
        times.append(time.perf_counter() - started)
    return float(np.median(times[1:]))


def bench(*, sizes: str = "64,128,192",  # image sizes (H = W), comma-separated
             steps: int = 3,  # timed steps per network and size (after one warm-up step)
             cines: int = 57,  # training cines per epoch (57: the CPU scale-down's split)
             threads: int = 0) -> None:  # torch threads; 0 = torch's default
    chosen = [int(s) for s in sizes.split(",") if s.strip().isdigit() and 16 <= int(s) <= 512]
    if not chosen or len(chosen) != len(sizes.split(",")):
        raise UserError(f"--sizes={sizes}: expected image sizes from 16 to 512, comma-separated")
    if threads:
        torch.set_num_threads(threads)
    print(f"CPU: {cpu_model()}, {torch.get_num_threads()} thread(s), torch {torch.__version__}, float32")
    print("| network | size | s per step | s per epoch | x reference |\n| --- | --- | --- | --- | --- |")
    for size in chosen:
        batch = batch_of(size)
        reference = None
        for label, options in NETWORKS.items():
            seconds = step_seconds(options, batch, steps)
            reference = reference or seconds
            epoch = seconds * math.ceil(cines / BATCH)
            print(f"| {label} | {size} | {seconds:.2f} | {epoch:.0f} | {seconds / reference:.2f} |", flush=True)


if __name__ == "__main__":
    with cli_errors():
        run_command(bench, sys.argv[1:], prog="python benchmarks/bench_lsnet.py",
                    parsers={"steps": positive, "cines": positive, "threads": non_negative})
