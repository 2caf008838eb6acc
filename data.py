"""Everything a run reads: cine datasets and their undersampled batches, the embedded phantom's
streams, splits, raw k-space trees streamed from disk with their coil-map cache, and what a run
records of its data (the file readers are formats.py's).

- loading: :func:`load_images` (a data file, raw k-space or the embedded phantom), :func:`make_datasets`;
- the phantom: :func:`render_phantom`, :func:`render_coil_phantom`, :class:`FreshPhantom` (new training
  cines every epoch), :func:`training_sizes` (training over several image sizes);
- splits and batches: :func:`split_indices`, :func:`split_by_subject`, :func:`size_batches`,
  :func:`subject_batches` (torchrun over raw cines), :func:`epoch_batches`;
- datasets: :class:`CineDataset` (cines held as one tensor), :class:`SizeGroups`, :class:`StreamedCines`
  (raw cines read from disk when needed), :class:`MaskDrawer` (the masks of a run's sampling);
- raw k-space: :func:`scan_raw` (trees, subjects, shipped masks), :class:`MapCache` (coil maps
  computed once);
- what a run is trained on: :func:`data_fingerprint`, :func:`check_data_shape`, :func:`phantom_version`.

A dataset is an array ``[nsamples, nt, nx, ny]`` (real magnitude or complex), every cine
normalised so that its largest magnitude is 1 (PSNR with peak 1 is then meaningful).
"""
from __future__ import annotations

import ast
import copy
import hashlib
import io
import json
import os
import time
import zipfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from cli import UserError, atomic_write, check_readable, make_folder
from formats import (DataError, RawVolume, array_header, cine_file, crop_or_pad, inspect_kspace,
                     load_boxes, load_cine, load_subjects, read_kspace_slice, read_mask_file)
from metrics import SSIM_RADIUS
from models import size_multiple, smallest_side
from sampling import (MASK_TYPES, REFERENCE_HEIGHT, MaskSampler, center_rows, check_sampling, coil_combine,
                      estimate_sensitivities, ifft2c, scaled_center_lines, sense_adjoint, undersample, uniform_mask,
                      variable_density_mask)

MASK_MODES = ("fixed", "random")


# ----------------------------------------------------------------------------- loading


# ----------------------------------------------------------------------------- split
def split_counts(n: int, ratios=(4, 1, 2)) -> tuple[int, int, int]:
    """Sizes of the train/val/test split: rounded shares of ``n``, the test split takes the rest."""
    total = sum(ratios)
    n_train = int(round(n * ratios[0] / total))
    n_val = int(round(n * ratios[1] / total))
    counts = (n_train, n_val, n - n_train - n_val)
    if min(counts) < 1:
        raise UserError(f"{n} cines cannot be split {':'.join(map(str, ratios))} with at least one cine "
                        f"per split (got {counts[0]}/{counts[1]}/{counts[2]})")
    return counts


def split_indices(n: int, ratios=(4, 1, 2), seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reproducible disjoint train/val/test indices (sorted) of ``n`` cines; 200 -> 114/29/57."""
    n_train, n_val, _ = split_counts(n, ratios)
    order = np.random.default_rng(seed).permutation(n)
    return (np.sort(order[:n_train]), np.sort(order[n_train:n_train + n_val]),
            np.sort(order[n_train + n_val:]))


SPLIT_NAMES = ("train", "validation", "test")


def check_disjoint_splits(images: np.ndarray, splits, source: str) -> None:
    """Refuse a cine that is in two splits (a file given for two splits, a cine copied into two
    files): the network would be scored on cines it saw. Every cine ``[N, T, H, W]`` is hashed."""
    first = {}  # digest -> (split, index) of its first cine
    for split, indices in zip(SPLIT_NAMES, splits):
        for index in indices:
            digest = hashlib.sha1(np.ascontiguousarray(images[index]).view(np.uint8)).digest()
            earlier = first.setdefault(digest, (split, int(index)))
            if earlier[0] != split:
                raise DataError(f"{source}: cine {index} of the {split} split is identical to cine {earlier[1]} of "
                                f"the {earlier[0]} split: the network would be scored on cines it saw in training "
                                f"or validation; remove the duplicates")


def split_by_subject(subjects, ratios=(4, 1, 2), seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train/val/test indices (sorted) of cines whose ``subjects`` ``[N]`` say which patient or file
    each came from: whole subjects go to one split, so no subject is in two. Subjects (in sorted
    order) are shuffled by ``seed`` and dealt to the splits until each reaches its share of the cines
    (:func:`split_counts`); with one cine per subject this is exactly :func:`split_indices`."""
    names, which = np.unique(np.asarray(subjects), return_inverse=True)
    if len(names) < len(ratios):
        raise UserError(f"{len(names)} subject(s) cannot be split into train/val/test by subject: "
                        f"at least {len(ratios)} are needed")
    order = np.random.default_rng(seed).permutation(len(names))
    sizes = np.bincount(which, minlength=len(names))[order]  # cines per subject, shuffled
    shares = np.cumsum(split_counts(int(sizes.sum()), ratios))[:-1]  # cines before the validation and test splits
    cuts = np.searchsorted(np.cumsum(sizes), shares, side="left") + 1  # the first subject reaching each share
    cuts = np.clip(cuts, np.arange(1, len(ratios)), len(names) - np.arange(len(ratios) - 1, 0, -1))
    groups = np.split(order, cuts)  # subject ids of train, val, test
    return tuple(np.flatnonzero(np.isin(which, group)) for group in groups)


# ----------------------------------------------------------------------------- examples
def mask_seed(seed: int, index: int) -> int:
    """Seed of the evaluation mask of cine ``index``: well mixed, independent of the split."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


class CineDataset(torch.utils.data.Dataset):
    """Undersampled examples of cines held as one tensor on one device.

    images: ``[N, T, H, W]`` float32 or complex64 (already normalised), on any device.
    indices: the original dataset index of every cine (they key the evaluation masks).
    mask_mode:
      - ``"fixed"``: one mask set ``[T, H, W]`` drawn from ``seed`` for every cine and every
        epoch: the study's protocol (its training and test cines share one mask).
      - ``"random"``: with ``train=True`` a fresh mask for every example at every draw (data
        augmentation, drawn on the device with ``generator``); with ``train=False`` cine i gets
        its own mask drawn from ``(seed, indices[i])``, the same in every run.

    mask_type: ``"variable_density"`` (the masks above) | ``"uniform"``: CMRxRecon's equispaced
    mask (``sampling.uniform_mask``, an integer ``acceleration``), the same for every cine, frame
    and draw whatever ``mask_mode``.
    boxes: ``[N, 4]`` heart boxes ``(row0, row1, col0, col1)`` for region-of-interest metrics, or None.
    coils: None (single coil) or ``{"kspace": [N, C, T, H, W], "sensitivities": [N, C, H, W]}``
    (complex64, on the images' device): every cine's fully sampled coil k-space ``y`` and the coil
    maps ``S`` the methods are given; the images are then ``S^H F^-1 y``.

    ``batch(rows)`` returns a dict of ``[B, T, H, W]`` tensors: ``aliased`` (complex64
    zero-filled image ``F^-1 U F m``), ``target`` (the fully sampled cine), ``mask`` (float32)
    and ``kspace`` (complex64 sampled k-space ``U F m``), and with boxes ``box`` ``[B, 4]``. With
    coils ``kspace`` is the sampled coil k-space ``U y`` ``[B, C, T, H, W]`` (the frame's mask on
    every coil), ``aliased`` its coil combination ``A^H U y`` (``sampling.sense_adjoint``) and
    ``sensitivities`` ``[B, C, H, W]`` is added. ``dataset[i]`` is the same without B.
    """

    def __init__(self, images: torch.Tensor, indices, *, mask_mode: str = "fixed", train: bool = False,
                 acceleration: float | list = 5, center_lines: int = 11, density: str = "gaussian",
                 mask_type: str = "variable_density", seed: int = 0, generator: torch.Generator | None = None,
                 boxes: np.ndarray | None = None, coils: dict | None = None):
        if mask_mode not in MASK_MODES:
            raise UserError(f"mask_mode must be one of {MASK_MODES}, got {mask_mode!r}")
        if mask_type not in MASK_TYPES:
            raise UserError(f"mask_type must be one of {MASK_TYPES}, got {mask_type!r}")
        self.images = images  # [N, T, H, W]
        self.indices = np.asarray(indices)
        self.boxes = None if boxes is None else np.asarray(boxes)  # [N, 4] heart boxes (row0, row1, col0, col1)
        self.coils = coils  # None | {"kspace": [N, C, T, H, W], "sensitivities": [N, C, H, W]}
        self.train, self.generator = train, generator
        self.sampling = dict(acceleration=acceleration, center_lines=center_lines, density=density,
                             mask_type=mask_type, mask_mode=mask_mode, seed=seed)
        self.drawer = MaskDrawer(self.sampling, images.device)
        self.acceleration = self.drawer.accelerations[0]  # of the evaluation masks (see :meth:`at`)
        self._evaluation_masks = None
        self.raw = False  # images, not raw k-space: no CMRxRecon protocol

    @property
    def device(self) -> torch.device:
        return self.images.device

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        """The one shape ``[T, H, W]`` of the cines, as a list (the streamed sets have several)."""
        return [tuple(self.images.shape[1:])]

    def shape_of(self, row: int) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    @property
    def masks(self) -> torch.Tensor:
        """The evaluation masks ``[N, T, H, W]`` at :attr:`acceleration` (a broadcast view of one set with
        ``mask_mode='fixed'`` or uniform masks), drawn once."""
        if self._evaluation_masks is None:
            shape, drawer = tuple(self.images.shape[1:]), self.drawer
            shared = drawer._shared(shape, self.acceleration)
            if shared is not None:
                self._evaluation_masks = torch.from_numpy(shared).to(self.device).expand(len(self), -1, -1, -1)
            else:
                self._evaluation_masks = torch.stack([torch.from_numpy(drawer.evaluation(shape, int(i),
                                                                                          self.acceleration))
                                                      for i in self.indices]).to(self.device)
        return self._evaluation_masks

    def at(self, acceleration: float) -> "CineDataset":
        """The same cines with the evaluation masks of ``acceleration`` (one of the run's)."""
        other = copy.copy(self)
        other.acceleration, other._evaluation_masks = float(acceleration), None
        return other

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, rows) -> dict[str, torch.Tensor]:
        rows = torch.as_tensor(rows, device=self.images.device)
        target = self.images[rows]  # [B, T, H, W]
        if self.train and self.sampling["mask_mode"] == "random":
            mask = self.drawer.training(tuple(target.shape[1:]), len(rows), self.generator)  # [B, T, H, W]
        else:
            mask = self.masks[rows]  # [B, T, H, W]
        if self.coils is None:
            batch = undersampled(target, mask)
        else:  # [B, C, T, H, W] coil k-space, [B, C, H, W] maps
            batch = undersampled(target, mask, self.coils["kspace"][rows], self.coils["sensitivities"][rows])
        if self.boxes is not None:
            batch["box"] = torch.as_tensor(self.boxes, device=target.device)[rows]  # [B, 4]
        return batch

    def chunks(self, rows, batch_size: int, acceleration: float | None = None):
        """``(chunk rows, batch)`` of the cines ``rows`` in batches of ``batch_size``, with the evaluation
        masks of ``acceleration`` (default: :attr:`acceleration`)."""
        dataset = self if acceleration is None or acceleration == self.acceleration else self.at(acceleration)
        rows = np.asarray(rows)
        for start in range(0, len(rows), batch_size):
            yield rows[start:start + batch_size], dataset.batch(rows[start:start + batch_size])

    def __getitem__(self, row: int) -> dict[str, torch.Tensor]:
        return {name: value[0] for name, value in self.batch([row]).items()}


class SizeGroups:
    """Training cines as groups of one image size each: one ``CineDataset`` per size, all drawing
    their masks from one generator. Rows are numbered across the groups (group 0 first), and a
    batch must come from one group (as ``size_batches`` makes them).

    ``batch(rows)`` returns the dict of ``[B, T, H_g, W_g]`` tensors of that group's
    ``CineDataset.batch``; ``fill(cines, boxes, coils)`` replaces every group's cines (and heart boxes,
    and with coils their coil k-space and maps, see ``CineDataset``) by new ones of the same shapes
    (fresh phantom cines).
    """

    def __init__(self, groups: list[CineDataset]):
        self.groups = groups
        self.generator = groups[0].generator
        self.offsets = np.cumsum([0] + [len(group) for group in groups])  # [G + 1] first row of each group
        self.waited = 0.0  # held in memory: no batch ever waits for data (see StreamedCines)

    @property
    def counts(self) -> list[int]:
        """Cines per group."""
        return [len(group) for group in self.groups]

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        """Each group's cine shape ``[T, H, W]``."""
        return [group.shapes[0] for group in self.groups]

    def batches(self, order: list[torch.Tensor], start: int = 0):
        """The training batches ``order[start:]``."""
        for rows in order[start:]:
            yield self.batch(rows)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def device(self) -> torch.device:
        return self.groups[0].images.device

    def fill(self, cines: list[torch.Tensor], boxes: list[np.ndarray] | None = None,
             coils: list[dict | None] | None = None) -> None:
        for i, (group, images) in enumerate(zip(self.groups, cines, strict=True)):
            if images.shape != group.images.shape:
                raise ValueError(f"new cines {tuple(images.shape)} for a group of {tuple(group.images.shape)}")
            group.images = images
            group.boxes = None if boxes is None else np.asarray(boxes[i])  # [N_g, 4]
            group.coils = None if coils is None else coils[i]

    def batch(self, rows) -> dict[str, torch.Tensor]:
        rows = torch.as_tensor(rows)
        group = int(np.searchsorted(self.offsets, int(rows.min()), side="right")) - 1
        local = rows - int(self.offsets[group])
        if int(local.max()) >= len(self.groups[group]):
            raise ValueError(f"rows {rows.tolist()} span two size groups")
        return self.groups[group].batch(local)


# ----------------------------------------------------------------------------- raw k-space: trees, subjects, maps
FULLY_SAMPLED = "FullSample"  # CMRxRecon's folder of fully sampled files; its AccFactorRR siblings hold masks
RAW_SUFFIXES = (".mat", ".h5", ".mrd", ".npz")
MAX_TREE_ENTRIES = 200_000  # folders and files looked at when scanning --data folders (a bound on the work)
CACHE_FORMAT = 1  # the coil-map cache's entry format: a new value invalidates every entry


@dataclass(frozen=True)
class RawCine:
    """One cine of raw k-space: slice ``slice`` of a file, the subject it belongs to and the masks
    shipped beside it (CMRxRecon ``AccFactorRR/.../NAME_mask.mat``, keyed by the acceleration R)."""
    volume: "RawVolume"  # formats.RawVolume: the file, its k-space variable and [N, C, T, H, W]
    slice: int
    subject: str
    shipped: dict = field(default_factory=dict, hash=False, compare=False)  # {R: Path of the mask file}

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return self.volume.shape[1:]  # [C, T, H, W]


def is_raw_kspace(path) -> bool:
    """Whether a ``--data`` entry is raw k-space (a folder, a ``.mat``, an MRD ``.h5`` or an ``.npz``
    holding ``kspace``) rather than image cines (an ``.npz``/``.npy`` of ``dataset``)."""
    path = Path(path)
    try:
        if path.is_dir() or path.name.lower().endswith((".mat", ".h5", ".mrd")):
            return True
        if path.name.lower().endswith(".npz") and path.is_file() and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return "kspace.npy" in archive.namelist()
    except (OSError, zipfile.BadZipFile):  # a path too long to look at...: the cine reader says so in one line
        return False
    return False


def scan_raw(paths: list[str], notes: list[str]) -> list[RawCine]:
    """Every cine (slice) of the raw k-space that ``paths`` name, from headers alone, in a fixed order
    (by subject, file, slice): a folder holding a CMRxRecon tree (every ``FullSample/.../*.mat`` but
    masks; subject = the folder that holds the file, relative to ``FullSample``; masks from the
    ``AccFactorRR`` siblings), any other folder (every raw file in it, each file a subject), or files
    (a ``.mat``'s subject is its folder, any other file's the file). A file named twice is refused."""
    found: dict[Path, tuple[str, dict]] = {}  # resolved file -> (subject, shipped masks)
    for entry in paths:
        root = check_readable(entry, missing="no such file or folder", expected="raw k-space (a folder or file)",
                              folder_ok=True, error=DataError)
        listed = _tree_files(root) if root.is_dir() else [(root, _subject_of(root, root.parent), {})]
        if not listed:
            raise DataError(f"{root}: no raw k-space file in it (.mat, .h5, .npz holding 'kspace')")
        for file, subject, shipped in listed:
            resolved = file.resolve()
            if resolved in found:
                raise DataError(f"{file}: named twice in --data (directly or inside a folder): its cines would be "
                                f"counted twice and could land in two splits")
            found[resolved] = (subject, shipped)
    cines = []
    for file, (subject, shipped) in sorted(found.items(), key=lambda item: (item[1][0], str(item[0]))):
        volume = inspect_kspace(file)
        for factor, mask in shipped.items():  # a mask that does not fit is refused now, not after training
            read_mask_file(mask, (1, *volume.shape[2:]), f"kspace_sub{factor:02d}")
        cines += [RawCine(volume, index, subject, shipped) for index in range(volume.shape[0])]
    subjects = len({cine.subject for cine in cines})
    notes.append(f"raw k-space: {len(cines)} cine(s) (slices) in {len(found)} file(s) of {subjects} subject(s)")
    return cines


def _tree_files(root: Path) -> list[tuple[Path, str, dict]]:
    """The raw files of a folder: ``(file, subject, shipped masks)`` (see :func:`scan_raw`)."""
    fully, others, seen = [], [], 0
    for folder, subfolders, files in os.walk(root):  # symbolic links to folders are not followed
        seen += len(subfolders) + len(files)
        if seen > MAX_TREE_ENTRIES:
            raise DataError(f"{root}: more than {MAX_TREE_ENTRIES} files and folders; name the data's folders instead")
        subfolders.sort()
        folder = Path(folder)
        inside = FULLY_SAMPLED in folder.relative_to(root).parts[:-1]  # a folder within a FullSample folder
        if inside and not subfolders and not any(name.lower().endswith(".mat") for name in files):
            raise DataError(f"{folder}: a subject folder of {FULLY_SAMPLED} with no k-space file (.mat) in it")
        for name in sorted(files):
            file = folder / name
            if not name.lower().endswith(RAW_SUFFIXES) or name.lower().endswith("_mask.mat") or not file.is_file():
                continue
            parts = file.relative_to(root).parts
            if FULLY_SAMPLED in parts[:-1]:
                fully.append(file)
            elif name.lower().endswith(".npz") and not is_raw_kspace(file):
                continue
            else:
                others.append(file)
    if not fully:
        return [(file, _subject_of(file, root), {}) for file in others]
    listed = []
    for file in fully:
        parts = file.relative_to(root).parts
        base = root.joinpath(*parts[:parts.index(FULLY_SAMPLED)])  # the folder holding FullSample and AccFactorRR
        inside = Path(*parts[parts.index(FULLY_SAMPLED) + 1:])  # P001/cine_sax.mat
        shipped = {}
        for accelerated in sorted(base.glob("AccFactor*")):
            factor = accelerated.name[len("AccFactor"):]
            mask = accelerated / inside.parent / f"{file.stem}_mask.mat"
            if factor.isdigit() and mask.is_file():
                shipped[int(factor)] = mask
        subject = str(base.relative_to(root) / inside.parent) if inside.parent != Path(".") else str(file)
        listed.append((file, subject, shipped))
    return listed


def _subject_of(file: Path, root: Path) -> str:
    """A raw file's subject outside CMRxRecon's FullSample layout: a ``.mat`` file's folder (a patient's
    cine_sax.mat and cine_lax.mat are one subject), any other file itself."""
    return str(file.parent.resolve()) if file.name.lower().endswith(".mat") else str(file.resolve())


def file_digest(path: Path, cache: Path | None = None) -> str:
    """SHA-256 of a file's content, remembered under ``cache/files`` for the file's (path, size, time
    of last change, inode), so a file is hashed once until it changes."""
    stat = path.stat()
    identity = json.dumps([str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino])
    memo = None if cache is None else cache / "files" / f"{hashlib.sha256(identity.encode()).hexdigest()}.txt"
    if memo is not None and memo.is_file():
        remembered = memo.read_text().strip()
        if len(remembered) == 64:
            return remembered
    with open(path, "rb") as file:
        digest = hashlib.file_digest(file, "sha256").hexdigest()
    if memo is not None:
        _write_cached(memo, digest.encode())
    return digest


def _write_cached(path: Path, content: bytes) -> None:
    """A cache entry written through a temporary file and a rename (:func:`cli.atomic_write`): a reader
    sees the whole entry or none, two runs writing the same entry at once both leave it whole (renames
    are atomic), and a cache folder that cannot be written (a file in the way, a full disk) is one line."""
    atomic_write(make_folder(path.parent) / path.name, content)


def _cached_maps(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The maps of the cache entry ``path`` if it holds complex64 ``shape`` ``[C, H, W]``; None if it is
    missing, damaged or of another shape (someone else's file): the maps are then estimated again."""
    try:
        maps = np.load(path, mmap_mode="r", allow_pickle=False)  # the header first: nothing is read yet
    except (OSError, ValueError, EOFError):
        return None
    if not isinstance(maps, np.ndarray) or maps.dtype != np.complex64 or maps.shape != tuple(shape):
        return None
    return np.array(maps)


class MapCache:
    """Coil maps of raw cines, estimated once by ESPIRiT and kept on disk under ``folder/maps``.

    An entry (``KEY.npy``: the maps ``[C, H, W]`` complex64 of one slice) is keyed by the file's content
    (:func:`file_digest`), the variable and slice, the grid the maps are computed on and the settings of
    the estimation (ESPIRiT's parameters, sigpy's version, the ``calibration`` lines): changing any of
    them makes a new entry; a half-written entry never exists (:func:`_write_cached`). ``estimated``
    counts the ESPIRiT calls this cache made (none when every entry was there). Training estimates from
    the fully sampled ``center_lines`` (every mask samples them), reconstruct.py from the calibration
    lines of the measured mask; the same lines of the same data give the same entry."""

    def __init__(self, folder, calibration: int):
        from importlib.metadata import version

        self.folder, self.calibration, self.estimated = Path(folder), calibration, 0
        self.settings = {"format": CACHE_FORMAT, "calibration_lines": calibration, "sigpy": version("sigpy"),
                         **ESPIRIT_SETTINGS}

    def path(self, cine: RawCine, grid: tuple[int, int]) -> Path:
        described = {**self.settings, "file": file_digest(cine.volume.path, self.folder),
                     "variable": cine.volume.variable, "slice": cine.slice, "grid": list(grid)}
        key = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()
        return self.folder / "maps" / f"{key}.npy"

    def maps(self, cine: RawCine, grid: tuple[int, int], read=None) -> np.ndarray:
        """The maps ``[C, H, W]`` of ``cine`` on ``grid`` (H, W): the cached entry, else estimated by ESPIRiT
        (``sampling.estimate_sensitivities``) from ``read()`` = (coil k-space ``[C, T, H, W]`` on the grid,
        a mask ``[T, H, W]`` whose ``calibration`` central rows every frame samples) and kept."""
        path = self.path(cine, grid)
        cached = _cached_maps(path, (cine.shape[0], *grid))
        if cached is not None:
            return cached
        if read is None:
            raise DataError(f"{cine.volume.path}: slice {cine.slice}: its coil maps are not in the cache {self.folder}")
        kspace, mask = read()
        maps = estimate_sensitivities(kspace[None], mask)[0].astype(np.complex64)  # [C, H, W]
        self.estimated += 1
        buffer = io.BytesIO()
        np.save(buffer, maps)
        _write_cached(path, buffer.getvalue())
        return maps

    def prepare(self, cine: RawCine, grid: tuple[int, int]) -> None:
        """Read ``cine`` once (it must be fully sampled and finite) and, with more than one coil, make sure
        its maps on ``grid`` are cached (estimated from the central ``calibration`` rows)."""
        if cine.shape[0] > 1:
            self.maps(cine, grid, lambda: (fully_sampled_slice(cine, grid), centre_mask(grid[0], self.calibration)))
        elif not self.path(cine, grid).with_suffix(".checked").is_file():  # one coil: nothing to estimate
            fully_sampled_slice(cine)
            _write_cached(self.path(cine, grid).with_suffix(".checked"), b"")


ESPIRIT_SETTINGS = {"kernel_width": 6, "threshold": 0.02, "crop": 0.0, "resolution": 64}  # estimate_sensitivities'


def centre_mask(height: int, lines: int) -> np.ndarray:
    """``[1, H, 1]`` (broadcast over frames and columns): 1 on the ``lines`` central k-space rows."""
    centre = np.zeros((1, height, 1), np.float32)
    centre[:, center_rows(height, lines)] = 1
    return centre


def fully_sampled_slice(cine: RawCine, grid: tuple[int, int] | None = None) -> np.ndarray:
    """The k-space ``[C, T, H, W]`` of ``cine``, read alone (and zero-padded, centred, to ``grid``); a
    slice that is not fully sampled is refused (training and scoring need the whole of k-space)."""
    kspace, measured = read_kspace_slice(cine.volume, cine.slice)  # [C, T, H, W], [T, H, W]
    if not measured.all():
        raise DataError(f"{cine.volume.path}: slice {cine.slice} is not fully sampled ({measured.mean():.0%} of "
                        f"its k-space holds data): training needs fully sampled k-space (reconstruct undersampled "
                        f"files with python reconstruct.py --kspace)")
    return kspace if grid is None else crop_or_pad(kspace, grid)


def coil_image(kspace: np.ndarray, maps: np.ndarray | None) -> np.ndarray:
    """The image of fully sampled k-space ``[C, T, H, W]``: ``F^-1 y`` for one coil, ``S^H F^-1 y`` with
    ``maps`` ``[C, H, W]``; ``[T, H, W]`` complex64, computed as the coil phantom's
    (``render_coil_phantom``), in torch."""
    images = ifft2c(torch.from_numpy(kspace))  # [C, T, H, W]
    return (images[0] if maps is None else coil_combine(images, torch.from_numpy(maps))).numpy()


# ----------------------------------------------------------------------------- streamed raw cines
def accelerations(config: dict) -> list[float]:
    """The run's accelerations: ``acceleration`` is one number or a list of them (``--acceleration=4,8,10``:
    every training batch draws one, and every evaluation is scored at each)."""
    value = config["acceleration"]
    return [float(a) for a in value] if isinstance(value, (list, tuple)) else [float(value)]


class MaskDrawer:
    """The masks of a run's sampling (``acceleration`` one number or several, ``center_lines``,
    ``density``, ``mask_type``, ``mask_mode``, ``seed``) for cines of any shape ``[T, H, W]``, on ``device``:
    the same masks as :class:`CineDataset` draws (fresh per training example, seeded per cine for
    evaluation, one set with ``mask_mode='fixed'``, CMRxRecon's equispaced ones with ``mask_type='uniform'``)."""

    def __init__(self, sampling: dict, device: torch.device):
        self.sampling, self.device = sampling, device
        self.accelerations = accelerations(sampling)
        self.samplers: dict[tuple, MaskSampler] = {}

    def _shared(self, shape, acceleration: float) -> np.ndarray | None:
        """The one mask set ``[T, H, W]`` of every cine (uniform masks, ``mask_mode='fixed'``), else None."""
        s = self.sampling
        if s["mask_type"] == "uniform":
            return uniform_mask(shape, round(acceleration), s["center_lines"])
        if s["mask_mode"] == "fixed":
            return variable_density_mask(shape, acceleration, s["center_lines"], s["seed"], s["density"])
        return None

    def training(self, shape, count: int, generator: torch.Generator) -> torch.Tensor:
        """Masks ``[count, T, H, W]`` for a training batch: with several accelerations the batch draws one."""
        acceleration = self.accelerations[0]
        if len(self.accelerations) > 1:
            acceleration = self.accelerations[int(torch.randint(len(self.accelerations), (), generator=generator,
                                                                device=generator.device))]
        shared = self._shared(shape, acceleration)
        if shared is not None:
            return torch.from_numpy(shared).to(self.device).expand(count, -1, -1, -1)
        frames, height, width = shape
        key = (height, width, acceleration)
        if key not in self.samplers:
            self.samplers[key] = MaskSampler(height, width, acceleration, self.sampling["center_lines"],
                                             self.sampling["density"], device=self.device)
        return self.samplers[key](count * frames, generator).view(count, *shape)

    def evaluation(self, shape, index: int, acceleration: float, shipped: Path | None = None) -> np.ndarray:
        """The evaluation mask ``[T, H, W]`` of cine ``index``: the mask shipped with it for this
        acceleration if any, else the run's (seeded by ``(seed, index)``, as :class:`CineDataset`)."""
        if shipped is not None:
            return read_mask_file(shipped, (1, *shape), f"kspace_sub{round(acceleration):02d}")[0]
        shared = self._shared(shape, acceleration)
        if shared is not None:
            return shared
        s = self.sampling
        return variable_density_mask(shape, acceleration, s["center_lines"], mask_seed(s["seed"], index),
                                     s["density"])


def undersampled(target: torch.Tensor, mask: torch.Tensor, kspace: torch.Tensor | None = None,
                 maps: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """A batch as the networks take it from fully sampled cines ``target`` ``[B, T, H, W]`` and masks
    ``[B, T, H, W]``: single coil (``maps`` None) ``aliased`` ``F^-1 U F x`` and ``kspace`` ``U F x``; with
    coil k-space ``[B, C, T, H, W]`` and ``maps`` ``[B, C, H, W]``, ``kspace`` ``U y`` (the frame's mask on
    every coil), ``aliased`` ``A^H U y`` and ``sensitivities``."""
    if maps is None:
        aliased, measured = undersample(target, mask)  # [B, T, H, W] complex each
        return {"aliased": aliased, "target": target, "mask": mask, "kspace": measured}
    measured = kspace * mask[:, None]  # [B, C, T, H, W]
    return {"aliased": sense_adjoint(measured, maps, mask), "target": target, "mask": mask, "kspace": measured,
            "sensitivities": maps}


class RawCineReader(torch.utils.data.Dataset):
    """What a worker reads of raw cine ``i``: its fully sampled k-space on the network grid and its
    image, both divided by the image's peak magnitude, its maps, and the root sum of squares of its
    coil images on the file's own grid (the reference of the CMRxRecon protocol), as numpy arrays (the
    cache's maps must exist: :meth:`MapCache.prepare`)."""

    def __init__(self, cines: list[RawCine], grids: list[tuple[int, int]], cache: MapCache):
        self.cines, self.grids, self.cache = cines, grids, cache

    def __len__(self) -> int:
        return len(self.cines)

    def __getitem__(self, i: int) -> dict:
        own = fully_sampled_slice(self.cines[i])  # [C, T, H0, W0]
        kspace = crop_or_pad(own, self.grids[i])  # [C, T, H, W]
        maps = self.cache.maps(self.cines[i], self.grids[i]) if len(own) > 1 else None  # [C, H, W]
        image = coil_image(kspace, maps)  # [T, H, W]
        scale = (1 / np.abs(image).max()).astype(np.float32)  # peak 1, as the coil phantom (render_coil_phantom)
        rss = np.sqrt((np.abs(ifft2c(own)) ** 2).sum(0)) * scale  # [T, H0, W0]
        return {"row": i, "kspace": kspace * scale, "target": image * scale, "sensitivities": maps, "rss": rss}


def stack_cines(items: list[dict]) -> dict:
    """Collate :class:`RawCineReader` items of one shape into ``[B, ...]`` tensors (no maps for one coil)."""
    batch = {"rows": torch.tensor([item["row"] for item in items])}
    for key in ("kspace", "target", "sensitivities", "rss"):
        if items[0][key] is not None:
            batch[key] = torch.from_numpy(np.stack([item[key] for item in items]))
    return batch


class _Plan:
    """A ``DataLoader``'s batch sampler whose batches are set before each pass (``batches``)."""

    def __init__(self):
        self.batches: list[list[int]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _quiet_worker(_: int) -> None:
    """A reading worker uses one thread: the cores belong to training."""
    torch.set_num_threads(1)


class StreamedCines:
    """Raw cines read from disk when a batch needs them, never held together: training, validation or
    test cines ``rows`` (numbers into ``cines``: they seed the evaluation masks) of any shapes.

    Cines are grouped by shape ``[C, T, H, W]`` (on the network grid: ``grid(H, W)``), group by group,
    so a batch never mixes shapes; ``counts``/``shapes`` describe the groups (``size_batches``
    numbers rows across them). ``batches(order, start)`` streams the training batches of an epoch
    through a ``DataLoader`` whose ``workers`` read ahead (``waited``: the seconds the epoch waited for
    them); ``chunks(rows, batch_size, acceleration)`` the evaluation batches; ``batch(rows)`` reads one
    batch in this process. Batches are the dicts of :func:`undersampled` on ``device``, the masks drawn
    there by :class:`MaskDrawer` (training: from ``generator``, which ``engine.seed_epoch`` seeds)."""

    def __init__(self, cines: list[RawCine], rows, cache: MapCache, grid, sampling: dict, device: torch.device,
                 *, workers: int = 0, generator: torch.Generator | None = None):
        rows = np.asarray(rows)
        own = [cines[r].shape for r in rows]  # [C, T, H0, W0]: the file's grid
        order = sorted(range(len(rows)), key=lambda i: (own[i], i))  # group by shape, keep the order inside
        self.indices = rows[order]
        self.cines = [cines[r] for r in self.indices]
        self.subjects = np.array([cine.subject for cine in self.cines])  # [N]: torchrun deals whole subjects
        self.groups = [own[i] for i in order]  # each cine's group: its shape [C, T, H0, W0]
        self.grids = [grid(*shape[2:]) for shape in self.groups]  # (H, W) of the network grid
        kinds = sorted(set(self.groups))
        self.counts = [self.groups.count(kind) for kind in kinds]
        self.shapes = [(kind[1], *grid(*kind[2:])) for kind in kinds]  # [T, H, W] on the network grid, per group
        for cine, cine_grid in zip(self.cines, self.grids):
            cache.prepare(cine, cine_grid)  # read once: fully sampled and finite; maps cached
        self.reader = RawCineReader(self.cines, self.grids, cache)
        self.masks, self.device, self.workers = MaskDrawer(sampling, device), device, workers
        self.generator, self.boxes, self.waited = generator, None, 0.0
        self.raw = True  # scored by the CMRxRecon protocol too (engine.evaluate)
        self._plan, self._loader = _Plan(), None

    def __len__(self) -> int:
        return len(self.cines)

    def shape_of(self, row: int) -> tuple[int, int, int]:
        """``[T, H, W]`` of cine ``row`` on the network grid."""
        return (self.groups[row][1], *self.grids[row])

    def _read(self, batches: list[list[int]]):
        """The batches ``batches`` (lists of rows) as :func:`stack_cines` dicts, read by the workers, which
        outlive an epoch (``persistent_workers``: no start-up cost per epoch) and read ahead."""
        self._plan.batches = batches
        if self._loader is None:
            self._loader = torch.utils.data.DataLoader(
                self.reader, batch_sampler=self._plan, num_workers=self.workers, collate_fn=stack_cines,
                worker_init_fn=_quiet_worker, persistent_workers=self.workers > 0,
                pin_memory=self.device.type == "cuda", generator=torch.Generator())  # never the global generator
        reading = iter(self._loader)
        while True:
            try:
                yield next(reading)
            except StopIteration:
                return
            except DataError as error:  # raised in a worker: torch adds its traceback; keep the one line
                raise DataError(str(error).strip().splitlines()[-1].split("DataError: ", 1)[-1]) from None

    def _on_device(self, read: dict, masks: torch.Tensor) -> dict:
        """The batch of :func:`undersampled` from what the workers read, plus ``rss`` ``[B, T, H0, W0]``."""
        to = {key: value.to(self.device, non_blocking=True) for key, value in read.items() if key != "rows"}
        return {**undersampled(to["target"], masks, to.get("kspace"), to.get("sensitivities")), "rss": to["rss"]}

    def batches(self, order: list[torch.Tensor], start: int = 0):
        """The training batches ``order[start:]`` (rows of each batch: one shape), read ahead by the workers."""
        self.waited = 0.0
        waited = time.perf_counter()
        for read in self._read([batch.tolist() for batch in order[start:]]):
            self.waited += time.perf_counter() - waited
            row = int(read["rows"][0])
            frames, height, width = self.cines[row].shape[1:]
            masks = self.masks.training((frames, height, width), len(read["rows"]), self.generator)  # own rows
            yield self._on_device(read, self._pad_masks(masks, row))
            waited = time.perf_counter()

    def _pad_masks(self, masks: torch.Tensor, row: int) -> torch.Tensor:
        """Masks ``[..., H0, W0]`` drawn on cine ``row``'s own rows, zero-padded (centred) to its grid: the
        padded rows are never measured, the padded columns measured zeros (as the k-space holds there)."""
        height, width = self.shape_of(row)[1:]
        if masks.shape[-2:] == (height, width):
            return masks
        top, left = height // 2 - masks.shape[-2] // 2, width // 2 - masks.shape[-1] // 2
        padded = masks.new_zeros((*masks.shape[:-2], height, width))
        padded[..., top:top + masks.shape[-2], left:left + masks.shape[-1]] = masks
        return padded

    def evaluation_mask(self, row: int, acceleration: float) -> torch.Tensor:
        """The evaluation mask ``[T, H, W]`` of cine ``row`` at ``acceleration`` on its grid."""
        cine = self.cines[row]
        shipped = cine.shipped.get(round(acceleration)) if acceleration == round(acceleration) else None
        mask = self.masks.evaluation(cine.shape[1:], int(self.indices[row]), acceleration, shipped)
        return self._pad_masks(torch.from_numpy(np.ascontiguousarray(mask)).to(self.device), row)

    def chunks(self, rows, batch_size: int, acceleration: float | None = None):
        """``(chunk rows, batch)`` of the cines ``rows`` at ``acceleration`` (default: the run's first), in
        batches of one shape, read ahead by the workers."""
        acceleration = self.masks.accelerations[0] if acceleration is None else acceleration
        rows = np.asarray(rows)
        groups = [[r for r in rows if self.groups[r] == kind] for kind in sorted(set(self.groups))]
        plan = [group[i:i + batch_size] for group in groups for i in range(0, len(group), batch_size)]
        for read in self._read([list(map(int, chunk)) for chunk in plan]):
            chunk = read["rows"].numpy()
            masks = torch.stack([self.evaluation_mask(int(r), acceleration) for r in chunk])
            yield chunk, self._on_device(read, masks)

    def batch(self, rows, acceleration: float | None = None) -> dict:
        """Cines ``rows`` (one shape) read here, with their evaluation masks at ``acceleration`` (default:
        the first of the run's)."""
        rows = [int(r) for r in rows]
        if len({self.groups[r] for r in rows}) > 1:
            raise ValueError(f"rows {rows} hold cines of several shapes")
        acceleration = self.masks.accelerations[0] if acceleration is None else acceleration
        masks = torch.stack([self.evaluation_mask(r, acceleration) for r in rows])
        return self._on_device(stack_cines([self.reader[r] for r in rows]), masks)

    def __getitem__(self, row: int) -> dict:
        return {name: value[0] for name, value in self.batch([row]).items()}


# ----------------------------------------------------------------------------- a run's data (train.py, compare.py)
PHANTOM_SOURCE = Path(__file__).resolve().with_name("phantom.py")


MIN_CALIBRATION_LINES = 4  # the fewest fully sampled centre lines sampling.estimate_sensitivities takes


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
    and notes); then refuse a sampling impossible at that height, at each acceleration: more centre
    lines than a frame's lines (variable density) or than the rows, a uniform mask's acceleration
    that is not an integer, too few centre lines to estimate coil maps from."""
    if scale_lines and height != REFERENCE_HEIGHT:
        lines = scaled_center_lines(height, config["center_lines"])
        notes.append(f"center_lines {config['center_lines']} -> {lines}: {height} rows keep the share of "
                     f"k-space that {config['center_lines']} central lines cover at {REFERENCE_HEIGHT} rows")
        config["center_lines"] = lines
    uniform = config.get("mask_type") == "uniform"
    for acceleration in accelerations(config):
        if uniform and acceleration != round(acceleration):
            raise UserError(f"--acceleration={acceleration:g}: --mask_type=uniform samples every R-th line, R an "
                            f"integer")
        try:  # a uniform mask's R counts the rows outside the centre (CMRxRecon's): no budget of lines to fit in
            check_sampling(height, 1.0 if uniform else acceleration, config["center_lines"])
        except ValueError as error:
            raise UserError(f"sampling of {height}-row images: {error}") from None
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
        check_lines(config, height, [], False)
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

if __name__ == "__main__":
    from cli import not_a_command

    not_a_command("data.py", "convert data files with python formats.py convert INPUT [INPUT ...] --out=FILE "
                              "(python data.py convert moved there)")
