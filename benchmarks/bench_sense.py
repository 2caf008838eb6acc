"""SENSE operators on whole ky rows (``sampling.RowSense``) against the general 2D FFT path, and the
whole 8-coil ``reconstruct.py --kspace`` command with each, measured in the same run.

    python benchmarks/bench_sense.py [--quick] [--command=true] [--repeats=0] [--results=DIR]

1. Operators: one SENSE gradient step (``sampling.gradient_dc``) on 20-frame cines over a grid of
   cines x coils x size x acceleration (``GRID``; variable-density masks, centre lines scaled from 11
   at 192 rows), and one conjugate-gradient data consistency of 5 steps
   (``sampling.sense_data_consistency``) on one 8-coil 192 px cine at 8x and 5x: the general path
   (``rows=False``, the reference) and the row path (``rows=True``), median of ``--repeats`` after
   one warm-up, and which of them the default ``rows=None`` takes.
2. The learned L+S (the shipped ``checkpoints/lsnet.pt``) on one 8-coil phantom cine of 20x192x192
   at 8x (the checkpoint's centre lines, as ``reconstruct.py`` draws them), in this process: the
   network alone, with the row path and with the general path.
3. ``--command=true``: the whole command ``python reconstruct.py --kspace FILE --acceleration=8
   --out OUT`` on that cine (written by ``phantom.py FILE --coils=8``), wall time of each run
   (imports, reading, ESPIRiT maps, network, metrics, writing), with the row path (as shipped) and
   with the general path (the reference: the same command with ``sampling.RowSense.of`` returning
   None, so every SENSE operator takes the general path); median of ``--repeats``.

Every time is also given as a ratio of its reference's. ``--quick``: 4x32x32 cines, 1 repeat,
results in a temporary folder. Results: ``benchmarks/results/bench_sense_<cpu>.json``. The
machine's load average (``os.getloadavg``) is recorded before and after: on a shared machine the
ratios are what to compare.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import sampling  # noqa: E402
from checkpoint import load_trained_model  # noqa: E402
from cli import atomic_write, cli_errors, make_folder, non_negative, run_command  # noqa: E402
from engine import describe_device  # noqa: E402
from phantom import make_coil_dataset, phantom_figure  # noqa: E402
from reconstruct import SHIPPED_CHECKPOINT  # noqa: E402
from sampling import (estimate_sensitivities, gradient_dc, sense_adjoint, sense_data_consistency,  # noqa: E402
                      variable_density_mask)

COILS = 8
GENERAL = "import sampling; sampling.RowSense.of = classmethod(lambda *args, **kwargs: None); "


def median_seconds(function, repeats: int) -> float:
    """Median wall time of ``function()`` over ``repeats`` calls after one warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


@contextlib.contextmanager
def general_path():
    """Every SENSE operator takes the general 2D FFT path inside the block (the reference)."""
    of = sampling.RowSense.of
    sampling.RowSense.of = classmethod(lambda *args, **kwargs: None)
    try:
        yield
    finally:
        sampling.RowSense.of = of


# (cines, coils, size, acceleration) of the operator grid: the row path's rule (sampling.RowSense) is read off it
GRID = [(1, 8, 192, 8), (1, 8, 192, 5), (1, 8, 192, 3), (1, 8, 192, 2), (1, 1, 192, 8), (1, 16, 192, 8),
        (1, 8, 256, 4), (1, 4, 128, 3), (1, 8, 64, 8), (4, 8, 64, 8), (4, 2, 64, 5)]
QUICK_GRID = [(1, 8, 32, 8), (2, 2, 16, 4)]


def operator_rows(frames: int, grid, repeats: int) -> list[dict]:
    """The gradient step on every ``(cines, coils, size, acceleration)`` of ``grid``, and the CG data
    consistency on the first two, on the general path (``rows=False``) and on the row path
    (``rows=True``); ``auto``: the path that the default ``rows=None`` takes."""
    generator = torch.Generator().manual_seed(0)
    rows = []
    for number, (cines, coils, size, acceleration) in enumerate(grid):
        image, truth = torch.randn(2, cines, frames, size, size, dtype=torch.complex64, generator=generator)
        maps = torch.randn(cines, coils, size, size, dtype=torch.complex64, generator=generator)  # [B, C, H, W]
        maps = maps / maps.abs().square().sum(1, keepdim=True).sqrt()
        mask = torch.from_numpy(np.stack([variable_density_mask((frames, size, size), acceleration,
                                                                 sampling.scaled_center_lines(size), seed=i)
                                          for i in range(cines)]))  # [B, T, H, W]
        kspace = sampling.sense_forward(truth, maps, mask)  # [B, C, T, H, W]: the data of another cine
        operations = {"gradient step": lambda path: gradient_dc(image, kspace, mask, 0.5, sensitivities=maps,
                                                                rows=path)}
        if number < 2:
            operations["CG data consistency, 5 steps"] = lambda path: sense_data_consistency(
                image, kspace, maps, mask, iterations=5, rows=path)
        auto = sampling.RowSense.of(mask, maps, (cines,), (frames, size, size), True) is not None
        for name, operation in operations.items():
            general = median_seconds(lambda: operation(False), repeats)
            fast = median_seconds(lambda: operation(True), repeats)
            reference = operation(False)
            error = float((operation(True) - reference).abs().max() / reference.abs().max())
            rows.append({"operation": name, "cines": cines, "coils": coils, "size": size, "acceleration": acceleration,
                         "rows_per_frame": int(mask[..., 0].sum(-1).max()), "auto": "row" if auto else "general",
                         "general_s": general, "rows_s": fast, "speed_up": general / fast,
                         "relative_difference": error})
    return rows


def network_row(frames: int, size: int, repeats: int) -> dict:
    """The shipped learned L+S on one 8-coil phantom cine at 8x, row path against general path."""
    model, config = load_trained_model(SHIPPED_CHECKPOINT, torch.device("cpu"))
    data = make_coil_dataset(1, frames=frames, size=size, seed=7919, coils=COILS)
    mask = variable_density_mask((frames, size, size), 8, config["center_lines"], seed=1)  # as reconstruct.py draws
    kspace = data["kspace"] * mask  # [1, C, T, H, W]
    started = time.perf_counter()
    maps = estimate_sensitivities(kspace, mask)  # [1, C, H, W]
    espirit = time.perf_counter() - started  # the first call: sigpy's import and numba's cache included
    inputs = [torch.from_numpy(np.ascontiguousarray(a)) for a in (kspace, mask[None], maps)]
    kspace, mask, maps = inputs
    aliased = sense_adjoint(kspace, maps, mask)

    def run():
        with torch.no_grad():
            return model(aliased, kspace, mask, maps)
    fast = median_seconds(run, repeats)
    with general_path():
        general = median_seconds(run, repeats)
        reference = run()
    error = float((run() - reference).abs().max() / reference.abs().max())
    return {"network": f"learned L+S ({config['iterations']} iterations), shipped checkpoint", "general_s": general,
            "rows_s": fast, "speed_up": general / fast, "relative_difference": error, "espirit_first_call_s": espirit}


def command_row(frames: int, size: int, repeats: int, folder: Path) -> dict:
    """Wall time of the whole ``reconstruct.py --kspace`` command, row path and general path."""
    source = folder / f"coils{COILS}_{frames}x{size}.npz"
    if not source.exists():
        phantom_figure(str(source), frames=frames, size=size, coils=COILS)
    arguments = ["--kspace", str(source), "--acceleration=8", "--device=cpu"]

    def command(prefix: str):
        def run():
            out = folder / f"recon_{time.time_ns()}.npz"
            code = f"{prefix}import reconstruct; reconstruct.main({[*arguments, f'--out={out}']!r})"
            subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
            out.unlink()
        return run
    fast = median_seconds(command(""), repeats)
    general = median_seconds(command(GENERAL), repeats)
    return {"command": f"python reconstruct.py --kspace FILE --acceleration=8 --out OUT ({COILS} coils, "
                       f"{frames}x{size}x{size})", "general_s": general, "rows_s": fast, "speed_up": general / fast}


def bench_sense(*,
                quick: bool = False,  # 4x32x32 cines and 1 repeat, written to a temporary folder
                command: bool = True,  # also time the whole reconstruct.py --kspace command (subprocesses)
                repeats: int = 0,  # timed runs after one warm-up; 0: 5 (--quick: 1)
                results: str = "") -> None:  # folder of the JSON; '': benchmarks/results (--quick: a temporary one)
    """SENSE operators and the 8-coil reconstruction, row path against general path (module docstring)."""
    frames, size = (4, 32) if quick else (20, 192)
    repeats = repeats or (1 if quick else 5)
    out_dir = make_folder(results or (tempfile.mkdtemp(prefix="bench_sense_") if quick
                                      else ROOT / "benchmarks" / "results"))
    load_before = os.getloadavg()
    device = describe_device(torch.device("cpu"))
    report = {"device": device, "torch": torch.__version__, "frames": frames, "size": size, "coils": COILS,
              "repeats": repeats, "operators": operator_rows(frames, QUICK_GRID if quick else GRID, repeats),
              "network": network_row(frames, size, repeats)}
    if command:
        with tempfile.TemporaryDirectory(prefix="bench_sense_") as folder:
            report["command"] = command_row(frames, size, repeats, Path(folder))
    report["load_average_before_after"] = [load_before[0], os.getloadavg()[0]]
    lines = [f"CPU: {device}, torch {torch.__version__}, {COILS} coils, {frames}x{size}x{size}, median of {repeats}; "
             f"load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after", "",
             "| operator | cines x coils x size | acceleration (rows per frame) | rows=None takes | general path (s) | "
             "row path (s) | speed-up | max relative difference |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['operation']} | {r['cines']} x {r['coils']} x {r['size']} | {r['acceleration']}x "
              f"({r['rows_per_frame']}) | {r['auto']} | {r['general_s']:.4f} | {r['rows_s']:.4f} | {r['speed_up']:.2f}x | "
              f"{r['relative_difference']:.1e} |" for r in report["operators"]]
    network = report["network"]
    lines += ["", "| what | general path (s) | row path (s) | speed-up | max relative difference |",
              "|---|---|---|---|---|",
              f"| {network['network']}, {COILS} coils, 8x | {network['general_s']:.3f} | {network['rows_s']:.3f} | "
              f"{network['speed_up']:.2f}x | {network['relative_difference']:.1e} |"]
    if command:
        whole = report["command"]
        lines.append(f"| whole command: {whole['command']} | {whole['general_s']:.2f} | {whole['rows_s']:.2f} | "
                     f"{whole['speed_up']:.2f}x | |")
    lines.append(f"\nESPIRiT maps, first call in this process (sigpy's import and numba's cache included): "
                 f"{network['espirit_first_call_s']:.2f} s")
    print("\n".join(lines))
    slug = re.sub(r"[^A-Za-z0-9]+", "_", device).strip("_")
    path = out_dir / f"bench_sense_{slug}{'_quick' if quick else ''}.json"
    atomic_write(path, json.dumps({**report, "argv": sys.argv}, indent=1))
    print(f"\nresults {path}")


def main(argv: list[str] | None = None) -> None:
    """``python benchmarks/bench_sense.py [--key=value ...]``: bad options raise ``UserError``."""
    run_command(bench_sense, argv, prog="python benchmarks/bench_sense.py", parsers={"repeats": non_negative})


if __name__ == "__main__":
    with cli_errors():
        main()
