"""Train, validate and test a cine reconstruction network.

    python train.py NAME [--key=value ...] [--debug]

Edit the ``train(...)`` call at the bottom of this file to change an experiment; any keyword
can also be overridden on the command line (``python train.py output --num_epochs=5
--cascades=3``). Without CUDA the run scales itself down to a CPU configuration (see
``CPU_SCALE``) unless ``--scale=full``; values given on the command line are never changed.
Several GPUs: ``torchrun --nproc_per_node=N train.py NAME ...`` (DistributedDataParallel).

Writes ``output/NAME/`` (output.txt, metrics.json, last.pt, best.pt) and ``images/NAME/``.
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from contextlib import contextmanager, nullcontext
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from cli import (UserError, atomic_torch_save, atomic_write_text, check_run_name, cli_errors,
                 keyword_defaults, make_run_dirs, parse_overrides)
from data import MASK_MODES, CineDataset, load_cine, split_indices
from metrics import batch_psnr, batch_ssim, format_summary, summarize
from models import (ARCHS, ATTENTION, CHECKPOINT_FORMAT, DC_MODES, OUTPUTS, UNET_LEVELS, build_model,
                    describe_parameters, load_checkpoint, use_channels_last)
from sampling import DENSITIES, REFERENCE_HEIGHT, check_sampling, scaled_center_lines

# Applied when there is no CUDA device (scale="auto") or with scale="cpu", to every key not given
# on the command line: a run that finishes in minutes on 2 CPU cores.
CPU_SCALE = dict(image_size=64, num_samples=100, init_features=16, resnet_features=8,
                 num_epochs=30, batch_size=4)
# Keys that may differ when a run is resumed: they change how, not what, is computed.
RUN_CONTROL_KEYS = ("device", "amp", "compile", "channels_last", "checkpointing", "checkpoint_every",
                    "figures", "resume", "scale", "out_dir", "images_dir", "eval_batch_size")
CHOICES = dict(arch=ARCHS, attention=ATTENTION, dc=DC_MODES, output=OUTPUTS, mask_mode=MASK_MODES,
               density=DENSITIES, loss_tpe=("L1", "L2"), lr_schedule=("warmup_cosine", "constant"),
               amp=("auto", "bf16", "fp16", "none"), scale=("auto", "cpu", "full"))


def train(name: str, *,
          # data
          data: str | None = None,        # path to cine.npz / .npy [nsamples, nt, nx, ny]; None: embedded phantom
          num_samples: int = 200,         # phantom only: number of cines
          image_size: int = 192,          # phantom only: H = W, a multiple of 16
          phantom_phase: bool = False,    # phantom only: add a smooth background phase (complex cines)
          # sampling
          acceleration: float = 5.0,      # >= 1: round(H / acceleration) ky lines per frame
          center_lines: int = 11,         # fully sampled central ky lines (scaled with H on the CPU scale-down)
          density: str = "gaussian",      # 'gaussian' (kt-FOCUSS style) | 'polynomial'
          mask_mode: str = "random",      # 'fixed': one mask set for all (the study) | 'random': fresh per example
          # model
          in_channels: int = 20,          # frames per cine (the UNets stack frames as channels)
          out_channels: int = 20,         # must equal in_channels
          init_features: int = 64,        # UNet width f (levels f, 2f, 4f, 8f, bottleneck 16f); DC-CNN width
          arch: str = "dual_unet",        # 'dual_unet' (the study's network) | 'dccnn' (Schlemper et al. 2017)
          cascades: int = 0,              # 0: plain denoiser (the study) | N: N x (denoiser -> data consistency)
          dc: str = "hard",               # data consistency: 'hard' (replace lines) | 'soft' (learned lambda >= 0)
          dropout: float = 0.3,           # UNet bottleneck dropout probability, 0 = off
          attention: str = "bottleneck",  # 'none' | 'bottleneck' | 'all' (every encoder/decoder level too)
          resnet_features: int = 16,      # width of the 3D temporal ResNet
          resnet_blocks: int = 2,         # residual blocks in the 3D temporal ResNet
          output: str = "linear",         # 'linear' (residual, complex) | 'sigmoid' (magnitude data, cascades=0)
          view_sharing: bool = False,     # start from the k-t view-shared cine instead of the zero-filled one
          # optimisation
          num_epochs: int = 800,
          batch_size: int = 10,           # global batch (split across processes under torchrun)
          initial_lr: float = 1e-4,       # peak learning rate of Adam
          weight_decay: float = 1e-4,     # Adam weight decay
          lr_schedule: str = "warmup_cosine",  # 'warmup_cosine' (linear warm-up, cosine decay) | 'constant'
          warmup: float = 0.05,           # fraction of all steps spent warming up
          loss_tpe: str = "L2",           # 'L2' (mean squared error) | 'L1' (mean absolute error), on real/imag parts
          grad_clip: float = 1.0,         # max gradient norm, 0 = off
          seed: int = 0,                  # phantom, split, masks, initialisation
          # speed and memory
          device: str = "auto",           # 'auto' (CUDA if present) | 'cpu' | 'cuda' | 'cuda:N'
          amp: str = "auto",              # 'auto' (bf16 where supported) | 'bf16' | 'fp16' | 'none'
          channels_last: bool = True,     # NHWC / NDHWC weights and activations
          compile: bool = False,          # torch.compile the model
          checkpointing: bool = False,    # recompute each cascade's activations in backward (saves memory)
          sync_bn: bool = False,          # SyncBatchNorm across processes under torchrun
          eval_batch_size: int = 0,       # 0: batch_size
          # run control
          scale: str = "auto",            # 'auto' (CPU scale-down without CUDA) | 'cpu' | 'full'
          resume: bool = False,           # continue output/NAME from its last checkpoint
          checkpoint_every: int = 1,      # epochs between checkpoints (last.pt)
          figures: bool = True,           # write the figures under images/NAME
          out_dir: str = "output",
          images_dir: str = "images",
          overrides: dict | None = None):
    """Train, validate and test one configuration; returns the test summary dict (rank 0)."""
    call = {key: value for key, value in locals().items() if key not in ("name", "overrides")}
    check_run_name(name)
    config, notes, scale_lines = resolve_config(call, overrides or {})
    rank, world, local_rank = init_distributed(config)
    try:
        summary = run(name, config, notes, scale_lines, rank, world, local_rank)
        if world > 1:
            dist.barrier()  # leave together: a rank that tears gloo down while rank 0 still writes can abort
        return summary
    finally:
        if world > 1:
            dist.destroy_process_group()


# ----------------------------------------------------------------------------- configuration
def resolve_config(call: dict, overrides: dict) -> tuple[dict, list[str], bool]:
    """The call's values, then the CPU scale-down for keys not overridden, then the overrides.

    Returns (config, notes on what was changed, whether centre lines scale with the image height).
    """
    config = {**call, **overrides}
    notes = []
    scaled = config["scale"] == "cpu" or (config["scale"] == "auto" and not cuda_requested(config))
    if scaled:
        changed = [f"{key} {config[key]} -> {value}" for key, value in CPU_SCALE.items()
                   if key not in overrides and config[key] != value]
        config.update({key: value for key, value in CPU_SCALE.items() if key not in overrides})
        if changed:
            reason = "--scale=cpu" if config["scale"] == "cpu" else "no CUDA device"
            notes.append(f"{reason}: scaled down to a CPU configuration that finishes in minutes "
                         f"({', '.join(changed)}); --scale=full runs the call as written")
    validate_config(config)
    return config, notes, scaled and "center_lines" not in overrides


def cuda_requested(config: dict) -> bool:
    return config["device"].startswith("cuda") or (config["device"] == "auto" and torch.cuda.is_available())


def validate_config(config: dict) -> None:
    """Refuse impossible settings with a message naming the option."""
    for key, allowed in CHOICES.items():
        if config[key] not in allowed:
            raise UserError(f"--{key}={config[key]!r}: choose one of {', '.join(map(str, allowed))}")
    positive = ("num_samples", "image_size", "in_channels", "init_features", "resnet_features",
                "num_epochs", "batch_size", "checkpoint_every")
    for key in positive:
        if not isinstance(config[key], int) or config[key] < 1:
            raise UserError(f"--{key}={config[key]!r}: must be a positive integer")
    for key in ("cascades", "resnet_blocks", "eval_batch_size"):
        if not isinstance(config[key], int) or config[key] < 0:
            raise UserError(f"--{key}={config[key]!r}: must be a non-negative integer")
    if config["out_channels"] != config["in_channels"]:
        raise UserError(f"--out_channels={config['out_channels']}: must equal in_channels="
                        f"{config['in_channels']} (one output per frame)")
    if not 0 <= config["dropout"] < 1:
        raise UserError(f"--dropout={config['dropout']}: must be in [0, 1)")
    if not (config["initial_lr"] > 0 and config["weight_decay"] >= 0 and config["grad_clip"] >= 0
            and 0 <= config["warmup"] < 1):
        raise UserError("initial_lr must be > 0, weight_decay and grad_clip >= 0, warmup in [0, 1)")
    if config["data"] is None and config["image_size"] % 2 ** UNET_LEVELS:
        raise UserError(f"--image_size={config['image_size']}: must be a multiple of {2 ** UNET_LEVELS} "
                        f"(the UNet pools {UNET_LEVELS} times)")
    if config["arch"] == "dccnn" and config["cascades"] < 1:
        raise UserError("--arch=dccnn needs --cascades >= 1 (DC-CNN is a cascade with data consistency)")
    if config["output"] == "sigmoid" and (config["cascades"] > 0 or config["phantom_phase"]):
        raise UserError("--output=sigmoid is for magnitude targets with cascades=0 only")
    if not (isinstance(config["acceleration"], (int, float)) and config["acceleration"] >= 1):
        raise UserError(f"--acceleration={config['acceleration']!r}: must be a number >= 1")
    if not isinstance(config["center_lines"], int) or config["center_lines"] < 0:
        raise UserError(f"--center_lines={config['center_lines']!r}: must be a non-negative integer")


def init_distributed(config: dict) -> tuple[int, int, int]:
    """Join the torchrun process group (NCCL on GPUs, gloo on CPU): (rank, world size, local rank)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    dist.init_process_group("nccl" if cuda_requested(config) else "gloo")
    return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(config: dict, local_rank: int) -> torch.device:
    if config["device"] == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(config["device"])
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device={config['device']}: no CUDA device is available")
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


def autocast_dtype(config: dict, device: torch.device) -> torch.dtype | None:
    """bf16 where the hardware runs it natively, fp16 on older GPUs, else None (float32)."""
    amp = config["amp"]
    if amp == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None
    if amp == "fp16" and device.type != "cuda":
        raise UserError("--amp=fp16 needs a CUDA device (use bf16 on CPU)")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[amp]


# ----------------------------------------------------------------------------- data
def load_images(config: dict, notes: list[str], scale_lines: bool) -> tuple[np.ndarray, str]:
    """The cines ``[N, T, H, W]`` (peak magnitude 1 each) and a one-line description; with
    ``scale_lines`` the centre lines are scaled to the image height (recorded in config and notes)."""
    frames = config["in_channels"]
    if config["data"] is None:
        from phantom import make_phantom_dataset

        images = make_phantom_dataset(config["num_samples"], frames=frames, size=config["image_size"],
                                      seed=config["seed"], complex_phase=config["phantom_phase"])
        source = f"embedded phantom (seed {config['seed']})"
    else:
        images = load_cine(config["data"])
        source = str(config["data"])
        if images.shape[1] != frames:
            raise UserError(f"{source}: cines have {images.shape[1]} frames but in_channels={frames}; "
                            f"set --in_channels={images.shape[1]} --out_channels={images.shape[1]}")
        images = pad_to_multiple(images, 2 ** UNET_LEVELS, notes, source)
    height = images.shape[2]
    if scale_lines and height != REFERENCE_HEIGHT:
        lines = scaled_center_lines(height, config["center_lines"])
        notes.append(f"center_lines {config['center_lines']} -> {lines}: {height} rows keep the share of "
                     f"k-space that {config['center_lines']} central lines cover at 192 rows")
        config["center_lines"] = lines
    try:
        check_sampling(height, config["acceleration"], config["center_lines"])
    except ValueError as error:
        raise UserError(f"sampling of {height}-row images: {error}") from None
    kind = "complex" if np.iscomplexobj(images) else "magnitude"
    return images, f"{source}: {images.shape[0]} {kind} cines of {'x'.join(map(str, images.shape[1:]))}"


def pad_to_multiple(images: np.ndarray, multiple: int, notes: list[str], source: str) -> np.ndarray:
    """Zero-pad H and W symmetrically to multiples of ``multiple`` (the UNet's pooling factor)."""
    height, width = images.shape[2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if not (pad_h or pad_w):
        return images
    notes.append(f"{source}: images zero-padded from {height}x{width} to {height + pad_h}x{width + pad_w} "
                 f"(the UNet needs multiples of {multiple})")
    return np.pad(images, ((0, 0), (0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2)))


def make_datasets(images: np.ndarray, config: dict, device: torch.device):
    """Train/val/test ``CineDataset``s resident on ``device``; training masks are drawn there too,
    from a generator that ``seed_epoch`` seeds."""
    splits = split_indices(len(images), seed=config["seed"])
    sampling = dict(mask_mode=config["mask_mode"], acceleration=config["acceleration"],
                    center_lines=config["center_lines"], density=config["density"], seed=config["seed"])
    generator = torch.Generator(device=device)
    sets = [CineDataset(torch.from_numpy(images[idx]).to(device), idx, train=(i == 0),
                        generator=generator if i == 0 else None, **sampling)
            for i, idx in enumerate(splits)]
    return sets


# ----------------------------------------------------------------------------- training pieces
def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean squared (L2) or absolute (L1) error over real and imaginary parts; ``[B, T, H, W]``."""
    diff = torch.view_as_real(recon - target)  # [B, T, H, W, 2]
    return diff.pow(2).mean() if kind == "L2" else diff.abs().mean()


def lr_factor(schedule: str, total_steps: int, warmup: float):
    """Multiplier of the peak learning rate at each step: linear warm-up then cosine decay."""
    warmup_steps = max(1, round(warmup * total_steps))

    def factor(step: int) -> float:
        if schedule == "constant":
            return 1.0
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return factor


def training_flops(config: dict, size: tuple[int, int, int]) -> int:
    """FLOPs of one forward + backward pass for one cine, counted on the meta device (no compute)."""
    with torch.device("meta"):
        model = build_model({**config, "checkpointing": False})
        aliased = torch.empty((1, *size), dtype=torch.complex64)
        mask = torch.empty((1, *size))
    with FlopCounterMode(display=False) as counter:
        model(aliased, aliased, mask).abs().sum().backward()
    return counter.get_total_flops()


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed-precision context for ``dtype`` (None: plain float32)."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


@contextmanager
def stop_on_signal():
    """Turn the first SIGINT/SIGTERM into a stop request (``flag["stop"]``); a second Ctrl-C aborts."""
    flag = {"stop": False}

    def request(signum, frame):
        if flag["stop"] and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag["stop"] = True
        print(f"\n{signal.Signals(signum).name}: stopping after this batch and saving a checkpoint "
              f"(Ctrl-C again to abort without saving)", file=sys.stderr, flush=True)

    previous = {sig: signal.signal(sig, request) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model, dataset: CineDataset, *, batch_size: int, amp_dtype=None, loss_type: str = "L2",
             with_ssim: bool = True, rows=None, keep=()) -> dict:
    """Reconstruct ``dataset`` (``rows`` of it, default all) and score every cine.

    Returns numpy arrays keyed ``index`` (dataset index), ``loss``, ``psnr``, ``psnr_zero_filled``,
    ``frame_psnr`` / ``frame_psnr_zero_filled`` ``[N, T]`` and, with ``with_ssim``, ``ssim`` and
    ``ssim_zero_filled``; plus ``examples``: ``{index: {target, aliased, recon}}`` for rows in
    ``keep``. Magnitude metrics with peak 1 (see metrics.py).
    """
    model.eval()
    rows = np.arange(len(dataset)) if rows is None else np.asarray(rows)
    device = dataset.images.device
    out = {key: [] for key in ("loss", "psnr", "psnr_zero_filled", "frame_psnr", "frame_psnr_zero_filled",
                               "ssim", "ssim_zero_filled")}
    examples = {}
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        batch = dataset.batch(chunk)
        with autocast(device, amp_dtype):
            recon = model(batch["aliased"], batch["kspace"], batch["mask"])  # [B, T, H, W] complex
        target, aliased = batch["target"], batch["aliased"]
        diff = torch.view_as_real(recon - target).flatten(1)
        out["loss"].append((diff.pow(2) if loss_type == "L2" else diff.abs()).mean(1))
        for suffix, image in (("", recon), ("_zero_filled", aliased)):
            out["psnr" + suffix].append(batch_psnr(image, target))
            out["frame_psnr" + suffix].append(batch_psnr(image.flatten(0, 1)[:, None], target.flatten(0, 1)[:, None])
                                              .view(len(chunk), -1))
            if with_ssim:
                out["ssim" + suffix].append(batch_ssim(image, target))
        for j, row in enumerate(chunk):
            if row in keep:
                examples[int(dataset.indices[row])] = {key: value[j].cpu().numpy() for key, value in
                                                       (("target", target), ("aliased", aliased), ("recon", recon))}
    result = {key: torch.cat(values).cpu().numpy() for key, values in out.items() if values}
    result["index"] = dataset.indices[rows]
    result["examples"] = examples
    return result


def evaluate_distributed(model, dataset, world: int, rank: int, **kwargs) -> dict:
    """``evaluate`` on this rank's share of the cines, gathered (in dataset order) on every rank."""
    result = evaluate(model, dataset, rows=np.arange(rank, len(dataset), world), **kwargs)
    if world == 1:
        return result
    parts = [None] * world
    dist.all_gather_object(parts, result)
    order = np.argsort(np.concatenate([part["index"] for part in parts]), kind="stable")
    merged = {key: np.concatenate([part[key] for part in parts])[order]
              for key in result if key != "examples"}
    merged["examples"] = {k: v for part in parts for k, v in part["examples"].items()}
    return merged


# ----------------------------------------------------------------------------- the run
def run(name: str, config: dict, notes: list[str], scale_lines: bool, rank: int, world: int, local_rank: int):
    log = print if rank == 0 else (lambda *args, **kwargs: None)
    device = resolve_device(config, local_rank)
    amp_dtype = autocast_dtype(config, device)
    out_dir, img_dir = (Path(config[key]) / name for key in ("out_dir", "images_dir"))
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"

    # inputs first: every bad input is refused before a file or directory is written
    checkpoint = load_checkpoint(last_path) if config["resume"] else None
    images, source = load_images(config, notes, scale_lines)
    if checkpoint is not None:
        check_resumable(checkpoint, config, last_path)
    train_set, val_set, test_set = make_datasets(images, config, device)
    del images
    if config["batch_size"] > len(train_set):
        raise UserError(f"--batch_size={config['batch_size']} is larger than the training split "
                        f"({len(train_set)} cines)")
    if config["batch_size"] % world:
        raise UserError(f"--batch_size={config['batch_size']} must be divisible by the {world} processes")
    if config["sync_bn"] and world > 1 and device.type != "cuda":
        raise UserError("--sync_bn needs CUDA devices: torch's SyncBatchNorm has no CPU implementation")
    create_run_dirs(config, name, rank, world)

    torch.manual_seed(config["seed"])
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    flops = training_flops(config, tuple(train_set.images.shape[1:]))
    model = build_model(config).to(device)
    if config["channels_last"]:
        use_channels_last(model)
    if world > 1 and config["sync_bn"]:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # statistics over the global batch
    core = model  # the unwrapped module: saved, loaded and evaluated
    optimizer = torch.optim.Adam(core.parameters(), lr=config["initial_lr"], weight_decay=config["weight_decay"])
    local_batch = config["batch_size"] // world
    steps_per_epoch = math.ceil(math.ceil(len(train_set) / world) / local_batch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(config["lr_schedule"], config["num_epochs"] * steps_per_epoch, config["warmup"]))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    state = {"epoch": 0, "batch": 0, "loss_sum": 0.0, "seen": 0, "history": [], "best": None}
    if checkpoint is not None:
        state = restore(checkpoint, core, optimizer, scheduler, scaler)
        log(f"resuming {last_path} at epoch {state['epoch'] + 1}, batch {state['batch']}")
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if config["compile"]:
        model = torch.compile(model)
    header = [f"cinerecon run {name}, started {datetime.now():%Y-%m-%d %H:%M}, torch {torch.__version__}, "
              f"{describe_device(device)}, {world} process(es), autocast {amp_dtype or 'off'}",
              *notes, f"data: {source}; split {len(train_set)}/{len(val_set)}/{len(test_set)} (train/val/test)",
              f"model: {describe_parameters(core)}; {flops / 1e9:.1f} GFLOP per cine per training step",
              "config: " + json.dumps(config, sort_keys=True)]
    for line in header:
        log(line)
    report = Report(out_dir / "output.txt", header)
    sampler = DistributedSampler(range(len(train_set)), num_replicas=world, rank=rank, shuffle=True,
                                 seed=config["seed"])

    def save_last():
        if rank == 0:
            atomic_torch_save(snapshot(core, optimizer, scheduler, scaler, train_set, config, state), last_path)

    with stop_on_signal() as stop:
        epochs = tqdm(range(state["epoch"], config["num_epochs"]), desc="epochs", unit="epoch",
                      initial=state["epoch"], total=config["num_epochs"], disable=rank != 0, dynamic_ncols=True)
        for epoch in epochs:
            started = time.perf_counter()
            seed_epoch(train_set, config["seed"], rank, epoch)
            if state["batch"]:  # resuming mid-epoch: continue the random streams where they stopped
                restore_rng(checkpoint["rng"], train_set)
            sampler.set_epoch(epoch)
            order = torch.tensor(list(sampler)).split(local_batch)  # this rank's batches of the epoch
            mean_loss = train_epoch(model, optimizer, scheduler, scaler, train_set, order, config, amp_dtype,
                                    state, stop, epoch, rank, world)
            if mean_loss is None:  # stopped by a signal mid-epoch (single process)
                save_last()
                log(f"saved {last_path} at epoch {epoch + 1}, batch {state['batch']}; "
                    f"continue with the same command plus --resume")
                raise SystemExit(130)
            val = evaluate_distributed(core, val_set, world, rank, batch_size=config["eval_batch_size"] or local_batch,
                                       amp_dtype=amp_dtype, loss_type=config["loss_tpe"], with_ssim=False)
            seconds = time.perf_counter() - started
            row = {"epoch": epoch + 1, "train_loss": mean_loss, "val_loss": float(val["loss"].mean()),
                   "val_psnr": float(val["psnr"].mean()), "lr": optimizer.param_groups[0]["lr"],
                   "seconds": round(seconds, 2), "cines_per_s": round(len(train_set) / seconds, 2),
                   "tflops": round(flops * len(train_set) / seconds / 1e12, 3)}
            state.update(epoch=epoch + 1, batch=0, loss_sum=0.0, seen=0)
            state["history"].append(row)
            epochs.set_postfix(train=f"{row['train_loss']:.3g}", val=f"{row['val_loss']:.3g}",
                               psnr=f"{row['val_psnr']:.2f}dB", rate=f"{row['cines_per_s']:.1f}cine/s")
            if state["best"] is None or row["val_psnr"] > state["best"]["val_psnr"]:
                state["best"] = {"epoch": epoch + 1, "val_psnr": row["val_psnr"]}
                if rank == 0:
                    atomic_torch_save({"format": CHECKPOINT_FORMAT, "config": config, "epoch": epoch + 1,
                                       "val_psnr": row["val_psnr"], "model": core.state_dict()}, best_path)
            if (epoch + 1) % config["checkpoint_every"] == 0 or epoch + 1 == config["num_epochs"]:
                save_last()
            if rank == 0:
                report.write(state["history"])
            if stop_everywhere(stop, world):
                save_last()
                log(f"saved {last_path} after epoch {epoch + 1}; continue with the same command plus --resume")
                raise SystemExit(130)
        epochs.close()
    return test_and_report(name, core, test_set, config, state, report, amp_dtype, world, rank, best_path, img_dir,
                           local_batch)


def create_run_dirs(config: dict, name: str, rank: int, world: int) -> None:
    """``output/NAME`` and ``images/NAME``, refusing an earlier run; every rank learns the outcome."""
    roots = [Path(config["out_dir"]), Path(config["images_dir"])]
    error = None
    if rank == 0:
        try:
            make_run_dirs(roots, name, resume=config["resume"])
        except UserError as failure:
            error = str(failure)
    if world > 1:
        shared = [error]
        dist.broadcast_object_list(shared)
        error = shared[0]
    if error:
        raise UserError(error)


def seed_epoch(train_set: CineDataset, seed: int, rank: int, epoch: int) -> None:
    """Seed dropout and the training masks from (seed, rank, epoch): runs resume exactly at any
    epoch boundary, and each process draws its own masks."""
    torch.manual_seed(int(np.random.SeedSequence([seed, 2, rank, epoch]).generate_state(1)[0]))
    train_set.generator.manual_seed(int(np.random.SeedSequence([seed, 3, rank, epoch]).generate_state(1)[0]))


def stop_everywhere(stop: dict, world: int) -> bool:
    """Whether a stop was requested (on rank 0, the one torchrun signals first) for all ranks."""
    if world == 1:
        return stop["stop"]
    shared = [stop["stop"]]
    dist.broadcast_object_list(shared)
    return shared[0]


def train_epoch(model, optimizer, scheduler, scaler, dataset, order, config, amp_dtype, state, stop,
                epoch, rank, world):
    """One pass over this rank's batches (from ``state['batch']``); the mean loss, or None if stopped.

    The loss is accumulated on the device and read back at most once a second (progress bar,
    non-finite check) and at the end of the epoch: no per-batch host synchronisation.
    """
    model.train()
    device = dataset.images.device
    loss_sum = torch.tensor(state["loss_sum"], device=device, dtype=torch.float64)
    seen = state["seen"]
    bad_batch = torch.tensor(-1, device=device)
    params = [p for p in model.parameters() if p.requires_grad]
    bar = tqdm(total=len(order), initial=state["batch"], desc=f"epoch {epoch + 1}", unit="batch", leave=False,
               disable=rank != 0, dynamic_ncols=True)
    last_sync = time.monotonic()
    for b in range(state["batch"], len(order)):
        batch = dataset.batch(order[b].to(device, non_blocking=True))
        loss = train_step(model, optimizer, scheduler, scaler, batch, params, config, amp_dtype)
        loss_sum += loss.detach() * len(order[b])
        seen += len(order[b])
        bad_batch = torch.where((bad_batch < 0) & ~torch.isfinite(loss), b, bad_batch)
        bar.update()
        if time.monotonic() - last_sync > 1.0 or b == len(order) - 1:
            last_sync = time.monotonic()
            check_finite(bad_batch, epoch, state, config)
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.4g}")
        if stop["stop"] and world == 1:  # under torchrun all ranks stop together at the epoch's end
            state.update(batch=b + 1, loss_sum=loss_sum.item(), seen=seen)
            bar.close()
            return None
    bar.close()
    if world > 1:
        stats = torch.stack([loss_sum, torch.tensor(seen, device=device, dtype=torch.float64)])
        dist.all_reduce(stats)
        return float(stats[0] / stats[1])
    return float(loss_sum / seen)


def train_step(model, optimizer, scheduler, scaler, batch: dict, params: list, config: dict, amp_dtype):
    """One optimisation step on ``batch`` (``[B, T, H, W]`` tensors); returns the loss (on the device)."""
    device = batch["target"].device
    with autocast(device, amp_dtype):
        recon = model(batch["aliased"], batch["kspace"], batch["mask"])  # [B, T, H, W] complex
    loss = reconstruction_loss(recon, batch["target"], config["loss_tpe"])
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if config["grad_clip"]:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, config["grad_clip"])
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return loss.detach()


def check_finite(bad_batch: torch.Tensor, epoch: int, state: dict, config: dict) -> None:
    """Stop the run at the first non-finite loss, naming where it happened."""
    where = int(bad_batch)
    if where >= 0:
        saved = f"the last good checkpoint (epoch {state['epoch']}) is kept" if state["epoch"] else "no checkpoint was written"
        raise UserError(f"non-finite loss at epoch {epoch + 1}, batch {where + 1}: training stopped and {saved}; "
                        f"try a lower --initial_lr (now {config['initial_lr']:g}) or --amp=none")


# ----------------------------------------------------------------------------- checkpoints

def snapshot(model, optimizer, scheduler, scaler, train_set, config, state) -> dict:
    """Everything needed to continue exactly where training stands (``last.pt``)."""
    rng = {"torch": torch.get_rng_state(), "masks": train_set.generator.get_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {"format": CHECKPOINT_FORMAT, "config": config, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "rng": rng, "state": state}


def check_resumable(checkpoint: dict, config: dict, path: Path) -> None:
    """Refuse to resume ``last.pt`` if the config changed what is computed (model, data, optimiser)."""
    if "state" not in checkpoint:
        raise UserError(f"{path}: holds weights only (no training state) and cannot be resumed")
    saved = checkpoint["config"]
    differ = sorted(key for key in set(saved) | set(config)
                    if key not in RUN_CONTROL_KEYS and saved.get(key) != config.get(key))
    if differ:
        detail = ", ".join(f"{key} {saved.get(key)!r} -> {config.get(key)!r}" for key in differ)
        raise UserError(f"{path}: cannot resume with a different configuration ({detail})")


def restore(checkpoint, model, optimizer, scheduler, scaler) -> dict:
    """Load the training state of ``last.pt``; returns the loop state (epoch, batch, history, best)."""
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    scaler.load_state_dict(checkpoint["scaler"])
    return checkpoint["state"]


def restore_rng(rng: dict, train_set: CineDataset) -> None:
    torch.set_rng_state(rng["torch"])
    train_set.generator.set_state(rng["masks"])
    if "cuda" in rng and train_set.images.device.type == "cuda":
        torch.cuda.set_rng_state_all(rng["cuda"])


# ----------------------------------------------------------------------------- reporting
def describe_device(device: torch.device) -> str:
    """The GPU's name, or the CPU's model and the threads torch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    models = [line.split(":", 1)[1].strip() for line in (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
              if line.startswith("model name")]
    return f"{models[0] if models else 'CPU'} ({torch.get_num_threads()} threads)"


class Report:
    """``output.txt``: header, one line per epoch, then the test report; rewritten atomically."""

    def __init__(self, path: Path, header: list[str]):
        self.path = path
        self.header = header

    def write(self, history: list[dict], test_lines: list[str] = ()) -> None:
        lines = list(self.header) + ["", "epoch  train_loss  val_loss  val_psnr_dB  lr  seconds  cines/s  TFLOP/s"]
        lines += [f"{r['epoch']:5d}  {r['train_loss']:.6f}  {r['val_loss']:.6f}  {r['val_psnr']:.3f}  "
                  f"{r['lr']:.3e}  {r['seconds']:.1f}  {r['cines_per_s']:.2f}  {r['tflops']:.3f}" for r in history]
        atomic_write_text(self.path, "\n".join(lines + ["", *test_lines]) + "\n")


def test_and_report(name, model, test_set, config, state, report, amp_dtype, world, rank, best_path, img_dir,
                    batch_size) -> dict | None:
    """Test the best-validation weights; write output.txt, metrics.json and the figures."""
    if world > 1:
        dist.barrier()
    best = load_checkpoint(best_path, map_location=test_set.images.device)
    model.load_state_dict(best["model"])
    keep = set(range(min(3, len(test_set))))
    test = evaluate_distributed(model, test_set, world, rank, batch_size=config["eval_batch_size"] or batch_size,
                                amp_dtype=amp_dtype, loss_type=config["loss_tpe"], keep=keep)
    if rank != 0:
        return None
    lines = [f"test: {len(test['index'])} cines, weights of epoch {best['epoch']} (best validation PSNR "
             f"{best['val_psnr']:.3f} dB)",
             format_summary("zero-filled PSNR", test["psnr_zero_filled"]),
             format_summary("zero-filled SSIM", test["ssim_zero_filled"]),
             format_summary("PSNR", test["psnr"]), format_summary("SSIM", test["ssim"]),
             format_summary(f"test loss ({config['loss_tpe']})", test["loss"], digits=6)]
    report.write(state["history"], lines)
    summary = {key: dict(zip(("mean", "std"), summarize(test[key])))
               for key in ("psnr", "ssim", "psnr_zero_filled", "ssim_zero_filled", "loss")}
    metrics = {"name": name, "config": config, "best_epoch": best["epoch"], "history": state["history"],
               "summary": summary,
               "test": {key: test[key].tolist() for key in test if key != "examples"}}
    atomic_write_text(report.path.parent / "metrics.json", json.dumps(metrics, indent=1))
    if config["figures"]:
        write_figures(model, test_set, test, state["history"], img_dir, amp_dtype)
    print(f"\n{name}: test PSNR {summary['psnr']['mean']:.2f} +- {summary['psnr']['std']:.2f} dB "
          f"(zero-filled {summary['psnr_zero_filled']['mean']:.2f}), SSIM {summary['ssim']['mean']:.3f} "
          f"(zero-filled {summary['ssim_zero_filled']['mean']:.3f})\n"
          f"report {report.path}, metrics {report.path.parent / 'metrics.json'}, weights {best_path}"
          + (f", figures {img_dir}/" if config["figures"] else ""))
    return summary


def write_figures(model, test_set, test, history, img_dir: Path, amp_dtype) -> None:
    """The run's figures under ``images/NAME/``."""
    import figures
    from sampling import plot_aliasing, plot_mask

    first = test_set[0]
    plot_mask(first["mask"], img_dir / "mask.png")
    plot_aliasing(first["target"], first["aliased"], first["mask"], img_dir / "aliasing.png")
    examples = [dict(index=index, **example) for index, example in test["examples"].items()]
    figures.plot_reconstructions(examples, img_dir / "reconstructions.png")
    figures.plot_curves(history, img_dir / "curves.png")
    figures.plot_frame_psnr(test["frame_psnr_zero_filled"], test["frame_psnr"], img_dir / "frame_psnr.png")
    figures.save_gif(examples[0]["target"], examples[0]["aliased"], examples[0]["recon"], img_dir / "cine.gif")
    denoiser = model.denoisers[-1]
    if hasattr(denoiser, "unet_real"):
        captured = {}
        hooks = [branch.register_forward_hook(lambda m, i, o, key=key: captured.__setitem__(key, o.float()))
                 for key, branch in (("real", denoiser.unet_real), ("imag", denoiser.unet_imag))]
        batch = test_set.batch([0])
        with torch.no_grad(), autocast(test_set.images.device, amp_dtype):
            model.eval()(batch["aliased"], batch["kspace"], batch["mask"])
        for hook in hooks:
            hook.remove()
        figures.plot_branches(captured["real"][0].cpu().numpy(), captured["imag"][0].cpu().numpy(),
                              img_dir / "branches.png",
                              title=f"UNet branch outputs of the last denoiser"
                                    f"{' (residual corrections)' if denoiser.residual else ''}, "
                                    f"test cine {int(test_set.indices[0])}")


def parse_command_line(argv: list[str]) -> tuple[str, dict]:
    """``NAME [--key=value ...] [--debug]`` -> (name, overrides); unknown keys are refused."""
    names = [arg for arg in argv if not arg.startswith("--")]
    if len(names) != 1:
        raise UserError("usage: python train.py NAME [--key=value ...] [--debug]")
    defaults = keyword_defaults(train)
    defaults.pop("overrides")
    return names[0], parse_overrides([arg for arg in argv if arg.startswith("--")], defaults)


if __name__ == "__main__":
    with cli_errors():  # bad input: one line on stderr, exit status 2 (--debug: traceback)
        run_name, cli_overrides = parse_command_line(sys.argv[1:])
        train(run_name, overrides=cli_overrides,
              in_channels=20, out_channels=20, init_features=64, num_epochs=800, weight_decay=1e-4,
              batch_size=10, initial_lr=1e-4, loss_tpe="L2",
              data=None, cascades=0, dc="hard", dropout=0.3, attention="bottleneck",
              lr_schedule="warmup_cosine", mask_mode="random", acceleration=5.0, center_lines=11,
              seed=0, device="auto")
