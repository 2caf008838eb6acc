"""How temporal TV + wavelet (``baselines.tv_wavelet``) converges and what its options do: the numbers
behind docs/baselines.md, "Temporal TV + wavelet".

    python benchmarks/tv_wavelet_study.py [--part=convergence|priors|bart|spinning] [--threads=1]

- ``convergence``: one complex phantom cine 20x64x64 at 5x (4 centre lines), PSNR after 25, 50 and 100
  ADMM iterations for ``rho`` 2, 5 and 10 (``rho_i = rho lambda_i``) and after 500, for temporal-TV
  weights 0.001, 0.003 and 0.03 (wavelet a quarter) and for each optional term;
- ``priors``: the temporal-Fourier (``lambda_f``) and nuclear-norm (``lambda_r``) weights on the first 8
  phantom validation cines of the CPU scale-down (compare.py's tuning cines), temporal TV and wavelet
  at their tuned 0.01 and 0.0003;
- ``bart`` (``bart`` on PATH): BART's ``pics`` temporal TV + wavelet (w = 0.03, w/4) on the cine of
  ``convergence`` after 100, 300 and 1000 iterations, and with or without its random wavelet shifts
  on the BART cross-check's uniform mask (2 cines, 8 coils, our ESPIRiT maps);
- ``spinning``: ours on that uniform mask with 1 and 2 wavelet shifts per axis (``wavelet_shifts``).
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bart_pics  # noqa: E402
from baselines import tune, tv_wavelet  # noqa: E402
from cli import UserError, cli_errors, positive, run_command  # noqa: E402
from metrics import psnr  # noqa: E402
from phantom import make_coil_dataset, make_phantom_dataset  # noqa: E402
from sampling import estimate_sensitivities, undersample, variable_density_mask  # noqa: E402

PARTS = ("convergence", "priors", "bart", "spinning")


def phantom_cine() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One complex phantom cine ``[1, 20, 64, 64]``, its 5x mask (4 centre lines) and k-space."""
    target = torch.from_numpy(make_phantom_dataset(1, frames=20, size=64, seed=5))
    mask = torch.from_numpy(variable_density_mask((20, 64, 64), 5, 4, seed=1))[None]
    return target, mask, undersample(target, mask)[1]


def uniform_coils():
    """The BART cross-check's data on its uniform mask: 2 cines, 8 coils, our maps, the references."""
    from bart_crosscheck import masks
    data = make_coil_dataset(2, frames=20, size=64, seed=0, coils=8)
    mask = masks(2, 20, 64, 8, 0)["uniform"]
    kspace = data["kspace"] * mask[:, None]
    return kspace, mask, estimate_sensitivities(kspace, mask), data["reference"]


def convergence() -> None:
    target, mask, kspace = phantom_cine()
    settings = [dict(lambda_t=w, lambda_w=w / 4) for w in (0.001, 0.003, 0.03)]
    settings += [dict(lambda_t=0.003, lambda_w=0.0, lambda_r=0.01), dict(lambda_t=0.003, lambda_w=0.0, lambda_f=0.001),
                 dict(lambda_t=0.003, lambda_w=0.0, lambda_xy=0.001)]
    for weights in settings:
        final = psnr(tv_wavelet(kspace, mask, **weights, iterations=500, tol=0)[0], target[0])
        print(f"{weights}: 500 iterations {final:.2f} dB", flush=True)
        for rho in (2, 5, 10):
            scores = [psnr(tv_wavelet(kspace, mask, **weights, iterations=n, tol=0, rho=rho)[0], target[0])
                      for n in (25, 50, 100)]
            print(f"  rho {rho}: " + ", ".join(f"{n} iterations {s:.2f}" for n, s in zip((25, 50, 100), scores)),
                  flush=True)


def priors() -> None:
    from data import load_images, make_datasets
    from settings import train_defaults
    config = {**train_defaults(), "image_size": 64, "num_samples": 100, "center_lines": 4}
    images, _, meta = load_images(config, [], False)
    _, val_set, _ = make_datasets(images, {**config, "mask_mode": "random"}, torch.device("cpu"), meta)
    batch = val_set.batch(list(range(8)))
    grid = {"lambda_f": (0.0, 0.0003, 0.001, 0.003), "lambda_r": (0.0, 0.003, 0.01, 0.03)}
    tune(tv_wavelet, batch["kspace"], batch["mask"], batch["target"], grid, verbose=True, lambda_t=0.01,
         lambda_w=0.0003)


def bart() -> None:
    if bart_pics.available() is None:
        raise UserError("bart is not on PATH: install BART (docs/baselines.md, 'BART cross-check')")
    target, mask, kspace = phantom_cine()
    for iterations in (100, 300, 1000):
        recon = bart_pics.pics_tv_wavelet(kspace, mask, weight=0.03, iterations=iterations)
        print(f"phantom cine, w 0.03, {iterations} iterations: {psnr(recon[0], target[0]):.2f} dB", flush=True)
    kspace, mask, maps, reference = uniform_coils()
    for iterations in (300, 1000):
        for shifts in ([], ["-n"]):
            scores = []
            for i in range(2):
                with tempfile.TemporaryDirectory() as folder:
                    recon = bart_pics.pics(kspace[i], mask[i], maps[i],
                                           ["-i", str(iterations), *shifts, *bart_pics.regularisers(0.03)], Path(folder))
                scores.append(psnr(recon, reference[i]))
            print(f"uniform mask, w 0.03, {iterations} iterations, {'no ' if shifts else ''}random wavelet shifts: "
                  f"{np.mean(scores):.2f} dB ({' '.join(f'{s:.2f}' for s in scores)})", flush=True)


def spinning() -> None:
    kspace, mask, maps, reference = uniform_coils()
    for shifts in (1, 2):
        scores = [psnr(tv_wavelet(kspace[i], mask[i], lambda_t=0.03, lambda_w=0.0075, wavelet_shifts=shifts,
                                  sensitivities=maps[i]), reference[i]) for i in range(2)]
        print(f"uniform mask, lambda_t 0.03, lambda_w 0.0075, {shifts}x{shifts} wavelet shifts: {np.mean(scores):.2f} dB "
              f"({' '.join(f'{s:.2f}' for s in scores)})", flush=True)


def study(*, part: str = "convergence",  # convergence | priors | bart | spinning
          threads: int = 1) -> None:  # torch (and BART) threads
    """Run one part of the study (see the module docstring)."""
    if part not in PARTS:
        raise UserError(f"--part={part!r}: choose one of {', '.join(PARTS)}")
    torch.set_num_threads(threads)
    {"convergence": convergence, "priors": priors, "bart": bart, "spinning": spinning}[part]()


if __name__ == "__main__":
    with cli_errors():
        run_command(study, sys.argv[1:], prog="python benchmarks/tv_wavelet_study.py", parsers={"threads": positive})
