"""Run the study's experiments on one data set and tabulate the test results.

    python benchmarks/study.py [--prefix=study] [--only=default,l1] [--extra="--num_epochs=10"] [--help]

Each experiment is ``python train.py PREFIX_NAME <overrides> <extra>`` (the train(...) call at the
bottom of train.py plus the overrides below; without CUDA the usual CPU scale-down applies).
Runs that already finished (output/PREFIX_NAME/metrics.json exists) are not repeated and
interrupted ones continue from their last checkpoint (``--resume``), so the script can be
stopped and rerun. The table goes to stdout and to ``benchmarks/results/PREFIX.md``, with the
machine and the last command; it lists every finished experiment of PREFIX and keeps the rows it
already had, so running a few experiments (``--only``) never shrinks it.
"""
from __future__ import annotations

import json
import re
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cli import UserError, atomic_write, check_run_name, cli_errors, make_folder, run_command  # noqa: E402

# The study's network as it was built: the dual UNet (frames as channels) as a plain denoiser of the
# zero-filled cine, dropout 0.3, L2, peak LR 1e-4, magnitude cines; at the CPU scale-down's width.
STUDY = ["--arch=dual_unet", "--cascades=0", "--view_sharing=false", "--dropout=0.3", "--loss_tpe=L2",
         "--initial_lr=1e-4", "--phantom_phase=false", "--init_features=16", "--resnet_features=8"]

# (name, overrides, what the row tests)
EXPERIMENTS = [
    ("default", [], "the train(...) call: 3 cascades from the view-shared cine, L1, peak LR 3e-4, fresh cines"),
    ("fixed_data", ["--fresh_data=false"], "the same on the fixed training split (57 cines), equal training time"),
    ("cine_unet", ["--arch=cine_unet", "--init_features=8", "--resnet_features=16"],
     "the same with the frame-count-agnostic cine_unet (width 8, space-time ResNet 16)"),
    ("magnitude", ["--phantom_phase=false"], "the default recipe on magnitude cines"),
    ("study", STUDY, "the study's network: plain dual UNet, dropout 0.3, warm-up + cosine LR, L2, magnitude"),
    ("study_nodrop", [*STUDY, "--dropout=0"], "the study's network without dropout"),
    ("study_const", [*STUDY, "--lr_schedule=constant"], "the study's network, constant LR"),
    ("study_l1", [*STUDY, "--loss_tpe=L1"], "the study's network, L1 loss"),
    ("study_attn_none", [*STUDY, "--attention=none"], "the study's network, no attention"),
    ("study_attn_all", [*STUDY, "--attention=all"], "the study's network, attention at every level"),
    ("study_casc1", [*STUDY, "--cascades=1"], "the study's network, 1 cascade with hard data consistency"),
    ("study_casc3", [*STUDY, "--cascades=3"], "the study's network, 3 cascades with hard data consistency"),
    ("study_casc5", [*STUDY, "--cascades=5", "--checkpointing=true"], "the study's network, 5 cascades"),
    ("study_seed", [*STUDY, "--mask_mode=fixed", "--output=sigmoid"],
     "the study's seed config: one fixed mask, sigmoid output, no DC"),
    ("dccnn", ["--arch=dccnn", "--cascades=5", "--view_sharing=false"],
     "DC-CNN D5-C5 (Schlemper et al.), width = init_features"),
]


def machine() -> str:
    import torch

    from engine import describe_device

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return f"{describe_device(device)}, torch {torch.__version__}"


def run(name: str, overrides: list[str]) -> None:
    """Train one experiment unless it already finished; resume it if it was interrupted."""
    run_dir = ROOT / "output" / name
    if (run_dir / "metrics.json").exists():
        return
    resume = ["--resume=true"] if (run_dir / "last.pt").exists() else []
    command = [sys.executable, str(ROOT / "train.py"), name, *overrides, *resume]
    print("$", shlex.join(command[1:]), flush=True)
    status = subprocess.run(command, cwd=ROOT).returncode
    if status:
        raise UserError(f"{name}: train.py stopped with exit status {status} (its message is above); the study "
                        f"stops here and its table is not rewritten: rerun it to go on (finished runs are kept)")


def earlier_rows(path: Path) -> dict[str, str]:
    """The rows of an existing table, keyed by the run named in their last cell."""
    if not path.is_file():
        return {}
    rows = (re.fullmatch(r"\|.*\| `([^`]+)` \|", line) for line in path.read_text().splitlines())
    return {match.group(1): match.group(0) for match in rows if match}


def row(name: str, label: str) -> str:
    metrics = json.loads((ROOT / "output" / name / "metrics.json").read_text())
    s = metrics["summary"]
    per_epoch = statistics.median(r["seconds"] for r in metrics["history"])
    params = next(line for line in (ROOT / "output" / name / "output.txt").read_text().splitlines()
                  if line.startswith("model:")).split("total ")[1].split(" M")[0]
    return (f"| {label} | {s['psnr']['mean']:.2f} ± {s['psnr']['std']:.2f} | {s['ssim']['mean']:.3f} ± "
            f"{s['ssim']['std']:.3f} | {s['psnr_zero_filled']['mean']:.2f} | "
            f"{max(r['val_psnr'] for r in metrics['history']):.2f} | {params} M | {per_epoch:.1f} s |"
            f" `{name}` |")


def study(*,
          prefix: str = "study",  # runs are named PREFIX_NAME; the table goes to benchmarks/results/PREFIX.md
          only: str = "",  # experiment names, comma-separated; '': all of them
          extra: str = "") -> None:  # train.py options added to every run, e.g. --extra="--num_epochs=10"
    """Run the study's experiments in turn (finished runs are skipped, interrupted ones resumed) and
    tabulate their test results with the machine and the command."""
    names = [name for name, _, _ in EXPERIMENTS]
    chosen = set(only.split(",")) if only else set(names)
    if chosen - set(names):
        unknown = sorted(chosen - set(names))[0]
        raise UserError(f"--only: unknown experiment {unknown!r}; choose from {', '.join(names)}")
    try:
        check_run_name(prefix)
        check_run_name(f"{prefix}_{max(names, key=len)}")
    except UserError as error:
        raise UserError(f"--prefix={prefix!r} names the runs (PREFIX_NAME) and the table: {error}") from None
    try:
        extra_options = shlex.split(extra)
    except ValueError as error:
        raise UserError(f"--extra={extra}: {error}") from None
    path = ROOT / "benchmarks" / "results" / f"{prefix}.md"
    by_run = earlier_rows(path)  # kept unless replaced: the table never loses a row
    for name, overrides, label in EXPERIMENTS:
        run_name = f"{prefix}_{name}"
        if name in chosen:
            run(run_name, [*overrides, *extra_options])
        if name in chosen or (ROOT / "output" / run_name / "metrics.json").exists():
            by_run[run_name] = row(run_name, label)
    order = [f"{prefix}_{name}" for name in names]
    rows = [by_run[name] for name in order if name in by_run] + [line for name, line in by_run.items()
                                                                 if name not in order]
    table = "\n".join([
        f"Study on `{prefix}`: {machine()}; last command: "
        f"`{shlex.join(['python', 'benchmarks/study.py', *sys.argv[1:]])}` (every finished experiment is listed)",
        "",
        "| configuration | PSNR (dB) | SSIM | zero-filled PSNR | best val PSNR | parameters | time per epoch "
        "(median) | run |",
        "|---|---|---|---|---|---|---|---|",
        *rows])
    make_folder(path.parent)
    atomic_write(path, table + "\n")
    print(table)


if __name__ == "__main__":
    with cli_errors():
        run_command(study, prog="python benchmarks/study.py")
