"""The shared runtime of training, evaluation, comparison, reconstruction and the benchmarks
(what a run reads, its data, is data.py's).

- device and precision: :func:`resolve_device`, :func:`choose_autocast` (the one mixed-precision
  rule, with its reason), :func:`autocast`, :func:`describe_device`;
- training pieces: :func:`reconstruction_loss` (the one loss), :func:`lr_factor`,
  :func:`training_flops`, :func:`train_step`, :func:`seed_epoch`, :func:`check_batching`;
- evaluation: :func:`evaluate`, :func:`evaluate_distributed`, :func:`evaluate_all` (every
  acceleration), :func:`test_summary`;
- the network's size: :func:`parameter_count`, :func:`check_network_size`;
- runs: :func:`init_distributed`, :func:`create_run_dirs`, :func:`stop_on_signal`, :class:`Report`.

Cines are ``[B, T, H, W]`` tensors (complex64 images and k-space, float32 masks) as in sampling.py.
"""
from __future__ import annotations

import math
import os
import re
import signal
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.flop_counter import FlopCounterMode

from cli import UserError, atomic_write, make_run_dirs
from formats import available_memory, check_memory, crop_or_pad
from metrics import (batch_nmse, batch_psnr, batch_ssim, box_pixels, cmrxrecon_scores, cmrxrecon_slices, format_summary,
                     summarize)
from models import build_model, count_parameters
from sampling import fft2c, ifft2c

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 CPU flags of hardware bf16 arithmetic
CPUINFO = Path("/proc/cpuinfo")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}
SIZE_SETTINGS = ("init_features", "levels", "cascades", "resnet_features", "resnet_blocks")  # the network's size
REPEATED_PARTS = ("cascades", "resnet_blocks", "iterations")  # settings that repeat a part: the weights grow linearly

TRAINING_COPIES = 4  # copies of the weights a run holds: the weights, their gradients and Adam's two moments


# ----------------------------------------------------------------------------- device and precision
def cuda_requested(device: str) -> bool:
    """Whether the device option (``auto``, ``cpu``, ``cuda``, ``cuda:N``) means a GPU here."""
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def check_device(device) -> None:
    """Refuse a device option that is not ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    if not isinstance(device, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise UserError(f"--device={device}: use auto, cpu, cuda or cuda:N (N: the index of a GPU)")


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """The torch device of the device option; ``auto`` and ``cuda`` take this process's GPU, which
    becomes its current device, with cuDNN's kernel search and TF32 matrix products on."""
    check_device(device)
    if device == "auto":
        resolved = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    else:
        resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device={device}: no CUDA device is available")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise UserError(f"--device={device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                        f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if resolved.type == "cuda" and resolved.index is None:
        resolved = torch.device(f"cuda:{local_rank}")
    use_device(resolved)
    return resolved


def use_device(device: torch.device) -> None:
    """Make ``device`` this process's device; on CUDA let cuDNN pick its fastest kernels and allow TF32."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True


def _cpuinfo_field(name: str) -> list[str]:
    """The values of every ``name : value`` line of /proc/cpuinfo (empty where there is none)."""
    lines = CPUINFO.read_text().splitlines() if CPUINFO.exists() else []
    return [line.split(":", 1)[1].strip() for line in lines if line.split(":", 1)[0].strip() == name]


def cpu_model() -> str:
    models = _cpuinfo_field("model name")
    return models[0] if models else "CPU"


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    lines = _cpuinfo_field("flags")
    return set(lines[0].split()) if lines else set()


def native_bf16_flags() -> list[str]:
    """The flags by which this CPU computes bf16 in hardware (elsewhere oneDNN emulates it)."""
    return sorted(set(NATIVE_BF16_FLAGS) & cpu_flags())


def describe_device(device: torch.device) -> str:
    """The GPU's name, or the CPU's model and the threads torch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({torch.get_num_threads()} threads)"


def choose_autocast(amp: str, device: torch.device) -> tuple[torch.dtype | None, str]:
    """The autocast dtype of the amp option on ``device`` (None: float32) and the reason for it.

    - ``bf16``, ``fp16``, ``none``: as asked (fp16 needs CUDA).
    - ``auto`` on a GPU: bf16 where it is supported, else fp16.
    - ``auto`` on a CPU: bf16 only where the CPU computes it natively (``NATIVE_BF16_FLAGS``).
      Elsewhere oneDNN emulates bf16 and a training epoch takes about twice as long as in float32
      (issue 16: 13.2 s against 6.0 s on a Xeon with AVX-512 but no AVX512_BF16).
    """
    if amp == "fp16" and device.type != "cuda":
        raise UserError("--amp=fp16 needs a CUDA device (use bf16 on CPU)")
    if amp != "auto":
        return AMP_DTYPES[amp], f"--amp={amp} as given"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "amp=auto: the GPU computes bf16"
        return torch.float16, "amp=auto: the GPU has no bf16, fp16 with loss scaling"
    native = native_bf16_flags()
    if native:
        return torch.bfloat16, f"amp=auto: this CPU computes bf16 natively ({', '.join(native)})"
    return None, (f"amp=auto: this CPU has no native bf16 (none of the flags {', '.join(NATIVE_BF16_FLAGS)}), "
                  f"where emulated bf16 is slower than float32")


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed-precision context for ``dtype`` (None: plain float32)."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


# ----------------------------------------------------------------------------- data


def check_batching(config: dict, train_cines: int, world: int, device: torch.device) -> None:
    """Refuse a batch the training split or the processes cannot make, and SyncBatchNorm off CUDA."""
    if config["batch_size"] > train_cines:
        raise UserError(f"--batch_size={config['batch_size']} is larger than the training split ({train_cines} cines)")
    if config["batch_size"] % world:
        raise UserError(f"--batch_size={config['batch_size']} must be divisible by the {world} processes")
    if config["sync_bn"] and world > 1 and device.type != "cuda":
        raise UserError("--sync_bn needs CUDA devices: torch's SyncBatchNorm has no CPU implementation")


# ----------------------------------------------------------------------------- training pieces
def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, kind: str, per_cine: bool = False,
                        boxes: torch.Tensor | None = None):
    """Mean squared (``L2``) or absolute (``L1``) error over the real and imaginary parts of
    ``[B, T, H, W]`` cines: a scalar, or ``[B]`` (one value per cine) with ``per_cine``; with
    ``boxes`` ``[B, 4]`` (row0, row1, col0, col1, half-open) the scalar mean over those boxes only."""
    diff = torch.view_as_real(recon - target)  # [B, T, H, W, 2]
    error = diff.pow(2) if kind == "L2" else diff.abs()
    if boxes is not None:
        weight = box_pixels(boxes, *target.shape[2:])[:, None, :, :, None].to(error.dtype)  # [B, 1, H, W, 1]
        return (error * weight).sum() / (weight.sum() * error.shape[1] * error.shape[-1])
    return error.flatten(1).mean(1) if per_cine else error.mean()


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
    """FLOPs of one forward + backward pass for one cine ``[T, H, W]``, counted on the meta device
    (no compute)."""
    with torch.device("meta"):
        model = build_model({**config, "checkpointing": False})
        aliased = torch.empty((1, *size), dtype=torch.complex64)
        mask = torch.empty((1, *size))
    with FlopCounterMode(display=False) as counter:
        model(aliased, aliased, mask).abs().sum().backward()
    return counter.get_total_flops()


def run_model(model, batch: dict) -> torch.Tensor:
    """``model``'s reconstruction ``[B, T, H, W]`` of a dataset's ``batch`` (``data.CineDataset.batch``):
    ``model(aliased, kspace, mask)``, with coils also ``sensitivities=``."""
    coils = {"sensitivities": batch["sensitivities"]} if "sensitivities" in batch else {}
    return model(batch["aliased"], batch["kspace"], batch["mask"], **coils)


def train_step(model, optimizer, scheduler, scaler, batch: dict, params: list, config: dict, amp_dtype):
    """One optimisation step on ``batch`` (``[B, T, H, W]`` tensors); returns the loss (on the device)."""
    with autocast(batch["target"].device, amp_dtype):
        recon = run_model(model, batch)  # [B, T, H, W] complex
    loss = reconstruction_loss(recon, batch["target"], config["loss_tpe"])
    if config.get("heart_weight"):  # the heart box's error counted again, with this weight
        loss = loss + config["heart_weight"] * reconstruction_loss(recon, batch["target"], config["loss_tpe"],
                                                                   boxes=batch["box"])
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if config["grad_clip"]:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, config["grad_clip"])
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return loss.detach()


def seed_epoch(train_set, seed: int, rank: int, epoch: int) -> None:
    """Seed dropout and the training masks (``train_set.generator``, of a ``data.SizeGroups`` or
    ``data.StreamedCines``) from (seed, rank, epoch): runs resume exactly at any epoch boundary, and
    each process draws its own masks."""
    torch.manual_seed(int(np.random.SeedSequence([seed, 2, rank, epoch]).generate_state(1)[0]))
    train_set.generator.manual_seed(int(np.random.SeedSequence([seed, 3, rank, epoch]).generate_state(1)[0]))


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model, dataset, *, batch_size: int, amp_dtype=None, loss_type: str = "L2", with_ssim: bool = True,
             rows=None, keep=(), acceleration: float | None = None, protocol: bool = False) -> dict:
    """Reconstruct ``dataset`` (a :class:`data.CineDataset` or :class:`data.StreamedCines`; ``rows`` of
    it, default all) with the evaluation masks of ``acceleration`` (default: the dataset's first) and
    score every cine.

    Returns numpy arrays in the order of ``rows`` keyed ``index`` (dataset index), ``loss``, ``psnr``,
    ``nmse``, ``frame_psnr`` ``[N, T]`` (NaN past a cine's last frame when the frame counts differ) and,
    with ``with_ssim``, ``ssim``; with heart boxes in the dataset also ``psnr_roi``, ``nmse_roi`` (and
    ``ssim_roi``); each metric also for the zero-filled input (``..._zero_filled``); with ``protocol``
    (raw cines) ``psnr_cmrx``, ``ssim_cmrx``, ``nmse_cmrx`` by the CMRxRecon ranking protocol
    (:func:`cmrxrecon_metrics`; NaN for the slices it does not score); plus ``examples``:
    ``{index: {target, aliased, recon}}`` for rows in ``keep``. Magnitude metrics with peak 1 (metrics.py).
    """
    model.eval()
    rows = np.arange(len(dataset)) if rows is None else np.asarray(rows)
    metrics = ["psnr", "ssim", "nmse"] + (["psnr_roi", "ssim_roi", "nmse_roi"] if dataset.boxes is not None else [])
    out = {key: [] for key in ["loss", "frame_psnr", "frame_psnr_zero_filled", *metrics,
                               *(metric + "_zero_filled" for metric in metrics)]}
    done, examples = [], {}
    for chunk, batch in dataset.chunks(rows, batch_size, acceleration):
        with autocast(dataset.device, amp_dtype):
            recon = run_model(model, batch)  # [B, T, H, W] complex
        target, aliased = batch["target"], batch["aliased"]
        out["loss"].append(reconstruction_loss(recon, target, loss_type, per_cine=True))
        box = None if dataset.boxes is None else torch.as_tensor(dataset.boxes[chunk])  # [B, 4]
        for suffix, image in (("", recon), ("_zero_filled", aliased)):
            out["psnr" + suffix].append(batch_psnr(image, target))
            out["nmse" + suffix].append(batch_nmse(image, target))
            out["frame_psnr" + suffix].append(batch_psnr(image.flatten(0, 1)[:, None], target.flatten(0, 1)[:, None])
                                              .view(len(chunk), -1))
            if with_ssim:
                out["ssim" + suffix].append(batch_ssim(image, target))
            if box is not None:
                out["psnr_roi" + suffix].append(batch_psnr(image, target, box=box))
                out["nmse_roi" + suffix].append(batch_nmse(image, target, box=box))
                if with_ssim:
                    out["ssim_roi" + suffix].append(batch_ssim(image, target, box=box))
        if protocol:
            for key, values in cmrxrecon_metrics(dataset, chunk, recon, batch["rss"]).items():
                out.setdefault(key, []).append(values)
        done.append(chunk)
        for j, row in enumerate(chunk):
            if row in keep:
                examples[int(dataset.indices[row])] = {key: value[j].cpu().numpy() for key, value in
                                                       (("target", target), ("aliased", aliased), ("recon", recon))}
    order = np.argsort(np.concatenate(done), kind="stable")
    order = order[np.searchsorted(np.sort(np.concatenate(done)), rows)]  # back to the order of rows
    result = {key: _stacked(values)[order] for key, values in out.items() if values}
    result["index"] = dataset.indices[rows]
    result["examples"] = examples
    return result


def _stacked(values: list) -> np.ndarray:
    """Per-chunk values ``[B]`` or ``[B, T]`` (tensors or arrays) as one array, ``[B, T]`` ones padded with
    NaN to the longest ``T``."""
    arrays = [value.cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value) for value in values]
    if arrays[0].ndim == 1:
        return np.concatenate(arrays)
    longest = max(array.shape[1] for array in arrays)
    return np.concatenate([np.pad(array.astype(np.float64), ((0, 0), (0, longest - array.shape[1])),
                                  constant_values=np.nan) for array in arrays])


def cmrxrecon_metrics(dataset, chunk, recon: torch.Tensor, rss: torch.Tensor) -> dict[str, np.ndarray]:
    """``psnr_cmrx``, ``ssim_cmrx``, ``nmse_cmrx`` ``[B]`` of the raw cines ``chunk`` of ``dataset`` by the
    CMRxRecon protocol (``metrics.cmrxrecon_scores``), NaN for a slice the protocol does not score (not
    one of its file's central two: ``metrics.cmrxrecon_slices``): the reconstruction ``[B, T, H, W]`` is
    taken back to the file's grid (its k-space cropped) and compared with the root sum of squares of the
    fully sampled coil images ``rss`` ``[B, T, H0, W0]``."""
    scores = np.full((3, len(chunk)), np.nan)
    own = tuple(rss.shape[-2:])
    image = recon.detach().to(torch.complex64).cpu()
    if tuple(image.shape[-2:]) != own:
        image = ifft2c(torch.from_numpy(crop_or_pad(fft2c(image).numpy(), own)))
    for j, row in enumerate(chunk):
        cine = dataset.cines[row]
        if cine.slice in cmrxrecon_slices(cine.volume.shape[0]):
            scores[:, j] = cmrxrecon_scores(image[j].numpy(), rss[j].cpu().numpy())
    return dict(zip(("psnr_cmrx", "ssim_cmrx", "nmse_cmrx"), scores))


@torch.no_grad()
def unet_branches(model, batch: dict, amp_dtype) -> tuple[np.ndarray, np.ndarray, bool] | None:
    """What the real- and imaginary-part UNets of the last denoiser output for the first cine of
    ``batch`` (``[T, H, W]`` each) and whether they are residual corrections; None for a network
    without them."""
    denoiser = model.denoisers[-1] if hasattr(model, "denoisers") else None
    if not hasattr(denoiser, "unet_real"):
        return None
    captured = {}
    hooks = [branch.register_forward_hook(  # outputs [B, T, H, W]; the cine UNet's [B, 1, T, H, W]
             lambda m, i, o, key=key: captured.__setitem__(key, o.float().reshape(len(o), *o.shape[-3:])))
             for key, branch in (("real", denoiser.unet_real), ("imag", denoiser.unet_imag))]
    with autocast(batch["target"].device, amp_dtype):
        run_model(model.eval(), batch)
    for hook in hooks:
        hook.remove()
    return captured["real"][0].cpu().numpy(), captured["imag"][0].cpu().numpy(), bool(denoiser.residual)


def evaluate_distributed(model, dataset, world: int, rank: int, **kwargs) -> dict:
    """``evaluate`` on this rank's share of the cines, gathered (in dataset order) on every rank."""
    result = evaluate(model, dataset, rows=np.arange(rank, len(dataset), world), **kwargs)
    if world == 1:
        return result
    parts = [None] * world
    dist.all_gather_object(parts, result)
    order = np.argsort(np.concatenate([part["index"] for part in parts]), kind="stable")
    merged = {key: _stacked([part[key] for part in parts])[order] for key in result if key != "examples"}
    merged["examples"] = {k: v for part in parts for k, v in part["examples"].items()}
    return merged


def evaluate_all(model, dataset, world: int, rank: int, rates: list[float], **kwargs) -> dict:
    """:func:`evaluate_distributed` at each acceleration of ``rates`` (the run's
    :func:`data.accelerations`), the results concatenated (cine by cine, acceleration after
    acceleration) with ``acceleration`` ``[N A]`` added; ``examples`` of the first acceleration."""
    parts = [evaluate_distributed(model, dataset, world, rank, acceleration=rate, **kwargs) for rate in rates]
    merged = parts[0] if len(parts) == 1 else {key: _stacked([part[key] for part in parts])
                                               for key in parts[0] if key != "examples"}
    merged["acceleration"] = np.repeat(np.asarray(rates, float), [len(part["index"]) for part in parts])
    merged["examples"] = parts[0]["examples"]
    return merged


SUMMARY_LINES = (("zero-filled PSNR", "psnr_zero_filled", 4), ("zero-filled SSIM", "ssim_zero_filled", 4),
                 ("PSNR", "psnr", 4), ("SSIM", "ssim", 4), ("zero-filled NMSE", "nmse_zero_filled", 6),
                 ("NMSE", "nmse", 6), ("heart-box zero-filled PSNR", "psnr_roi_zero_filled", 4),
                 ("heart-box PSNR", "psnr_roi", 4), ("heart-box zero-filled SSIM", "ssim_roi_zero_filled", 4),
                 ("heart-box SSIM", "ssim_roi", 4), ("heart-box NMSE", "nmse_roi", 6),
                 ("CMRxRecon protocol PSNR", "psnr_cmrx", 4), ("CMRxRecon protocol SSIM", "ssim_cmrx", 4),
                 ("CMRxRecon protocol NMSE", "nmse_cmrx", 6))


def test_summary(test: dict) -> tuple[dict, list[str]]:
    """The summary of :func:`evaluate_all`'s results (every score's mean and std over the cines that
    have it; with several accelerations also per acceleration, keyed ``psnr@8x``) and the report's lines
    (the CMRxRecon protocol's over the slices it scores, with their count)."""
    rates = np.unique(test["acceleration"])
    scores = [key for key in test if key not in ("index", "examples", "acceleration") and not key.startswith("frame_")]
    summary, lines = {}, []
    for rate in ([None] if len(rates) == 1 else [None, *rates]):
        chosen = np.ones(len(test["index"]), bool) if rate is None else test["acceleration"] == rate
        suffix = "" if rate is None else f"@{rate:g}x"
        found = {key: test[key][chosen][np.isfinite(test[key][chosen])] for key in scores}
        summary.update({key + suffix: dict(zip(("mean", "std"), summarize(values)))
                        for key, values in found.items() if len(values)})
        if rate is not None:
            lines.append(f"at acceleration {rate:g} ({int(chosen.sum())} cines):")
        lines += [format_summary(label, found[key], digits) + f" over {len(found[key])} cines" * key.endswith("_cmrx")
                  for label, key, digits in SUMMARY_LINES if key in found and len(found[key])]
    return summary, lines


def jsonable(values: np.ndarray) -> list:
    """An array as a list for JSON, NaN as null (a frame past a cine's last, a slice a protocol skips)."""
    return np.where(np.isnan(values), None, values).tolist() if values.dtype.kind == "f" else values.tolist()


# ----------------------------------------------------------------------------- network size and data checks


def parameter_count(config: dict) -> int:
    """The parameters of the network ``config`` describes, without building it whole: it is built on
    the meta device (nothing allocated) with every repeated part once, and with each in turn twice,
    and the rest is extrapolated (the weights grow linearly in each repeated part)."""
    def count(**parts) -> int:
        with torch.device("meta"):
            return count_parameters(build_model({**config, **parts, "checkpointing": False}))

    once = {key: min(config[key], 1) for key in REPEATED_PARTS if key in config}
    base = count(**once)
    return base + sum((config[key] - 1) * (count(**{**once, key: 2}) - base) for key in once if config[key] > 1)


def check_network_size(config: dict, copies: int) -> None:
    """Refuse, before any layer is built, a network whose ``copies`` of the weights (float32) would not
    fit in memory, or whose pooling would need images larger than memory holds (``levels``)."""
    source = " ".join(f"--{key}={config[key]}" for key in SIZE_SETTINGS if key in config)
    levels, largest = config.get("levels", 0), math.isqrt(available_memory() // 8)  # one complex64 image
    if levels >= largest.bit_length():
        raise UserError(f"--levels={levels}: the images would need at least 2^{levels} pixels a side, more than "
                        f"the {largest} a side that memory holds")
    count = parameter_count(config)
    check_memory(source, copies * 4 * count, f"the {config['arch']} network's {count:.3g} parameters "
                                             f"({copies} copies of float32)")


# ----------------------------------------------------------------------------- runs
def init_distributed(device: str) -> tuple[int, int, int]:
    """Join the torchrun process group (NCCL on GPUs, gloo on CPU): (rank, world size, local rank)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    dist.init_process_group("nccl" if cuda_requested(device) else "gloo")
    return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))


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


def stop_everywhere(stop: dict, world: int) -> bool:
    """Whether a stop was requested (on rank 0, the one torchrun signals first) for all ranks."""
    if world == 1:
        return stop["stop"]
    shared = [stop["stop"]]
    dist.broadcast_object_list(shared)
    return shared[0]


class Report:
    """``output.txt``: header, one line per epoch, then the test report; rewritten atomically.
    ``data_wait_s``: seconds the epoch waited for its fresh phantom cines (0 when they were ready)."""

    def __init__(self, path: Path, header: list[str], resumed: bool = False):
        """``resumed``: keep the header of the run's existing output.txt, then add the first line of
        ``header`` (when and where the run resumed) and every other line that differs, each marked
        ``resumed:``."""
        self.path = path
        self.header = header
        if resumed and path.is_file():
            original = path.read_text().split("\n\n", 1)[0].splitlines()
            self.header = original + [f"resumed: {line}" for i, line in enumerate(header)
                                      if i == 0 or line not in original]

    def write(self, history: list[dict], test_lines: list[str] = ()) -> None:
        lines = list(self.header) + ["", "epoch  train_loss  val_loss  val_psnr_dB  lr  seconds  cines/s  TFLOP/s  "
                                         "data_wait_s"]
        lines += [f"{r['epoch']:5d}  {r['train_loss']:.6f}  {r['val_loss']:.6f}  {r['val_psnr']:.3f}  "
                  f"{r['lr']:.3e}  {r['seconds']:.1f}  {r['cines_per_s']:.2f}  {r['tflops']:.3f}  "
                  f"{r.get('data_wait_s', 0.0):.2f}" for r in history]
        atomic_write(self.path, "\n".join(lines + ["", *test_lines]) + "\n")


if __name__ == "__main__":
    from cli import not_a_command

    not_a_command("engine.py")
