"""Training throughput, epoch time, peak memory and model FLOPs utilisation (MFU), for cascades
0/1/3/5: our training loop against a plain reference loop measured in the same run.

    python benchmarks/bench_train.py [--quick] [--cascades=0,1,3,5] [--steps=N] [--compile] [--results=DIR]

- reference: the way the study ran it: float32, eager, NCHW, no checkpointing; a DataLoader over
  a numpy dataset that undersamples every cine on the CPU, blocking copies to the device, and a
  ``loss.item()`` after every step.
- ours: ``train.train_step`` on the device-resident ``CineDataset`` with random masks drawn on
  the device, autocast (bf16 where the hardware has it), channels_last, cuDNN autotuning, no
  per-step synchronisation; ``ours+ckpt`` adds activation checkpointing per cascade.

Configurations: on CUDA the study's (20x192x192, init_features 64, batch 10, 114 training
cines); on CPU train.py's CPU scale-down (20x64x64, init_features 16, batch 4, 57 cines);
``--quick``: a tiny one that runs in under a minute on a CPU. Each measurement runs in a fresh
process (clean peak memory); results go to ``benchmarks/results/bench_train_<device>.json`` (or ``--results``).
MFU = achieved model FLOP/s (forward + backward, counted by torch's FlopCounterMode, recomputation
not counted) over the device's peak, measured here as the best of bf16 and float32 matrix products.
It also prints the training memory of the study's configuration (batch 10, 20x192x192, width 64)
counted exactly on the meta device, which needs no GPU (``counted_memory_gib``).
"""
from __future__ import annotations

import json
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import train  # noqa: E402
from baselines import synchronize  # noqa: E402
from data import CineDataset  # noqa: E402
from models import build_model, use_channels_last  # noqa: E402
from sampling import variable_density_mask  # noqa: E402

GPU = dict(frames=20, size=192, init_features=64, resnet_features=16, batch_size=10, n_train=114, center_lines=11)
CPU = dict(frames=20, size=64, init_features=16, resnet_features=8, batch_size=4, n_train=57, center_lines=4)
QUICK = dict(frames=8, size=32, init_features=8, resnet_features=4, batch_size=2, n_train=8, center_lines=2)


def model_config(setup: dict, cascades: int, checkpointing: bool) -> dict:
    return dict(in_channels=setup["frames"], init_features=setup["init_features"], cascades=cascades, dc="hard",
                dropout=0.3, attention="bottleneck", resnet_features=setup["resnet_features"], resnet_blocks=2,
                output="linear", arch="dual_unet", checkpointing=checkpointing, loss_tpe="L2", grad_clip=1.0)


class NumpyCines(torch.utils.data.Dataset):
    """The reference's data path: one cine at a time, undersampled with numpy on the CPU."""

    def __init__(self, images: np.ndarray, mask: np.ndarray):
        self.images, self.mask = images, mask

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        kspace = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(self.images[i], axes=(-2, -1)), norm="ortho"),
                                 axes=(-2, -1)) * self.mask
        aliased = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(kspace, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
        return (torch.from_numpy(aliased.astype(np.complex64)), torch.from_numpy(kspace.astype(np.complex64)),
                torch.from_numpy(self.mask), torch.from_numpy(self.images[i]))


def reference_steps(config, images, setup, device, steps: int):
    """Yield after each step of the plain float32 loop."""
    model = build_model(config).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-4)
    mask = variable_density_mask(images.shape[1:], center_lines=setup["center_lines"])
    loader = torch.utils.data.DataLoader(NumpyCines(images, mask), batch_size=setup["batch_size"], shuffle=True,
                                         drop_last=True)
    done = 0
    while True:
        for aliased, kspace, mask_b, target in loader:
            aliased, kspace, mask_b, target = (t.to(device) for t in (aliased, kspace, mask_b, target))
            recon = model(aliased, kspace, mask_b)
            loss = train.reconstruction_loss(recon, target, "L2")
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            loss.item()
            done += 1
            yield done
            if done >= steps:
                return


def our_steps(config, images, setup, device, steps: int, compile_model: bool):
    """Yield after each step of train.py's loop."""
    amp_dtype = train.autocast_dtype({"amp": "auto"}, device)
    model = use_channels_last(build_model(config).to(device).train())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    dataset = CineDataset(torch.from_numpy(images).to(device), np.arange(len(images)), mask_mode="random", train=True,
                          center_lines=setup["center_lines"], generator=torch.Generator(device=device).manual_seed(0))
    step_model = torch.compile(model) if compile_model else model
    params = list(model.parameters())
    order = torch.randperm(len(images), device=device)
    for done in range(1, steps + 1):
        rows = order[(done * setup["batch_size"]) % len(images):][:setup["batch_size"]]
        if len(rows) < setup["batch_size"]:
            rows = order[:setup["batch_size"]]
        train.train_step(step_model, optimizer, scheduler, scaler, dataset.batch(rows), params, config, amp_dtype)
        yield done


def worker(spec: dict) -> dict:
    """One measurement in this (fresh) process: throughput and peak memory."""
    device = torch.device(spec["device"])
    setup = spec["setup"]
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = spec["variant"] != "reference"
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = spec["variant"] != "reference"
    config = model_config(setup, spec["cascades"], spec["variant"] == "ours+ckpt")
    images = np.random.default_rng(0).random((setup["n_train"], setup["frames"], setup["size"], setup["size"]),
                                             dtype=np.float32)
    warmup, steps = spec["warmup"], spec["warmup"] + spec["steps"]
    if spec["variant"] == "reference":
        loop = reference_steps(config, images, setup, device, steps)
    else:
        loop = our_steps(config, images, setup, device, steps, spec["compile"])
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for done in loop:
        if done == warmup:
            synchronize(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            started = time.perf_counter()
    synchronize(device)
    seconds = time.perf_counter() - started
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2 ** 20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    flops = train.training_flops(config, (setup["frames"], setup["size"], setup["size"]))
    cines_per_s = spec["steps"] * setup["batch_size"] / seconds
    return {"cines_per_s": cines_per_s, "epoch_s": setup["n_train"] / cines_per_s, "peak_mb": peak_mb,
            "gflop_per_cine": flops / 1e9, "achieved_tflops": flops * cines_per_s / 1e12}


def counted_memory_gib(setup: dict, cascades: int, checkpointing: bool) -> dict:
    """Training memory at ``setup``'s size, counted exactly on the meta device (no compute, any
    machine): parameters + gradients + Adam's two moments (float32), the tensors autograd saves
    for the backward pass (float32 activations: an upper bound under bf16 autocast), and, with
    checkpointing, one cascade's activations recomputed during the backward pass. Workspaces,
    temporaries and allocator overhead are not counted."""
    def saved_and_states(config):
        saved = [0]

        def pack(tensor):
            saved[0] += tensor.numel() * tensor.element_size()
            return tensor
        shape = (setup["batch_size"], setup["frames"], setup["size"], setup["size"])
        with torch.device("meta"):
            model = build_model(config).train()
            aliased, mask = torch.empty(shape, dtype=torch.complex64), torch.empty(shape)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            model(aliased, aliased, mask)
        return saved[0], 4 * sum(4 * p.numel() for p in model.parameters())
    saved, states = saved_and_states(model_config(setup, cascades, checkpointing))
    recomputed = saved_and_states(model_config(setup, min(cascades, 1), False))[0] if checkpointing else 0
    return {"states": states / 2 ** 30, "saved": saved / 2 ** 30, "recomputed": recomputed / 2 ** 30,
            "total": (states + saved + recomputed) / 2 ** 30}


def memory_table(setup: dict, cascades: list[int]) -> tuple[str, list[dict]]:
    """Counted training memory for every cascade count, without and with checkpointing."""
    rows = [{"cascades": n, "checkpointing": ckpt, **counted_memory_gib(setup, n, ckpt)}
            for n in cascades for ckpt in ((False, True) if n else (False,))]
    lines = [f"Counted training memory (GiB) at {setup['frames']}x{setup['size']}x{setup['size']}, "
             f"init_features {setup['init_features']}, batch {setup['batch_size']} (meta device, float32):", "",
             "| cascades | checkpointing | weights + grads + Adam | saved for backward | recomputed cascade | total |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['cascades']} | {'yes' if r['checkpointing'] else 'no'} | {r['states']:.2f} | {r['saved']:.2f} | "
              f"{r['recomputed']:.2f} | {r['total']:.2f} |" for r in rows]
    by = {(r["cascades"], r["checkpointing"]): r["total"] for r in rows}
    if (1, True) in by and (5, True) in by:
        lines.append(f"\ncascade-5 / cascade-1 counted memory with checkpointing: {by[(5, True)] / by[(1, True)]:.2f}x")
    return "\n".join(lines), rows


def measured_peak_tflops(device: torch.device, size: int) -> dict:
    """Best of a few square matrix products per dtype (TFLOP/s)."""
    peaks = {}
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        best = float("inf")
        for _ in range(5):
            synchronize(device)
            started = time.perf_counter()
            a @ b
            synchronize(device)
            best = min(best, time.perf_counter() - started)
        peaks[str(dtype).split(".")[1]] = 2 * size ** 3 / best / 1e12
    return peaks


def main(argv: list[str]) -> None:
    if argv[:1] == ["--worker"]:
        print("RESULT " + json.dumps(worker(json.loads(argv[1]))))
        return
    options = dict(re.fullmatch(r"--(\w+)(?:=(.*))?", arg).groups() for arg in argv)
    unknown = set(options) - {"quick", "cascades", "steps", "compile", "device", "results"}
    if unknown:
        sys.exit(f"error: unknown option(s) --{', --'.join(sorted(unknown))}")
    device = torch.device(options.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
    setup = QUICK if "quick" in options else (GPU if device.type == "cuda" else CPU)
    cascades = [int(c) for c in (options.get("cascades") or ("0,1" if "quick" in options else "0,1,3,5")).split(",")]
    steps = int(options.get("steps") or (3 if "quick" in options else 10))
    peak = measured_peak_tflops(device, 8192 if device.type == "cuda" else 1024)
    best_peak = max(peak.values())
    results = []
    for n in cascades:
        variants = ["reference", "ours"] + (["ours+ckpt"] if n > 0 else [])
        for variant in variants:
            spec = dict(device=str(device), setup=setup, cascades=n, variant=variant, steps=steps,
                        warmup=2, compile="compile" in options)
            out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True,
                                 text=True)
            line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"error: worker {variant} cascades={n} failed:\n{out.stderr[-2000:]}")
            result = {"cascades": n, "variant": variant, **json.loads(line[7:])}
            result["mfu"] = result["achieved_tflops"] / best_peak
            results.append(result)
            print(f"cascades={n} {variant:10s} {result['cines_per_s']:8.2f} cines/s  epoch {result['epoch_s']:8.1f} s  "
                  f"peak {result['peak_mb']:8.0f} MB  MFU {100 * result['mfu']:5.1f}%", flush=True)
    table = summary_table(results)
    print("\n" + table)
    counted, memory_rows = memory_table(GPU if "quick" not in options else setup, cascades)
    print("\n" + counted)
    name = re.sub(r"[^A-Za-z0-9]+", "_", train.describe_device(device)).strip("_")
    report = {"device": train.describe_device(device), "torch": torch.__version__, "setup": setup, "steps": steps,
              "quick": "quick" in options, "peak_tflops": peak, "results": results,
              "counted_memory_gib": memory_rows, "command": " ".join(sys.argv)}
    out_dir = Path(options.get("results") or ROOT / "benchmarks" / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if "quick" in options else ""
    (out_dir / f"bench_train_{name}{suffix}.json").write_text(json.dumps(report, indent=1))


def summary_table(results: list[dict]) -> str:
    """Markdown table with our throughput and memory as ratios of the reference's."""
    by = {(r["cascades"], r["variant"]): r for r in results}
    lines = ["| cascades | variant | cines/s | epoch (s) | peak memory (MB) | MFU | speed-up vs reference |"
             " memory vs reference |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        ref = by[(r["cascades"], "reference")]
        lines.append(f"| {r['cascades']} | {r['variant']} | {r['cines_per_s']:.2f} | {r['epoch_s']:.1f} | "
                     f"{r['peak_mb']:.0f} | {100 * r['mfu']:.1f}% | {r['cines_per_s'] / ref['cines_per_s']:.2f}x | "
                     f"{r['peak_mb'] / max(ref['peak_mb'], 1e-9):.2f}x |")
    if (1, "ours+ckpt") in by and (5, "ours+ckpt") in by:
        ratio = by[(5, "ours+ckpt")]["peak_mb"] / by[(1, "ours+ckpt")]["peak_mb"]
        lines.append(f"\ncascade-5 / cascade-1 peak memory with checkpointing: {ratio:.2f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
