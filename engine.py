"""The shared runtime of training, evaluation, comparison, reconstruction and the benchmarks.

- device and precision: :func:`resolve_device`, :func:`choose_autocast` (the one mixed-precision
  rule, with its reason), :func:`autocast`, :func:`describe_device`;
- data: :func:`load_images` (a data file or the embedded phantom), :func:`make_datasets`,
  :class:`FreshPhantom` (new phantom training cines every epoch), :func:`training_sizes` and
  :func:`size_batches` (training over several image sizes);
- training pieces: :func:`reconstruction_loss` (the one loss), :func:`lr_factor`,
  :func:`training_flops`, :func:`train_step`, :func:`seed_epoch`;
- evaluation: :func:`evaluate`, :func:`evaluate_distributed`;
- what a run is trained on: :func:`data_fingerprint`, :func:`check_data_shape`, :func:`phantom_version`;
  the checkpoints that record it are checkpoint.py's;
- runs: :func:`init_distributed`, :func:`create_run_dirs`, :func:`stop_on_signal`, :class:`Report`.

Cines are ``[B, T, H, W]`` tensors (complex64 images and k-space, float32 masks) as in sampling.py.
"""
from __future__ import annotations

import ast
import hashlib
import math
import os
import re
import signal
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from cli import UserError, atomic_write, make_run_dirs
from data import (SPLIT_NAMES, CineDataset, DataError, MapCache, SizeGroups, StreamedCines, accelerations, array_header,
                  available_memory, check_disjoint_splits, check_memory, cine_file, file_digest, is_raw_kspace,
                  load_boxes, load_cine, load_subjects, scan_raw, split_by_subject, split_indices)
from metrics import (SSIM_RADIUS, batch_nmse, batch_psnr, batch_ssim, box_pixels, cmrxrecon_scores, cmrxrecon_slices,
                     format_summary, summarize)
from models import build_model, count_parameters, size_multiple
from sampling import (REFERENCE_HEIGHT, center_rows, check_sampling, coil_combine, estimate_sensitivities, fft2c,
                      ifft2c, scaled_center_lines)

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 CPU flags of hardware bf16 arithmetic
CPUINFO = Path("/proc/cpuinfo")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}
PHANTOM_SOURCE = Path(__file__).resolve().with_name("phantom.py")
SIZE_SETTINGS = ("init_features", "levels", "cascades", "resnet_features", "resnet_blocks")  # the network's size
REPEATED_PARTS = ("cascades", "resnet_blocks", "iterations")  # settings that repeat a part: the weights grow linearly
MIN_CALIBRATION_LINES = 4  # the fewest fully sampled centre lines sampling.estimate_sensitivities takes

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
def load_images(config: dict, notes: list[str], scale_lines: bool) -> tuple[np.ndarray, str, dict]:
    """The cines ``[N, T, H, W]`` (peak magnitude 1 each), a one-line description, and what is known
    about them: ``boxes`` ``[N, 4]`` (heart boxes row0, row1, col0, col1: the phantom's geometry, or
    a data file's ``heart_box`` array), ``splits`` (train/val/test indices when the data fix
    them: three files given as ``--data=TRAIN,VAL,TEST``, or an .npz whose ``subject`` array names
    each cine's patient, split by subject) and ``coils`` (the phantom's coil k-space and estimated
    maps with ``coils`` > 1, see :func:`render_coil_phantom`; else None). With ``scale_lines`` the
    centre lines are scaled to the image height (recorded in config and notes). The sampling is
    checked against the image height here, before anything is rendered or written."""
    if config["data"] is None:
        check_lines(config, config["image_size"], notes, scale_lines)
        images, boxes, coils = phantom_data(config, config["num_samples"], config["seed"])
        meta = {"boxes": boxes, "splits": None, "coils": coils}
        kind = "complex" if config["phantom_phase"] else "magnitude"
        source = f"embedded phantom (seed {config['seed']}, {kind})"
        if coils is not None:
            source = (f"embedded phantom (seed {config['seed']}, {config['coils']} coils, maps estimated by ESPIRiT "
                      f"from {config['center_lines']} centre lines)")
    elif raw_entries(config["data"]):
        cines = scan_raw(raw_entries(config["data"]), notes)
        check_raw_sampling(config, cines)
        splits = raw_splits(cines, config["seed"], notes)
        shapes = sorted({"x".join(map(str, cine.shape)) for cine in cines})
        return cines, (f"raw k-space {config['data']}: {len(cines)} cines of {len(shapes)} shape(s) [C, T, H, W] "
                       f"{', '.join(shapes[:6])}{', ...' if len(shapes) > 6 else ''}"), \
            {"raw": True, "splits": splits, "boxes": None, "coils": None}
    else:
        images, meta, source = load_data_files(config["data"], config["seed"], notes)
        check_disjoint_splits(images, meta["splits"] or split_indices(len(images), seed=config["seed"]), source)
        images, meta["boxes"] = pad_to_multiple(images, size_multiple(config), notes, source, meta["boxes"])
        check_lines(config, images.shape[2], notes, scale_lines)
    kind = "complex" if np.iscomplexobj(images) else "magnitude"
    return images, f"{source}: {images.shape[0]} {kind} cines of {'x'.join(map(str, images.shape[1:]))}", meta


def check_lines(config: dict, height: int, notes: list[str], scale_lines: bool) -> None:
    """With ``scale_lines`` scale the centre lines to images of ``height`` rows (recorded in config
    and notes); then refuse a sampling impossible at that height: too many lines, a uniform mask's
    acceleration that is not an integer, too few centre lines to estimate coil maps from."""
    if scale_lines and height != REFERENCE_HEIGHT:
        lines = scaled_center_lines(height, config["center_lines"])
        notes.append(f"center_lines {config['center_lines']} -> {lines}: {height} rows keep the share of "
                     f"k-space that {config['center_lines']} central lines cover at {REFERENCE_HEIGHT} rows")
        config["center_lines"] = lines
    try:
        check_sampling(height, config["acceleration"], config["center_lines"])
    except ValueError as error:
        raise UserError(f"sampling of {height}-row images: {error}") from None
    if config.get("mask_type") == "uniform" and config["acceleration"] != round(config["acceleration"]):
        raise UserError(f"--acceleration={config['acceleration']:g}: --mask_type=uniform samples every R-th line, "
                        f"R an integer")
    if config.get("coils", 1) > 1 and config["center_lines"] < MIN_CALIBRATION_LINES:
        raise UserError(f"--coils={config['coils']}: the coil maps are estimated (ESPIRiT) from the fully sampled "
                        f"centre lines, at least {MIN_CALIBRATION_LINES}; center_lines is {config['center_lines']} "
                        f"at {height} rows")


def load_data_files(data: str, seed: int, notes: list[str]) -> tuple[np.ndarray, dict, str]:
    """One data file (split 4:1:2 later, or by subject here when it names them) or three
    comma-separated files TRAIN,VAL,TEST: ``(cines [N, T, H, W], {"splits": indices or None,
    "boxes": heart boxes [N, 4] or None}, description)``."""
    paths = [part.strip() for part in str(data).split(",")]
    if len(paths) == 1:
        images = load_cine(paths[0])
        return images, {"splits": subject_splits(paths[0], len(images), seed, notes),
                        "boxes": load_boxes(paths[0], len(images), images.shape[2:])}, paths[0]
    if len(paths) != 3 or not all(paths):
        raise UserError(f"--data={data}: give one file, or three comma-separated files TRAIN,VAL,TEST")
    parts = [load_cine(path) for path in paths]
    shapes = {path: part.shape[1:] for path, part in zip(paths, parts)}
    if len(set(shapes.values())) > 1:
        raise UserError(f"--data: the train, validation and test files differ in frames or size ({shapes})")
    bounds = np.cumsum([0] + [len(part) for part in parts])
    splits = tuple(np.arange(low, high) for low, high in zip(bounds[:-1], bounds[1:]))
    notes.append(f"explicit split: train {paths[0]}, validation {paths[1]}, test {paths[2]}")
    boxes = [load_boxes(path, len(part), part.shape[2:]) for path, part in zip(paths, parts)]
    if any(box is None for box in boxes) and not all(box is None for box in boxes):
        notes.append("heart boxes ('heart_box') are missing in some of the three files: no heart-box metrics")
    boxes = None if any(box is None for box in boxes) else np.concatenate(boxes)
    return np.concatenate(parts), {"splits": splits, "boxes": boxes}, " + ".join(paths)


def raw_entries(data) -> list[str] | None:
    """The entries of ``--data`` when they name raw k-space (folders, ``.mat``, MRD ``.h5``, ``.npz`` of
    ``kspace``: :func:`data.is_raw_kspace`), else None (image cines); a mix of both is refused."""
    if data is None:
        return None
    entries = [part.strip() for part in str(data).split(",") if part.strip()]
    raw = [is_raw_kspace(entry) for entry in entries]
    if any(raw) and not all(raw):
        image = entries[raw.index(False)]
        raise UserError(f"--data={data}: {image} holds image cines but the others raw k-space; give one kind")
    return entries if raw and all(raw) else None


def raw_splits(cines: list, seed: int, notes: list[str]) -> tuple:
    """Train/val/test cine numbers of raw cines, split by subject (:func:`data.split_by_subject`), or by
    cine (with a note) when they come from fewer than 3 subjects."""
    subjects = [cine.subject for cine in cines]
    if len(set(subjects)) >= 3:
        splits = split_by_subject(subjects, seed=seed)
        notes.append(f"split by subject ({len(set(subjects))} subjects, seed {seed}): "
                     + "; ".join(f"{name} {len({subjects[i] for i in part})} subject(s), {len(part)} cine(s)"
                                 for name, part in zip(SPLIT_NAMES, splits)))
        return splits
    notes.append(f"only {len(set(subjects))} subject(s): split by cine, so slices of one subject can be in two "
                 f"splits")
    return split_indices(len(cines), seed=seed)


def check_raw_sampling(config: dict, cines: list) -> None:
    """Refuse a sampling impossible for some raw cine's rows (too many centre lines, a uniform mask's
    acceleration that is not an integer, fewer centre lines than the coil maps need)."""
    for height in sorted({cine.shape[2] for cine in cines}):
        for acceleration in accelerations(config):
            check_lines({**config, "acceleration": acceleration}, height, [], False)
    if any(cine.shape[0] > 1 for cine in cines) and config["center_lines"] < MIN_CALIBRATION_LINES:
        raise UserError(f"--center_lines={config['center_lines']}: the coil maps of the raw data are estimated "
                        f"(ESPIRiT) from the fully sampled centre lines, at least {MIN_CALIBRATION_LINES}")


def subject_splits(path: str, count: int, seed: int, notes: list[str]) -> tuple | None:
    """Train/val/test indices by the file's ``subject`` array (no subject in two splits), or None
    (split by cine) when it names fewer than 3 subjects or none."""
    subjects = load_subjects(path)
    if subjects is None or len(np.unique(subjects)) < 3:
        if subjects is not None:
            notes.append(f"{path}: only {len(np.unique(subjects))} subject(s): split by cine, so slices of "
                         f"one subject can be in two splits")
        return None
    if len(subjects) != count:
        raise UserError(f"{path}: 'subject' names {len(subjects)} cines but 'dataset' holds {count}")
    notes.append(f"{path}: split by subject ({len(np.unique(subjects))} subjects): no subject is in two splits")
    return split_by_subject(subjects, seed=seed)


def render_phantom(config: dict, count: int, seed: int, **options) -> tuple[np.ndarray, np.ndarray]:
    """``count`` phantom cines ``[N, T, H, W]`` of the run's size and kind, and their heart boxes
    ``[N, 4]``, each grown to at least the SSIM window (11 x 11 pixels) where the image allows;
    ``options``: of ``phantom.make_phantom_dataset`` (``snr=None``: noise-free)."""
    from phantom import make_phantom_dataset

    images, boxes = make_phantom_dataset(count, frames=config["in_channels"], size=config["image_size"], seed=seed,
                                         complex_phase=config["phantom_phase"], return_boxes=True, **options)
    return images, grow_boxes(boxes, 2 * SSIM_RADIUS + 1, images.shape[2:])


def phantom_data(config: dict, count: int, seed: int) -> tuple[np.ndarray, np.ndarray, dict | None]:
    """``count`` phantom cines of the run: :func:`render_phantom` plus None (no coils) with
    ``coils = 1``, else :func:`render_coil_phantom`."""
    if config.get("coils", 1) == 1:
        return *render_phantom(config, count, seed), None
    return render_coil_phantom(config, count, seed)


def render_coil_phantom(config: dict, count: int, seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """``count`` complex phantom cines seen through ``config["coils"]`` receive coils
    (``phantom.make_coil_dataset``, with its correlated coil noise) as a user of real data has them:
    fully sampled coil k-space ``y`` and coil maps ``S`` estimated by ESPIRiT
    (``sampling.estimate_sensitivities``) from the cine's own ``center_lines`` central k-space rows.
    Every mask samples those rows in every frame (training masks are redrawn every epoch, never
    those rows), so the maps are estimated once per cine, from the fully sampled centre, and are
    the maps of every mask drawn. The images are ``S^H F^-1 y``: the magnitude of the phantom's
    ``reference`` (its coils combined with the true maps) up to the maps' estimation error, in the
    phase of the estimated maps, the one the SENSE model ``A = U F S`` reaches (ESPIRiT removes
    coil 0's phase). Each cine and its coil k-space are scaled so that the image has peak 1.

    Returns the images ``[N, T, H, W]`` complex64, heart boxes ``[N, 4]`` (as :func:`render_phantom`)
    and ``{"kspace": [N, C, T, H, W], "sensitivities": [N, C, H, W]}`` complex64."""
    from phantom import make_coil_dataset

    size = config["image_size"]
    data = make_coil_dataset(count, frames=config["in_channels"], size=size, seed=seed, coils=config["coils"])
    centre = np.zeros((1, size, 1), np.float32)  # [T, H, W] broadcast: the rows every mask samples
    centre[:, center_rows(size, config["center_lines"])] = 1
    maps = estimate_sensitivities(data["kspace"], centre)  # [N, C, H, W]
    images = np.stack([coil_combine(ifft2c(torch.from_numpy(kspace)), torch.from_numpy(cine_maps)).numpy()
                       for kspace, cine_maps in zip(data["kspace"], maps)])  # [N, T, H, W]
    scale = (1 / np.abs(images).reshape(count, -1).max(1)).astype(np.float32)  # [N]
    coils = {"kspace": data["kspace"] * scale[:, None, None, None, None], "sensitivities": maps}
    return images * scale[:, None, None, None], grow_boxes(data["heart_box"], 2 * SSIM_RADIUS + 1, (size, size)), coils


def grow_boxes(boxes: np.ndarray, minimum: int, shape: tuple[int, int]) -> np.ndarray:
    """Boxes ``[N, 4]`` (row0, row1, col0, col1) grown symmetrically to at least ``minimum`` pixels
    per side, kept inside an image of ``shape`` (H, W)."""
    boxes = np.array(boxes)
    for axis, limit in enumerate(shape):
        low, high = boxes[:, 2 * axis], boxes[:, 2 * axis + 1]
        grow = np.maximum(min(minimum, limit) - (high - low), 0)
        low = np.clip(low - grow // 2, 0, None)
        high = np.maximum(high + grow - grow // 2, low + min(minimum, limit))
        shift = np.maximum(high - limit, 0)
        boxes[:, 2 * axis], boxes[:, 2 * axis + 1] = low - shift, high - shift
    return boxes


def epoch_seed(seed: int, epoch: int, size: int | None = None) -> int:
    """Seed of the fresh phantom training cines of ``epoch`` (disjoint from the fixed cines' seed);
    ``size``: of the cines of that size when the run trains on several (``train_sizes``)."""
    return int(np.random.SeedSequence([seed, 4, epoch] + ([] if size is None else [size])).generate_state(1)[0])


def training_sizes(config: dict) -> list[int]:
    """Image sizes (H = W) of the training cines: ``train_sizes`` ('64,96,128'), or ``image_size``."""
    text = config.get("train_sizes")
    if text is None or str(text).strip() == "":
        return [config["image_size"]]
    try:
        return sorted({int(part) for part in str(text).split(",")})
    except ValueError:
        raise UserError(f"--train_sizes={text}: expected comma-separated image sizes, e.g. 64,96,128") from None


def size_counts(count: int, image_size: int, sizes: list[int]) -> list[int]:
    """Training cines per size: ``count`` cines' worth of ``image_size`` pixels (so about the same
    time per epoch), shared equally by the sizes (64 px: 19, 96 px: 8 and 128 px: 5 for 57 at 64)."""
    return [max(1, round(count * (image_size / size) ** 2 / len(sizes))) for size in sizes]


def size_batches(counts: list[int], batch: int, seed: int, epoch: int, rank: int = 0, world: int = 1
                 ) -> list[torch.Tensor]:
    """This process's training batches of ``epoch``: rows numbered across size groups of
    ``counts`` cines (:class:`data.SizeGroups`), every batch from one group. Each group is shuffled
    and sharded as ``DistributedSampler`` does; with several groups the batches are then shuffled
    (the same order on every process). One group gives exactly ``DistributedSampler``'s batches."""
    batches, offset = [], 0
    for group, count in enumerate(counts):
        sampler = DistributedSampler(range(count), num_replicas=world, rank=rank, shuffle=True, seed=seed + group)
        sampler.set_epoch(epoch)
        batches += list((torch.tensor(list(sampler)) + offset).split(batch))
        offset += count
    if len(counts) > 1:
        shuffle = torch.Generator().manual_seed(epoch_seed(seed, epoch))
        batches = [batches[i] for i in torch.randperm(len(batches), generator=shuffle).tolist()]
    return batches


def epoch_batches(train_set, batch: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[torch.Tensor]:
    """This process's training batches of ``epoch``: :func:`size_batches`, or under torchrun for raw cines
    (``train_set.subjects``) :func:`subject_batches`, so that each process reads whole subjects."""
    subjects = getattr(train_set, "subjects", None)
    if world == 1 or subjects is None:
        return size_batches(train_set.counts, batch, seed, epoch, rank, world)
    return subject_batches(subjects, train_set.counts, batch, seed, epoch, rank, world)


def subject_batches(subjects, counts: list[int], batch: int, seed: int, epoch: int, rank: int, world: int
                    ) -> list[torch.Tensor]:
    """This process's training batches of ``epoch`` when the cines (rows numbered across size groups of
    ``counts``, as in :func:`size_batches`) are dealt to the ``world`` processes by subject
    (``subjects`` ``[N]``): in each group the subjects are shuffled (the same order on every process) and
    dealt in turn, every process's cines shuffled and repeated up to the most any process got, so
    that all processes run the same number of batches; the batches are then shuffled as
    :func:`size_batches` shuffles them."""
    subjects = np.asarray(subjects)
    batches, offset = [], 0
    for group, count in enumerate(counts):
        rows = np.arange(offset, offset + count)
        offset += count
        names = np.unique(subjects[rows])
        order = np.random.default_rng([seed, 5, epoch, group]).permutation(len(names))
        dealt = [np.flatnonzero(np.isin(subjects[rows], names[order[r::world]])) for r in range(world)]
        mine = rows[dealt[rank]] if len(dealt[rank]) else rows  # more processes than subjects: any cine
        mine = np.random.default_rng([seed, 6, epoch, group, rank]).permutation(mine)
        batches += list(torch.from_numpy(np.resize(mine, max(map(len, dealt)))).split(batch))
    if len(counts) > 1:
        shuffle = torch.Generator().manual_seed(epoch_seed(seed, epoch))
        batches = [batches[i] for i in torch.randperm(len(batches), generator=shuffle).tolist()]
    return batches


class FreshPhantom:
    """New phantom training cines every epoch, rendered one epoch ahead in a background thread.

    ``cines(epoch)`` returns the cines of ``epoch`` on ``device``, a ``[N_g, T, S_g, S_g]`` tensor
    for each training size ``S_g`` (:func:`training_sizes`) with ``counts[g]`` cines (the same for
    the same seed and epoch, so a resumed run trains on the same data), and starts rendering the
    next epoch's. ``waited`` is the time the last call spent waiting for its cines (0 when the
    render finished during the previous epoch), ``rendered`` the time that render took, ``boxes``
    the heart boxes ``[N_g, 4]`` of the cines last returned and ``coils`` their coil k-space and
    estimated maps (on ``device``; None each without coils, see :func:`phantom_data`).
    """

    def __init__(self, config: dict, counts: list[int], device: torch.device):
        self.config, self.counts, self.device = config, counts, device
        self.sizes = training_sizes(config)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="phantom")
        self.pending: dict[int, Future] = {}
        self.waited = self.rendered = 0.0
        self.boxes: list[np.ndarray] = []
        self.coils: list[dict | None] = []

    def _render(self, epoch: int) -> tuple[list[tuple[np.ndarray, np.ndarray, dict | None]], float]:
        started = time.perf_counter()
        seed = self.config["seed"]
        if self.sizes == [self.config["image_size"]]:
            groups = [phantom_data(self.config, self.counts[0], epoch_seed(seed, epoch))]
        else:
            groups = [phantom_data({**self.config, "image_size": size}, count, epoch_seed(seed, epoch, size))
                      for size, count in zip(self.sizes, self.counts)]
        return groups, time.perf_counter() - started

    def cines(self, epoch: int) -> list[torch.Tensor]:
        started = time.perf_counter()
        future = self.pending.pop(epoch, None) or self.pool.submit(self._render, epoch)
        groups, self.rendered = future.result()
        self.waited = time.perf_counter() - started
        if epoch + 1 < self.config["num_epochs"]:
            self.pending[epoch + 1] = self.pool.submit(self._render, epoch + 1)
        self.boxes = [boxes for _, boxes, _ in groups]
        self.coils = [coils and {key: torch.from_numpy(value).to(self.device) for key, value in coils.items()}
                      for _, _, coils in groups]
        return [torch.from_numpy(images).to(self.device) for images, _, _ in groups]

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def pad_to_multiple(images: np.ndarray, multiple: int, notes: list[str], source: str,
                    boxes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Zero-pad H and W of ``[N, T, H, W]`` symmetrically to multiples of ``multiple`` (the UNet's
    pooling factor); heart ``boxes`` ``[N, 4]`` (or None) move with the images and grow to at least
    the SSIM window."""
    height, width = images.shape[2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if pad_h or pad_w:
        notes.append(f"{source}: images zero-padded from {height}x{width} to {height + pad_h}x{width + pad_w} "
                     f"(the UNet needs multiples of {multiple})")
        images = np.pad(images, ((0, 0), (0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2)))
    if boxes is not None:
        shifted = np.asarray(boxes) + np.array([pad_h // 2, pad_h // 2, pad_w // 2, pad_w // 2])
        boxes = grow_boxes(shifted, 2 * SSIM_RADIUS + 1, images.shape[2:])
    return images, boxes


def make_datasets(images, config: dict, device: torch.device, meta: dict | None = None, notes: list | None = None,
                  multiple: int | None = None
                  ) -> tuple[SizeGroups | StreamedCines, CineDataset | StreamedCines, CineDataset | StreamedCines]:
    """Train/val/test sets resident on ``device``; training masks are drawn there too, from a
    generator that :func:`seed_epoch` seeds. ``meta``: from :func:`load_images` (heart boxes, a
    fixed split), if known. The training set holds one group per training size: the training split
    itself, or (``train_sizes``) empty cines of every size for :class:`FreshPhantom` to fill, each
    size with centre lines that keep the share of k-space of ``center_lines`` at ``image_size``.
    ``meta["coils"]`` (coil k-space and maps ``[N, ...]``, see :class:`data.CineDataset`) is split too."""
    meta = meta or {}
    if meta.get("raw"):  # images: the raw cines (data.RawCine) of load_images
        return raw_datasets(images, config, device, meta["splits"], [] if notes is None else notes,
                            multiple or size_multiple(config))
    boxes, coils = meta.get("boxes"), meta.get("coils")

    def coils_of(idx):  # the coil k-space and maps of the cines idx, on the device
        return coils and {key: torch.from_numpy(value[idx]).to(device) for key, value in coils.items()}

    if config.get("heart_weight") and boxes is None:
        raise UserError(f"--heart_weight={config['heart_weight']}: needs heart boxes, the phantom's or a data file's "
                        f"'heart_box' array (python formats.py convert --heart_box)")
    splits = meta.get("splits") or split_indices(len(images), seed=config["seed"])
    sampling = dict(mask_mode=config["mask_mode"], acceleration=config["acceleration"],
                    center_lines=config["center_lines"], density=config["density"],
                    mask_type=config.get("mask_type", "variable_density"), seed=config["seed"])
    generator = torch.Generator(device=device)
    val_set, test_set = (CineDataset(torch.from_numpy(images[idx]).to(device), idx,
                                     boxes=None if boxes is None else boxes[idx], coils=coils_of(idx), **sampling)
                         for idx in splits[1:])
    train_idx, size = splits[0], config["image_size"]
    sizes = training_sizes(config)
    if sizes == [size] or config["data"] is not None:
        groups = [CineDataset(torch.from_numpy(images[train_idx]).to(device), train_idx, train=True,
                              generator=generator, boxes=None if boxes is None else boxes[train_idx],
                              coils=coils_of(train_idx), **sampling)]
    else:
        frames = images.shape[1]
        groups = [CineDataset(torch.zeros((count, frames, side, side), dtype=torch.from_numpy(images[:1]).dtype,
                                          device=device), np.arange(count), train=True, generator=generator,
                              **{**sampling, "center_lines": max(1, round(config["center_lines"] * side / size))})
                  for side, count in zip(sizes, size_counts(len(train_idx), size, sizes))]
    return SizeGroups(groups), val_set, test_set


def raw_datasets(cines: list, config: dict, device: torch.device, splits: tuple, notes: list[str], multiple: int
                 ) -> tuple[StreamedCines, StreamedCines, StreamedCines]:
    """Train/val/test sets of raw cines streamed from disk (:class:`data.StreamedCines`), their coil maps
    and scales taken from (or first computed into) the cache ``config["cache_dir"]``
    (:class:`data.MapCache`), each cine zero-padded in k-space to a multiple of ``multiple`` rows and
    columns (the networks' size multiple)."""
    cache = MapCache(config["cache_dir"], config["center_lines"])
    check_distinct_files(cines, cache.folder)

    def grid(height: int, width: int) -> tuple[int, int]:
        return -(-height // multiple) * multiple, -(-width // multiple) * multiple

    prepare_maps(cache, cines, grid)
    sampling = dict(acceleration=config["acceleration"], center_lines=config["center_lines"],
                    density=config["density"], mask_type=config.get("mask_type", "variable_density"),
                    mask_mode=config["mask_mode"], seed=config["seed"])
    generator = torch.Generator(device=device)
    train, val, test = (StreamedCines(cines, rows, cache, grid, sampling, device, workers=config["workers"],
                                      generator=generator if i == 0 else None) for i, rows in enumerate(splits))
    notes.append(f"coil maps and scales of the {len(cines)} raw cines: {cache.estimated} estimated (ESPIRiT) and "
                 f"{len(cines) - cache.estimated} taken from the cache {cache.folder}/")
    return train, val, test


def check_distinct_files(cines: list, cache: Path) -> None:
    """Refuse two raw files with the same content (a file copied into two subjects' folders): its
    cines could land in two splits. Contents are compared by SHA-256 (:func:`data.file_digest`)."""
    seen = {}
    for path in dict.fromkeys(cine.volume.path for cine in cines):
        earlier = seen.setdefault(file_digest(path, cache), path)
        if earlier != path:
            raise DataError(f"{path}: the same k-space as {earlier} (a copy): its cines could be trained on and "
                            f"scored as another subject's; remove one")


def prepare_maps(cache: MapCache, cines: list, grid) -> None:
    """Read every raw cine once and cache its maps (:meth:`data.MapCache.prepare`), a progress bar on a
    terminal; under torchrun each process takes its share and they wait for each other, and a bad
    slice found by any process stops every process with its one line."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    failure = None
    try:
        with tqdm(cines[rank::world], desc="coil maps", unit="cine", dynamic_ncols=True, leave=False,
                  disable=None) as bar:
            for cine in bar:
                cache.prepare(cine, grid(*cine.shape[2:]))
    except UserError as error:
        failure = str(error)
    if world > 1:
        failures = [None] * world
        dist.all_gather_object(failures, failure)
        failure = next((message for message in failures if message), None)
    if failure:
        raise UserError(failure)


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


def seed_epoch(train_set: CineDataset | SizeGroups, seed: int, rank: int, epoch: int) -> None:
    """Seed dropout and the training masks from (seed, rank, epoch): runs resume exactly at any
    epoch boundary, and each process draws its own masks."""
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
    from formats import crop_or_pad

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


def phantom_version() -> str:
    """The embedded phantom's version: a digest of phantom.py's syntax tree without docstrings (edits
    of comments, docstrings or layout keep it; any change of code gives a new one)."""
    tree = ast.parse(PHANTOM_SOURCE.read_text())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            del body[0]
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()[:16]


def smallest_side(config: dict) -> int:
    """The smallest image height and width the network of ``config`` takes: its pooling multiple, and
    twice that for the dual UNet, whose bottleneck BatchNorm needs more than one value per channel."""
    multiple = size_multiple(config)
    return 2 * multiple if config["arch"] == "dual_unet" else multiple


def check_data_shape(config: dict, shape: tuple[int, ...], source: str) -> None:
    """Refuse, from a data file's header, cines the run would refuse once loaded: not ``[N, T, H, W]``,
    or images too small for the network (after padding). Every network takes any frame count."""
    if len(shape) != 4:
        raise UserError(f"{source}: expected 4 dimensions [nsamples, nt, nx, ny], got {len(shape)} with shape "
                        f"{tuple(shape)}" + ("; for a single cine save x[None]" if len(shape) == 3 else ""))
    multiple, smallest = size_multiple(config), smallest_side(config)
    padded = [-(-side // multiple) * multiple for side in shape[2:]]
    if min(padded) < smallest:
        raise UserError(f"{source}: images of {shape[2]}x{shape[3]} (padded to {padded[0]}x{padded[1]}) are too "
                        f"small for the {config['arch']} network, which needs at least {smallest}x{smallest}")


def data_fingerprint(config: dict) -> dict:
    """What resuming a run must find unchanged, stored in its ``last.pt``: for each data file (one,
    or TRAIN,VAL,TEST) its size, shape, dtype and SHA-256, its header checked first by
    :func:`check_data_shape`, before anything is loaded; for the embedded phantom its
    :func:`phantom_version` (its parameters are in the config) and with ``coils`` > 1 their number
    and the version of sigpy, which estimates their maps."""
    entries = raw_entries(config["data"])
    if entries:
        cache = Path(config["cache_dir"])
        return {f"{cine.volume.path} sha256": file_digest(cine.volume.path, cache)
                for cine in scan_raw(entries, []) if cine.slice == 0}
    if config["data"] is None:
        if config.get("coils", 1) == 1:
            return {"phantom": phantom_version()}
        from importlib.metadata import version
        return {"phantom": phantom_version(), "coils": config["coils"], "sigpy": version("sigpy")}
    fingerprint = {}
    for path in (cine_file(part.strip()) for part in str(config["data"]).split(",")):
        _, shape, dtype = array_header(path)
        check_data_shape(config, shape, str(path))
        with open(path, "rb") as file:
            digest = hashlib.file_digest(file, "sha256").hexdigest()
        fingerprint.update({f"{path} bytes": path.stat().st_size, f"{path} shape": list(shape),
                            f"{path} dtype": str(dtype), f"{path} sha256": digest})
    return fingerprint


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
