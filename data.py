"""Cine datasets: loading ``cine.npz``, the embedded phantom default, the 4:1:2 split, and the
undersampled training examples.

A dataset is an array ``[nsamples, nt, nx, ny]`` (real magnitude or complex), every cine
normalised so that its largest magnitude is 1 (PSNR with peak 1 is then meaningful).
"""
from __future__ import annotations

import argparse
import importlib
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from cli import UserError, cli_errors
from sampling import MaskSampler, fft2c, ifft2c, variable_density_mask

MASK_MODES = ("fixed", "random")


# ----------------------------------------------------------------------------- loading
class DataError(UserError):
    """A data file that cannot be used; the message names the file and the problem."""


def _read_array(path: Path, key: str | None) -> np.ndarray:
    """Read the cine array from a .npy or .npz file without ever unpickling."""
    with open(path, "rb") as file:
        magic = file.read(6)
    if magic[:4] != b"PK\x03\x04" and magic != b"\x93NUMPY":
        raise DataError(f"{path}: not a .npy/.npz file (its content is neither a numpy array nor a zip archive)")
    try:
        loaded = np.load(path, allow_pickle=False)
    except ValueError as error:
        if "allow_pickle" in str(error):
            raise DataError(f"{path}: holds pickled Python objects, which are refused for safety; "
                            f"save a plain numeric array") from None
        raise DataError(f"{path}: not a readable .npy/.npz file ({error})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as error:
        raise DataError(f"{path}: not a readable .npy/.npz file ({error})") from None
    if isinstance(loaded, np.ndarray):
        return loaded
    with loaded:
        names = list(loaded.files)
        if key is None:
            if "dataset" in names:
                key = "dataset"
            elif len(names) == 1:
                key = names[0]
            else:
                raise DataError(f"{path}: no array named 'dataset' and {len(names)} arrays to choose from "
                                f"({', '.join(names) or 'none'}); name one with key=...")
        if key not in names:
            raise DataError(f"{path}: no array named {key!r} (found: {', '.join(names) or 'none'})")
        try:
            return loaded[key]
        except ValueError as error:
            if "allow_pickle" in str(error):
                raise DataError(f"{path}: array {key!r} holds pickled Python objects, refused for safety") from None
            raise DataError(f"{path}: array {key!r} cannot be read ({error})") from None
        except (OSError, EOFError, zipfile.BadZipFile) as error:
            raise DataError(f"{path}: array {key!r} cannot be read ({error})") from None


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
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a .npz or .npy file")
    if path.suffix.lower() not in (".npz", ".npy"):
        raise DataError(f"{path}: unsupported file type {path.suffix or '(none)'}; expected .npz or .npy "
                        f"(convert other formats with: python data.py convert ...)")
    return normalize(check_cines(_read_array(path, key), str(path)))


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

    ``batch(rows)`` returns a dict of ``[B, T, H, W]`` tensors: ``aliased`` (complex64
    zero-filled image ``F^-1 U F m``), ``target`` (the fully sampled cine), ``mask`` (float32)
    and ``kspace`` (complex64 sampled k-space ``U F m``). ``dataset[i]`` is the same without B.
    """

    def __init__(self, images: torch.Tensor, indices, *, mask_mode: str = "fixed", train: bool = False,
                 acceleration: float = 5, center_lines: int = 11, density: str = "gaussian",
                 seed: int = 0, generator: torch.Generator | None = None):
        if mask_mode not in MASK_MODES:
            raise UserError(f"mask_mode must be one of {MASK_MODES}, got {mask_mode!r}")
        self.images = images  # [N, T, H, W]
        self.indices = np.asarray(indices)
        self.draw_fresh = mask_mode == "random" and train
        _, frames, height, width = images.shape
        self.sampling = dict(acceleration=acceleration, center_lines=center_lines, density=density)
        self.sampler = MaskSampler(height, width, device=images.device, **self.sampling)
        self.generator = generator
        if mask_mode == "fixed":
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
        kspace = fft2c(target) * mask  # [B, T, H, W] complex
        return {"aliased": ifft2c(kspace), "target": target, "mask": mask, "kspace": kspace}

    def __getitem__(self, row: int) -> dict[str, torch.Tensor]:
        return {name: value[0] for name, value in self.batch([row]).items()}


# ----------------------------------------------------------------------------- other formats
# Readers for the formats public cine data come in, each returning cines ``[n, t, x, y]`` in the file's
# own dtype (x = image rows, the phase-encoding axis of the project's masks; y = columns):
#
# - NIfTI (ACDC ``patientXXX_4d.nii.gz``): the voxel array ``(i, j, slice, t)`` as stored, no
#   reorientation by the affine; every slice becomes one cine ``[t, i, j]`` (i -> rows, j -> columns).
# - DICOM: a folder holding one slice's frames; frames ordered by TriggerTime, then InstanceNumber;
#   RescaleSlope/RescaleIntercept applied; pixel rows -> x, columns -> y.
# - MATLAB ``.mat`` v5 (scipy) and v7.3 (HDF5, h5py; its arrays are stored transposed and are
#   transposed back), and ``.npy`` / ``.npz``: a 4-D array is ``[n, t, x, y]`` and a 3-D one a single
#   cine ``[t, x, y]`` unless ``axes`` says otherwise (``"xyt"``, ``"xytn"``: letters n, t, x, y in the
#   array's axis order, MATLAB's ``size()`` order for .mat files).
#
# nibabel, pydicom and h5py are optional extras (requirements-extras.txt), imported only when needed.

EXTRAS_HINT = "pip install -r requirements-extras.txt"
CINE_AXES = "ntxy"


def _optional(module: str, source, what: str):
    """Import the optional extra ``module`` or raise a one-line ``DataError`` saying what to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataError(f"{source}: reading {what} needs {module}: {EXTRAS_HINT}") from None


def read_nifti(path: Path) -> tuple[np.ndarray, str]:
    """A 4-D NIfTI cine volume ``(x, y, slice, t)`` -> ``[slice, t, x, y]`` (one cine per slice; empty
    slices, which some volumes hold beyond the heart, are skipped)."""
    nibabel = _optional("nibabel", path, "NIfTI")
    try:
        volume = np.asanyarray(nibabel.load(path).dataobj)  # scl_slope/scl_inter applied
    except (nibabel.filebasedimages.ImageFileError, OSError, EOFError, ValueError, zlib.error) as error:
        raise DataError(f"{path}: not a readable NIfTI file ({error})") from None
    if volume.ndim != 4:
        raise DataError(f"{path}: expected a 4-D (x, y, slice, time) cine volume, got shape {volume.shape}")
    x, y, slices, frames = volume.shape
    cines = volume.transpose(2, 3, 0, 1)
    signal = cines.reshape(slices, -1).any(1)
    skipped = f", {int((~signal).sum())} empty slice(s) skipped" if not signal.all() else ""
    return cines[signal], f"NIfTI {x}x{y}x{slices}x{frames} (x, y, slice, t), one cine per slice{skipped}"


def _frame_order(frames: list) -> tuple[list, str]:
    """Sort ``(path, dataset)`` pairs by TriggerTime, then InstanceNumber (whichever every frame has)."""
    keys = [name for name in ("TriggerTime", "InstanceNumber") if all(name in ds for _, ds in frames)]
    if not keys:
        raise DataError(f"{frames[0][0].parent}: cannot order the frames: they lack TriggerTime and InstanceNumber")
    ordered = sorted(frames, key=lambda item: tuple(float(item[1].get(name)) for name in keys))
    return ordered, " then ".join(keys)


def read_dicom_series(folder: Path) -> tuple[np.ndarray, str]:
    """One slice's DICOM cine (a folder of single-frame images) -> ``[1, t, rows, columns]`` float32.

    Files that are not DICOM images (DICOMDIR, notes) are skipped; frames of more than one slice
    position or of different sizes are refused.
    """
    pydicom = _optional("pydicom", folder, "DICOM")
    frames, skipped = [], 0
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            dataset = pydicom.dcmread(path)
        except (pydicom.errors.InvalidDicomError, OSError, EOFError, ValueError):
            skipped += 1
            continue
        if "PixelData" in dataset:
            frames.append((path, dataset))
        else:
            skipped += 1
    if not frames:
        raise DataError(f"{folder}: no DICOM images in this folder")
    positions = {tuple(round(float(v), 3) for v in ds.ImagePositionPatient)
                 for _, ds in frames if "ImagePositionPatient" in ds}
    if len(positions) > 1:
        raise DataError(f"{folder}: frames of {len(positions)} slice positions; put one slice's cine per folder")
    frames, order = _frame_order(frames)
    images = []
    for path, dataset in frames:
        try:
            pixels = dataset.pixel_array
        except (AttributeError, NotImplementedError, RuntimeError, ValueError) as error:
            raise DataError(f"{path}: cannot decode the pixel data ({error})") from None
        if pixels.ndim != 2 or (images and pixels.shape != images[0].shape):
            expected = f"{images[0].shape}, like the first frame" if images else "rows x columns"
            raise DataError(f"{path}: image of shape {pixels.shape}; expected one grey-scale frame of {expected}")
        slope, intercept = (float(dataset.get(name, default)) for name, default in
                            (("RescaleSlope", 1.0), ("RescaleIntercept", 0.0)))
        images.append(pixels.astype(np.float32) * slope + intercept)
    note = f", {skipped} non-image file(s) skipped" if skipped else ""
    rows, columns = images[0].shape
    return (np.stack(images)[None],
            f"DICOM series of {len(images)} frames {rows}x{columns}, ordered by {order}{note}")


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _is_hdf5(path: Path) -> bool:
    """MATLAB v7.3 files are HDF5 with a 512-byte user block: the signature sits at 0, 512, 1024, ..."""
    with open(path, "rb") as file:
        head = file.read(2056)
    return any(head[offset:offset + 8] == HDF5_SIGNATURE for offset in (0, 512, 1024, 2048))


def _pick(names: dict, key: str | None, path: Path) -> str:
    """The variable to read: ``key``, else the only array of 3 or more dimensions (names: name -> shape)."""
    found = ", ".join(f"{name} {tuple(shape)}" for name, shape in names.items()) or "none"
    if key is not None:
        if key not in names:
            raise DataError(f"{path}: no numeric array named {key!r} (found: {found})")
        return key
    cines = [name for name, shape in names.items() if len(shape) >= 3]
    if len(cines) != 1:
        raise DataError(f"{path}: {len(cines)} arrays of 3 or more dimensions (found: {found}); name one with --key")
    return cines[0]


def _read_mat5(path: Path, key: str | None) -> np.ndarray:
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        variables = loadmat(path)
    except (MatReadError, ValueError, NotImplementedError, TypeError, OSError) as error:
        raise DataError(f"{path}: not a readable MATLAB .mat file ({error})") from None
    numeric = {name: value.shape for name, value in variables.items() if not name.startswith("__")
               and isinstance(value, np.ndarray) and value.dtype.kind in "iufc"}
    return variables[_pick(numeric, key, path)]


def _read_mat73(path: Path, key: str | None) -> np.ndarray:
    h5py = _optional("h5py", path, "MATLAB v7.3 .mat files")
    try:
        with h5py.File(path, "r") as file:
            numeric = {name: item.shape[::-1] for name, item in file.items()
                       if isinstance(item, h5py.Dataset) and "MATLAB_empty" not in item.attrs
                       and (item.dtype.kind in "iuf" or item.dtype.names == ("real", "imag"))
                       and item.attrs.get("MATLAB_class", b"double") not in (b"char", b"logical")}
            array = file[_pick(numeric, key, path)][()]
    except OSError as error:
        raise DataError(f"{path}: not a readable MATLAB v7.3 (HDF5) file ({error})") from None
    if array.dtype.names:  # MATLAB complex: a compound of real and imaginary parts
        array = array["real"] + 1j * array["imag"]
    return array.T  # HDF5 holds MATLAB's column-major array with the axes reversed


def read_mat(path: Path, key: str | None = None) -> tuple[np.ndarray, str]:
    """A MATLAB array (v5 via scipy, v7.3 via h5py) in MATLAB's axis order, and its description."""
    version = "v7.3" if _is_hdf5(path) else "v5"
    array = _read_mat73(path, key) if version == "v7.3" else _read_mat5(path, key)
    return array, f"MATLAB {version} array {'x'.join(map(str, array.shape))}"


def to_cine_axes(array: np.ndarray, axes: str | None, source) -> np.ndarray:
    """Reorder ``array`` whose axes are named by ``axes`` (letters n, t, x, y; default ``ntxy`` for
    4-D and ``txy`` for 3-D) to ``[n, t, x, y]``; a 3-D array is one cine."""
    if axes is None:
        if array.ndim not in (3, 4):
            raise DataError(f"{source}: expected [t, x, y] or [n, t, x, y], got shape {array.shape}; "
                            f"name its axes with --axes (e.g. xyt)")
        axes = CINE_AXES[4 - array.ndim:]
    if (len(set(axes)) != len(axes) or not set("txy") <= set(axes) <= set(CINE_AXES)
            or len(axes) != array.ndim):
        raise DataError(f"{source}: --axes {axes!r} does not describe shape {array.shape}: give one letter per "
                        f"axis from n, t, x, y (t, x and y required, n optional)")
    array = array.transpose([axes.index(name) for name in CINE_AXES if name in axes])
    return array if "n" in axes else array[None]


def read_cines(path, key: str | None = None, axes: str | None = None) -> tuple[np.ndarray, str]:
    """Cines ``[n, t, x, y]`` (the file's dtype, not normalised) from a NIfTI file, a DICOM folder, a
    ``.mat``, ``.npy`` or ``.npz`` file, and a one-line description. ``key`` names the array in
    .mat/.npz files; ``axes`` describes .mat/.npy/.npz layouts (see :func:`to_cine_axes`)."""
    path = Path(path)
    name = path.name.lower()
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        return read_dicom_series(path)
    if name.endswith((".nii", ".nii.gz")):
        return read_nifti(path)
    if name.endswith(".dcm"):
        raise DataError(f"{path}: a DICOM cine is a folder of frames: give the folder {path.parent}")
    if name.endswith(".mat"):
        array, description = read_mat(path, key)
    elif name.endswith((".npy", ".npz")):
        array = _read_array(path, key)
        description = f"{name.rsplit('.', 1)[1]} array {'x'.join(map(str, array.shape))}"
    else:
        raise DataError(f"{path}: unsupported file type; expected .nii/.nii.gz, .mat, .npy, .npz or a DICOM folder")
    cines = to_cine_axes(array, axes, path)
    return cines, f"{description} (axes {axes or CINE_AXES[4 - array.ndim:]})"


# ----------------------------------------------------------------------------- conforming
def resample_frames(cines: np.ndarray, frames: int) -> np.ndarray:
    """Resample ``[n, t, x, y]`` to ``frames`` frames spanning the same cardiac cycle.

    A cine is one periodic heartbeat, so the interpolation is periodic: output frame k sits at time
    ``k * t / frames`` (frame 0 stays frame 0) and the last frames blend back into the first. Linear
    interpolation between the two neighbouring frames is used rather than Fourier resampling: every
    output is a convex combination of measured frames, so magnitudes stay non-negative and within
    their measured range (no temporal ringing around the fast systolic motion). It smooths slightly
    and, when reducing frames, does not low-pass first; ``select_frames`` keeps measured frames instead.
    """
    total = cines.shape[1]
    if frames == total:
        return cines
    position = np.arange(frames) * total / frames
    before = np.floor(position).astype(int)
    weight = (position - before).astype(np.float32)[None, :, None, None]
    return (1 - weight) * cines[:, before] + weight * cines[:, (before + 1) % total]


def select_frames(cines: np.ndarray, frames: int, source="cines") -> np.ndarray:
    """Keep ``frames`` evenly spaced frames of ``[n, t, x, y]``: frame ``floor(k * t / frames)``."""
    total = cines.shape[1]
    if frames > total:
        raise DataError(f"{source}: cannot select {frames} frames from {total}; resample instead (drop --select)")
    return cines[:, np.arange(frames) * total // frames]


def crop_or_pad(array, size: tuple[int, int]):
    """Centre crop and/or zero-pad the last two axes of a numpy array to ``size`` (rows, columns).

    The pixel at ``(H // 2, W // 2)`` (the FFT centre of sampling.fft2c) moves to ``(h // 2, w // 2)``,
    so padding then cropping back returns the original, in the image or in k-space.
    """
    index = [slice(None)] * array.ndim
    padding = [(0, 0)] * array.ndim
    for axis, new in zip((array.ndim - 2, array.ndim - 1), size):
        old = array.shape[axis]
        if new <= old:
            start = old // 2 - new // 2
            index[axis] = slice(start, start + new)
        else:
            before = new // 2 - old // 2
            padding[axis] = (before, new - old - before)
    array = array[tuple(index)]
    return np.pad(array, padding) if any(any(p) for p in padding) else array


def conform(cines: np.ndarray, frames: int | None = None, size: tuple[int, int] | None = None,
            select: bool = False, source="cines") -> tuple[np.ndarray, list[str]]:
    """Crop/pad float32/complex64 ``[n, t, x, y]`` to ``size`` and resample (or ``select``) to ``frames``;
    returns the result and notes on what changed."""
    notes = []
    _, total, height, width = cines.shape
    if size is not None and size != (height, width):
        cines = crop_or_pad(cines, size)
        notes.append(f"size {height}x{width} -> {size[0]}x{size[1]} (centre crop/zero-pad)")
    if frames is not None and frames != total:
        if select:
            cines = select_frames(cines, frames, source)
            notes.append(f"frames {total} -> {frames} (evenly spaced frames selected)")
        else:
            cines = resample_frames(cines, frames)
            notes.append(f"frames {total} -> {frames} (periodic linear interpolation)")
    return cines, notes


# ----------------------------------------------------------------------------- convert command
def save_npz(path, **arrays) -> None:
    """``np.savez`` through a temporary file and a rename: never half a file at ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as file:
            np.savez(file, **arrays)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_output(path) -> Path:
    """A new ``.npz`` path in an existing folder; an existing file is never overwritten."""
    path = Path(path)
    if path.suffix.lower() != ".npz":
        raise UserError(f"{path}: the output must be a .npz file")
    if path.exists():
        raise UserError(f"{path}: already exists; choose another --out or remove it first")
    if not path.parent.is_dir():
        raise UserError(f"{path.parent}: no such folder for the output")
    return path


def _same(values: dict, what: str, option: str) -> None:
    """Refuse inputs that differ in ``what`` (values: source -> value) when ``option`` is not given."""
    if len(set(values.values())) > 1:
        detail = ", ".join(f"{value} in {source}" for source, value in list(values.items())[:4])
        raise UserError(f"the inputs have different {what} ({detail}); choose one with {option}")


def convert(inputs, out, *, frames: int | None = None, size: tuple[int, int] | None = None,
            key: str | None = None, axes: str | None = None, select: bool = False, log=print) -> np.ndarray:
    """Read and validate every input, conform it (:func:`conform`), normalise each cine to peak
    magnitude 1 and write ``out`` (.npz, array ``dataset`` ``[N, T, H, W]``).

    Magnitude and complex inputs mixed give complex64 output. Returns the dataset written.
    """
    out = check_output(out)
    parts = {}
    for source in map(Path, inputs):
        cines, description = read_cines(source, key, axes)
        cines = check_cines(cines, str(source))
        read = f"{len(cines)} cine(s) of {cines.shape[1]} frames of {cines.shape[2]}x{cines.shape[3]}"
        cines, notes = conform(cines, frames, size, select, source)
        parts[source] = check_cines(cines, str(source))  # cropping may leave a cine without signal
        log(f"{source}: {description}: {read}" + "".join(f"; {note}" for note in notes))
    _same({s: c.shape[1] for s, c in parts.items()}, "frame counts", "--frames")
    _same({s: "x".join(map(str, c.shape[2:])) for s, c in parts.items()}, "image sizes", "--size")
    kinds = {np.iscomplexobj(c) for c in parts.values()}
    dataset = normalize(np.concatenate([c.astype(np.complex64) if kinds == {True, False} else c
                                        for c in parts.values()]))
    save_npz(out, dataset=dataset)
    kind = "complex" if np.iscomplexobj(dataset) else "magnitude"
    log(f"wrote {out}: dataset [{', '.join(map(str, dataset.shape))}] {dataset.dtype} ({kind}), every cine "
        f"scaled to peak magnitude 1" + ("; magnitude inputs made complex" if len(kinds) > 1 else ""))
    return dataset


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _size(text: str) -> tuple[int, int]:
    """``192`` -> (192, 192); ``192x160`` -> (192, 160)."""
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise argparse.ArgumentTypeError(f"expected SIZE or HEIGHTxWIDTH (e.g. 192 or 192x160), got {text!r}")
    return int(parts[0]), int(parts[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python data.py", description="Cine dataset tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser(
        "convert", help="convert NIfTI / DICOM / .mat / .npy / .npz cines to one cine.npz",
        description="Read cines from NIfTI 4-D volumes (one cine per slice), DICOM folders (one slice each), "
                    ".mat (v5, v7.3), .npy or .npz files; crop/pad, resample in time, normalise each cine to "
                    "peak 1 and write one .npz holding 'dataset' [N, T, H, W].")
    command.add_argument("inputs", nargs="+", metavar="INPUT", help="files or DICOM folders (mixing allowed)")
    command.add_argument("--out", required=True, help="the .npz to write (never overwritten)")
    command.add_argument("--frames", type=_positive, help="frames per cine (periodic linear interpolation)")
    command.add_argument("--select", action="store_true", help="with --frames: keep evenly spaced frames instead")
    command.add_argument("--size", type=_size, help="image size SIZE or HxW: centre crop/zero-pad")
    command.add_argument("--key", help="array name in .mat/.npz files (default: 'dataset' or the only one)")
    command.add_argument("--axes", help="axis order of .mat/.npy/.npz arrays, e.g. xyt or xytn "
                                        "(default ntxy / txy; MATLAB size() order for .mat)")
    command.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    if args.select and args.frames is None:
        command.error("--select needs --frames")
    convert(args.inputs, args.out, frames=args.frames, size=args.size, key=args.key, axes=args.axes,
            select=args.select)


if __name__ == "__main__":
    with cli_errors():  # bad input: one line on stderr, exit status 2 (--debug: traceback)
        main()
