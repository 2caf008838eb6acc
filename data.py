"""Cine datasets: loading ``cine.npz`` safely, the 4:1:2 split, and the undersampled examples.

A dataset is an array ``[nsamples, nt, nx, ny]`` (real magnitude or complex), every cine
normalised so that its largest magnitude is 1 (PSNR with peak 1 is then meaningful).
"""
from __future__ import annotations

import hashlib
import math
import os
import tokenize
import zipfile
import zlib
from contextlib import suppress
from pathlib import Path

import numpy as np
import torch

from cli import UserError, check_readable
from sampling import MASK_TYPES, MaskSampler, sense_adjoint, undersample, uniform_mask, variable_density_mask

MASK_MODES = ("fixed", "random")
# The memory budget of reading one file: the data it declares (arrays as stored, decompressed bytes,
# DICOM elements) may take at most READ_EXPANSION times the file's size on disk plus READ_ALLOWANCE,
# and are checked against it before anything is allocated or decompressed. Real cines compress 2-4
# times; an array of zeros a thousand times. Loading must also fit in the memory available.
READ_EXPANSION, READ_ALLOWANCE = 64, 64 * 2 ** 20
MEMINFO = Path("/proc/meminfo")
CGROUP = Path("/sys/fs/cgroup")  # cgroup v2: memory.max and memory.current


# ----------------------------------------------------------------------------- loading
class DataError(UserError):
    """A data file that cannot be used; the message names the file and the problem."""


def available_memory() -> int:
    """Bytes of memory this process can still use: the system's ``MemAvailable``, or what a cgroup
    limit leaves if that is less."""
    found = []
    with suppress(OSError, ValueError, IndexError):
        found += [int(line.split()[1]) * 1024 for line in MEMINFO.read_text().splitlines()
                  if line.startswith("MemAvailable:")]
    with suppress(OSError, ValueError):
        limit = (CGROUP / "memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int((CGROUP / "memory.current").read_text()))
    return min(found) if found else os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def format_bytes(count: float) -> str:
    """``38654705664000`` -> ``'35.2 TiB'``."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024


def check_memory(source: str, needed: int, what: str) -> None:
    """Refuse, before allocating, work that needs more than the memory available (``what`` says
    what needs ``needed`` bytes)."""
    available = available_memory()
    if needed > available:
        raise DataError(f"{source}: {what} would need about {format_bytes(needed)} of memory, more than the "
                        f"{format_bytes(available)} available")


def read_budget(stored: int) -> int:
    """Bytes of data that reading a file of ``stored`` bytes may produce (see ``READ_EXPANSION``)."""
    return READ_EXPANSION * stored + READ_ALLOWANCE


def check_declared(source: str, declared: int, stored: int, what: str) -> None:
    """Refuse a file of ``stored`` bytes whose ``what`` declares ``declared`` bytes of data, more than
    its read budget (:func:`read_budget`): a small file never takes gigabytes."""
    budget = read_budget(stored)
    if declared > budget:
        raise DataError(f"{source}: {what} declares {format_bytes(declared)} of data in a file of "
                        f"{format_bytes(stored)}, more than the read budget of {format_bytes(budget)} "
                        f"({READ_EXPANSION} times the file's size plus {format_bytes(READ_ALLOWANCE)})")


def header_number(source: str, what: str, value, low: float, high: float, integer: bool = False):
    """``value``, a number read from a file's header (``what`` names the field), if it is a finite
    number (an integer with ``integer``) from ``low`` to ``high``; else a one-line ``DataError``.
    Every number of a header that sizes, scales or places data goes through this before it is used."""
    kind = "an integer" if integer else "a number"
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    if integer and math.isfinite(number) and number != int(number):
        number = math.nan
    if not (math.isfinite(number) and low <= number <= high):
        shown = "missing" if value is None else (repr(value) if isinstance(value, str) else str(value))[:40]
        raise DataError(f"{source}: {what} is {shown}: expected {kind} from {low:g} to {high:g}")
    return int(number) if integer else number


def loading_bytes(shape, dtype) -> int:
    """Memory that loading an array needs: as stored, converted to float32/complex64, normalised."""
    dtype = np.dtype(dtype)
    return math.prod(shape) * (dtype.itemsize + 2 * (8 if dtype.kind == "c" else 4))


def _npy_header(file, source: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from the ``.npy`` header at the start of ``file`` (nothing else is read)."""
    try:
        version = np.lib.format.read_magic(file)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"format version {version[0]}.{version[1]}, not 1.0 or 2.0")
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(file)
    except (ValueError, TypeError, SyntaxError, EOFError, tokenize.TokenError) as error:
        reason = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
        raise DataError(f"{source}: not a readable .npy/.npz file (malformed .npy header: {reason})") from None
    return tuple(shape), dtype


def _check_size(source: str, shape, dtype, stored: int, on_disk: int) -> None:
    """Refuse a header that promises more data than ``stored`` bytes, more than the read budget of a
    file of ``on_disk`` bytes, or more than memory holds."""
    if dtype.hasobject:
        raise DataError(f"{source}: holds pickled Python objects, which are refused for safety; "
                        f"save a plain numeric array")
    claimed = math.prod(shape) * dtype.itemsize
    if stored < claimed:
        raise DataError(f"{source}: truncated or damaged: its header describes an array {tuple(shape)} of {dtype} "
                        f"({format_bytes(claimed)}) but it holds {format_bytes(stored)} of data")
    check_declared(source, claimed, on_disk, f"the array {tuple(shape)} of {dtype}")
    check_memory(source, loading_bytes(shape, dtype), f"loading the array {tuple(shape)} of {dtype}")


def _choose_key(path: Path, names: list[str], key: str | None) -> str:
    """The array to read from an ``.npz`` holding ``names``: ``key``, else 'dataset', else the only one."""
    if key is None:
        if "dataset" in names:
            return "dataset"
        if len(names) == 1:
            return names[0]
        raise DataError(f"{path}: no array named 'dataset' and {len(names)} arrays to choose from "
                        f"({', '.join(names) or 'none'}); name one with key=...")
    if key not in names:
        raise DataError(f"{path}: no array named {key!r} (found: {', '.join(names) or 'none'})")
    return key


def array_header(path, key: str | None = None) -> tuple[str | None, tuple[int, ...], np.dtype]:
    """``(array name in an .npz or None, shape, dtype)`` of a .npy/.npz file, read from its headers
    alone (numpy's format header; for an .npz that of the zip member). Only regular files are read;
    a header that promises more data than the file holds, or more than memory holds, is refused
    before anything is allocated."""
    path = check_readable(path, expected="a .npz or .npy file", error=DataError)
    with open(path, "rb") as file:
        magic = file.read(6)
        if magic == b"\x93NUMPY":
            file.seek(0)
            shape, dtype = _npy_header(file, str(path))
            size = path.stat().st_size
            _check_size(str(path), shape, dtype, size - file.tell(), size)
            return None, shape, dtype
    if magic[:4] != b"PK\x03\x04":
        raise DataError(f"{path}: not a .npy/.npz file (its content is neither a numpy array nor a zip archive)")
    try:
        with zipfile.ZipFile(path) as archive:
            members = {name[:-4] if name.endswith(".npy") else name: name for name in archive.namelist()}
            key = _choose_key(path, list(members), key)
            info = archive.getinfo(members[key])
            with archive.open(info) as member:
                shape, dtype = _npy_header(member, f"{path}: array {key!r}")
                offset = member.tell()
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError) as error:
        raise DataError(f"{path}: not a readable .npy/.npz file ({error})") from None
    _check_size(f"{path}: array {key!r}", shape, dtype, info.file_size - offset, path.stat().st_size)
    return key, shape, dtype


def read_array(path: Path, key: str | None) -> np.ndarray:
    """Read an array from a .npy or .npz file (``key``: its name in an .npz) without ever unpickling,
    after checking its header (:func:`array_header`)."""
    key, _, _ = array_header(path, key)
    source = str(path) if key is None else f"{path}: array {key!r}"
    try:
        if key is None:
            return np.load(path, allow_pickle=False)
        with np.load(path, allow_pickle=False) as loaded:
            return loaded[key]
    except ValueError as error:
        if "allow_pickle" in str(error):
            raise DataError(f"{source}: holds pickled Python objects, which are refused for safety; "
                            f"save a plain numeric array") from None
        raise DataError(f"{source}: cannot be read ({error})") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise DataError(f"{source}: cannot be read ({error})") from None


def check_cines(array: np.ndarray, source: str) -> np.ndarray:
    """Validate a ``[nsamples, nt, nx, ny]`` array and return it as float32 or complex64.

    Integer images (as DICOM/NIfTI often hold) become float32; booleans, strings and objects,
    empty arrays, other ranks, NaN/Inf and all-zero cines raise ``DataError`` naming ``source``.
    """
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.number)):
        raise DataError(f"{source}: dtype {array.dtype} is not numeric image data "
                        f"(expected float, complex or integer values)")
    if array.ndim != 4:
        hint = "; for a single cine save x[None]" if array.ndim == 3 else ""
        raise DataError(f"{source}: expected 4 dimensions [nsamples, nt, nx, ny], "
                        f"got {array.ndim} with shape {tuple(array.shape)}{hint}")
    if array.size == 0:
        raise DataError(f"{source}: the array is empty (shape {tuple(array.shape)})")
    array = array.astype(np.complex64 if np.iscomplexobj(array) else np.float32, copy=False)
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(array.size - finite.sum())
        first = int(np.argwhere(~finite.reshape(array.shape[0], -1).all(1))[0, 0])
        raise DataError(f"{source}: {bad} NaN/Inf values (first in cine {first})")
    peaks = np.abs(array).reshape(array.shape[0], -1).max(1)
    if (peaks == 0).any():
        raise DataError(f"{source}: cine {int(np.argmin(peaks))} is all zeros and cannot be normalised")
    return array


def normalize(cines: np.ndarray) -> np.ndarray:
    """Scale every cine ``[N, T, H, W]`` so that its largest magnitude is 1."""
    peaks = np.abs(cines).reshape(cines.shape[0], -1).max(1)
    return (cines / peaks[:, None, None, None]).astype(cines.dtype, copy=False)


def load_cine(path, key: str | None = None) -> np.ndarray:
    """Load ``[nsamples, nt, nx, ny]`` cines from ``.npz`` (array ``dataset``, ``key``, or the only
    array) or ``.npy``; real or complex. Returns float32/complex64, each cine with peak magnitude 1.
    Raises ``DataError`` (one line naming the file) for anything unusable.
    """
    return normalize(check_cines(read_array(cine_file(path), key), str(path)))


def cine_file(path) -> Path:
    """``path`` if it is a regular ``.npz``/``.npy`` file, else a one-line ``DataError``."""
    path = check_readable(path, expected="a .npz or .npy file", error=DataError)
    if path.suffix.lower() not in (".npz", ".npy"):
        raise DataError(f"{path}: unsupported file type {path.suffix or '(none)'}; expected .npz or .npy "
                        f"(convert other formats with: python formats.py convert ...)")
    return path


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
    each came from: whole subjects go to one split, so no subject is in two. Subjects are shuffled
    by ``seed`` and dealt to the splits in the 4:1:2 proportions of their cine counts."""
    names, which = np.unique(np.asarray(subjects), return_inverse=True)
    if len(names) < len(ratios):
        raise UserError(f"{len(names)} subject(s) cannot be split into train/val/test by subject: "
                        f"at least {len(ratios)} are needed")
    order = np.random.default_rng(seed).permutation(len(names))
    sizes = np.bincount(which, minlength=len(names))[order]  # cines per subject, shuffled
    shares = np.cumsum(ratios)[:-1] / sum(ratios) * sizes.sum()
    cuts = np.searchsorted(np.cumsum(sizes), shares, side="left") + 1
    cuts = np.clip(cuts, np.arange(1, len(ratios)), len(names) - np.arange(len(ratios) - 1, 0, -1))
    groups = np.split(order, cuts)  # subject ids of train, val, test
    return tuple(np.flatnonzero(np.isin(which, group)) for group in groups)


def optional_array(path, name: str) -> np.ndarray | None:
    """The array ``name`` of an .npz beside its 'dataset', or None if the file has none."""
    path = Path(path)
    if path.suffix.lower() != ".npz":
        return None
    with np.load(path, allow_pickle=False) as loaded:
        if name not in loaded.files:
            return None
    return read_array(path, name)


def load_subjects(path) -> np.ndarray | None:
    """The ``subject`` array ``[N]`` of an .npz written by ``python formats.py convert`` (the file,
    patient or series each cine came from), or None if the file has none."""
    subjects = optional_array(path, "subject")
    if subjects is not None and subjects.ndim != 1:
        raise DataError(f"{path}: array 'subject' of shape {list(subjects.shape)}: expected one name per cine [N]")
    return subjects


def check_boxes(boxes: np.ndarray, count: int, shape: tuple[int, int], source: str) -> np.ndarray:
    """Heart boxes as int64 ``[count, 4]`` ``(row0, row1, col0, col1)``, half-open, in pixels of
    ``shape`` (H, W) images: given per cine ``[count, 4]`` or one ``[4]`` for every cine."""
    boxes = np.asarray(boxes)
    if boxes.shape == (4,):
        boxes = np.tile(boxes, (count, 1))
    if boxes.shape != (count, 4) or not np.issubdtype(boxes.dtype, np.integer):
        raise DataError(f"{source}: heart boxes must be integers [{count}, 4] or [4] (row0, row1, col0, col1), "
                        f"got {boxes.dtype} {list(boxes.shape)}")
    height, width = shape
    bad = ((boxes[:, 0] < 0) | (boxes[:, 1] > height) | (boxes[:, 0] >= boxes[:, 1])
           | (boxes[:, 2] < 0) | (boxes[:, 3] > width) | (boxes[:, 2] >= boxes[:, 3]))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{source}: heart box {boxes[i].tolist()} of cine {i} is not inside its {height}x{width} "
                        f"images (0 <= row0 < row1 <= {height}, 0 <= col0 < col1 <= {width})")
    return boxes.astype(np.int64)


def load_boxes(path, count: int, shape: tuple[int, int]) -> np.ndarray | None:
    """The ``heart_box`` array of an .npz (written by ``formats.py convert --heart_box`` or
    ``phantom.py``) checked by :func:`check_boxes`, or None if the file has none."""
    boxes = optional_array(path, "heart_box")
    return None if boxes is None else check_boxes(boxes, count, shape, f"{path}: array 'heart_box'")


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
                 acceleration: float = 5, center_lines: int = 11, density: str = "gaussian",
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
        self.draw_fresh = mask_mode == "random" and train and mask_type == "variable_density"
        _, frames, height, width = images.shape
        self.sampling = dict(acceleration=acceleration, center_lines=center_lines, density=density)
        self.sampler = MaskSampler(height, width, device=images.device, **self.sampling)
        self.generator = generator
        if mask_type == "uniform":
            mask = torch.from_numpy(uniform_mask(images.shape[1:], round(acceleration), center_lines))
            self.masks = mask.to(images.device).expand(len(images), -1, -1, -1)  # [N, T, H, W] view of one mask
        elif mask_mode == "fixed":
            mask = self.seeded_mask(seed)
            self.masks = mask.expand(len(images), -1, -1, -1)  # [N, T, H, W] view of one mask set
        elif not self.draw_fresh:
            self.masks = torch.stack([self.seeded_mask(mask_seed(seed, int(i))) for i in self.indices])

    def seeded_mask(self, seed: int) -> torch.Tensor:
        """The mask set ``[T, H, W]`` of ``seed``, drawn on the CPU so every device gets the same."""
        mask = variable_density_mask(self.images.shape[1:], seed=seed, **self.sampling)
        return torch.from_numpy(mask).to(self.images.device)

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, rows) -> dict[str, torch.Tensor]:
        rows = torch.as_tensor(rows, device=self.images.device)
        target = self.images[rows]  # [B, T, H, W]
        if self.draw_fresh:
            mask = self.sampler(target.shape[0] * target.shape[1], self.generator).view(target.shape)
        else:
            mask = self.masks[rows]  # [B, T, H, W]
        if self.coils is None:
            aliased, kspace = undersample(target, mask)  # [B, T, H, W] complex each
            batch = {"aliased": aliased, "target": target, "mask": mask, "kspace": kspace}
        else:
            maps = self.coils["sensitivities"][rows]  # [B, C, H, W]
            kspace = self.coils["kspace"][rows] * mask[:, None]  # [B, C, T, H, W]: every coil, the frame's mask
            batch = {"aliased": sense_adjoint(kspace, maps, mask), "target": target, "mask": mask, "kspace": kspace,
                     "sensitivities": maps}
        if self.boxes is not None:
            batch["box"] = torch.as_tensor(self.boxes, device=target.device)[rows]  # [B, 4]
        return batch

    def __getitem__(self, row: int) -> dict[str, torch.Tensor]:
        return {name: value[0] for name, value in self.batch([row]).items()}


class SizeGroups:
    """Training cines as groups of one image size each: one ``CineDataset`` per size, all drawing
    their masks from one generator. Rows are numbered across the groups (group 0 first), and a
    batch must come from one group (as ``engine.size_batches`` makes them).

    ``batch(rows)`` returns the dict of ``[B, T, H_g, W_g]`` tensors of that group's
    ``CineDataset.batch``; ``fill(cines, boxes, coils)`` replaces every group's cines (and heart boxes,
    and with coils their coil k-space and maps, see ``CineDataset``) by new ones of the same shapes
    (fresh phantom cines).
    """

    def __init__(self, groups: list[CineDataset]):
        self.groups = groups
        self.generator = groups[0].generator
        self.offsets = np.cumsum([0] + [len(group) for group in groups])  # [G + 1] first row of each group

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


if __name__ == "__main__":
    from cli import not_a_command

    not_a_command("data.py", "convert data files with python formats.py convert INPUT [INPUT ...] --out=FILE "
                              "(python data.py convert moved there)")
