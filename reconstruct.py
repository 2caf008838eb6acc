"""Reconstruct new cines with a trained network.

    python reconstruct.py --checkpoint output/NAME/best.pt --input FILE --out recon.npz
        [--key NAME] [--mask MASK.npy|.npz] [--figures DIR] [--device auto|cpu|cuda|cuda:N]
        [--batch_size N] [--adapt STEPS [--adapt_lr 2e-5] [--adapt_crop 64] [--adapt_features F]] [--debug] [--help]
    python reconstruct.py --kspace cine_sax.mat [--mask cine_sax_mask.mat] [--acceleration R]
        --out recon.npz [--nifti recon.nii.gz] ...

Two kinds of input (the checkpoint defaults to the shipped checkpoints/admmnet.pt, the learned ADMM
chosen on phantom validation cines and PINCAT, docs/lsnet.md):

- Fully sampled cines: ``.npy``/``.npz`` ``[N, T, H, W]`` or one cine ``[T, H, W]`` (or anything
  ``python formats.py convert`` reads). They are undersampled retrospectively with the checkpoint's
  sampling (acceleration, centre lines, density; cine i gets the evaluation mask seeded
  ``data.mask_seed(seed, i)``, or the single mask of ``seed`` for ``mask_mode='fixed'``), or with
  ``--mask`` (``[T, H, W]`` for every cine, or ``[N, T, H, W]``). Each cine is divided by its peak
  magnitude, as in training, and PSNR/SSIM are computed against it.
- Measured k-space: ``--kspace FILE``, a CMRxRecon ``.mat`` (its ``*_mask.mat`` named with ``--mask``),
  an ISMRMRD/MRD ``.h5`` or a k-space ``.npz`` (``kspace`` ``[N, C, T, H, W]``, or ``[N, T, H, W]`` /
  ``[T, H, W]`` for one coil, centred as ``sampling.fft2c`` gives it, ``mask`` ``[N, T, H, W]`` or
  ``[T, H, W]``, optional ``sensitivities`` and ``pixel_size``), read by ``formats.read_kspace``
  (layouts in docs/formats.md); ``--input`` of an ``.npz`` holding ``kspace`` takes the same path.
  The mask is the file's measured pattern; entries off it are ignored. A fully sampled file with
  ``--acceleration=R`` is undersampled with the checkpoint's sampling at R (``retrospective_masks``).
  More than one coil: the network gets coil k-space ``[B, C, T, H, W]``, the coil-combined zero-filled
  image (``sampling.sense_adjoint``) and the sensitivities ``[B, C, H, W]``: the file's, else
  estimated by ESPIRiT from the data's own calibration lines; one coil is the single-coil network.
  Measured as acquired there is no reference, so each cine is divided by the peak magnitude of its
  zero-filled image instead (training divided by the fully sampled peak, so intensities seen by the
  network may be off by that ratio). With ``--acceleration`` the file's fully sampled (coil-combined,
  with the same maps) cine is the reference: each cine is divided by its peak, as in training, and
  scored against it (PSNR/SSIM).

Sizes: H and W must be multiples of ``models.size_multiple(config)`` (16 for the dual UNet,
``2^levels`` for cine_unet, 1 for DC-CNN). Fully sampled cines are zero-padded in the image, centred;
the masks are drawn for (``--mask`` must have) the padded size and the result is cropped back.
Measured k-space is zero-padded in k-space (unmeasured outer lines, mask 0): the network sees the
same field of view on a finer grid, and cropping its k-space back keeps every measured sample, so
hard data consistency still returns the measurements exactly. Sensitivities from a file are
interpolated to that finer grid (``sampling.interpolate_maps``); estimated ones are estimated on it.
Frames: every network reconstructs cines of any frame count. The dual UNet takes windows of its
``in_channels`` frames, slid cyclically over a cine of another frame count (``models.windowed``).

Adaptation (``--adapt=STEPS``, docs/adapt.md): before reconstructing, a copy of the network is
fine-tuned on each cine's own measurements in turn (``adapt.adapt``: self-supervised, no reference,
seeded by the checkpoint's seed), the cine is reconstructed from all its measurements with that copy,
and the copy is discarded. ``--adapt_features=F`` gives the copy of a learned L+S or ADMM a small CNN
inside each iteration (``models.add_corrections``, starting as the identity) that adapts with its
numbers. The result ends in hard data consistency (added after the network when
its last stage is not a hard-DC cascade; with coils, the SENSE one, and adaptation gets the
sensitivities), so it keeps every measured sample exactly. Needs whole ky
lines (a Cartesian mask). On a grid padded in k-space the padded kx columns count as measured zeros
during adaptation (the readout is fully sampled, so the data hold nothing there).

Writes ``--out`` (.npz, never overwritten), in the input's units: ``recon`` (complex64
``[N, T, H, W]``), ``magnitude`` (float32), ``zero_filled`` (complex64), ``mask`` (float32, as applied,
on the network's grid), ``scale`` (the per-cine normalisation divisor), with coils ``sensitivities``
(``[N, C, Hn, Wn]``, as used) and, with a reference,
``psnr``, ``ssim``, ``psnr_zero_filled``, ``ssim_zero_filled`` per cine (magnitudes, peak 1). With
``--adapt``, per cine: ``adapt_steps`` (steps run), ``adapt_kept_step`` (the step whose weights were
kept, 0: the checkpoint's), ``adapt_error_before`` / ``adapt_error_after`` (held-out k-space error),
``adapt_seconds``, ``adapt_columns`` (columns adapted on), ``adapt_cnn_parameters`` (those of the
CNNs ``--adapt_features`` added, 0: none) and, with a reference,
``psnr_before_adapt`` / ``ssim_before_adapt`` (the checkpoint as it is; ``psnr``/``ssim`` are after).
``--nifti FILE.nii.gz`` (or ``.nii``): the magnitude cines also as a 4-D NIfTI ``(rows, columns,
cine, frame)`` float32 (the layout ``formats.read_nifti`` reads), voxel size the file's pixel size in
mm (1 where it does not say) and 1 per cine and frame. ``--figures DIR``: per cine a PNG and a GIF.
Mixed precision follows the checkpoint's ``amp`` under
``engine.choose_autocast`` (fp16 runs in float32 on a CPU).
"""
from __future__ import annotations

import gc
import gzip
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from adapt import NoHeldOutLines
from adapt import adapt as adapt_to_scan
from checkpoint import load_trained_model
from cli import UserError, atomic_write, check_name_length, cli_errors, make_folder, non_negative, positive, \
    run_command, written_together
from data import MapCache, RawCine, mask_seed
from engine import autocast, choose_autocast, resolve_device
from formats import (DataError, KSpace, check_cines, check_mask, check_output, crop_or_pad, inspect_kspace, normalize,
                     npz_arrays, read_cines, read_kspace, save_npz)
from metrics import batch_psnr, batch_ssim, format_summary
from models import size_multiple, without_corrections
from sampling import (calibration_lines, check_sampling, data_consistency, estimate_sensitivities, fft2c, gradient_dc,
                      ifft2c, interpolate_maps, sense_adjoint, undersample, variable_density_mask)


@dataclass
class Problem:
    """What the network gets and how its output maps back to the input."""
    images: np.ndarray  # [N, T, Hn, Wn] normalised, on the network grid: measurements are U F images
    masks: np.ndarray  # [N, T, Hn, Wn] float32 0/1 (may be a broadcast view)
    scale: np.ndarray  # [N] float32: input units = normalised units * scale
    size: tuple[int, int]  # (H, W) of the input
    reference: np.ndarray | None  # [N, T, H, W] normalised fully sampled cines, or None for k-space input
    kspace_padded: bool  # grid enlarged in k-space (measured data) rather than in the image
    notes: list[str]
    coil_kspace: np.ndarray | None = None  # [N, C, T, Hn, Wn] normalised measured coil k-space (0 off the mask)
    sensitivities: np.ndarray | None = None  # [N, C, Hn, Wn] complex64 with coil_kspace; None: single coil

    def batch(self, rows: slice, device: torch.device) -> tuple:
        """``(aliased, kspace, mask, sensitivities)`` tensors of cines ``rows`` as the network takes them:
        ``[B, T, Hn, Wn]`` and single-coil k-space ``U F images``, or coil k-space ``[B, C, T, Hn, Wn]``,
        its zero-filled coil combination and the maps ``[B, C, Hn, Wn]``."""
        mask = torch.tensor(self.masks[rows], device=device)
        if self.sensitivities is None:
            return (*undersample(torch.tensor(self.images[rows], device=device), mask), mask, None)
        return (torch.tensor(self.images[rows], device=device), torch.tensor(self.coil_kspace[rows], device=device),
                mask, torch.tensor(self.sensitivities[rows], device=device))

    def to_input_grid(self, image: np.ndarray) -> np.ndarray:
        """Network-grid images ``[B, T, Hn, Wn]`` -> ``[B, T, H, W]`` (crop in the image or in k-space)."""
        if self.images.shape[2:] == self.size:
            return image
        if self.kspace_padded:
            return ifft2c(crop_or_pad(fft2c(image), self.size)).astype(np.complex64)
        return crop_or_pad(image, self.size)

    def applied_masks(self) -> np.ndarray:
        """The masks as applied: on the network grid for padded images, on the input grid for k-space."""
        return crop_or_pad(self.masks, self.size) if self.kspace_padded else self.masks


# ----------------------------------------------------------------------------- inputs
def network_size(config: dict, height: int, width: int) -> tuple[int, int]:
    """The grid the network runs on: H and W rounded up to multiples of ``size_multiple(config)``."""
    multiple = size_multiple(config)
    return -(-height // multiple) * multiple, -(-width // multiple) * multiple


def read_mask(path, shape: tuple[int, ...], source: str, hint: str = "") -> np.ndarray:
    """A 0/1 mask for cines of ``shape`` ``[N, T, H, W]``: ``[N, T, H, W]``, or ``[T, H, W]`` for all."""
    path = Path(path)
    return check_mask(read_cines(path, "mask" if "mask" in npz_arrays(path) else None)[0], shape, source, hint)


def retrospective_masks(config: dict, count: int, shape: tuple[int, int, int]) -> tuple[np.ndarray, str]:
    """The checkpoint's evaluation masks ``[N, T, H, W]`` for ``count`` cines of ``shape`` ``[T, H, W]``."""
    sampling = dict(acceleration=config["acceleration"], center_lines=config["center_lines"],
                    density=config["density"])
    try:
        check_sampling(shape[1], config["acceleration"], config["center_lines"])
    except ValueError as error:
        raise UserError(f"the checkpoint's sampling does not fit {shape[1]}-row images ({error}); "
                        f"give a mask with --mask") from None
    described = (f"acceleration {config['acceleration']:g}, {config['center_lines']} centre lines, "
                 f"{config['density']} density")
    if config["mask_mode"] == "fixed":
        mask = variable_density_mask(shape, seed=config["seed"], **sampling)
        return np.broadcast_to(mask, (count, *shape)), f"{described}, one mask set (seed {config['seed']})"
    masks = np.stack([variable_density_mask(shape, seed=mask_seed(config["seed"], i), **sampling)
                      for i in range(count)])
    return masks, f"{described}, cine i with the evaluation mask of seed mask_seed({config['seed']}, i)"


def fully_sampled_problem(path: Path, config: dict, key: str | None, mask_path) -> Problem:
    """Fully sampled cines: normalise by each cine's peak, pad the image, undersample on that grid."""
    cines, description = read_cines(path, key)
    cines = check_cines(cines, str(path))
    scale = np.abs(cines).reshape(len(cines), -1).max(1)
    reference = normalize(cines)  # [N, T, H, W] peak 1
    count, frames, height, width = reference.shape
    size = network_size(config, height, width)
    notes = [f"input {path}: {description}: {count} fully sampled cine(s), each divided by its peak magnitude"]
    if size != (height, width):
        notes.append(f"images zero-padded (centred) from {height}x{width} to {size[0]}x{size[1]} for the network "
                     f"(multiples of {size_multiple(config)}) and the results cropped back")
    images = crop_or_pad(reference, size)
    if mask_path is None:
        masks, sampling = retrospective_masks(config, count, (frames, *size))
        notes.append(f"undersampled with the checkpoint's sampling: {sampling}")
    else:
        hint = (f" (the network's grid: the cines are zero-padded from {height}x{width})"
                if size != (height, width) else "")
        masks = read_mask(mask_path, images.shape, f"--mask {mask_path}", hint)
        notes.append(f"undersampled with --mask {mask_path}")
    return Problem(images, masks, scale, (height, width), reference, False, notes)


def simulated_masks(config: dict, data: KSpace, acceleration: float | None, source) -> tuple[np.ndarray, str]:
    """The mask applied to measured k-space ``[N, T, H, W]`` and how it was made: the file's measured
    pattern, or with ``acceleration`` the checkpoint's variable-density sampling at that acceleration
    (:func:`retrospective_masks`), drawn on a fully sampled file."""
    mean = data.mask.size / max(float(data.mask.sum()), 1)
    if acceleration is None:
        full = "; every sample is measured, so there is nothing to reconstruct: --acceleration=R undersamples it"
        return data.mask, f"the measured pattern (mean acceleration {mean:.2f}){full if data.mask.all() else ''}"
    if not data.mask.all():
        raise UserError(f"--acceleration={acceleration:g} undersamples fully sampled k-space, but {source} is "
                        f"undersampled (mean acceleration {mean:.2f}); drop --acceleration")
    masks, sampling = retrospective_masks({**config, "acceleration": acceleration}, len(data.kspace),
                                          data.mask.shape[1:])
    return masks, f"simulated with the checkpoint's sampling: {sampling}"


def coil_maps(data: KSpace, measured: np.ndarray, masks: np.ndarray, padded: bool, source,
              cache: tuple | None = None) -> tuple[np.ndarray, str]:
    """Sensitivities ``[N, C, Hn, Wn]`` for coil k-space ``measured`` ``[N, C, T, Hn, Wn]``: the file's,
    resampled to the network's grid when it is finer (``padded``), else estimated by ESPIRiT from the
    data's own calibration lines (``sampling.estimate_sensitivities``); with ``cache`` (the folder and
    the file's :class:`formats.RawVolume`) each slice's maps are taken from, or kept in, that
    :class:`data.MapCache` (the cache train.py fills: the same data, lines and grid give the same maps)."""
    if data.sensitivities is not None:
        if not padded:
            return data.sensitivities, "sensitivities from the file"
        maps = np.stack([interpolate_maps(cine, measured.shape[-2:]) for cine in data.sensitivities])
        return maps.astype(np.complex64), "sensitivities from the file, interpolated to the network's finer grid"
    try:
        if cache is None:
            maps = estimate_sensitivities(measured, masks)
        else:
            folder, volume = cache
            caches = [MapCache(folder, calibration_lines(mask)) for mask in masks]
            maps = np.stack([store.maps(RawCine(volume, n, ""), measured.shape[-2:],
                                        lambda n=n: (measured[n], masks[n])) for n, store in enumerate(caches)])
            estimated = sum(store.estimated for store in caches)
            return maps, (f"sensitivities from the cache {folder}/ ({estimated} of {len(maps)} slice(s) estimated now "
                          f"by ESPIRiT from the data's calibration lines)")
    except ValueError as error:
        raise DataError(f"{source}: the file holds no sensitivities and they cannot be estimated: {error}") from None
    return maps, "sensitivities estimated (ESPIRiT, sampling.estimate_sensitivities) from the data's calibration lines"


def kspace_problem(data: KSpace, config: dict, source, acceleration: float | None = None,
                   cache: tuple | None = None) -> Problem:
    """Measured k-space (:func:`formats.read_kspace`): mask as measured (or simulated with
    ``acceleration``), k-space padded with unmeasured lines, each cine divided by the peak of its
    zero-filled (coil-combined) image. One coil is the single-coil problem (no sensitivities);
    ``cache``: see :func:`coil_maps`."""
    count, coils, _, height, width = data.kspace.shape
    mask, origin = simulated_masks(config, data, acceleration, source)
    size = network_size(config, height, width)
    notes = [f"input {source}: {data.description}", f"mask: {origin}"]
    if size != (height, width):
        notes.append(f"k-space zero-padded (centred, unmeasured) from {height}x{width} to {size[0]}x{size[1]} for "
                     f"the network (multiples of {size_multiple(config)}): the same field of view on a finer grid; "
                     f"its k-space is cropped back afterwards")
    masks = crop_or_pad(mask, size)  # [N, T, Hn, Wn]
    measured = crop_or_pad(data.kspace * mask[:, None], size)  # [N, C, T, Hn, Wn]
    maps = None
    if coils == 1:
        zero_filled = ifft2c(measured[:, 0]).astype(np.complex64)
    else:
        maps, how = coil_maps(data, measured, masks, size != (height, width), source, cache)
        notes.append(f"{coils} coils: {how}")
        zero_filled = sense_adjoint(measured, maps, masks).astype(np.complex64)
    reference = None if acceleration is None else fully_sampled_image(data, maps, size)  # [N, T, H, W]
    scale = np.abs(zero_filled if reference is None else reference).reshape(count, -1).max(1).astype(np.float32)
    if (scale == 0).any():
        raise DataError(f"{source}: cine {int(np.argmin(scale))} has no measured signal (zero-filled image all zero)")
    if reference is None:
        notes.append("no reference: each cine divided by the peak magnitude of its zero-filled image "
                     "(training used the fully sampled peak); no PSNR/SSIM")
    else:
        reference = reference / scale[:, None, None, None]
        notes.append("reference: the file's fully sampled " + ("cine" if maps is None else "coil-combined cine (the same "
                     "maps)") + ", each divided by its peak magnitude as in training; PSNR/SSIM against it")
    coil_kspace = None if maps is None else measured / scale[:, None, None, None, None]
    return Problem(zero_filled / scale[:, None, None, None], masks, scale, (height, width), reference, True, notes,
                   coil_kspace, maps)


def fully_sampled_image(data: KSpace, maps: np.ndarray | None, size: tuple[int, int]) -> np.ndarray:
    """The image of fully sampled k-space ``[N, C, T, H, W]`` on the input grid ``[N, T, H, W]``:
    ``F^-1 y`` for one coil, ``A^H y`` (no mask) with the maps ``[N, C, Hn, Wn]`` of the network's grid
    ``size``, computed there and cropped back in k-space."""
    full = crop_or_pad(data.kspace, size)  # [N, C, T, Hn, Wn]
    image = ifft2c(full[:, 0]) if maps is None else sense_adjoint(full, maps, np.ones(full.shape[-3:], np.float32))
    if tuple(size) == data.kspace.shape[-2:]:
        return image.astype(np.complex64)  # the input grid already
    return ifft2c(crop_or_pad(fft2c(image), data.kspace.shape[-2:])).astype(np.complex64)


# ----------------------------------------------------------------------------- reconstruction
@torch.no_grad()
def run(model, problem: Problem, *, batch_size: int, device: torch.device, amp_dtype) -> dict[str, np.ndarray]:
    """Undersample, reconstruct and score in batches. Returns ``recon``, ``zero_filled`` (normalised,
    complex64 ``[N, T, H, W]``) and, with a reference, the per-cine metrics."""
    count = len(problem.images)
    shape = (count, problem.images.shape[1], *problem.size)
    out = {"recon": np.empty(shape, np.complex64), "zero_filled": np.empty(shape, np.complex64)}
    metrics = {key: np.empty(count) for key in ("psnr", "ssim", "psnr_zero_filled", "ssim_zero_filled")}
    with tqdm(total=count, desc="reconstructing", unit="cine", dynamic_ncols=True) as bar:
        for start in range(0, count, batch_size):
            rows = slice(start, start + batch_size)
            aliased, kspace, mask, maps = problem.batch(rows, device)
            with autocast(device, amp_dtype):
                recon = model(aliased, kspace, mask, maps)  # [B, T, Hn, Wn] complex64
            for name, image in (("recon", recon), ("zero_filled", aliased)):
                out[name][rows] = problem.to_input_grid(image.cpu().numpy())
            if problem.reference is not None:
                target = problem.reference[rows]
                for suffix, name in (("", "recon"), ("_zero_filled", "zero_filled")):
                    metrics["psnr" + suffix][rows] = batch_psnr(out[name][rows], target).numpy()
                    metrics["ssim" + suffix][rows] = batch_ssim(out[name][rows], target).numpy()
            bar.update(len(out["recon"][rows]))
    return {**out, **(metrics if problem.reference is not None else {})}


def inference_autocast(config: dict, device: torch.device) -> tuple[torch.dtype | None, str]:
    """The checkpoint's mixed precision where the device allows it (fp16 runs in float32 on a CPU),
    and the reason (``engine.choose_autocast``)."""
    amp = "none" if config["amp"] == "fp16" and device.type != "cuda" else config["amp"]
    return choose_autocast(amp, device)


# ----------------------------------------------------------------------------- adaptation
# The per-cine arrays of an adaptation in the output and the keys of adapt.adapt's info they hold.
ADAPT_ARRAYS = {"adapt_steps": "steps", "adapt_kept_step": "kept_step", "adapt_error_before": "held_out_error_before",
                "adapt_error_after": "held_out_error_after", "adapt_seconds": "seconds", "adapt_columns": "columns",
                "adapt_cnn_parameters": "added_parameters"}


def ends_in_hard_dc(config: dict) -> bool:
    """Whether the network's last stage replaces the measured lines by the measurements."""
    return config["arch"] in ("lsnet", "admmnet") or config["cascades"] > 0 and config["dc"] == "hard"


def check_adaptation(steps: int, lr: float, crop: int, multiple: int, width: int, features: int = 0,
                     model: torch.nn.Module | None = None) -> None:
    """Refuse adaptation options the network cannot use (``multiple``: its size multiple, ``width``:
    the columns of its grid; ``model``: the network, which ``features > 0`` must give CNNs to)."""
    if steps < 0:
        raise UserError(f"--adapt={steps}: adaptation steps must be >= 0 (0 = off)")
    if not (math.isfinite(lr) and lr > 0):
        raise UserError(f"--adapt_lr={lr}: must be a finite number > 0")
    if crop < 0 or (0 < crop < width and crop % multiple):
        raise UserError(f"--adapt_crop={crop}: give 0 (all {width} columns) or a multiple of {multiple}, "
                        f"the network's size multiple")
    if features < 0:
        raise UserError(f"--adapt_features={features}: must be >= 0 (0 = no CNN added)")
    if features and model is not None and not without_corrections(model):
        raise UserError(f"--adapt_features={features}: the network has no learned L+S or ADMM without CNNs inside "
                        f"to add them to; give 0 (its own weights adapt)")


def check_whole_lines(masks: np.ndarray, source: str) -> None:
    """Adaptation splits the measured ky lines: refuse masks ``[N, T, H, W]`` that are not constant
    along each row, or that sample every line (no line is left to hold out)."""
    if not (masks == masks[..., :1]).all():
        raise UserError(f"{source}: --adapt needs a Cartesian mask of whole ky lines (each row all 0 or all 1)")
    every_line = (masks[..., 0] != 0).reshape(len(masks), -1).all(1)  # [N]
    if every_line.any():
        raise UserError(f"{source}: the mask of cine {int(np.argmax(every_line))} samples every ky line: the cine is "
                        f"fully sampled, so --adapt has no line to hold out (and nothing to reconstruct)")


def adapted_reconstruction(model, config: dict, aliased, kspace, mask, sensitivities=None, *, steps: int, lr: float,
                           crop: int, amp_dtype, features: int = 0, log=print) -> tuple[torch.Tensor, dict]:
    """Fine-tune a copy of ``model`` on one scan's measurements (``adapt.adapt``, seeded by the
    checkpoint's seed; ``features``: the channels of the CNNs it adds, 0: none), reconstruct the scan
    from all of them with it, and end in hard data
    consistency. aliased, kspace, mask: ``[B, T, H, W]``; the mask holds whole ky lines, except that
    the kx columns padded onto a grid enlarged in k-space are 0: adaptation counts them as measured
    zeros. With ``sensitivities`` ``[B, C, H, W]``, kspace is coil k-space ``[B, C, T, H, W]`` and the
    data consistency is the SENSE one. Returns the reconstruction ``[B, T, H, W]`` complex64 and adapt's info."""
    lines = mask.amax(-1, keepdim=True).expand_as(mask)  # [B, T, H, W]: the measured ky lines, every column
    try:
        with torch.enable_grad():
            adapted, info = adapt_to_scan(model, kspace, lines, steps=steps, lr=lr, crop=crop, seed=config["seed"],
                                          features=features, amp_dtype=amp_dtype, sensitivities=sensitivities,
                                          log=log)
    except NoHeldOutLines as error:
        raise UserError(f"--adapt={steps}: {error}") from None
    with torch.no_grad(), autocast(kspace.device, amp_dtype):
        recon = adapted(aliased, kspace, mask, sensitivities)  # [B, T, H, W] complex64
    if ends_in_hard_dc(config):
        return recon, info
    if sensitivities is None:
        return data_consistency(recon, kspace, mask), info
    return gradient_dc(recon, kspace, mask, 1.0, sensitivities=sensitivities), info  # as LSNet ends with coils


def run_adapted(model, config: dict, problem: Problem, *, steps: int, lr: float, crop: int, features: int,
                device: torch.device, amp_dtype) -> dict[str, np.ndarray]:
    """Adapt a copy of ``model`` to each cine in turn and reconstruct that cine with it. Returns
    ``recon`` (normalised, complex64 ``[N, T, H, W]``), adapt's info per cine (``ADAPT_ARRAYS``,
    ``[N]`` each) and, with a reference, ``psnr`` and ``ssim`` ``[N]``."""
    count = len(problem.images)
    recon = np.empty((count, problem.images.shape[1], *problem.size), np.complex64)
    scores = {key: np.empty(count) for key in ("psnr", "ssim")}
    infos = []
    for i in range(count):
        aliased, kspace, mask, maps = problem.batch(slice(i, i + 1), device)  # [1, (C,) T, Hn, Wn]
        prefix = f"cine {i}: "
        image, info = adapted_reconstruction(model, config, aliased, kspace, mask, maps, steps=steps, lr=lr, crop=crop,
                                             features=features, amp_dtype=amp_dtype,
                                             log=lambda line: print(prefix + line, flush=True))
        recon[i:i + 1] = problem.to_input_grid(image.cpu().numpy())
        infos.append(info)
        if problem.reference is not None:
            scores["psnr"][i] = float(batch_psnr(recon[i:i + 1], problem.reference[i:i + 1])[0])
            scores["ssim"][i] = float(batch_ssim(recon[i:i + 1], problem.reference[i:i + 1])[0])
    arrays = {name: np.array([info[key] for info in infos]) for name, key in ADAPT_ARRAYS.items()}
    return {"recon": recon, **arrays, **(scores if problem.reference is not None else {})}


# ----------------------------------------------------------------------------- figures
def write_figures(problem: Problem, result: dict, directory: Path) -> list[str]:
    """Per cine a comparison PNG and a GIF (with a reference) or a PNG without one; the paths written."""
    import figures

    make_folder(directory)
    written = []
    masks = problem.applied_masks()
    for i in range(len(result["recon"])):
        stem = directory / f"cine_{i:03d}"
        reference = None if problem.reference is None else problem.reference[i]
        sampling = figures.mask_label(masks[i])  # measured from the mask as applied
        images = {"zero-filled": result["zero_filled"][i], "reconstruction": result["recon"][i]}
        figures.plot_reconstructions(images, f"{stem}.png", reference, sampling=sampling,
                                     title=f"Cine {i}" + (" from measured k-space (no reference)" if reference is None
                                                          else ""))
        figures.save_gif(reference, result["zero_filled"][i], result["recon"][i], f"{stem}.gif",
                         caption=f"cine {i}, {sampling}")
        written += [f"{stem}.png", f"{stem}.gif"]
    return written


def check_figures(folder) -> Path | None:
    """The ``--figures`` folder (None: no figures), checked before anything is computed or written: not
    a file, and without the figures of an earlier reconstruction, which are never overwritten."""
    if folder is None:
        return None
    path = Path(folder)
    check_name_length(path, temporary=False)
    if path.exists() and not path.is_dir():
        raise UserError(f"--figures={folder}: a file, not a folder: choose a folder for the figures")
    earlier = sorted(path.glob("cine_*.png")) + sorted(path.glob("cine_*.gif")) if path.is_dir() else []
    if earlier:
        raise UserError(f"--figures={folder}: already holds the figures of an earlier reconstruction "
                        f"({earlier[0].name}); choose another folder")
    return path


# ----------------------------------------------------------------------------- command line
def summary_lines(result: dict) -> list[str]:
    """The study's mean/std lines (PSNR and SSIM, before adaptation too when it ran, and of the
    zero-filled input), then per cine (up to 20 cines) the scores and the adaptation's record."""
    lines = []
    count = len(result["recon"])
    adapted = "adapt_steps" in result
    if "psnr" in result:
        compared = [("", ""), *([("_before_adapt", "before adaptation ")] if adapted else []),
                    ("_zero_filled", "zero-filled ")]
        lines += [format_summary(f"{label}{metric.upper()}", result[metric + suffix])
                  for suffix, label in compared for metric in ("psnr", "ssim")]
        for i in range(count if count <= 20 else 0):
            parts = []
            for metric, digits, unit in (("psnr", 2, " dB"), ("ssim", 4, "")):
                others = ", ".join(f"{label}{result[metric + suffix][i]:.{digits}f}" for suffix, label in compared[1:])
                parts.append(f"{metric.upper()} {result[metric][i]:.{digits}f}{unit} ({others})")
            lines.append(f"cine {i}: " + ", ".join(parts))
    if adapted:
        lines.append(format_summary("adaptation seconds", result["adapt_seconds"], 1)
                     + f", total = {result['adapt_seconds'].sum():.1f}")
        lines.append(format_summary("held-out k-space error before adaptation", result["adapt_error_before"])
                     + "; " + format_summary("after", result["adapt_error_after"]))
        if count <= 20:
            lines += [f"cine {i}: adaptation ran {result['adapt_steps'][i]} steps on {result['adapt_columns'][i]} "
                      f"columns and kept step {result['adapt_kept_step'][i]}, held-out k-space error "
                      f"{result['adapt_error_before'][i]:.4f} -> {result['adapt_error_after'][i]:.4f}, "
                      f"{result['adapt_seconds'][i]:.1f} s" for i in range(count)]
    return lines


SHIPPED_CHECKPOINT = str(Path(__file__).resolve().with_name("checkpoints") / "admmnet.pt")  # docs/lsnet.md


def reconstruct(*,
                checkpoint: str = SHIPPED_CHECKPOINT,  # output/NAME/best.pt; default: the shipped learned ADMM
                input: str | None = None,  # cines (.npy/.npz [N,T,H,W]|[T,H,W], any formats.py input) or kspace .npz
                kspace: str | None = None,  # measured k-space instead: CMRxRecon .mat, ISMRMRD/MRD .h5 or k-space .npz
                out: str,  # the .npz to write (never overwritten)
                key: str | None = None,  # array name in the input .npz/.mat; None: 'dataset' or the only one
                mask: str | None = None,  # 0/1 .npy/.npz [T,H,W]|[N,T,H,W] or CMRxRecon *_mask.mat; None: see docs
                acceleration: float | None = None,  # undersample fully sampled --kspace data so; None: as measured
                nifti: str | None = None,  # also write the magnitude cines to this .nii/.nii.gz; None: no NIfTI
                cache_dir: str | None = None,  # measured k-space: keep/reuse coil maps in this folder (train.py's --cache_dir); None: estimate
                figures: str | None = None,  # a folder for a PNG and a GIF per cine; None: no figures
                device: str = "auto",  # 'auto' (CUDA if present) | 'cpu' | 'cuda' | 'cuda:N'
                batch_size: int = 8,  # cines per batch (>= 1)
                # scan-specific self-supervised adaptation (docs/adapt.md)
                adapt: int = 0,  # at most this many steps fine-tuning on each cine's own measurements first; 0 = off
                adapt_lr: float = 2e-5,  # Adam learning rate of the adaptation (> 0)
                adapt_crop: int = 64,  # columns adapted on, a multiple of the network's size multiple; 0 = all
                adapt_features: int = 0) -> None:  # channels of a CNN added in each iteration of a learned L+S/ADMM (>= 0); 0 = none
    """Reconstruct cines with a trained cinerecon checkpoint: fully sampled cines are undersampled
    with the checkpoint's sampling (or --mask) and scored; measured k-space (--kspace: a CMRxRecon
    .mat, an MRD .h5 or a k-space .npz, or an .npz with 'kspace' and 'mask') is reconstructed as
    measured, without a reference (or, fully sampled, undersampled with --acceleration and scored
    against its fully sampled cine). With --adapt, a copy of the network is first fine-tuned on each
    cine's own measurements (self-supervised, no reference needed). Writes --out in the input's units."""
    if (input is None) == (kspace is None):
        raise UserError("give one input: --input=CINES (or a k-space .npz) or --kspace=RAW_KSPACE")
    if acceleration is not None and not (math.isfinite(acceleration) and acceleration >= 1):
        raise UserError(f"--acceleration={acceleration}: must be a finite number >= 1")
    if acceleration is not None and kspace is None:
        raise UserError("--acceleration simulates undersampling of --kspace data; cines given with --input are "
                        "undersampled with the checkpoint's sampling")
    out, figures_dir = check_output(out), check_figures(figures)
    nifti_path = None if nifti is None else check_output(nifti, (".nii", ".nii.gz"))
    if figures_dir is not None and figures_dir.resolve() in (out.resolve(), nifti_path and nifti_path.resolve()):
        raise UserError(f"--figures={figures}: the folder of the figures cannot be --out or --nifti")
    if cache_dir is not None and any(part.is_file() for part in (Path(cache_dir), *Path(cache_dir).parents)):
        raise UserError(f"--cache_dir={cache_dir}: a file is in the way of this folder")
    torch_device = resolve_device(device)
    model, config = load_trained_model(checkpoint, torch_device)
    amp_dtype, amp_reason = inference_autocast(config, torch_device)
    path = Path(input or kspace)
    data = None
    if kspace is not None or "kspace" in npz_arrays(path):
        data = read_kspace(path, mask, key)
        cache = None if cache_dir is None else (Path(cache_dir), inspect_kspace(path, key))
        problem = kspace_problem(data, config, path, acceleration, cache)
    else:
        problem = fully_sampled_problem(path, config, key, mask)
    print(f"checkpoint {checkpoint}: {network_summary(config)}; device {torch_device}, autocast {amp_dtype or 'off'} "
          f"({amp_reason})")
    for note in problem.notes:
        print(note)
    scale, masks = problem.scale[:, None, None, None], problem.applied_masks()
    if adapt:
        check_adaptation(adapt, adapt_lr, adapt_crop, size_multiple(config), problem.images.shape[-1], adapt_features,
                         model)
        check_whole_lines(masks, f"the mask of {mask or path}")
    result = run(model, problem, batch_size=batch_size, device=torch_device, amp_dtype=amp_dtype)
    if adapt:
        print(f"adapting a copy of the network to each cine in turn: at most {adapt} steps, learning rate "
              f"{adapt_lr:g}, {adapt_crop or 'all'} columns (a learned L+S or ADMM: all), seed {config['seed']} "
              "(the checkpoint's)"
              + (f", a CNN of {adapt_features} channels added inside each iteration of a learned L+S or ADMM"
                 if adapt_features else "")
              + ("" if ends_in_hard_dc(config) else "; hard data consistency added after the network"))
        adapted = run_adapted(model, config, problem, steps=adapt, lr=adapt_lr, crop=adapt_crop,
                              features=adapt_features, device=torch_device, amp_dtype=amp_dtype)
        before = {f"{name}_before_adapt": result[name] for name in ("psnr", "ssim") if name in result}
        result = {**result, **before, **adapted}
    metrics = {name: result[name] for name in ("psnr", "ssim", "psnr_zero_filled", "ssim_zero_filled",
                                               "psnr_before_adapt", "ssim_before_adapt", *ADAPT_ARRAYS)
               if name in result}
    coils = {} if problem.sensitivities is None else {"sensitivities": problem.sensitivities}
    pixel_size = None if data is None else data.pixel_size
    volume = None if nifti_path is None else nifti_bytes(nifti_path, np.abs(result["recon"]) * scale, pixel_size)
    with written_together():  # every output or none: a failed write (a full disk) leaves nothing
        save_npz(out, recon=result["recon"] * scale, magnitude=np.abs(result["recon"]) * scale,
                 zero_filled=result["zero_filled"] * scale, mask=masks, scale=problem.scale, **coils, **metrics)
        if nifti_path:
            atomic_write(nifti_path, volume, new=True)
        written = write_figures(problem, result, figures_dir) if figures_dir else []
    for line in summary_lines(result):
        print(line)
    print(f"wrote {out}: recon {list(result['recon'].shape)} complex64 in the input's units, magnitude, "
          f"zero_filled, mask {list(masks.shape)}" + (", per-cine PSNR/SSIM" if "psnr" in metrics else "")
          + (", the adaptation per cine" if adapt else "") + (", sensitivities" if coils else ""))
    if nifti_path:
        pixels = "unknown (1 mm written)" if pixel_size is None else f"{pixel_size[0]:g} x {pixel_size[1]:g} mm"
        print(f"wrote {nifti_path}: magnitude (rows, columns, cine, frame), pixels {pixels}")
    if figures_dir:
        print(f"figures: {len(written)} files in {figures}/")


def nifti_bytes(path: Path, magnitude: np.ndarray, pixel_size: np.ndarray | None) -> bytes:
    """The file ``path`` (``.nii``, or gzipped ``.nii.gz``) of the magnitude cines ``[N, T, H, W]`` as a
    4-D NIfTI ``(rows, columns, cine, frame)`` float32, the layout that formats.read_nifti reads back;
    voxel size (row, column) spacing in mm (1 where unknown), 1 per cine and per frame. Built before
    anything is written, so that a NIfTI that cannot be made leaves no output."""
    import nibabel  # requirements-extras.txt

    spacing = (1.0, 1.0) if pixel_size is None else tuple(float(v) for v in pixel_size)
    image = nibabel.Nifti1Image(magnitude.transpose(2, 3, 0, 1).astype(np.float32), np.diag([*spacing, 1.0, 1.0]))
    try:
        image.header.set_zooms((*spacing, 1.0, 1.0))
    except nibabel.spatialimages.HeaderDataError as error:
        raise UserError(f"--nifti={path}: cannot be made ({error})") from None
    image.header.set_xyzt_units("mm", "unknown")
    raw = image.to_bytes()
    return gzip.compress(raw) if path.name.lower().endswith(".gz") else raw


def network_summary(config: dict) -> str:
    """What a checkpoint holds, in a few words."""
    if config["arch"] == "lsnet":
        return f"learned L+S (lsnet), {config['iterations']} iterations, any frame count and size"
    if config["arch"] == "admmnet":
        return f"learned ADMM (admmnet), {config['iterations']} iterations, any frame count and size"
    prior = {"lsnet": ", started by a learned L+S", "admmnet": ", started by a learned ADMM"}.get(config.get("prior"), "")
    window = f", windows of {config['in_channels']} frames" if config["arch"] == "dual_unet" else ""
    return f"{config['arch']} network, {config['cascades']} cascade(s){prior}{window}, any frame count"


def main(argv: list[str] | None = None) -> None:
    """``python reconstruct.py --checkpoint=... --input=... --out=... [--key=value ...]``."""
    run_command(reconstruct, sys.argv[1:] if argv is None else argv, prog="python reconstruct.py",
                parsers={"batch_size": positive, "adapt_features": non_negative})


if __name__ == "__main__":
    with cli_errors():  # bad input: one line on stderr, exit status 2 (--debug: traceback)
        main()
    gc.freeze()  # done: the exit skips a last garbage collection over torch's objects (0.5 s, docs/speed.md)
