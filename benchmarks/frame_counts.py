"""One checkpoint at several frame counts: does a network trained on T frames reconstruct others?

    python benchmarks/frame_counts.py --checkpoint=output/NAME/best.pt [--frames=12,20,30] [--count=8]

Renders ``--count`` new phantom cines (seed ``--seed``, never used in training: training draws from
the run's own seed streams) at every frame count of ``--frames``, at the checkpoint's image size and
phantom kind, undersamples each with its own mask under the checkpoint's sampling (acceleration,
centre lines, density, mask type) and scores zero-filling, view sharing (where the cascades start
with ``view_sharing``) and the network (whole image and heart box). The dual UNet reconstructs a frame count other than its ``in_channels`` through cyclic windows
of ``in_channels`` frames (``models.windowed``); the table gives their number and stride. Seconds
per cine: the median over ``--repeats`` timed passes over the cines (one cine per call, after a
warm-up pass; the frame counts take turns within each repeat, so a machine whose load changes slows
them alike), and their ratio to the checkpoint's own frame count when it is one of ``--frames``.
Writes ``benchmarks/results/frame_counts_<NAME>.md`` (or in ``--results``) and prints the table.
"""
from __future__ import annotations

import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from baselines import synchronize  # noqa: E402
from benchmarks.resolution import ViewSharing, write_table  # noqa: E402
from checkpoint import load_trained_model  # noqa: E402
from cli import UserError, cli_errors, integer_list, run_command  # noqa: E402
from data import CineDataset, render_phantom  # noqa: E402
from engine import autocast, choose_autocast, describe_device, evaluate, resolve_device, run_model  # noqa: E402
from metrics import summarize  # noqa: E402
from models import cyclic_windows, window_stride  # noqa: E402
from settings import check_phantom_size  # noqa: E402


def test_set(config: dict, frames: int, count: int, seed: int, device: torch.device) -> CineDataset:
    """``count`` phantom cines of ``frames`` frames at the checkpoint's size, each with its own mask
    under the checkpoint's sampling (seeded by ``seed`` and the index)."""
    images, boxes = render_phantom({**config, "in_channels": frames}, count, seed)
    return CineDataset(torch.from_numpy(images).to(device), np.arange(count), mask_mode="random", train=False,
                       acceleration=config["acceleration"], center_lines=config["center_lines"],
                       density=config["density"], mask_type=config.get("mask_type", "variable_density"), seed=seed,
                       boxes=boxes)


@torch.no_grad()
def seconds_per_cine(model, datasets: list[CineDataset], repeats: int, amp_dtype) -> list[float]:
    """For each of ``datasets``, the median over ``repeats`` passes (after a warm-up pass) of the
    time to reconstruct every cine one at a time, divided by their number; the datasets take turns
    within each repeat."""

    def one_pass(dataset: CineDataset) -> float:
        device = dataset.images.device
        synchronize(device)
        started = time.perf_counter()
        for i in range(len(dataset)):
            with autocast(device, amp_dtype):
                run_model(model, dataset.batch([i]))
        synchronize(device)
        return (time.perf_counter() - started) / len(dataset)

    for dataset in datasets:
        one_pass(dataset)
    passes = [[one_pass(dataset) for dataset in datasets] for _ in range(repeats)]  # [repeats][datasets]
    return [statistics.median(column) for column in zip(*passes)]


def windows_of(config: dict, frames: int) -> str:
    """The dual UNet's windows at ``frames`` frames, in words; other networks take the cine whole."""
    if config["arch"] != "dual_unet":
        return "whole cine"
    window = config["in_channels"]
    return f"{len(cyclic_windows(frames, window))} of {window}, stride {window_stride(frames, window)}"


def frame_counts(*, checkpoint: str,        # a trained checkpoint (output/NAME/best.pt)
                 frames: str = "12,20,30",  # frame counts, comma-separated
                 count: int = 8,            # test cines per frame count
                 seed: int = 7919,          # phantom and mask seed of the test cines (not a training seed)
                 batch_size: int = 2,       # cines per reconstruction call when scoring
                 repeats: int = 5,          # timed passes over the cines (after one warm-up pass)
                 device: str = "auto",      # 'auto' | 'cpu' | 'cuda' | 'cuda:N'
                 results: str = "") -> str:  # folder for the table; '' = benchmarks/results
    """Score and time one checkpoint on phantom cines of several frame counts; returns the markdown table."""
    torch_device = resolve_device(device)
    amp_dtype, _ = choose_autocast("auto", torch_device)
    model, config = load_trained_model(checkpoint, torch_device)
    frame_list = integer_list(frames, "frames", "12,20,30")
    if min(frame_list) < 1 or count < 1 or repeats < 1:
        raise UserError(f"--frames={frames}, --count={count}, --repeats={repeats}: each must be at least 1")
    check_phantom_size({**config, "in_channels": max(frame_list), "num_samples": count, "coils": 1})
    rows, datasets = [], [test_set(config, length, count, seed, torch_device) for length in frame_list]
    for length, dataset in zip(frame_list, datasets):
        scores = evaluate(model, dataset, batch_size=batch_size, amp_dtype=amp_dtype)
        shared = evaluate(ViewSharing(), dataset, batch_size=batch_size, with_ssim=False)
        row = {"frames": length, "windows": windows_of(config, length), "view_sharing": summarize(shared["psnr"])}
        row.update({key: summarize(scores[key]) for key in ("psnr", "ssim", "psnr_roi", "psnr_zero_filled")})
        rows.append(row)
        print(f"{length} frames: network {row['psnr'][0]:.2f} dB (view sharing {row['view_sharing'][0]:.2f}, "
              f"zero-filled {row['psnr_zero_filled'][0]:.2f})", flush=True)
    for row, seconds in zip(rows, seconds_per_cine(model, datasets, repeats, amp_dtype)):
        row["seconds"] = seconds
    own = next((row["seconds"] for row in rows if row["frames"] == config["in_channels"]), None)
    trained = f"{config['image_size']} px" if config["data"] is None else config["data"]
    lines = [f"# One checkpoint at several frame counts: `{checkpoint}` ({config['arch']}, "
             f"in_channels {config['in_channels']}, trained at {trained})", "",
             f"{datetime.now():%Y-%m-%d %H:%M}, {describe_device(torch_device)}, torch {torch.__version__}; command: "
             f"`python benchmarks/frame_counts.py --checkpoint={checkpoint} --frames={frames} --count={count} "
             f"--seed={seed} --repeats={repeats}`", "",
             f"{count} phantom cines per frame count (seed {seed}) of {config['image_size']} px, R = "
             f"{config['acceleration']:g}, {config['center_lines']} centre lines. Seconds per cine: one cine per "
             f"call, median of {repeats} passes.", "",
             "| frames | UNet windows | zero-filled PSNR | view sharing PSNR | network PSNR | network SSIM | "
             "network heart-box PSNR | seconds per cine | time per cine vs own frame count |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        ratio = f"{row['seconds'] / own:.2f}x" if own else "-"
        lines.append(f"| {row['frames']} | {row['windows']} | {row['psnr_zero_filled'][0]:.2f} | "
                     f"{row['view_sharing'][0]:.2f} | {row['psnr'][0]:.2f} ± {row['psnr'][1]:.2f} | {row['ssim'][0]:.4f} | {row['psnr_roi'][0]:.2f} | "
                     f"{row['seconds']:.3f} | {ratio} |")
    return write_table(lines, results, f"frame_counts_{Path(checkpoint).parent.name or 'checkpoint'}.md")


if __name__ == "__main__":
    with cli_errors():
        run_command(frame_counts)
