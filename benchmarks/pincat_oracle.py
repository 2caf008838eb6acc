"""CS tuned on PINCAT itself, an oracle no user has: the gap that the learned methods and adaptation
are measured against (docs/results.md). Uses the mask compare.py gives cine 0 with ``--split=all``.

    python formats.py convert ../shared/data/pincat.npz --frames 20 --select --out pincat20.npz
    python benchmarks/pincat_oracle.py pincat20.npz [--methods=kt_sparse,lplus_s,lplus_s_unrolled,tv_wavelet,bart_pics]
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bart_pics  # noqa: E402
from baselines import GRIDS, tune, view_sharing  # noqa: E402
from cli import UserError, cli_errors, run_command  # noqa: E402
from data import mask_seed  # noqa: E402
from formats import load_cine  # noqa: E402
from metrics import batch_psnr  # noqa: E402
from sampling import undersample, variable_density_mask  # noqa: E402


ORACLE_METHODS = ("kt_sparse", "lplus_s", "lplus_s_unrolled", "tv_wavelet", "bart_pics")  # bart_pics: with bart on PATH


def oracle(path: str, *,  # a cine file [1, T, H, W] (PINCAT reduced to 20 frames)
           methods: str = ",".join(ORACLE_METHODS)) -> None:  # the CS methods tuned, comma-separated
    """Print view sharing (31.61 dB in compare.py: the same mask) and every CS method of ``methods`` at
    its best grid point on the cine itself (BART's temporal TV + wavelet only when ``bart`` is on PATH)."""
    chosen = methods.split(",")
    for method in chosen:
        if method not in ORACLE_METHODS:
            raise UserError(f"--methods: unknown {method!r}; choose from {', '.join(ORACLE_METHODS)}")
    torch.set_num_threads(1)
    cine = torch.from_numpy(load_cine(path)[:1]).to(torch.complex64)  # [1, T, H, W]
    try:
        mask = torch.from_numpy(variable_density_mask(cine.shape[1:], acceleration=5, center_lines=11,
                                                      seed=mask_seed(0, 0)))[None]  # [1, T, H, W]
    except ValueError as error:
        raise UserError(f"{path}: PINCAT's sampling (5x, 11 centre lines) does not fit its cines: {error}") from None
    _, kspace = undersample(cine, mask)
    print(f"view sharing: {float(batch_psnr(view_sharing(kspace, mask), cine)):.2f} dB")
    solvers = {method: (method, GRIDS[method]) for method in ORACLE_METHODS[:-1]}
    if bart_pics.available():
        solvers["bart_pics"] = (bart_pics.pics_tv_wavelet, bart_pics.GRID)
    for method, (solve, grid) in solvers.items():
        if method not in chosen:
            continue
        best, rows = tune(solve, kspace, mask, cine, grid)
        print(f"{method} tuned on the cine itself: {best}, {max(r['psnr'] for r in rows):.2f} dB", flush=True)


if __name__ == "__main__":
    with cli_errors():
        run_command(oracle, sys.argv[1:], prog="python benchmarks/pincat_oracle.py")
