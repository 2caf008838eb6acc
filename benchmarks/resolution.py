"""One checkpoint at several image sizes: is the recipe resolution-robust?

    python benchmarks/resolution.py --checkpoint=output/NAME/best.pt [--sizes=64,128,192] [--count=8]

Renders ``--count`` new phantom cines (seed ``--seed``, never used in training: training draws from
the run's own seed streams) at every size of ``--sizes`` with the checkpoint's frame count and
phantom kind, undersamples each with its own mask at the checkpoint's acceleration and the centre
lines that keep 11 lines' share of k-space at 192 rows (4 at 64, 7 at 128, 11 at 192), and scores
zero-filling, view sharing and the network (whole image and heart box). The phantom's k-space
noise is stated at 192 px, so its image noise grows with the size and caps every method's PSNR
against the noisy reference: a noise-free cine scores about 42, 35 and 31 dB at 64, 128 and 192 px
against its noisy rendering. ``--noise=false`` renders noise-free cines to score the reconstruction
alone. Writes ``benchmarks/results/resolution_<NAME>.md`` (``..._noisefree.md``; or in
``--results``) and prints the table.
"""
from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from checkpoint import load_trained_model
from cli import UserError, atomic_write, cli_errors, integer_list, make_folder, run_command  # noqa: E402
from data import CineDataset, render_phantom  # noqa: E402
from engine import choose_autocast, describe_device, evaluate, resolve_device
from metrics import summarize  # noqa: E402
from models import size_multiple  # noqa: E402
from sampling import REFERENCE_HEIGHT, scaled_center_lines, view_sharing  # noqa: E402
from settings import check_phantom_size  # noqa: E402


class ViewSharing(torch.nn.Module):
    """View sharing as a 'network' with the models' call signature (for :func:`engine.evaluate`)."""

    def forward(self, aliased, kspace, mask):  # [B, T, H, W] each
        return view_sharing(kspace, mask)


class ZeroFilled(torch.nn.Module):
    def forward(self, aliased, kspace, mask):
        return aliased


def test_set(config: dict, size: int, count: int, seed: int, device: torch.device, noise: bool = True) -> CineDataset:
    """``count`` phantom cines of ``size`` px with per-cine masks (seeded by ``seed`` and the index);
    without ``noise`` the cines are noise-free (``snr=None``)."""
    images, boxes = render_phantom({**config, "image_size": size}, count, seed, **({} if noise else {"snr": None}))
    lines = scaled_center_lines(size, 11)
    return CineDataset(torch.from_numpy(images).to(device), np.arange(count), mask_mode="random", train=False,
                       acceleration=config["acceleration"], center_lines=lines, density=config["density"],
                       seed=seed, boxes=boxes)


def resolution(*, checkpoint: str,          # a trained checkpoint (output/NAME/best.pt)
               sizes: str = "64,128,192",  # image sizes (H = W), comma-separated, multiples of the network's
               count: int = 8,             # test cines per size
               seed: int = 7919,           # phantom and mask seed of the test cines (not a training seed)
               batch_size: int = 2,        # cines per reconstruction call
               noise: bool = True,         # the phantom's k-space noise | False: noise-free cines (no noise cap)
               device: str = "auto",       # 'auto' | 'cpu' | 'cuda' | 'cuda:N'
               results: str = "") -> str:  # folder for the table; '' = benchmarks/results
    """Score one checkpoint on phantom cines of several sizes; returns the markdown table."""
    torch_device = resolve_device(device)
    amp_dtype, _ = choose_autocast("auto", torch_device)
    model, config = load_trained_model(checkpoint, torch_device)
    size_list = integer_list(sizes, "sizes", "64,128,192")
    bad = [s for s in size_list if s < 16 or s % size_multiple(config)]
    if bad or count < 1:
        raise UserError(f"--sizes: {bad} not multiples of {size_multiple(config)} (>= 16), or --count < 1")
    check_phantom_size({**config, "image_size": max(size_list), "num_samples": count})
    rows = []
    for size in size_list:
        dataset = test_set(config, size, count, seed, torch_device, noise)
        row = {"size": size, "center_lines": dataset.sampling["center_lines"]}
        for label, method in (("zero-filled", ZeroFilled()), ("view sharing", ViewSharing()), ("network", model)):
            scores = evaluate(method, dataset, batch_size=batch_size, amp_dtype=amp_dtype if label == "network" else None)
            row[label] = {key: summarize(scores[key]) for key in ("psnr", "ssim", "psnr_roi")}
        rows.append(row)
        print(f"{size} px: network {row['network']['psnr'][0]:.2f} dB, view sharing "
              f"{row['view sharing']['psnr'][0]:.2f} dB, zero-filled {row['zero-filled']['psnr'][0]:.2f} dB", flush=True)
    trained = f"{config['image_size']} px" if config["data"] is None else config["data"]
    lines = [f"# One checkpoint at several sizes: `{checkpoint}` (trained at {trained})", "",
             f"{datetime.now():%Y-%m-%d %H:%M}, {describe_device(torch_device)}, torch {torch.__version__}; command: "
             f"`python benchmarks/resolution.py --checkpoint={checkpoint} --sizes={sizes} --count={count} "
             f"--seed={seed}" + ("" if noise else " --noise=false") + "`", "",
             f"{count} {'' if noise else 'noise-free '}phantom cines per size (seed {seed}), "
             f"{config['in_channels']} frames, R = "
             f"{config['acceleration']:g}, centre lines scaled from 11 at {REFERENCE_HEIGHT} rows.", "",
             "| size | centre lines | zero-filled PSNR | view sharing PSNR | network PSNR | network SSIM | "
             "network heart-box PSNR |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        net = row["network"]
        lines.append(f"| {row['size']} | {row['center_lines']} | {row['zero-filled']['psnr'][0]:.2f} | "
                     f"{row['view sharing']['psnr'][0]:.2f} | {net['psnr'][0]:.2f} ± {net['psnr'][1]:.2f} | "
                     f"{net['ssim'][0]:.4f} | {net['psnr_roi'][0]:.2f} |")
    name = Path(checkpoint).parent.name or "checkpoint"
    return write_table(lines, results, f"resolution_{name}{'' if noise else '_noisefree'}.md")


def write_table(lines: list[str], results: str, filename: str) -> str:
    """Write the markdown table ``lines`` to ``results/filename`` ('' = benchmarks/results) atomically,
    print it and return it."""
    table = "\n".join(lines) + "\n"
    folder = make_folder(Path(results) if results else ROOT / "benchmarks" / "results")
    atomic_write(folder / filename, table)
    print("\n" + table)
    return table


if __name__ == "__main__":
    with cli_errors():
        run_command(resolution)
