"""BART's ``pics`` (the Berkeley Advanced Reconstruction Toolbox, https://mrirecon.github.io/bart/) as an
external classical baseline: temporal total variation plus spatial l1-wavelet,
``bart pics -R T:1024:0:w -R W:3:0:w/4``, the strongest classical method measured on real cines
(docs/baselines.md). An external program: used only when ``bart`` is on PATH (:func:`available`);
nothing else in cinerecon needs it.

Files: BART reads and writes ``.hdr`` / ``.cfl`` pairs (:func:`write_cfl`, :func:`read_cfl`;
complex64, column-major). Our coil k-space ``[C, T, H, W]`` is BART's ``[W, H, 1, C, 1, ..., T]``
(axis 0 the readout, 1 the phase encoding, 3 the coils, 10 time, :func:`to_bart`); BART's unitary
centred FFT (``fft -u``) is our ``fft2c``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

TIME_DIM = 10  # BART's time axis (0: readout x, 1: phase encoding y, 3: coils)
ITERATIONS = 300  # pics' ADMM iterations: 300 instead of 100 gained 0.7-1.3 dB on real cines (REFERENCES)
WAVELET_SHARE = 0.25  # the wavelet's weight as a share of temporal TV's: BART's best pairing on real cines
GRID = {"weight": (0.001, 0.003, 0.01, 0.03, 0.1, 0.3)}  # BART's weights tried by tuning (relative to its scaling)


class BartError(RuntimeError):
    """``bart`` failed (its message is in the exception)."""


def available() -> str | None:
    """BART's version (``v0.8.00``) when ``bart`` is on PATH and runs, else None."""
    if shutil.which("bart") is None:
        return None
    try:
        done = subprocess.run(["bart", "version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def run(*args, threads: int = 1) -> None:
    """``bart ARGS`` with ``threads`` OpenMP threads; ``BartError`` with its message if it fails."""
    done = subprocess.run(["bart", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if done.returncode:
        raise BartError(f"bart {' '.join(map(str, args))} failed: {(done.stderr or done.stdout).strip()[-300:]}")


# ----------------------------------------------------------------------------- BART's files
def write_cfl(stem, array) -> None:
    """Write ``array`` (any shape, stored as complex64) as BART's ``stem.hdr`` (the dimensions) and
    ``stem.cfl`` (the values, column-major: the first axis varies fastest)."""
    array = np.asarray(array, np.complex64)
    Path(f"{stem}.hdr").write_text("# Dimensions\n" + " ".join(str(n) for n in array.shape) + "\n")
    array.ravel(order="F").tofile(f"{stem}.cfl")


def read_cfl(stem) -> np.ndarray:
    """Read BART's ``stem.hdr`` / ``stem.cfl`` into a complex64 array of the header's shape."""
    lines = Path(f"{stem}.hdr").read_text().splitlines()
    shape = [int(n) for n in lines[lines.index("# Dimensions") + 1].split()]
    return np.fromfile(f"{stem}.cfl", np.complex64).reshape(shape, order="F")


def to_bart(kspace: np.ndarray) -> np.ndarray:
    """Our coil k-space ``[C, T, H, W]`` -> BART's ``[W, H, 1, C, 1, ..., 1, T]`` (11 axes)."""
    return kspace.transpose(3, 2, 0, 1)[:, :, None, :, None, None, None, None, None, None, :]


def from_bart(image: np.ndarray) -> np.ndarray:
    """BART's image ``[W, H, 1, 1, 1, ..., T]`` (pics' output) -> our cine ``[T, H, W]``."""
    width, height = image.shape[:2]
    frames = image.shape[TIME_DIM] if image.ndim > TIME_DIM else 1
    return image.reshape(width, height, frames).transpose(2, 1, 0)


def maps_to_bart(maps: np.ndarray) -> np.ndarray:
    """Our coil maps ``[C, H, W]`` -> BART's ``[W, H, 1, C]``."""
    return maps.transpose(2, 1, 0)[:, :, None, :]


# ----------------------------------------------------------------------------- the baseline
def regularisers(weight: float, wavelet_share: float = WAVELET_SHARE) -> list[str]:
    """pics' ``-R`` options: temporal TV (time is BART's axis 10, flag 1024) of ``weight`` and an
    l1-wavelet over x and y (flags 3) of ``wavelet_share`` times it."""
    return ["-R", f"T:{1 << TIME_DIM}:0:{weight:g}", "-R", f"W:3:0:{wavelet_share * weight:g}"]


def pics(kspace: np.ndarray, mask: np.ndarray, maps: np.ndarray, options: list[str], folder: Path,
         threads: int = 1) -> np.ndarray:
    """``bart pics -S OPTIONS -p mask kspace maps`` of one cine: coil k-space ``[C, T, H, W]``, mask
    ``[T, H, W]``, maps ``[C, H, W]`` -> the cine ``[T, H, W]`` complex64, re-scaled to the data
    (``-S``); files in ``folder``."""
    write_cfl(folder / "kspace", to_bart(kspace))
    write_cfl(folder / "pattern", to_bart(np.asarray(mask)[None]))
    write_cfl(folder / "maps", maps_to_bart(maps))
    run("pics", "-d0", "-S", *options, "-p", folder / "pattern", folder / "kspace", folder / "maps", folder / "recon",
        threads=threads)
    return from_bart(read_cfl(folder / "recon"))


def pics_tv_wavelet(kspace, mask, *, weight: float = 0.01, iterations: int = ITERATIONS,
               wavelet_share: float = WAVELET_SHARE, verbose: bool = False, sensitivities=None):
    """BART's temporal TV + l1-wavelet (``pics -i iterations -R T:1024:0:w -R W:3:0:w/4``) with the
    interface of the baselines.py solvers: kspace ``[T, H, W]`` / ``[B, T, H, W]`` (with
    ``sensitivities`` ``[(B,) C, H, W]``: coil k-space ``[(B,) C, T, H, W]``; single coil: one map
    of ones), mask of the frames' shape, numpy or torch; returns the complex cines of the same kind.
    ``weight`` is relative to BART's own data scaling (pics scales the data by the 90th percentile
    of the zero-filled image's magnitude, or its maximum, and ``-S`` scales the result back), so
    scaling the k-space by ``c`` scales the result by ``c``. BART runs on the CPU with torch's
    thread count; verbose: print the time per cine."""
    import time

    was_tensor = isinstance(kspace, torch.Tensor)
    device = kspace.device if was_tensor else None
    kspace, mask = (np.asarray(a.cpu() if isinstance(a, torch.Tensor) else a) for a in (kspace, mask))
    coils = sensitivities is not None
    single = kspace.ndim == (4 if coils else 3)
    kspace = kspace[None] if single else kspace  # [B, (C,) T, H, W]
    kspace = kspace if coils else kspace[:, None]  # [B, C, T, H, W]
    mask = np.broadcast_to(mask, kspace.shape[:1] + kspace.shape[-3:])
    if coils:
        maps = np.asarray(sensitivities.cpu() if isinstance(sensitivities, torch.Tensor) else sensitivities)
        maps = np.broadcast_to(maps if maps.ndim == 4 else maps[None], kspace.shape[:2] + kspace.shape[-2:])
    else:
        maps = np.ones(kspace.shape[:2] + kspace.shape[-2:], np.complex64)
    options = ["-i", str(iterations), *regularisers(weight, wavelet_share)]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cinerecon_bart_") as folder:
        recons = np.stack([pics(k, m, s, options, Path(folder), torch.get_num_threads())
                           for k, m, s in zip(kspace, mask, maps)])  # [B, T, H, W]
    if verbose:
        seconds = time.perf_counter() - started
        print(f"BART pics: {len(recons)} cine(s), {iterations} iterations, {seconds:.2f} s, "
              f"{seconds / len(recons):.3f} s per cine", flush=True)
    recons = recons[0] if single else recons
    return torch.from_numpy(recons).to(device) if was_tensor else recons


if __name__ == "__main__":
    from cli import not_a_command

    not_a_command("bart_pics.py", "BART pics runs with python compare.py NAME --baselines=bart_pics (needs bart on "
                                  "PATH) or python benchmarks/bart_crosscheck.py")
