"""Training throughput, epoch time, peak memory and model FLOPs utilisation (MFU), for cascades
0/1/3/5: our training loop against a plain reference loop measured in the same run.

    python benchmarks/bench_train.py [--quick] [--cascades=0,1,3,5] [--steps=N] [--compile] [--results=DIR]

- reference: the way the study ran it: float32 (TF32 left at PyTorch's defaults), eager, NCHW, no
  checkpointing; a DataLoader over a numpy dataset that undersamples every cine on the CPU,
  blocking copies to the device, and a ``loss.item()`` after every step.
- ours: ``engine.train_step`` on the device-resident ``CineDataset`` with random masks drawn on
  the device, autocast by ``engine.choose_autocast`` (as train.py), TF32 and cuDNN autotuning on
  GPUs, channels_last, no per-step synchronisation; ``ours+ckpt`` adds activation checkpointing
  per cascade.

Configurations: on CUDA the ``train(...)`` call of train.py as written (the study's 20x192x192,
init_features 64, batch 10, 114 training cines); on a CPU its CPU scale-down (``settings.CPU_SCALE``:
20x64x64, init_features 16, batch 4, 57 cines); ``--quick``: a tiny one that runs in about a
minute on a CPU and writes to a temporary folder. Each measurement runs in a fresh process (clean
peak memory); a variant that runs out of memory is recorded as OOM and the others go on.
Results: ``benchmarks/results/bench_train_<device>.json`` (or ``--results``), with the CPU model,
its bf16 flags and the autocast dtype chosen. MFU = achieved model FLOP/s (forward + backward,
counted by torch's FlopCounterMode, recomputation not counted) over the device's peak, measured
here as the best of bf16 and float32 matrix products. It also prints the training memory of the
study's configuration counted exactly on the meta device, which needs no GPU (``counted_memory_gib``).
"""
from __future__ import annotations

import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from baselines import synchronize  # noqa: E402
from cli import atomic_write, cli_errors, make_folder, non_negative, run_command  # noqa: E402
from data import CineDataset, split_counts  # noqa: E402
from engine import (NATIVE_BF16_FLAGS, TRAINING_COPIES, choose_autocast, cpu_flags, cpu_model,  # noqa: E402
                    describe_device, reconstruction_loss, resolve_device, train_step, training_flops,
                    use_device)
from models import build_model, use_channels_last  # noqa: E402
from sampling import scaled_center_lines, undersample, variable_density_mask  # noqa: E402
from settings import CPU_SCALE, train_defaults, validate_network  # noqa: E402

QUICK = dict(in_channels=8, out_channels=8, image_size=32, init_features=8, resnet_features=4, batch_size=2,
             num_samples=14, center_lines=2)
CPU_FLAGS = ("avx512f", *NATIVE_BF16_FLAGS, "amx_tile")  # the flags that decide CPU bf16 speed


def configuration(kind: str) -> dict:
    """The run config measured: ``gpu``: train.py's call as written; ``cpu``: its CPU scale-down
    (centre lines scaled to the height, as train.py does); ``quick``: tiny."""
    config = train_defaults()
    if kind == "cpu":
        config.update(CPU_SCALE, center_lines=scaled_center_lines(CPU_SCALE["image_size"], config["center_lines"]))
    elif kind == "quick":
        config.update(QUICK)
    return config


def describe(config: dict) -> str:
    frames, size = config["in_channels"], config["image_size"]
    return (f"{frames}x{size}x{size}, init_features {config['init_features']}, batch {config['batch_size']}, "
            f"{split_counts(config['num_samples'])[0]} training cines")


class NumpyCines(torch.utils.data.Dataset):
    """The reference's data path: one cine at a time, undersampled with numpy on the CPU."""

    def __init__(self, images: np.ndarray, mask: np.ndarray):
        self.images, self.mask = images, mask  # [N, T, H, W], [T, H, W]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        aliased, kspace = undersample(self.images[i], self.mask)  # [T, H, W] complex128 each
        return (torch.from_numpy(aliased.astype(np.complex64)), torch.from_numpy(kspace.astype(np.complex64)),
                torch.from_numpy(self.mask), torch.from_numpy(self.images[i]))


def reference_steps(config: dict, images: np.ndarray, device: torch.device, steps: int):
    """Yield after each step of the plain float32 loop."""
    model = build_model(config).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config["initial_lr"], weight_decay=config["weight_decay"])
    mask = variable_density_mask(images.shape[1:], config["acceleration"], config["center_lines"],
                                 density=config["density"])
    loader = torch.utils.data.DataLoader(NumpyCines(images, mask), batch_size=config["batch_size"], shuffle=True,
                                         drop_last=True)
    done = 0
    while True:
        for aliased, kspace, mask_b, target in loader:
            aliased, kspace, mask_b, target = (t.to(device) for t in (aliased, kspace, mask_b, target))
            recon = model(aliased, kspace, mask_b)  # [B, T, H, W] complex
            loss = reconstruction_loss(recon, target, config["loss_tpe"])
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config["grad_clip"])
            optimizer.step()
            loss.item()
            done += 1
            yield done
            if done >= steps:
                return


def our_steps(config: dict, images: np.ndarray, device: torch.device, steps: int, compile_model: bool):
    """Yield after each step of train.py's loop."""
    amp_dtype, _ = choose_autocast("auto", device)
    model = use_channels_last(build_model(config).to(device).train())
    optimizer = torch.optim.Adam(model.parameters(), lr=config["initial_lr"], weight_decay=config["weight_decay"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    dataset = CineDataset(torch.from_numpy(images).to(device), np.arange(len(images)), mask_mode="random",
                          train=True, acceleration=config["acceleration"], center_lines=config["center_lines"],
                          density=config["density"], generator=torch.Generator(device=device).manual_seed(0))
    step_model = torch.compile(model) if compile_model else model
    params = list(model.parameters())
    order = torch.randperm(len(images), device=device)
    batch_size = config["batch_size"]
    for done in range(1, steps + 1):
        rows = order[(done * batch_size) % len(images):][:batch_size]
        if len(rows) < batch_size:
            rows = order[:batch_size]
        train_step(step_model, optimizer, scheduler, scaler, dataset.batch(rows), params, config, amp_dtype)
        yield done


def worker(spec: dict) -> dict:
    """One measurement in this (fresh) process: throughput and peak memory, or ``OOM``."""
    device = torch.device(spec["device"])
    config = {**spec["config"], "cascades": spec["cascades"], "checkpointing": spec["variant"] == "ours+ckpt"}
    n_train = split_counts(config["num_samples"])[0]
    torch.manual_seed(0)
    if spec["variant"] != "reference":  # as train.py; the reference keeps the defaults
        use_device(device)
    frames, size = config["in_channels"], config["image_size"]
    images = np.random.default_rng(0).random((n_train, frames, size, size), dtype=np.float32)  # [N, T, H, W]
    warmup, steps = spec["warmup"], spec["warmup"] + spec["steps"]
    if spec["variant"] == "reference":
        loop = reference_steps(config, images, device, steps)
    else:
        loop = our_steps(config, images, device, steps, spec["compile"])
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        for done in loop:
            if done == warmup:
                synchronize(device)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                started = time.perf_counter()
        synchronize(device)
    except (torch.OutOfMemoryError, MemoryError):
        return {"status": "OOM"}
    seconds = time.perf_counter() - started
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2 ** 20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    flops = training_flops(config, (frames, size, size))
    cines_per_s = spec["steps"] * config["batch_size"] / seconds
    return {"status": "ok", "cines_per_s": cines_per_s, "epoch_s": n_train / cines_per_s, "peak_mb": peak_mb,
            "gflop_per_cine": flops / 1e9, "achieved_tflops": flops * cines_per_s / 1e12,
            "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}}


def measure(spec: dict) -> dict:
    """``worker(spec)`` in a fresh process; a process the system killed (out of memory) is OOM."""
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True)
    line = next((line for line in out.stdout.splitlines() if line.startswith("RESULT ")), None)
    if line is not None:
        return json.loads(line[len("RESULT "):])
    if out.returncode == -9:
        return {"status": "OOM", "note": "killed by the system"}
    sys.exit(f"error: worker {spec['variant']} cascades={spec['cascades']} failed:\n{out.stderr[-2000:]}")


def counted_memory_gib(config: dict, cascades: int, checkpointing: bool) -> dict:
    """Training memory of ``config`` with ``cascades``, counted exactly on the meta device (no
    compute, any machine): parameters + gradients + Adam's two moments (float32), the tensors
    autograd saves for the backward pass (float32 activations: an upper bound under bf16 autocast),
    and, with checkpointing, one cascade's activations recomputed during the backward pass.
    Workspaces, temporaries and allocator overhead are not counted."""
    def saved_and_states(model_config):
        saved = [0]

        def pack(tensor):
            saved[0] += tensor.numel() * tensor.element_size()
            return tensor
        shape = (config["batch_size"], config["in_channels"], config["image_size"], config["image_size"])
        with torch.device("meta"):
            model = build_model(model_config).train()
            aliased, mask = torch.empty(shape, dtype=torch.complex64), torch.empty(shape)  # [B, T, H, W]
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            model(aliased, aliased, mask)
        return saved[0], 4 * sum(4 * p.numel() for p in model.parameters())
    saved, states = saved_and_states({**config, "cascades": cascades, "checkpointing": checkpointing})
    recomputed = (saved_and_states({**config, "cascades": min(cascades, 1), "checkpointing": False})[0]
                  if checkpointing else 0)
    return {"states": states / 2 ** 30, "saved": saved / 2 ** 30, "recomputed": recomputed / 2 ** 30,
            "total": (states + saved + recomputed) / 2 ** 30}


def memory_table(config: dict, cascades: list[int]) -> tuple[str, list[dict]]:
    """Counted training memory for every cascade count, without and with checkpointing."""
    rows = [{"cascades": n, "checkpointing": ckpt, **counted_memory_gib(config, n, ckpt)}
            for n in cascades for ckpt in ((False, True) if n else (False,))]
    lines = [f"Counted training memory (GiB) at {describe(config)} (meta device, float32):", "",
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


def summary_table(results: list[dict]) -> str:
    """Markdown table with our throughput and memory as ratios of the reference's (OOM: out of memory)."""
    by = {(r["cascades"], r["variant"]): r for r in results}
    lines = ["| cascades | variant | cines/s | epoch (s) | peak memory (MB) | MFU | speed-up vs reference |"
             " memory vs reference |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        if r["status"] != "ok":
            lines.append(f"| {r['cascades']} | {r['variant']} | OOM | – | – | – | – | – |")
            continue
        ref = by[(r["cascades"], "reference")]
        ratios = ((f"{r['cines_per_s'] / ref['cines_per_s']:.2f}x", f"{r['peak_mb'] / max(ref['peak_mb'], 1e-9):.2f}x")
                  if ref["status"] == "ok" else ("reference OOM", "reference OOM"))
        lines.append(f"| {r['cascades']} | {r['variant']} | {r['cines_per_s']:.2f} | {r['epoch_s']:.1f} | "
                     f"{r['peak_mb']:.0f} | {100 * r['mfu']:.1f}% | {ratios[0]} | {ratios[1]} |")
    ok = {key: r for key, r in by.items() if r["status"] == "ok"}
    if (1, "ours+ckpt") in ok and (5, "ours+ckpt") in ok:
        ratio = ok[(5, "ours+ckpt")]["peak_mb"] / ok[(1, "ours+ckpt")]["peak_mb"]
        lines.append(f"\ncascade-5 / cascade-1 peak memory with checkpointing: {ratio:.2f}x")
    return "\n".join(lines)


def cascade_counts(text: str) -> str:
    """The ``--cascades`` option: cascade counts (integers >= 0), comma-separated, or '' (the default)."""
    if text and not all(part.isdigit() for part in text.split(",")):
        raise ValueError(f"expected cascade counts >= 0, comma-separated (e.g. 0,1,3), got {text!r}")
    return text


def bench_train(*,
                quick: bool = False,  # a tiny configuration (about a minute on a CPU), written to a temporary folder
                cascades: str = "",  # cascade counts, comma-separated; '': 0,1,3,5 (--quick: 0,1)
                steps: int = 0,  # timed steps per measurement after 2 warm-up steps; 0: 10 (--quick: 3)
                compile: bool = False,  # torch.compile our model
                device: str = "auto",  # 'auto' (CUDA if present) | 'cpu' | 'cuda' | 'cuda:N'
                results: str = "") -> None:  # folder of the JSON; '': benchmarks/results (--quick: a temporary one)
    """Training throughput, epoch time, MFU and peak memory of our loop against a plain float32
    reference, for each cascade count, each in a fresh process (see the module docstring)."""
    torch_device = resolve_device(device)
    config = configuration("quick" if quick else "gpu" if torch_device.type == "cuda" else "cpu")
    counts = [int(c) for c in (cascades or ("0,1" if quick else "0,1,3,5")).split(",")]
    for n in counts:  # the networks measured, and those counted at the GPU configuration
        for counted in (config, configuration("gpu")):
            validate_network({**counted, "cascades": n}, TRAINING_COPIES)
    out_dir = make_folder(results or (tempfile.mkdtemp(prefix="bench_train_") if quick
                                      else ROOT / "benchmarks" / "results"))
    steps = steps or (3 if quick else 10)
    amp_dtype, amp_reason = choose_autocast("auto", torch_device)
    flags = cpu_flags()
    print(f"{describe_device(torch_device)}; {describe(config)}; our autocast {amp_dtype or 'off'} ({amp_reason})",
          flush=True)
    peak = measured_peak_tflops(torch_device, 8192 if torch_device.type == "cuda" else 1024)
    rows = []
    for n in counts:
        for variant in ["reference", "ours"] + (["ours+ckpt"] if n > 0 else []):
            spec = dict(device=str(torch_device), config=config, cascades=n, variant=variant, steps=steps,
                        warmup=2, compile=compile)
            result = {"cascades": n, "variant": variant, **measure(spec)}
            if result["status"] == "ok":
                result["mfu"] = result["achieved_tflops"] / max(peak.values())
                print(f"cascades={n} {variant:10s} {result['cines_per_s']:8.2f} cines/s  "
                      f"epoch {result['epoch_s']:8.1f} s  peak {result['peak_mb']:8.0f} MB  MFU {100 * result['mfu']:5.1f}%", flush=True)
            else:
                print(f"cascades={n} {variant:10s} OOM", flush=True)
            rows.append(result)
    print("\n" + summary_table(rows))
    counted, memory_rows = memory_table(config if quick else configuration("gpu"), counts)
    print("\n" + counted)
    report = {"device": describe_device(torch_device), "torch": torch.__version__,
              "cpu": {"model": cpu_model(), "flags": {flag: flag in flags for flag in CPU_FLAGS}},
              "autocast": {"dtype": str(amp_dtype).replace("torch.", "") if amp_dtype else "float32",
                           "reason": amp_reason},
              "setup": describe(config), "config": config, "steps": steps, "quick": quick, "peak_tflops": peak,
              "results": rows, "counted_memory_gib": memory_rows, "command": " ".join(sys.argv)}
    slug = re.sub(r"[^A-Za-z0-9]+", "_", describe_device(torch_device)).strip("_")
    path = out_dir / f"bench_train_{slug}{'_quick' if quick else ''}.json"
    atomic_write(path, json.dumps(report, indent=1))
    print(f"\nresults {path}")


def main(argv: list[str] | None = None) -> None:
    """``python benchmarks/bench_train.py [--key=value ...]``: bad options raise ``UserError``."""
    run_command(bench_train, argv, prog="python benchmarks/bench_train.py",
                parsers={"cascades": cascade_counts, "steps": non_negative})


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:  # one measurement, started by measure()
        print("RESULT " + json.dumps(worker(json.loads(sys.argv[2]))))
    else:
        with cli_errors():
            main()
