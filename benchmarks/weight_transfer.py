"""Which scale should the relative weights of temporal TV + wavelet multiply, so that a weight tuned on
phantom validation cines is near the best weight on other data? The evidence behind
``baselines.penalty_scales`` (docs/baselines.md, "Which scale the weights multiply").

    python benchmarks/weight_transfer.py --part=grid --data=phantom        # then pincat, coils8, phantom128
    python benchmarks/weight_transfer.py --part=grid --data=coils8 --cines=2 --coarse=true   # a quicker grid
    python benchmarks/weight_transfer.py --part=table [--method=lplus_s]   # the tables, from the saved grids

- ``grid``: every cine of a data set reconstructed by ``baselines.tv_wavelet`` on a grid of
  thresholds (``lambda_t``, ``lambda_w`` relative to ``max|x0|``, factors of 2 and about 3; ``--method=lplus_s``:
  ``low_rank_plus_sparse`` on ``lambda_l``, ``lambda_s``), its PSNR saved per cine with every candidate
  scale of the cine (:func:`candidate_scales`) to ``output/weight_transfer/DATA_METHOD.json``. Data sets: ``phantom``, the first 8 validation cines of the CPU
  scale-down (complex 20x64x64, 5x, 4 centre lines: compare.py's tuning cines); ``pincat``, PINCAT at 20
  frames (``--pincat``, 128x128, 5x, 11 centre lines, the mask compare.py gives it); ``coils8``, the first
  4 validation cines of the noisy 8-coil phantom at 8x (64x64, ESPIRiT maps); ``phantom128``, the first 4
  magnitude phantom validation cines rendered like PINCAT (compare.py's tuning cines for ``--split=all``).
- ``table``: for every candidate scale, the best weights of each data set (the mean PSNR over its cines,
  interpolated on the log grid) and what each data set loses at the phantom's best weights.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from baselines import (_data_step, _prepare, casorati, from_shifted, initial_cine, largest_singular_value,  # noqa: E402
                       low_rank_plus_sparse, temporal_difference, temporal_fft, tv_wavelet, wavelet_details,
                       wavelet_forward)
from cli import UserError, cli_errors, run_command  # noqa: E402
from metrics import batch_psnr  # noqa: E402

DATASETS = ("phantom", "pincat", "coils8", "phantom128")
SOLVERS = {"tv_wavelet": tv_wavelet, "lplus_s": low_rank_plus_sparse}
GRIDS = {  # the weights tried, in the solvers' own scales (max|x0|; L+S: sigma_max(x0), max|F_t x0|)
    "tv_wavelet": {"lambda_t": tuple(0.0005 * 2 ** k for k in range(8)),
                   "lambda_w": (0.00003, 0.0001, 0.0003, 0.001, 0.003)},
    "lplus_s": {"lambda_l": tuple(0.001 * 3 ** k for k in range(6)),
                "lambda_s": tuple(0.0003 * 3 ** k for k in range(5))},
}
NATIVE = {"tv_wavelet": ("peak", "peak"), "lplus_s": ("singular", "spectrum")}  # the scales the solvers use


def dataset(name: str, pincat: str) -> dict:
    """``{"kspace", "mask", "target", "sensitivities"}`` of the data set ``name`` (see the docstring)."""
    from compare import phantom_validation, sampling_of
    from data import CineDataset, load_images, make_datasets
    from formats import load_cine
    from settings import train_defaults
    cpu = torch.device("cpu")
    if name in ("phantom", "coils8"):
        config = {**train_defaults(), "image_size": 64, "num_samples": 100, "center_lines": 4, "mask_mode": "random",
                  **({"coils": 8, "acceleration": 8.0} if name == "coils8" else {})}
        images, _, meta = load_images(config, [], False)
        _, val_set, _ = make_datasets(images, config, cpu, meta)
        return val_set.batch(list(range(8 if name == "phantom" else 4)))
    config = {**train_defaults(), "data": pincat, "acceleration": 5.0, "center_lines": 11, "num_samples": 100}
    if name == "pincat":
        images = torch.from_numpy(load_cine(pincat)[:1])  # [1, T, H, W]
        return CineDataset(images, np.arange(1), **sampling_of(config, "random")).batch([0])
    frames, height, width = load_cine(pincat).shape[1:]
    config.update(in_channels=frames, image_size=[height, width], phantom_phase=False)
    return phantom_validation(config, 4, "random", cpu).batch(list(range(4)))


def candidate_scales(batch: dict) -> dict[str, list[float]]:
    """Every candidate scale of every cine of ``batch``, from its zero-filled ``x0 = A^H y``
    ``[B, T, H, W]``: its largest magnitude (``peak``, the scale before), percentiles and rms of ``|x0|``,
    the rms and median of ``|D_t x0|``, the rms of the wavelet details of ``x0`` and the median magnitude
    of the finest ones (``wavelet_mad``, Donoho's noise estimate), and the rms of what view sharing
    fills in (``fill``, an estimate of the aliasing)."""
    maps = batch.get("sensitivities")
    kspace, sampled, _, single = _prepare(batch["kspace"], batch["mask"], maps)
    _, x0, maps = _data_step(kspace, sampled, maps, single)
    magnitude = x0.abs().flatten(1)  # [B, T H W]
    differences = temporal_difference(x0).abs().flatten(1)
    coefficients = wavelet_forward(from_shifted(x0)).abs()  # [B, T, H', W']
    details = coefficients[..., wavelet_details(*x0.shape[-2:], like=x0) > 0]  # [B, T, n]
    half_h, half_w = coefficients.shape[-2] // 2, coefficients.shape[-1] // 2
    finest = torch.cat([coefficients[..., :half_h, half_w:].flatten(1), coefficients[..., half_h:, :].flatten(1)], 1)
    fill = (initial_cine(kspace, sampled, "view_sharing", maps) - x0).abs().flatten(1)

    def rms(values: torch.Tensor) -> torch.Tensor:
        return values.square().mean(1).sqrt()

    scales = {"peak": magnitude.amax(1), "p99": magnitude.quantile(0.99, dim=1), "p90": magnitude.quantile(0.9, dim=1),
              "rms": rms(magnitude), "tv_rms": rms(differences), "tv_median": differences.median(1).values,
              "wavelet_rms": rms(details.flatten(1)), "wavelet_mad": finest.median(1).values, "fill": rms(fill),
              "singular": largest_singular_value(casorati(x0)), "spectrum": temporal_fft(x0).abs().flatten(1).amax(1)}
    pixels = x0.shape[-2] * x0.shape[-1]
    scales.update({f"{key}_casorati": scales[key] * math.sqrt(pixels) for key in ("p90", "fill", "rms")})
    return {key: value.tolist() for key, value in scales.items()}


def grid(name: str, method: str, pincat: str, out: Path, cines: int, coarse: bool) -> None:
    """Save the PSNR of every cine of ``name`` (its first ``cines``, 0: all) on the weights of ``GRIDS``
    (``coarse``: every other value of the first weight) and the cines' candidate scales."""
    batch = dataset(name, pincat)
    batch = {key: value[:cines or None] for key, value in batch.items()}
    maps = batch.get("sensitivities")
    (first, firsts), (second, seconds) = GRIDS[method].items()
    firsts = firsts[::2] if coarse else firsts
    psnrs = np.zeros((len(batch["target"]), len(firsts), len(seconds)))
    started = time.perf_counter()
    for i, a in enumerate(firsts):
        for j, b in enumerate(seconds):
            recon = SOLVERS[method](batch["kspace"], batch["mask"], **{first: a, second: b}, sensitivities=maps)
            psnrs[:, i, j] = batch_psnr(recon, batch["target"]).numpy()
        print(f"{name} {method}: {first} {a:g} done, best {psnrs[:, i].mean(0).max():.2f} dB "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    record = {"data": name, "method": method, "grid": {first: list(firsts), second: list(seconds)},
              "psnr": psnrs.tolist(), "scales": candidate_scales(batch)}
    (out / f"{name}_{method}.json").write_text(json.dumps(record))
    print(f"wrote {out / f'{name}_{method}.json'}")


# ----------------------------------------------------------------------------- the tables
NORMALISATIONS = {  # name: (the scales of the two weights of tv_wavelet: temporal TV, wavelet)
    "largest magnitude of x0 (the current scale)": ("peak", "peak"),
    "99th percentile of the magnitudes of x0": ("p99", "p99"),
    "90th percentile of the magnitudes of x0": ("p90", "p90"),
    "rms of x0": ("rms", "rms"),
    "rms of D_t x0, of Psi x0 details": ("tv_rms", "wavelet_rms"),
    "median magnitude of D_t x0, MAD of the finest wavelet details": ("tv_median", "wavelet_mad"),
    "rms of the view-sharing fill": ("fill", "fill"),
}
LPLUSS_NORMALISATIONS = {  # the scales of L+S's lambda_l (Casorati singular values) and lambda_s (temporal spectrum)
    "sigma_max(x0), largest magnitude of F_t x0 (the current scales)": ("singular", "spectrum"),
    "90th percentile of the magnitudes of x0 (x sqrt(H W) for lambda_l)": ("p90_casorati", "p90"),
    "rms of x0 (x sqrt(H W) for lambda_l)": ("rms_casorati", "rms"),
    "rms of the view-sharing fill (x sqrt(H W) for lambda_l)": ("fill_casorati", "fill"),
}


def log_interpolate(surface: np.ndarray, firsts, seconds, t: float, w: float) -> float:
    """A cine's PSNR ``[len(firsts), len(seconds)]`` at the solver's own weights ``(t, w)``, bilinear in the
    logarithms of the weights; NaN outside the grid."""
    u = np.interp(math.log(t), np.log(firsts), np.arange(len(firsts)), left=np.nan, right=np.nan)
    v = np.interp(math.log(w), np.log(seconds), np.arange(len(seconds)), left=np.nan, right=np.nan)
    if np.isnan(u) or np.isnan(v):
        return float("nan")
    i, j = min(int(u), len(firsts) - 2), min(int(v), len(seconds) - 2)
    a, b = u - i, v - j
    return float((1 - a) * (1 - b) * surface[i, j] + a * (1 - b) * surface[i + 1, j] + (1 - a) * b * surface[i, j + 1]
                 + a * b * surface[i + 1, j + 1])


def mean_psnr(record: dict, scales: tuple[str, str], t: float, w: float) -> float:
    """The mean PSNR of a data set's cines at weights ``(t, w)`` relative to ``scales``."""
    method, found = record["method"], record["scales"]
    (firsts, seconds), native = record.get("grid", GRIDS[method]).values(), NATIVE[method]
    values = [log_interpolate(np.asarray(surface), firsts, seconds, t * found[scales[0]][c] / found[native[0]][c],
                              w * found[scales[1]][c] / found[native[1]][c])
              for c, surface in enumerate(record["psnr"])]
    return float(np.mean(values))


def best_weights(record: dict, scales: tuple[str, str]) -> tuple[float, float, float]:
    """``(t, w, PSNR)``: the weights relative to ``scales`` with the highest mean PSNR, searched over a
    log grid of 8 points per factor of 10 (wide enough for every candidate scale) and every cine's grid
    points in those units (so the native scales find the grid's own best)."""
    found, native = record["scales"], NATIVE[record["method"]]
    fine = 10 ** np.arange(-6, 1.001, 1 / 8)
    axes = [sorted({*fine, *(value * found[native[k]][c] / found[scales[k]][c] for value in grid_values
                                for c in range(len(record["psnr"])))})
            for k, grid_values in enumerate(record.get("grid", GRIDS[record["method"]]).values())]
    rows = [(t, w, mean_psnr(record, scales, t, w)) for t in axes[0] for w in axes[1]]
    return max((row for row in rows if not math.isnan(row[2])), key=lambda row: row[2])


def table(method: str, out: Path) -> None:
    paths = {name: out / f"{name}_{method}.json" for name in DATASETS}
    records = {name: json.loads(path.read_text()) for name, path in paths.items() if path.exists()}
    if "phantom" not in records:
        raise UserError(f"{paths['phantom']} is missing: run --part=grid --data=phantom --method={method} first")
    others = [name for name in records if name != "phantom"]
    first, second = GRIDS[method]
    print("| scale the weights multiply | " + " | ".join(f"best {n}: {first}, {second} (dB)" for n in records)
          + " | " + " | ".join(f"{n} at the phantom's best: loss (dB)" for n in others) + " |")
    print("| --- " * (1 + len(records) + len(others)) + "|")
    for label, scales in (NORMALISATIONS if method == "tv_wavelet" else LPLUSS_NORMALISATIONS).items():
        best = {name: best_weights(record, scales) for name, record in records.items()}
        t, w, _ = best["phantom"]
        losses = [best[n][2] - mean_psnr(records[n], scales, t, w) for n in others]
        print(f"| {label} | " + " | ".join(f"{b[0]:.2g}, {b[1]:.2g} ({b[2]:.2f})" for b in best.values()) + " | "
              + " | ".join("off the grid" if math.isnan(loss) else f"{loss:.2f}" for loss in losses) + " |")


def study(*, part: str = "grid",  # grid | table
          data: str = "phantom",  # grid: phantom | pincat | coils8 | phantom128
          method: str = "tv_wavelet",  # tv_wavelet | lplus_s
          pincat: str = "pincat20.npz",  # PINCAT at 20 frames (python formats.py convert ... --frames 20 --select)
          cines: int = 0,  # grid: the first N cines of --data; 0 = all (phantom 8, pincat 1, coils8 4, phantom128 4)
          coarse: bool = False,  # grid: every other value of the first weight (half the time)
          out: str = "output/weight_transfer",  # folder of the grids
          threads: int = 1) -> None:  # torch threads
    """Run one part of the study (see the module docstring)."""
    if part not in ("grid", "table"):
        raise UserError(f"--part={part!r}: choose grid or table")
    if data not in DATASETS:
        raise UserError(f"--data={data!r}: choose one of {', '.join(DATASETS)}")
    if cines < 0:
        raise UserError(f"--cines={cines}: must be >= 0 (0 = all)")
    if method not in SOLVERS:
        raise UserError(f"--method={method!r}: choose one of {', '.join(SOLVERS)}")
    torch.set_num_threads(threads)
    grid(data, method, pincat, Path(out), cines, coarse) if part == "grid" else table(method, Path(out))


if __name__ == "__main__":
    with cli_errors():
        run_command(study, sys.argv[1:], prog="python benchmarks/weight_transfer.py")
