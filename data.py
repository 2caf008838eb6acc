"""Cine datasets: loading ``cine.npz`` safely, the 4:1:2 split, and the undersampled examples.

A dataset is an array ``[nsamples, nt, nx, ny]`` (real magnitude or complex), every cine
normalised so that its largest magnitude is 1 (PSNR with peak 1 is then meaningful).
"""
from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import os
import time
import tokenize
import zipfile
import zlib
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from cli import UserError, atomic_write, check_readable, make_folder

if TYPE_CHECKING:
    from formats import RawVolume
from sampling import (MASK_TYPES, MaskSampler, center_rows, coil_combine, estimate_sensitivities, ifft2c, sense_adjoint,
                      undersample, uniform_mask, variable_density_mask)

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


def read_array_item(path: Path, key: str, index: int) -> np.ndarray:
    """Item ``index`` of the first axis of the array ``key`` of an ``.npz`` (``array[index]``), read alone:
    the zip member is streamed up to that item (a compressed member is decompressed on the way, never
    held), so memory holds one item whatever the array's size. The header is checked first
    (:func:`array_header`); a Fortran-ordered array is refused (its items are not contiguous)."""
    key, shape, dtype = array_header(path, key)
    source = f"{path}: array {key!r}"
    if not 0 <= index < shape[0]:
        raise DataError(f"{source}: item {index} of {shape[0]}")
    size = math.prod(shape[1:]) * dtype.itemsize
    try:
        with zipfile.ZipFile(path) as archive:
            with archive.open(f"{key}.npy" if f"{key}.npy" in archive.namelist() else key) as member:
                version = np.lib.format.read_magic(member)
                read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                        else np.lib.format.read_array_header_2_0)
                _, fortran, _ = read(member)
                if fortran:
                    raise DataError(f"{source}: stored in Fortran order; save it in C order (np.ascontiguousarray)")
                member.seek(member.tell() + index * size)
                raw = member.read(size)
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise DataError(f"{source}: cannot be read ({error})") from None
    if len(raw) != size:
        raise DataError(f"{source}: truncated at item {index}")
    return np.frombuffer(raw, dtype).reshape(shape[1:]).copy()


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
    from formats import inspect_kspace, read_mask_file

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
    from formats import crop_or_pad, read_kspace_slice

    kspace, measured = read_kspace_slice(cine.volume, cine.slice)  # [C, T, H, W], [T, H, W]
    if not measured.all():
        raise DataError(f"{cine.volume.path}: slice {cine.slice} is not fully sampled ({measured.mean():.0%} of "
                        f"its k-space holds data): training needs fully sampled k-space (reconstruct undersampled "
                        f"files with python reconstruct.py --kspace)")
    return kspace if grid is None else crop_or_pad(kspace, grid)


def coil_image(kspace: np.ndarray, maps: np.ndarray | None) -> np.ndarray:
    """The image of fully sampled k-space ``[C, T, H, W]``: ``F^-1 y`` for one coil, ``S^H F^-1 y`` with
    ``maps`` ``[C, H, W]``; ``[T, H, W]`` complex64, computed as the coil phantom's
    (``engine.render_coil_phantom``), in torch."""
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
            from formats import read_mask_file
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
        from formats import crop_or_pad

        own = fully_sampled_slice(self.cines[i])  # [C, T, H0, W0]
        kspace = crop_or_pad(own, self.grids[i])  # [C, T, H, W]
        maps = self.cache.maps(self.cines[i], self.grids[i]) if len(own) > 1 else None  # [C, H, W]
        image = coil_image(kspace, maps)  # [T, H, W]
        scale = (1 / np.abs(image).max()).astype(np.float32)  # peak 1, as the coil phantom (engine.render_coil_phantom)
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
    so a batch never mixes shapes; ``counts``/``shapes`` describe the groups (``engine.size_batches``
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


if __name__ == "__main__":
    from cli import not_a_command

    not_a_command("data.py", "convert data files with python formats.py convert INPUT [INPUT ...] --out=FILE "
                              "(python data.py convert moved there)")
