"""Cine datasets: loading ``cine.npz`` safely, the 4:1:2 split, and the undersampled examples.

A dataset is an array ``[nsamples, nt, nx, ny]`` (real magnitude or complex), every cine
normalised so that its largest magnitude is 1 (PSNR with peak 1 is then meaningful).
"""
from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

from cli import UserError, cli_errors
from sampling import MaskSampler, undersample, variable_density_mask

MASK_MODES = ("fixed", "random")


# ----------------------------------------------------------------------------- loading
class DataError(UserError):
    """A data file that cannot be used; the message names the file and the problem."""


def read_array(path: Path, key: str | None) -> np.ndarray:
    """Read an array from a .npy or .npz file (``key``: its name in an .npz) without ever unpickling."""
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
                        f"(convert other formats with: python formats.py convert ...)")
    return normalize(check_cines(read_array(path, key), str(path)))


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

    boxes: ``[N, 4]`` heart boxes ``(row0, row1, col0, col1)`` for region-of-interest metrics, or None.

    ``batch(rows)`` returns a dict of ``[B, T, H, W]`` tensors: ``aliased`` (complex64
    zero-filled image ``F^-1 U F m``), ``target`` (the fully sampled cine), ``mask`` (float32)
    and ``kspace`` (complex64 sampled k-space ``U F m``). ``dataset[i]`` is the same without B.
    """

    def __init__(self, images: torch.Tensor, indices, *, mask_mode: str = "fixed", train: bool = False,
                 acceleration: float = 5, center_lines: int = 11, density: str = "gaussian",
                 seed: int = 0, generator: torch.Generator | None = None, boxes: np.ndarray | None = None):
        if mask_mode not in MASK_MODES:
            raise UserError(f"mask_mode must be one of {MASK_MODES}, got {mask_mode!r}")
        self.images = images  # [N, T, H, W]
        self.indices = np.asarray(indices)
        self.boxes = None if boxes is None else np.asarray(boxes)  # [N, 4] heart boxes (row0, row1, col0, col1)
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
        aliased, kspace = undersample(target, mask)  # [B, T, H, W] complex each
        return {"aliased": aliased, "target": target, "mask": mask, "kspace": kspace}

    def __getitem__(self, row: int) -> dict[str, torch.Tensor]:
        return {name: value[0] for name, value in self.batch([row]).items()}


if __name__ == "__main__":  # the convert command's former home: python data.py convert == python formats.py convert
    from formats import main

    with cli_errors():
        main(sys.argv[1:])
