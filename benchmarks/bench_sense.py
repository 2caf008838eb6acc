"""SENSE operators on whole ky rows (``sampling.RowSense``) against the general 2D FFT path, and the
whole 8-coil ``reconstruct.py --kspace`` command with each, measured in the same run.

    python benchmarks/bench_sense.py [--quick] [--command=true] [--adapt_steps=0] [--repeats=0] [--results=DIR]

1. Operators: one SENSE gradient step (``sampling.gradient_dc``) on 20-frame cines over a grid of
   cines x coils x size x acceleration (``GRID``; variable-density masks, centre lines scaled from 11
   at 192 rows), and one conjugate-gradient data consistency of 5 steps
   (``sampling.sense_data_consistency``) on one 8-coil 192 px cine at 8x and 5x: the general path
   (``rows=False``, the reference) and the row path (``rows=True``), and which of them the default
   ``rows=None`` takes.
2. The shipped checkpoint (``reconstruct.SHIPPED_CHECKPOINT``) on one 8-coil phantom cine of 20x192x192
   at 8x (the checkpoint's centre lines, as ``reconstruct.py`` draws them), in this process: the
   network alone, with the row path and with the general path; with ``--adapt_steps=N`` also N steps
   of its scan-specific adaptation (``adapt.adapt``, as ``reconstruct.py --adapt`` runs it).
3. ``--command=true``: the whole command ``python reconstruct.py --kspace FILE --acceleration=8
   --out OUT`` on that cine (written by ``phantom.py FILE --coils=8``): imports, reading, ESPIRiT
   maps, network, metrics and writing, with the row path (as shipped) and with the general path
   (the reference: the same command with ``sampling.RowSense.of`` returning None, so every SENSE
   operator takes the general path).

Both paths run alternately, ``--repeats`` times each after one warm-up (``paired_times``); every
result is the median wall time and the median CPU time (user and system, the subprocesses'
included), and their ratios to the reference's. ``--quick``: 4x32x32 cines, 1 repeat, results in a
temporary folder. Results: ``benchmarks/results/bench_sense_<cpu>.json``. The machine's load
average (``os.getloadavg``) is recorded before and after: on a shared machine the ratios, and the
CPU times, are what to compare.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import resource
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
from adapt import adapt  # noqa: E402
from checkpoint import load_trained_model  # noqa: E402
from cli import UserError, atomic_write, cli_errors, make_folder, non_negative, run_command  # noqa: E402
from engine import describe_device  # noqa: E402
from models import LSNet  # noqa: E402
from phantom import make_coil_dataset, phantom_figure  # noqa: E402
from reconstruct import SHIPPED_CHECKPOINT, network_summary  # noqa: E402
from sampling import (estimate_sensitivities, gradient_dc, sense_adjoint, sense_data_consistency,  # noqa: E402
                      variable_density_mask)

COILS = 8


def paired_times(general, fast, repeats: int) -> dict:
    """Median wall and CPU seconds of ``general()`` and ``fast()``, run alternately ``repeats`` times each
    after one warm-up call each (alternating shares a busy machine's load between them), and their ratios.
    CPU time is this process's and its finished children's, user and system: on a shared machine it
    counts what the work cost, not the time other jobs held the cores."""
    general(), fast()
    samples = {"general": [], "rows": []}
    for _ in range(repeats):
        for name, function in (("general", general), ("rows", fast)):
            wall, cpu = time.perf_counter(), cpu_seconds()
            function()
            samples[name].append((time.perf_counter() - wall, cpu_seconds() - cpu))
    times = {f"{name}{suffix}": statistics.median(sample[i] for sample in samples[name])
             for name in samples for i, suffix in ((0, "_s"), (1, "_cpu_s"))}
    return {**times, "speed_up": times["general_s"] / times["rows_s"],
            "cpu_speed_up": times["general_cpu_s"] / times["rows_cpu_s"]}


def cpu_seconds() -> float:
    """User and system CPU seconds of this process and of its finished children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@contextlib.contextmanager
def forced_path(rows: bool):
    """Inside the block every SENSE operator takes the row path (``rows=True``: wherever the mask is made
    of whole rows) or the general path (``False``), whatever its own ``rows`` argument."""
    original = sampling.RowSense.__dict__["of"]

    def of(cls, mask, sensitivities, lead, shape, centered, operands=(), _rows=None, binary=False):
        return original.__func__(cls, mask, sensitivities, lead, shape, centered, operands, rows, binary)
    sampling.RowSense.of = classmethod(of)
    try:
        yield
    finally:
        sampling.RowSense.of = original


def on_path(function, rows: bool):
    """``function`` run on the forced path (:func:`forced_path`)."""
    def run():
        with forced_path(rows):
            return function()
    return run


# (cines, coils, size, acceleration, network?) of the grid: the default's rule (sampling.RowSense) is read off it
GRID = [(1, 8, 192, 8, True), (1, 8, 192, 5, False), (1, 8, 192, 3, True), (1, 8, 192, 2, False),
        (1, 16, 192, 8, False), (1, 8, 256, 4, False), (1, 4, 128, 3, True), (1, 8, 64, 8, True),
        (4, 8, 64, 8, True), (4, 2, 64, 5, True), (1, 1, 192, 8, True)]
QUICK_GRID = [(1, 8, 32, 8, True), (2, 2, 16, 4, False)]


def operator_rows(frames: int, grid, repeats: int) -> list[dict]:
    """On every ``(cines, coils, size, acceleration, network)`` of ``grid``: the gradient step, the CG
    data consistency (the first two entries) and, where ``network``, an untrained learned L+S of 10
    iterations (``models.LSNet``, its forward pass), each on the general path and on the row path;
    ``auto``: the path that the default ``rows=None`` takes."""
    generator = torch.Generator().manual_seed(0)
    rows = []
    for number, (cines, coils, size, acceleration, network) in enumerate(grid):
        image, truth = torch.randn(2, cines, frames, size, size, dtype=torch.complex64, generator=generator)
        maps = torch.randn(cines, coils, size, size, dtype=torch.complex64, generator=generator)  # [B, C, H, W]
        maps = maps / maps.abs().square().sum(1, keepdim=True).sqrt()
        mask = torch.from_numpy(np.stack([variable_density_mask((frames, size, size), acceleration,
                                                                 sampling.scaled_center_lines(size), seed=i)
                                          for i in range(cines)]))  # [B, T, H, W]
        kspace = sampling.sense_forward(truth, maps, mask)  # [B, C, T, H, W]: the data of another cine
        operations = {"gradient step": lambda: gradient_dc(image, kspace, mask, 0.5, sensitivities=maps)}
        if number < 2:
            operations["CG data consistency, 5 steps"] = lambda: sense_data_consistency(image, kspace, maps, mask,
                                                                                        iterations=5)
        if network:
            model, aliased = LSNet(iterations=10), sense_adjoint(kspace, maps, mask)
            operations["learned L+S (untrained), forward"] = lambda: model(aliased, kspace, mask, maps)
        auto = sampling.RowSense.of(mask, maps, (cines,), (frames, size, size), True) is not None
        for name, operation in operations.items():
            with torch.no_grad():
                times = paired_times(on_path(operation, False), on_path(operation, True), repeats)
                reference = on_path(operation, False)()
                error = float((on_path(operation, True)() - reference).abs().max() / reference.abs().max())
            rows.append({"operation": name, "cines": cines, "coils": coils, "size": size, "acceleration": acceleration,
                         "rows_per_frame": int(mask[..., 0].sum(-1).max()), "auto": "row" if auto else "general",
                         **times, "relative_difference": error})
    return rows


def network_row(frames: int, size: int, repeats: int, adapt_steps: int) -> dict:
    """The shipped checkpoint on one 8-coil phantom cine at 8x, row path against general path, and with
    ``adapt_steps`` its scan-specific adaptation (``adapt.adapt``, reconstruct.py's defaults) for that many
    steps."""
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
    times = paired_times(on_path(run, False), on_path(run, True), repeats)
    reference = on_path(run, False)()
    error = float((on_path(run, True)() - reference).abs().max() / reference.abs().max())
    result = {"network": f"{network_summary(config)}, shipped checkpoint", **times,
              "relative_difference": error, "espirit_first_call_s": espirit}
    if adapt_steps:
        lines = mask.amax(-1, keepdim=True).expand_as(mask)  # the measured ky lines, as reconstruct.py adapts

        def adapt_run():
            with torch.enable_grad():
                adapt(model, kspace, lines, steps=adapt_steps, sensitivities=maps, log=lambda line: None)
        result["adaptation"] = {"steps": adapt_steps, **paired_times(on_path(adapt_run, False),
                                                                      on_path(adapt_run, True), repeats)}
    return result


# The whole command in a fresh interpreter (argv: "general" or "rows", then reconstruct.py's options), its stages
# timed by wrapping reconstruct's functions: wall and CPU seconds, printed as one JSON line.
STAGED_COMMAND = """
import json, sys, time
def now():
    return time.perf_counter(), time.process_time()
begin = now()
if sys.argv[1] == "general":
    import sampling
    sampling.RowSense.of = classmethod(lambda *args, **kwargs: None)
import models, reconstruct
stages = {"imports (torch, the project)": [b - a for a, b in zip(begin, now())]}
def timed(owner, name, label):
    function = getattr(owner, name)
    def wrapper(*args, **kwargs):
        start = now()
        try:
            return function(*args, **kwargs)
        finally:
            spent = [b - a for a, b in zip(start, now())]
            stages[label] = [s + t for s, t in zip(stages.get(label, [0.0, 0.0]), spent)]
    setattr(owner, name, wrapper)
for owner, name, label in STAGES:
    timed(owner, name, label)
start = now()
reconstruct.main(sys.argv[2:])
stages["rest of the command"] = [b - a - sum(v[i] for k, v in stages.items() if not k.startswith("imports"))
                                 for i, (a, b) in enumerate(zip(start, now()))]
print("STAGES " + json.dumps(stages))
import gc
gc.freeze()  # as reconstruct.py does after its command
"""
STAGES = """((reconstruct, "read_kspace", "reading the file"),
          (reconstruct, "coil_maps", "maps: ESPIRiT (sigpy's import and numba's first call included)"),
          (reconstruct, "fully_sampled_image", "fully sampled reference A^H y"),
          (models.LSNet, "forward", "network (learned L+S)"), (reconstruct, "batch_ssim", "SSIM"),
          (reconstruct, "save_npz", "writing the output"))"""


def command_row(frames: int, size: int, repeats: int, folder: Path) -> dict:
    """The whole ``reconstruct.py --kspace`` command, row path (as shipped) and general path: wall and CPU
    time of each run (interpreter start to exit) and of its stages."""
    source = folder / f"coils{COILS}_{frames}x{size}.npz"
    if not source.exists():
        phantom_figure(str(source), frames=frames, size=size, coils=COILS)
    code = STAGED_COMMAND.replace("for owner, name, label in STAGES:", f"for owner, name, label in {STAGES}:")
    stages = {"general": [], "rows": []}

    def command(path: str):
        def run():
            out = folder / f"recon_{time.time_ns()}.npz"
            arguments = [path, "--kspace", str(source), "--acceleration=8", "--device=cpu", f"--out={out}"]
            result = subprocess.run([sys.executable, "-c", code, *arguments], cwd=ROOT, check=True, text=True,
                                    capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            stages[path].append(json.loads(result.stdout.split("STAGES ")[-1]))
            out.unlink()
        return run
    times = paired_times(command("general"), command("rows"), repeats)
    medians = {path: {label: [statistics.median(run[label][i] for run in runs[-repeats:]) for i in (0, 1)]
                      for label in runs[-1]} for path, runs in stages.items()}
    return {"command": f"python reconstruct.py --kspace FILE --acceleration=8 --out OUT ({COILS} coils, "
                       f"{frames}x{size}x{size})", **times, "stages": medians}


def bench_sense(*,
                quick: bool = False,  # 4x32x32 cines and 1 repeat, written to a temporary folder
                command: bool = True,  # also time the whole reconstruct.py --kspace command (subprocesses)
                adapt_steps: int = 0,  # also time this many steps of the scan-specific adaptation; 0 = not
                repeats: int = 0,  # timed runs after one warm-up; 0: 5 (--quick: 1)
                results: str = "") -> None:  # folder of the JSON; '': benchmarks/results (--quick: a temporary one)
    """SENSE operators and the 8-coil reconstruction, row path against general path (module docstring)."""
    if quick and adapt_steps:
        raise UserError("--adapt_steps needs the full-size cine: at 4x32x32 and 8x every line is a centre line, "
                        "and adaptation has none to hold out")
    frames, size = (4, 32) if quick else (20, 192)
    repeats = repeats or (1 if quick else 5)
    out_dir = make_folder(results or (tempfile.mkdtemp(prefix="bench_sense_") if quick
                                      else ROOT / "benchmarks" / "results"))
    load_before = os.getloadavg()
    device = describe_device(torch.device("cpu"))
    report = {"device": device, "torch": torch.__version__, "frames": frames, "size": size, "coils": COILS,
              "repeats": repeats, "operators": operator_rows(frames, QUICK_GRID if quick else GRID, repeats),
              "network": network_row(frames, size, repeats, adapt_steps)}
    if command:
        with tempfile.TemporaryDirectory(prefix="bench_sense_") as folder:
            report["command"] = command_row(frames, size, repeats, Path(folder))
    report["load_average_before_after"] = [load_before[0], os.getloadavg()[0]]
    lines = [f"CPU: {device}, torch {torch.__version__}, {COILS} coils, {frames}x{size}x{size}, median of {repeats}; "
             f"load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after", "",
             "| operator | cines x coils x size | acceleration (rows per frame) | rows=None takes | general path: "
             "wall (CPU) s | row path: wall (CPU) s | speed-up: wall (CPU) | max relative difference |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['operation']} | {r['cines']} x {r['coils']} x {r['size']} | {r['acceleration']}x "
              f"({r['rows_per_frame']}) | {r['auto']} | {times(r)} | {r['relative_difference']:.1e} |"
              for r in report["operators"]]
    network = report["network"]
    lines += ["", "| what | general path: wall (CPU) s | row path: wall (CPU) s | speed-up: wall (CPU) | "
              "max relative difference |", "|---|---|---|---|---|",
              f"| {network['network']}, {COILS} coils, 8x | {times(network)} | {network['relative_difference']:.1e} |"]
    if adapt_steps:
        lines.append(f"| adaptation of that network, {adapt_steps} steps (adapt.adapt) | "
                     f"{times(network['adaptation'])} | |")
    if command:
        whole = report["command"]
        lines.append(f"| whole command: {whole['command']} | {times(whole)} | |")
        lines += ["", "| stage of the whole command (medians) | general path: wall (CPU) s | row path: wall (CPU) s |",
                  "|---|---|---|"]
        stages = whole["stages"]
        lines += [f"| {label} | {general[0]:.3f} ({general[1]:.3f}) | {stages['rows'][label][0]:.3f} "
                  f"({stages['rows'][label][1]:.3f}) |" for label, general in stages["general"].items()]
        outside = [[whole[f"{path}{suffix}"] - sum(v[i] for v in whole["stages"][path].values())
                    for i, suffix in enumerate(("_s", "_cpu_s"))] for path in ("general", "rows")]
        lines.append(f"| interpreter start and exit (whole command less the stages' medians) | {outside[0][0]:.3f} "
                     f"({outside[0][1]:.3f}) | {outside[1][0]:.3f} ({outside[1][1]:.3f}) |")
    lines.append(f"\nESPIRiT maps, first call in this process (sigpy's import and numba's cache included): "
                 f"{network['espirit_first_call_s']:.2f} s")
    print("\n".join(lines))
    slug = re.sub(r"[^A-Za-z0-9]+", "_", device).strip("_")
    path = out_dir / f"bench_sense_{slug}{'_quick' if quick else ''}.json"
    atomic_write(path, json.dumps({**report, "argv": sys.argv}, indent=1))
    print(f"\nresults {path}")


def times(row: dict) -> str:
    """A result's table cells: general and row path, wall (CPU) seconds, and the speed-ups."""
    return (f"{row['general_s']:.3f} ({row['general_cpu_s']:.3f}) | {row['rows_s']:.3f} ({row['rows_cpu_s']:.3f}) | "
            f"{row['speed_up']:.2f}x ({row['cpu_speed_up']:.2f}x)")


def main(argv: list[str] | None = None) -> None:
    """``python benchmarks/bench_sense.py [--key=value ...]``: bad options raise ``UserError``."""
    run_command(bench_sense, argv, prog="python benchmarks/bench_sense.py",
                parsers={"repeats": non_negative, "adapt_steps": non_negative})


if __name__ == "__main__":
    with cli_errors():
        main()
