"""External cross-check: BART's ``pics`` beside our solvers on the same multi-coil k-space and masks.

    python benchmarks/bart_crosscheck.py [--cines=2] [--frames=20] [--size=64] [--coils=8] [--acceleration=8]

BART (the Berkeley Advanced Reconstruction Toolbox, https://mrirecon.github.io/bart/; Debian/Ubuntu
package ``bart``, see docs/baselines.md) must be on PATH. The data: ``--cines`` 8-coil phantom cines
(``phantom.make_coil_dataset``, with coil noise), each undersampled by two masks at ``--acceleration``:

- ``variable density``: our per-frame random masks (``sampling.variable_density_mask``), with the
  study's centre lines scaled to the image height (11 at 192 rows, never fewer than 4, the fewest
  ESPIRiT takes);
- ``uniform``: a CMRxRecon-style equispaced mask, the same in every frame
  (``sampling.uniform_mask``), with 24 centre lines at 192 rows (8 at 64); the acceleration counts
  the rows outside the centre, as in CMRxRecon, so its overall acceleration is lower (printed).

Our methods use our ESPIRiT maps (``sampling.estimate_sensitivities``, sigpy); BART's use ``bart
ecalib`` on the same calibration data (the central rows every frame samples, averaged over the
frames; one map, no crop, as ours). Printed: one table of PSNR (magnitudes, dB, mean over the cines)
and seconds per cine of zero-filled (``A^H y``), view sharing, our k-t sparse and L+S (Otazo's
multi-coil iterations, ``baselines.py``) and ``bart pics`` with an l1-wavelet (``-R W:3:0:w``), a
temporal total-variation (``-R T:1024:0:w``) and a locally low-rank (``-R L:3:3:w``) regulariser;
then the pair this cross-check is for, each with the weight pairing w, w/4 and OUR maps for both (so
that only the solvers differ): our temporal TV + wavelet (``baselines.tv_wavelet``, ADMM run to its
minimiser, ``lambda_t = w`` and ``lambda_w = w / 4`` from ``--tv_weights``) and
``bart pics -i N -R T:1024:0:w -R W:3:0:w/4`` (``bart_pics.pics_tv_wavelet``, ``N`` =
``--bart_iterations``), and the gap between them. Every regularisation weight is picked from a
small grid by PSNR on the FIRST cine (ours from ``baselines.KT_GRID`` / ``LPLUSS_GRID`` /
``--tv_weights``, BART's from ``--weights``), so that cine's score is optimistic for every tuned
method alike. BART's times include starting the process and its .cfl
files; its threads follow ``--threads`` (``OMP_NUM_THREADS``), as torch's do. ``--checkpoint=PATH``
adds a trained network (a train.py checkpoint) with our maps: its denoisers see coil-combined cines
and its data consistency is the SENSE one (``models``' coil convention).
"""
from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bart_pics  # noqa: E402
from bart_pics import BartError, from_bart, read_cfl, to_bart, write_cfl  # noqa: E402,F401 (BART's files, tested here)
from baselines import KT_GRID, LPLUSS_GRID, kt_sparse, low_rank_plus_sparse, tune, tv_wavelet, view_sharing  # noqa: E402
from checkpoint import load_trained_model  # noqa: E402
from cli import UserError, cli_errors, non_negative, positive, run_command  # noqa: E402
from formats import check_memory  # noqa: E402
from metrics import psnr  # noqa: E402
from models import size_multiple  # noqa: E402
from phantom import make_coil_dataset, phantom_bytes  # noqa: E402
from sampling import (calibration_lines, center_rows, estimate_sensitivities, scaled_center_lines,  # noqa: E402
                      sense_adjoint, uniform_mask, variable_density_mask)

PICS = {"bart pics l1-wavelet": "W:3:0:{}", "bart pics temporal TV": "T:1024:0:{}",
        "bart pics locally low rank": "L:3:3:{}"}  # -R options, {} the weight
OURS = {"k-t sparse": (kt_sparse, KT_GRID), "L+S": (low_rank_plus_sparse, LPLUSS_GRID)}
AGREEMENT_DB = 0.3  # our temporal TV + wavelet and BART's agree when their mean PSNRs differ by less


def bart(*args, threads: int) -> None:
    """Run ``bart ARGS`` with ``threads`` OpenMP threads; raise ``UserError`` with its message if it fails."""
    try:
        bart_pics.run(*args, threads=threads)
    except BartError as error:
        raise UserError(str(error)) from None


# ----------------------------------------------------------------------------- data
def calibration(kspace: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The calibration k-space ``[C, H, W]`` both ESPIRiTs get: the central rows that every frame
    samples (``sampling.calibration_lines``), averaged over the frames, zero elsewhere.
    kspace ``[C, T, H, W]``, mask ``[T, H, W]``."""
    rows = center_rows(mask.shape[-2], calibration_lines(mask))
    averaged = np.zeros((kspace.shape[0], *kspace.shape[-2:]), np.complex64)  # [C, H, W]
    averaged[:, rows] = kspace[:, :, rows].mean(1)
    return averaged


def masks(cines: int, frames: int, size: int, acceleration: int, seed: int) -> dict[str, np.ndarray]:
    """The two sampling schemes, each ``[N, T, H, W]``: our variable-density masks (one per cine) and
    the CMRxRecon-style uniform mask (the same for every cine)."""
    shape = (frames, size, size)
    random_lines = max(4, scaled_center_lines(size))
    uniform = uniform_mask(shape, acceleration, scaled_center_lines(size, 24))
    return {"variable density": np.stack([variable_density_mask(shape, acceleration, random_lines, seed=seed + i)
                                          for i in range(cines)]),
            "uniform": np.repeat(uniform[None], cines, 0)}


# ----------------------------------------------------------------------------- methods
def timed(solve, cines: int) -> tuple[np.ndarray, float]:
    """``solve(i)`` for every cine ``i`` -> (the cines ``[N, T, H, W]``, seconds per cine)."""
    started = time.perf_counter()
    recons = np.stack([np.asarray(solve(i)) for i in range(cines)])
    return recons, (time.perf_counter() - started) / cines


def our_rows(kspace, mask, maps, reference) -> list[dict]:
    """Zero-filled, view sharing, and our tuned k-t sparse and L+S on coil k-space ``[N, C, T, H, W]``
    with our maps ``[N, C, H, W]``: rows ``{method, weight, recons, seconds}``."""
    rows = []
    for name, solve in (("zero-filled", lambda i: sense_adjoint(kspace[i], maps[i], mask[i])),
                        ("view sharing", lambda i: view_sharing(kspace[i], mask[i], sensitivities=maps[i]))):
        recons, seconds = timed(solve, len(kspace))
        rows.append(dict(method=name, weight="", recons=recons, seconds=seconds))
    for name, (solver, grid) in OURS.items():
        best, _ = tune(solver, kspace[:1], mask[:1], reference[:1], grid, sensitivities=maps[:1])
        recons, seconds = timed(lambda i: solver(kspace[i], mask[i], sensitivities=maps[i], **best), len(kspace))
        rows.append(dict(method=name, weight=" ".join(f"{k}={v:g}" for k, v in best.items()), recons=recons,
                         seconds=seconds))
    return rows


def network_row(checkpoint: str, kspace, mask, maps) -> dict:
    """A trained network on coil k-space ``[N, C, T, H, W]`` with our maps ``[N, C, H, W]``, as a row
    of :func:`our_rows`: each cine is divided by the peak of its zero-filled ``A^H y`` (as
    reconstruct.py normalises) and the result multiplied back."""
    model, config = load_trained_model(checkpoint)
    size = kspace.shape[-1]
    if size % size_multiple(config):
        raise UserError(f"{checkpoint}: the network takes sizes that are multiples of {size_multiple(config)}; "
                        f"this run has {size}")

    def solve(i: int) -> np.ndarray:
        y, u, s = (torch.from_numpy(np.ascontiguousarray(a[i:i + 1])) for a in (kspace, mask, maps))
        aliased = sense_adjoint(y, s, u)  # [1, T, H, W]
        peak = aliased.abs().max()
        with torch.no_grad():
            return (model(aliased / peak, y / peak, u, sensitivities=s) * peak)[0].numpy()

    recons, seconds = timed(solve, len(kspace))
    return dict(method=f"network {Path(checkpoint).name}", weight="", recons=recons, seconds=seconds)


def bart_maps(kspace, mask, folder: Path, threads: int) -> list[Path]:
    """``bart ecalib`` maps of every cine (one set, no crop, kernel at most half the calibration
    lines, as ours): their file stems."""
    stems = []
    for i, (cine, cine_mask) in enumerate(zip(kspace, mask)):
        lines = calibration_lines(cine_mask)
        write_cfl(folder / f"calib{i}", to_bart(calibration(cine, cine_mask)[:, None]))
        bart("ecalib", "-m1", "-c0", "-r", lines, "-k", min(6, lines // 2), folder / f"calib{i}", folder / f"maps{i}",
             threads=threads)
        stems.append(folder / f"maps{i}")
    return stems


def pics(i: int, regulariser: str, kspace, mask, maps: list[Path], folder: Path, threads: int) -> np.ndarray:
    """``bart pics`` of cine ``i`` with ``-R regulariser``, re-scaled to the data (``-S``): ``[T, H, W]``."""
    write_cfl(folder / f"kspace{i}", to_bart(kspace[i]))
    write_cfl(folder / f"pattern{i}", to_bart(mask[i][None]))
    bart("pics", "-d0", "-S", "-R", regulariser, "-p", folder / f"pattern{i}", folder / f"kspace{i}", maps[i],
         folder / f"recon{i}", threads=threads)
    return from_bart(read_cfl(folder / f"recon{i}"))


def bart_rows(kspace, mask, reference, weights, threads: int) -> list[dict]:
    """Every ``PICS`` regulariser, its weight tuned on the first cine: rows as :func:`our_rows`."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="bart_crosscheck_") as tmp:
        folder = Path(tmp)
        maps = bart_maps(kspace, mask, folder, threads)
        for name, option in PICS.items():
            scores = {w: psnr(pics(0, option.format(w), kspace, mask, maps, folder, threads), reference[0])
                      for w in weights}
            best = max(scores, key=scores.get)
            recons, seconds = timed(lambda i: pics(i, option.format(best), kspace, mask, maps, folder, threads),
                                    len(kspace))
            rows.append(dict(method=name, weight=f"w={best:g}", recons=recons, seconds=seconds))
    return rows


def tv_wavelet_rows(kspace, mask, maps, reference, tv_weights, bart_weights, bart_iterations: int,
                    wavelet_shifts: int = 1) -> list[dict]:
    """Our temporal TV + wavelet (``wavelet_shifts`` cycle spinning) and BART's, both with the pairing
    w, w/4 and our maps ``[N, C, H, W]``, each weight tuned on the first cine: rows as :func:`our_rows`."""
    share = bart_pics.WAVELET_SHARE

    def ours(i: int, w: float) -> np.ndarray:
        return tv_wavelet(kspace[i], mask[i], lambda_t=w, lambda_w=share * w, wavelet_shifts=wavelet_shifts,
                          sensitivities=maps[i])

    def theirs(i: int, w: float) -> np.ndarray:
        try:
            return bart_pics.pics_tv_wavelet(kspace[i], mask[i], weight=w, iterations=bart_iterations,
                                             sensitivities=maps[i])
        except BartError as error:
            raise UserError(str(error)) from None

    rows = []
    spinning = f", {wavelet_shifts}x{wavelet_shifts} wavelet shifts" if wavelet_shifts > 1 else ""
    for name, solve, weights in ((f"temporal TV + wavelet (ours{spinning})", ours, tv_weights),
                                 (f"bart pics temporal TV + wavelet, {bart_iterations} iterations", theirs,
                                  bart_weights)):
        best = max(weights, key=lambda w: psnr(solve(0, w), reference[0]))
        recons, seconds = timed(lambda i: solve(i, best), len(kspace))
        rows.append(dict(method=name, weight=f"w={best:g}, w/{1 / share:g}", recons=recons, seconds=seconds))
    return rows


# ----------------------------------------------------------------------------- the benchmark
def crosscheck(*, cines: int = 2,  # phantom cines (weights are tuned on the first)
               frames: int = 20,  # frames per cine
               size: int = 64,  # rows and columns (H = W); 192 is the study's size
               coils: int = 8,  # receive coils
               acceleration: int = 8,  # both masks' acceleration (uniform: outside the centre block)
               weights: str = "0.003,0.01,0.03,0.1,0.3",  # BART's regularisation weights tried, comma-separated
               tv_weights: str = "0.001,0.003,0.01,0.03,0.1",  # our temporal TV weights tried (wavelet: a quarter)
               bart_iterations: int = bart_pics.ITERATIONS,  # pics' iterations for temporal TV + wavelet
               wavelet_shifts: int = 1,  # our wavelet's cycle spinning: shifts per axis (1 = none; BART's are random)
               threads: int = 0,  # torch and BART threads; 0 = torch's default
               seed: int = 0,  # phantom and mask seed
               checkpoint: str = "") -> None:  # a trained network to add (train.py's best.pt); "" = none
    """Print BART's pics beside our solvers on one multi-coil phantom (see the module docstring)."""
    if shutil.which("bart") is None:
        raise UserError("bart is not on PATH: install BART (Debian/Ubuntu: apt-get install bart; "
                        "see docs/baselines.md, 'BART cross-check')")
    check_memory(f"--cines={cines} --frames={frames} --size={size} --coils={coils}",  # their product, not each alone
                 phantom_bytes(cines, frames, size, coils, copies=2),  # the coil k-space, then its undersampled copy
                 f"{cines} phantom cine(s) of {frames}x{size}x{size} through {coils} coils")
    if threads:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    data = make_coil_dataset(cines, frames=frames, size=size, seed=seed, coils=coils)
    reference = data["reference"]  # [N, T, H, W]
    print(f"{cines} phantom cine(s) of {frames}x{size}x{size}, {coils} coils, {threads} thread(s); "
          f"weights tuned by PSNR on cine 0", flush=True)
    print("| mask | method | weight | PSNR (dB) | per cine (dB) | s per cine |\n| --- | --- | --- | --- | --- | --- |")
    for scheme, mask in masks(cines, frames, size, acceleration, seed).items():
        kspace = data["kspace"] * mask[:, None]  # [N, C, T, H, W]
        started = time.perf_counter()
        maps = estimate_sensitivities(kspace, mask)  # [N, C, H, W]
        label = f"{scheme} ({size / mask[..., 0].sum(-1).mean():.1f}x overall)"  # rows / sampled rows per frame
        print(f"| {label} | our ESPIRiT maps | | | | {(time.perf_counter() - started) / cines:.2f} |", flush=True)
        rows = our_rows(kspace, mask, maps, reference) + ([network_row(checkpoint, kspace, mask, maps)]
                                                           if checkpoint else [])
        bart_weights = [float(w) for w in weights.split(",")]
        pair = tv_wavelet_rows(kspace, mask, maps, reference, [float(w) for w in tv_weights.split(",")],
                               bart_weights, bart_iterations, wavelet_shifts)
        means = []
        for row in rows + bart_rows(kspace, mask, reference, bart_weights, threads) + pair:
            scores = [psnr(recon, target) for recon, target in zip(row["recons"], reference)]
            means.append(np.mean(scores))
            print(f"| {label} | {row['method']} | {row['weight']} | {np.mean(scores):.2f} | "
                  f"{' '.join(f'{s:.2f}' for s in scores)} | {row['seconds']:.2f} |", flush=True)
        gap = means[-2] - means[-1]
        print(f"| {label} | ours minus BART (temporal TV + wavelet) | | {gap:+.2f} | "
              f"{'agree' if abs(gap) < AGREEMENT_DB else 'differ'} (within {AGREEMENT_DB} dB?) | |", flush=True)


if __name__ == "__main__":
    with cli_errors():
        run_command(crosscheck, sys.argv[1:], prog="python benchmarks/bart_crosscheck.py",
                    parsers={"cines": positive, "frames": positive, "size": positive, "coils": positive,
                             "acceleration": positive, "bart_iterations": positive, "wavelet_shifts": positive,
                             "threads": non_negative})
