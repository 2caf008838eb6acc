"""Per-cine reconstruction latency: the network against the compressed-sensing baselines.

    python benchmarks/bench_infer.py [--quick] [--checkpoint=output/NAME/best.pt] [--repeats=N] [--results=DIR]

Reconstructs one 20x192x192 cine (``--quick``: 8x32x32) of the embedded phantom, undersampled at
5x, with: the dual UNet of the study's size (init_features 64; cascades 0 and 3, random weights:
latency does not depend on the weights) or a trained ``--checkpoint``, in eval mode under
autocast (bf16 where the hardware has it) with channels_last; and k-t sparse and L+S with their
default iteration counts and tolerances (baselines.py). Reports the median wall time of
``--repeats`` runs after one warm-up, with device synchronisation, and each method's time as a
ratio of the plain network's. Results: ``benchmarks/results/bench_infer_<device>.json`` (or ``--results``).
"""
from __future__ import annotations

import json
import re
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import baselines  # noqa: E402
from baselines import synchronize  # noqa: E402
import train  # noqa: E402
from metrics import psnr  # noqa: E402
from models import build_model, count_parameters, load_model, use_channels_last  # noqa: E402
from phantom import make_phantom_dataset  # noqa: E402
from sampling import undersample, variable_density_mask  # noqa: E402

FULL = dict(frames=20, size=192, center_lines=11, init_features=64, resnet_features=16)
QUICK = dict(frames=8, size=32, center_lines=2, init_features=8, resnet_features=4)


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


def networks(setup: dict, checkpoint: str | None, device: torch.device) -> dict:
    """name -> eval-mode model on ``device``."""
    if checkpoint:
        model, config = load_model(checkpoint, device)
        return {f"checkpoint {Path(checkpoint).parent.name} (cascades {config['cascades']})": model}
    models = {}
    for cascades in (0, 3):
        config = dict(in_channels=setup["frames"], init_features=setup["init_features"], cascades=cascades,
                      dc="hard", dropout=0.3, attention="bottleneck", resnet_features=setup["resnet_features"],
                      resnet_blocks=2, output="linear", arch="dual_unet")
        models[f"dual UNet f{setup['init_features']}, cascades {cascades}"] = build_model(config).to(device).eval()
    return models


def main(argv: list[str]) -> None:
    options = dict(re.fullmatch(r"--(\w+)(?:=(.*))?", arg).groups() for arg in argv)
    unknown = set(options) - {"quick", "checkpoint", "repeats", "device", "results"}
    if unknown:
        sys.exit(f"error: unknown option(s) --{', --'.join(sorted(unknown))}")
    quick = "quick" in options
    setup = QUICK if quick else FULL
    device = torch.device(options.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
    repeats = int(options.get("repeats") or (2 if quick else 5))
    amp_dtype = train.autocast_dtype({"amp": "auto"}, device)
    target = torch.from_numpy(make_phantom_dataset(1, setup["frames"], setup["size"], seed=7)).to(device)
    mask = torch.from_numpy(variable_density_mask(target.shape[1:], center_lines=setup["center_lines"])).to(device)
    aliased, kspace = undersample(target, mask)  # [1, T, H, W]
    aliased, kspace, mask_b = aliased.to(torch.complex64), kspace.to(torch.complex64), mask[None]
    rows = []
    for name, model in networks(setup, options.get("checkpoint"), device).items():
        use_channels_last(model)

        def run_network(model=model):
            with torch.no_grad(), train.autocast(device, amp_dtype):
                return model(aliased, kspace, mask_b)
        rows.append({"method": name, "seconds": median_seconds(run_network, device, repeats),
                     "parameters": count_parameters(model), "psnr": psnr(run_network()[0], target[0])})
    for name, method in (("k-t sparse", baselines.kt_sparse), ("L+S", baselines.low_rank_plus_sparse)):
        rows.append({"method": name, "seconds": median_seconds(lambda: method(kspace[0], mask), device, repeats),
                     "parameters": 0, "psnr": psnr(method(kspace[0], mask), target[0])})
    reference = rows[0]["seconds"]
    lines = [f"device: {train.describe_device(device)}, autocast {amp_dtype}, cine {setup['frames']}x{setup['size']}x"
             f"{setup['size']}, median of {repeats}", "",
             "| method | seconds per cine | vs first network | PSNR (dB, random weights for networks) |",
             "|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['seconds']:.3f} | {r['seconds'] / reference:.2f}x | {r['psnr']:.2f} |"
              for r in rows]
    print("\n".join(lines))
    slug = re.sub(r"[^A-Za-z0-9]+", "_", train.describe_device(device)).strip("_")
    out = Path(options.get("results") or ROOT / "benchmarks" / "results") / f"bench_infer_{slug}{'_quick' if quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": train.describe_device(device), "torch": torch.__version__, "setup": setup,
                               "repeats": repeats, "autocast": str(amp_dtype), "results": rows,
                               "command": " ".join(sys.argv)}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
