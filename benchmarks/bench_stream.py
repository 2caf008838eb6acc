"""Streaming raw k-space from disk: peak memory against the number of files, and the time training
waits for data, for train.py on CMRxRecon-style phantom trees (``phantom.py --layout=cmrxrecon``).

    python benchmarks/bench_stream.py [--files=4,100] [--size=64] [--coils=4] [--frames=12] [--slices=2]
        [--epochs=1] [--arch=dual_unet] [--threads=2] [--keep=FOLDER]

For each file count a tree of that many subjects (``--slices`` slices each, every file the same
matrix ``--size`` x ``--size``, ``--coils`` coils, ``--frames`` frames, no AccFactor folders) is
written, then ``python train.py`` trains on it twice in fresh processes with the CPU scale-down of
the default call (``--arch``, ``in_channels`` = ``--frames``, batches of 4, one reading worker): the
first run estimates every coil map (ESPIRiT) into the tree's cache, the second finds them all cached.
The tree of the most files trains ``--epochs`` epochs on the cines of its training split, a tree of
fewer files proportionally more epochs (:func:`epochs_for`), so that every run trains about as many
batches: the training process's memory climbs over its first few dozen batches (the allocator's
steady state), and a run of 1 batch against one of 30 would measure that, not the files. Reported
per run: the process tree's peak resident memory (``wait4``: the training process or its reading
worker, whichever is larger), the median
epoch's seconds and the seconds it waited for data (``data_wait_s`` of output.txt) and their ratio.
The targets (issue 25): peak memory with the most files within 10% of that with the fewest; with
the maps cached, the wait under 5% of each epoch. Results: ``benchmarks/results/bench_stream_<CPU>.json``.
"""
from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cli import cli_errors, integer_list, run_command  # noqa: E402
from engine import cpu_model  # noqa: E402
from phantom import write_cmrxrecon_tree  # noqa: E402


def peak_run(command: list[str], cwd: Path, threads: int) -> tuple[int, float]:
    """Run ``command`` and return (exit status, peak resident memory of the process or its waited-for
    descendants in MiB)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        print(process.stderr.read().decode()[-2000:], file=sys.stderr)
    return process.returncode, usage.ru_maxrss / 1024


def epochs_for(count: int, counts: list[int], epochs: int) -> int:
    """The epochs a tree of ``count`` files trains so that it runs about as many batches as the tree of
    the most ``counts`` does in ``epochs`` epochs."""
    return max(1, round(epochs * max(counts) / count))


def epochs_of(report: Path) -> list[dict]:
    """The epoch rows of a train.py output.txt: seconds and data_wait_s."""
    rows = []
    for line in report.read_text().splitlines():
        parts = line.split()
        if len(parts) == 9 and re.fullmatch(r"\d+", parts[0]):
            rows.append({"seconds": float(parts[5]), "data_wait_s": float(parts[8])})
    return rows


def bench_stream(*, files: str = "4,100",  # file counts (subjects) of the trees compared, comma-separated
                 size: int = 64,  # matrix of every file (H = W), a multiple of 16
                 coils: int = 4,  # receive coils
                 frames: int = 12,  # frames per cine (the network's in_channels)
                 slices: int = 2,  # slices per file
                 epochs: int = 1,  # epochs of the run on the most files (fewer files: proportionally more)
                 arch: str = "dual_unet",  # the network trained (train.py --arch)
                 threads: int = 2,  # torch threads of the training process
                 keep: str | None = None) -> None:  # a folder to keep the trees and runs in; None: a temporary one
    """Peak memory and data waiting of train.py streaming raw phantom trees of ``files`` files."""
    counts = integer_list(files, "files", "4,100")
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(keep or temporary)
        work.mkdir(parents=True, exist_ok=True)
        rows = []
        for count in counts:
            tree = work / f"tree{count}"
            started = time.perf_counter()
            if not tree.exists():
                write_cmrxrecon_tree(tree, subjects=count, slices=slices, frames=frames, sizes=[(size, size)],
                                     coils=coils, accelerations=[], center_lines=max(4, size // 16), seed=0,
                                     log=lambda line: None)
            written = time.perf_counter() - started
            for attempt in ("maps estimated", "maps cached"):
                name = f"s{count}_{attempt.split()[1]}"
                status, peak = peak_run([sys.executable, str(ROOT / "train.py"), name, f"--data={tree}",
                                         f"--arch={arch}", f"--in_channels={frames}", f"--out_channels={frames}",
                                         f"--num_epochs={epochs_for(count, counts, epochs)}",
                                         f"--center_lines={max(4, size // 16)}",
                                         "--figures=false", "--device=cpu", "--workers=1",
                                         f"--cache_dir={work / 'cache'}"], work, threads)
                epoch = epochs_of(work / "output" / name / "output.txt") if status == 0 else []
                seconds = statistics.median(row["seconds"] for row in epoch) if epoch else None
                waited = statistics.median(row["data_wait_s"] for row in epoch) if epoch else None
                rows.append({"files": count, "cines": count * slices, "run": attempt, "status": status,
                             "peak_mib": round(peak, 1), "epoch_s": seconds, "data_wait_s": waited,
                             "wait_share": None if not seconds else round(waited / seconds, 4),
                             "tree_written_s": round(written, 1)})
                print(rows[-1], flush=True)
    first, last = (next(r for r in rows if r["files"] == n and r["run"] == "maps cached") for n in (min(counts),
                                                                                                   max(counts)))
    summary = {"peak_ratio_most_to_fewest_files": round(last["peak_mib"] / first["peak_mib"], 3),
               "largest_wait_share_cached": max(r["wait_share"] or 0 for r in rows if r["run"] == "maps cached")}
    print(json.dumps(summary))
    machine = "_".join(cpu_model().replace("(R)", "").split()[:2])  # e.g. AMD_EPYC, Intel_Xeon
    out = ROOT / "benchmarks" / "results" / f"bench_stream_{machine}_{threads}_threads.json"
    out.write_text(json.dumps({"cpu": cpu_model(), "threads": threads, "settings": dict(
        files=counts, size=size, coils=coils, frames=frames, slices=slices, epochs=epochs, arch=arch),
        "runs": rows, "summary": summary}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    with cli_errors():
        run_command(bench_stream, prog="python benchmarks/bench_stream.py")
