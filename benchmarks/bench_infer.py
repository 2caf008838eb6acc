"""Per-cine reconstruction latency: the network against the compressed-sensing baselines.

    python benchmarks/bench_infer.py [--quick] [--checkpoint=output/NAME/best.pt] [--repeats=N] [--results=DIR]

Reconstructs one cine of the embedded phantom at the size of train.py's ``train(...)`` call
(20x192x192; ``--quick``: 8x32x32), undersampled as that call says (5x), with: the dual UNet of the
call's size (cascades 0 and 3, random weights: latency does not depend on the weights) or a trained
``--checkpoint``, in eval mode under the autocast ``engine.choose_autocast`` picks, channels_last;
and k-t sparse and L+S with their default iteration counts and tolerances (baselines.py). Reports
the median wall time of ``--repeats`` runs after one warm-up, with device synchronisation, and each
method's time as a ratio of the plain network's. Results:
``benchmarks/results/bench_infer_<device>.json`` (or ``--results``; ``--quick``: a temporary folder).
"""
from __future__ import annotations

import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import baselines  # noqa: E402
from baselines import synchronize  # noqa: E402
from checkpoint import load_trained_model  # noqa: E402
from cli import UserError, atomic_write, cli_errors, make_folder, non_negative, run_command  # noqa: E402
from engine import autocast, choose_autocast, describe_device, resolve_device  # noqa: E402
from metrics import psnr  # noqa: E402
from models import build_model, count_parameters, size_multiple, use_channels_last  # noqa: E402
from phantom import make_phantom_dataset  # noqa: E402
from sampling import undersample, variable_density_mask  # noqa: E402
from settings import train_defaults  # noqa: E402

QUICK = dict(in_channels=8, out_channels=8, image_size=32, center_lines=2, init_features=8, resnet_features=4)


def median_seconds(function, device: torch.device, repeats: int) -> float:
    function()  # warm-up: cuDNN autotuning, allocator, lazy initialisation
    times = []
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        function()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def networks(config: dict, checkpoint: str, device: torch.device) -> dict:
    """name -> eval-mode model on ``device``: the checkpoint's, or the call's network with 0 and 3 cascades."""
    if checkpoint:
        model, saved = load_trained_model(checkpoint, device)
        size = config["image_size"]
        if size % size_multiple(saved):
            raise UserError(f"{checkpoint}: its {saved['arch']} network cannot take the benchmark's {size}x{size} "
                            f"images (it takes sizes that are multiples of {size_multiple(saved)})")
        return {f"checkpoint {Path(checkpoint).parent.name} (cascades {saved['cascades']})": model}
    return {f"dual UNet f{config['init_features']}, cascades {cascades}":
            build_model({**config, "cascades": cascades}).to(device).eval() for cascades in (0, 3)}


def bench_infer(*,
                quick: bool = False,  # a tiny cine (8x32x32) and network, written to a temporary folder
                checkpoint: str = "",  # a trained output/NAME/best.pt instead of random-weight networks
                repeats: int = 0,  # timed runs per method after one warm-up; 0: 5 (--quick: 2)
                device: str = "auto",  # 'auto' (CUDA if present) | 'cpu' | 'cuda' | 'cuda:N'
                results: str = "") -> None:  # folder of the JSON; '': benchmarks/results (--quick: a temporary one)
    """Per-cine reconstruction latency of the network and of the CS baselines (see the module docstring)."""
    config = {**train_defaults(), **(QUICK if quick else {})}
    frames, size = config["in_channels"], config["image_size"]
    torch_device = resolve_device(device)
    out_dir = make_folder(results or (tempfile.mkdtemp(prefix="bench_infer_") if quick
                                      else ROOT / "benchmarks" / "results"))
    repeats = repeats or (2 if quick else 5)
    amp_dtype, amp_reason = choose_autocast("auto", torch_device)
    target = torch.from_numpy(make_phantom_dataset(1, frames, size, seed=7)).to(torch_device)  # [1, T, H, W]
    mask = torch.from_numpy(variable_density_mask((frames, size, size), config["acceleration"], config["center_lines"],
                                                  density=config["density"])).to(torch_device)  # [T, H, W]
    aliased, kspace = undersample(target, mask)  # [1, T, H, W] complex
    aliased, kspace, mask_b = aliased.to(torch.complex64), kspace.to(torch.complex64), mask[None]
    rows = []
    for name, model in networks(config, checkpoint, torch_device).items():
        use_channels_last(model)

        def run_network(model=model):
            with torch.no_grad(), autocast(torch_device, amp_dtype):
                return model(aliased, kspace, mask_b)
        rows.append({"method": name, "seconds": median_seconds(run_network, torch_device, repeats),
                     "parameters": count_parameters(model), "psnr": psnr(run_network()[0], target[0])})
    for name, method in (("k-t sparse", baselines.kt_sparse), ("L+S", baselines.low_rank_plus_sparse)):
        rows.append({"method": name, "parameters": 0, "psnr": psnr(method(kspace[0], mask), target[0]),
                     "seconds": median_seconds(lambda: method(kspace[0], mask), torch_device, repeats)})
    reference = rows[0]["seconds"]
    lines = [f"device: {describe_device(torch_device)}, autocast {amp_dtype} ({amp_reason}), cine {frames}x{size}x"
             f"{size}, median of {repeats}", "",
             "| method | seconds per cine | vs first network | PSNR (dB, random weights for networks) |",
             "|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['seconds']:.3f} | {r['seconds'] / reference:.2f}x | {r['psnr']:.2f} |"
              for r in rows]
    print("\n".join(lines))
    slug = re.sub(r"[^A-Za-z0-9]+", "_", describe_device(torch_device)).strip("_")
    path = out_dir / f"bench_infer_{slug}{'_quick' if quick else ''}.json"
    atomic_write(path, json.dumps({"device": describe_device(torch_device), "torch": torch.__version__,
                                   "setup": {"frames": frames, "size": size, "init_features": config["init_features"]},
                                   "repeats": repeats, "autocast": str(amp_dtype), "autocast_reason": amp_reason,
                                   "results": rows, "command": " ".join(sys.argv)}, indent=1))
    print(f"\nresults {path}")


def main(argv: list[str] | None = None) -> None:
    """``python benchmarks/bench_infer.py [--key=value ...]``: bad options raise ``UserError``."""
    run_command(bench_infer, argv, prog="python benchmarks/bench_infer.py", parsers={"repeats": non_negative})


if __name__ == "__main__":
    with cli_errors():
        main()
