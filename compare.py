"""Compare trained networks with the classical baselines on the same test cines and masks.

    python compare.py NAME [--runs=A,B] [--checkpoints=PATH,...] [--labels=...]
        [--baselines=view_sharing,kt_sparse,lplus_s|none] [--masks=per_cine|fixed] [--max_cines=N]
        [--tune=true] [--tune_cines=8] [--batch_size=4] [--device=auto|cpu|cuda] [--amp=auto|bf16|fp16|none]
        [--data=... --num_samples=... --image_size=... --seed=... ...] [--out_dir=output] [--images_dir=images]
        [--help]

Trains nothing. A run name ``R`` stands for ``OUT_DIR/R/best.pt``. Every checkpoint must share its
data settings (``DATA_KEYS``): the test split is rebuilt from them exactly as ``train.py`` builds it.
Without checkpoints the data options describe the data (the baselines alone are compared); their
defaults are those of the ``train(...)`` call in train.py (``settings.train_defaults``).

Every method sees the same test cines with the same masks: ``--masks=per_cine`` (default) gives
cine i the evaluation mask seeded by ``(seed, i)``; ``--masks=fixed`` gives every cine the one mask
set of ``seed`` (the study's protocol). The CS weights are tuned by mean PSNR on the first
``--tune_cines`` validation cines under the same protocol, never on the test split.

Writes ``OUT_DIR/compare_NAME/results.md`` and ``results.json`` (PSNR and SSIM mean +- std, time
per cine, parameters, tuned weights, per-cine values) and ``IMAGES_DIR/compare_NAME/methods.png``
(one test cine from every method: a frame, error maps, a zoom on the heart, x-t and y-t profiles),
``psnr_boxes.png`` and, with networks and baselines, ``paired_psnr.png`` (per test cine, each network's
PSNR minus the best classical method's). An earlier comparison of the same NAME is never overwritten.
"""
from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from baselines import GRIDS, METHODS, synchronize
from baselines import tune as tune_weights
from cli import Command, Positional, UserError, atomic_write, check_run_name, cli_errors, make_run_dirs, \
    options_from_signature
from engine import autocast, choose_autocast, describe_device, evaluate, load_images, make_datasets, resolve_device
from metrics import summarize
from models import count_parameters, load_model
from settings import CHOICES, train_defaults, train_options

# The settings that make the test split, its cines and its masks; checkpoints must agree on them.
DATA_KEYS = ("data", "num_samples", "image_size", "phantom_phase", "seed", "in_channels", "acceleration",
             "center_lines", "density")
PHANTOM_KEYS = ("num_samples", "image_size", "phantom_phase")  # used only without a data file
CENTER_LINES_HELP = ">= 0 fully sampled central ky lines at 192 rows, scaled to the image height unless given"
BASELINE_LABELS = {"view_sharing": "view sharing", "kt_sparse": "k-t sparse", "lplus_s": "L+S"}
ZERO_FILLED = "zero-filled"
MASK_PROTOCOLS = {  # name -> (short label, description)
    "per_cine": ("per-cine masks", "test cine i has its own mask, seeded by (seed, i), the same for every method"),
    "fixed": ("one fixed mask", "one mask set (seeded by seed) shared by every cine and every method, "
                                "the study's protocol"),
}


def compare(name: str, *,
            runs: str = "",                       # run names, comma-separated: OUT_DIR/RUN/best.pt
            checkpoints: str = "",                # checkpoint paths, comma-separated
            labels: str = "",                     # method labels for runs then checkpoints (default: run names)
            baselines: str = "view_sharing,kt_sparse,lplus_s",  # baselines, comma-separated, or 'none'
            masks: str = "per_cine",              # 'per_cine' | 'fixed' (the study's protocol)
            max_cines: int = 0,                   # evaluate the first N test cines; 0 = all
            tune: bool = True,                    # tune the CS weights on validation cines (else defaults)
            tune_cines: int = 8,                  # validation cines for tuning; 0 = all
            batch_size: int = 4,                  # cines per reconstruction call
            device: str = "auto",                 # 'auto' | 'cpu' | 'cuda' | 'cuda:N'
            amp: str = "auto",                    # networks' autocast: 'auto' | 'bf16' | 'fp16' | 'none'
            verbose: bool = True,                 # print the CS solvers' time per call
            out_dir: str = "output",              # folder of the runs and of compare_NAME/
            images_dir: str = "images",           # folder of the figures (images_dir/compare_NAME/)
            given: tuple = (),
            command: str = "",
            **data) -> dict:
    """Evaluate every method on the same test cines; write the table and figures.

    data: the data settings (``DATA_KEYS``) used without checkpoints, by default those of the
    ``train(...)`` call; given: the options set on the command line (to refuse data options that
    contradict checkpoints); command: the command line, recorded in the results.
    """
    options = {key: value for key, value in locals().items() if key not in ("name", "given", "command", "data")}
    unknown = sorted(set(data) - set(DATA_KEYS))
    if unknown:
        raise UserError(f"--{unknown[0]}: not an option of compare.py (its data options: {', '.join(DATA_KEYS)})")
    defaults = train_defaults()
    options.update({key: data.get(key, defaults[key]) for key in DATA_KEYS})
    check_run_name(name)
    folder = check_run_name(f"compare_{name}")
    roots = [Path(out_dir), Path(images_dir)]
    refuse_earlier_comparison(roots, folder)
    methods = parse_method_options(options)
    if masks not in MASK_PROTOCOLS:
        raise UserError(f"--masks={masks!r}: choose one of {', '.join(MASK_PROTOCOLS)}")
    for key in ("max_cines", "tune_cines"):
        if options[key] < 0:
            raise UserError(f"--{key}={options[key]}: must be >= 0 (0 = all)")
    if batch_size < 1:
        raise UserError(f"--batch_size={batch_size}: must be a positive integer")
    torch_device = resolve_device(device)
    networks = load_networks(methods["networks"], torch_device)
    amp_dtype, amp_reason = choose_autocast(amp, torch_device) if networks else (None, "no networks")
    data_config, scale_lines = data_settings(options, networks, set(given))
    notes: list[str] = []
    images, source = load_images(data_config, notes, scale_lines)
    mask_mode = "random" if masks == "per_cine" else "fixed"
    _, val_set, test_set = make_datasets(images, {**data_config, "mask_mode": mask_mode}, torch_device)
    del images
    rows = np.arange(len(test_set))[:max_cines or None]
    val_rows = np.arange(len(val_set))[:tune_cines or None]
    out_path, img_path = make_run_dirs(roots, folder, resume=True)  # refused above if taken

    tuning = {}
    solvers = {}
    for method in methods["baselines"]:
        params, table = choose_parameters(method, val_set, val_rows, tune, batch_size, verbose)
        tuning[method] = {"params": params, "grid": {k: list(v) for k, v in GRIDS[method].items()} if tune else None,
                          "val_psnr": table}
        solvers[BASELINE_LABELS[method]] = (Solver(METHODS[method], params, verbose), None)
    entries = {ZERO_FILLED: (ZeroFilled(), None), **solvers,
               **{label: (net["model"], amp_dtype) for label, net in networks.items()}}

    results, examples = {}, {}
    for label, (model, dtype) in entries.items():
        print(f"{label}: reconstructing {len(rows)} test cine(s)", flush=True)
        scores, seconds = run_method(model, test_set, rows, batch_size, dtype, warm=label in networks)
        example = next(iter(scores["examples"].values()))
        examples[label], reference = example["recon"], example["target"]
        results[label] = {
            "kind": "network" if label in networks else "baseline",
            "psnr": dict(zip(("mean", "std"), summarize(scores["psnr"]))),
            "ssim": dict(zip(("mean", "std"), summarize(scores["ssim"]))),
            "seconds_per_cine": seconds,
            "parameters": count_parameters(model) if label in networks else None,
            "per_cine": {key: scores[key].tolist() for key in ("index", "psnr", "ssim")},
            **({"checkpoint": str(networks[label]["path"]), "config": networks[label]["config"]}
               if label in networks else {}),
        }
    report = {
        "name": name, "command": command, "date": datetime.now().isoformat(timespec="seconds"),
        "device": describe_device(torch_device), "torch": torch.__version__,
        "autocast": str(amp_dtype).replace("torch.", "") if amp_dtype else "off", "autocast_reason": amp_reason,
        "data": {**data_config, "source": source, "notes": notes},
        "masks": {"protocol": masks, "label": MASK_PROTOCOLS[masks][0], "description": MASK_PROTOCOLS[masks][1]},
        "test": {"cines": len(rows), "of": len(test_set), "indices": test_set.indices[rows].tolist()},
        "tuning": {"validation_cines": val_set.indices[val_rows].tolist(), "methods": tuning},
        "methods": results,
    }
    atomic_write(out_path / "results.json", json.dumps(report, indent=1))
    atomic_write(out_path / "results.md", results_markdown(report))
    write_figures(examples, reference, results, report, img_path)
    print("\n" + results_table(results) + f"\n\nresults {out_path / 'results.md'}, {out_path / 'results.json'}; "
          f"figures {img_path}/")
    return report


# ----------------------------------------------------------------------------- inputs
def refuse_earlier_comparison(roots: list[Path], folder: str) -> None:
    for root in roots:
        directory = root / folder
        if directory.is_dir() and any(directory.iterdir()):
            raise UserError(f"{directory} already holds an earlier comparison: choose another NAME")


def split_list(text: str) -> list[str]:
    return [item.strip() for item in (text or "").split(",") if item.strip()]


def parse_method_options(options: dict) -> dict:
    """The baselines (names) and networks (label -> checkpoint path) the options ask for."""
    chosen = split_list(options["baselines"])
    if chosen == ["none"]:
        chosen = []
    unknown = [b for b in chosen if b not in METHODS]
    if unknown:
        raise UserError(f"--baselines: unknown {unknown[0]!r}; choose from {', '.join(METHODS)} or none")
    runs = split_list(options["runs"])
    for run in runs:
        check_run_name(run)
    paths = [Path(options["out_dir"]) / run / "best.pt" for run in runs]
    paths += [Path(p) for p in split_list(options["checkpoints"])]
    names = runs + [p.parent.name if p.name == "best.pt" else p.stem for p in paths[len(runs):]]
    labels = split_list(options["labels"]) or names
    if len(labels) != len(paths):
        raise UserError(f"--labels: {len(labels)} label(s) for {len(paths)} run(s) and checkpoint(s)")
    taken = [ZERO_FILLED, *BASELINE_LABELS.values()]
    for label in labels:
        if label in taken or labels.count(label) > 1:
            raise UserError(f"method label {label!r} is taken ({'a baseline' if label in taken else 'twice'}): "
                            f"give distinct --labels")
    return {"baselines": list(dict.fromkeys(chosen)), "networks": dict(zip(labels, paths))}


def load_networks(paths: dict, device: torch.device) -> dict:
    """label -> {"model", "config", "path"} for every checkpoint (a missing run is named)."""
    networks = {}
    for label, path in paths.items():
        if not path.is_file():
            raise UserError(f"{path}: no such checkpoint (method {label!r}; train it first or check --out_dir)")
        model, config = load_model(path, device)
        networks[label] = {"model": model, "config": config, "path": path}
    return networks


def data_keys(config: dict) -> list[str]:
    """The keys that fix the data of ``config`` (the phantom's keys only when there is no file)."""
    return [key for key in DATA_KEYS if config.get("data") is None or key not in PHANTOM_KEYS]


def data_settings(options: dict, networks: dict, given: set) -> tuple[dict, bool]:
    """The data settings shared by every checkpoint, or the options' without checkpoints; and
    whether the centre lines still scale with the image height."""
    if not networks:
        return {key: options[key] for key in DATA_KEYS}, "center_lines" not in given
    (first, reference), *others = networks.items()
    settings = {key: reference["config"].get(key) for key in DATA_KEYS}
    for label, net in others:
        for key in sorted(set(data_keys(settings)) | set(data_keys(net["config"]))):
            if net["config"].get(key) != settings[key]:
                raise UserError(f"{net['path']} ({label}) has {key}={net['config'].get(key)!r} but "
                                f"{reference['path']} ({first}) has {key}={settings[key]!r}: every checkpoint "
                                f"must share the data settings ({', '.join(DATA_KEYS)})")
    for key in sorted(given & set(data_keys(settings))):
        if options[key] != settings[key]:
            raise UserError(f"--{key}={options[key]!r} contradicts the checkpoints' {key}={settings[key]!r}: "
                            f"with checkpoints the data settings come from them")
    return settings, False


# ----------------------------------------------------------------------------- methods
class ZeroFilled(torch.nn.Module):
    """The zero-filled reconstruction ``F^-1 y`` as a method."""

    def forward(self, aliased, kspace, mask):  # [B, T, H, W] each
        return aliased


class Solver(torch.nn.Module):
    """A CS baseline ``solve(kspace, mask, **params)`` as a method ``(aliased, kspace, mask) -> image``."""

    def __init__(self, solve, params: dict, verbose: bool):
        super().__init__()
        self.solve, self.params, self.verbose = solve, params, verbose

    def forward(self, aliased, kspace, mask):  # [B, T, H, W] each
        return self.solve(kspace, mask, verbose=self.verbose, **self.params)


class Timed(torch.nn.Module):
    """Wraps a method and adds up the wall-clock time of its calls (device synchronised) and the
    cines they reconstructed: reconstruction only, no metrics."""

    def __init__(self, method: torch.nn.Module):
        super().__init__()
        self.method = method
        self.seconds, self.cines = 0.0, 0

    def forward(self, aliased, kspace, mask):
        synchronize(aliased.device)
        started = time.perf_counter()
        recon = self.method(aliased, kspace, mask)
        synchronize(aliased.device)
        self.seconds += time.perf_counter() - started
        self.cines += len(aliased)
        return recon


def run_method(model, test_set, rows, batch_size: int, amp_dtype, warm: bool) -> tuple[dict, float]:
    """``engine.evaluate`` of one method on the test cines ``rows`` (the first kept as an example)
    and its reconstruction time per cine; ``warm``: one untimed call first (networks), so one-off
    costs such as kernel selection are not counted."""
    timed = Timed(model)
    if warm:
        batch = test_set.batch(rows[:1])
        with torch.no_grad(), autocast(test_set.images.device, amp_dtype):
            model.eval()(batch["aliased"], batch["kspace"], batch["mask"])
    scores = evaluate(timed, test_set, batch_size=batch_size, amp_dtype=amp_dtype, rows=rows,
                            keep={int(rows[0])})
    return scores, timed.seconds / max(timed.cines, 1)


def choose_parameters(method: str, val_set, val_rows, tuned: bool, batch_size: int, verbose: bool):
    """The CS weights: tuned on the validation cines ``val_rows`` (grid ``GRIDS[method]``) or the
    solver's defaults. Returns (params, [{"params", "psnr"}] per grid point)."""
    if not tuned:
        return {}, []
    print(f"{BASELINE_LABELS[method]}: tuning on {len(val_rows)} validation cine(s)", flush=True)
    batch = val_set.batch(val_rows)
    return tune_weights(method, batch["kspace"], batch["mask"], batch["target"], GRIDS[method],
                        batch_size=batch_size, verbose=verbose)


# ----------------------------------------------------------------------------- reports
def results_table(results: dict) -> str:
    lines = ["| method | PSNR (dB) mean ± std | SSIM mean ± std | time per cine (s) | parameters |",
             "| --- | --- | --- | --- | --- |"]
    for label, r in results.items():
        params = f"{r['parameters']:,}" if r["parameters"] is not None else "–"
        lines.append(f"| {label} | {r['psnr']['mean']:.2f} ± {r['psnr']['std']:.2f} | "
                     f"{r['ssim']['mean']:.4f} ± {r['ssim']['std']:.4f} | {r['seconds_per_cine']:.4f} | {params} |")
    return "\n".join(lines)


def describe_params(params: dict) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in params.items()) or "the solver's defaults"


def results_markdown(report: dict) -> str:
    data, test = report["data"], report["test"]
    networks = {label: r for label, r in report["methods"].items() if r["kind"] == "network"}
    lines = [f"# Comparison `{report['name']}`", "",
             f"    {report['command']}" if report["command"] else "", "",
             f"- date: {report['date']}; device: {report['device']}; torch {report['torch']}"
             + (f"; networks' autocast: {report['autocast']}" if networks else ""),
             f"- data: {data['source']}; acceleration {data['acceleration']:g}, {data['center_lines']} centre lines, "
             f"{data['density']} density, seed {data['seed']}",
             *[f"- note: {note}" for note in data["notes"]],
             f"- test: {test['cines']} of the {test['of']} test-split cines (same cines for every method)",
             f"- masks: `--masks={report['masks']['protocol']}`, {report['masks']['label']}: "
             f"{report['masks']['description']}",
             "- metrics on magnitudes, each reference cine with peak 1 (see metrics.py); ± is the standard "
             "deviation over cines; time per cine is the wall-clock time of the reconstruction alone", "",
             results_table(report["methods"]), ""]
    tuning = report["tuning"]["methods"]
    if tuning:
        lines += ["## Baseline parameters", "",
                  f"Relative regularisation weights (see baselines.py), chosen by mean PSNR on validation cines "
                  f"{report['tuning']['validation_cines']} under the same mask protocol; never on the test split.", ""]
        for method, t in tuning.items():
            lines.append(f"- {BASELINE_LABELS[method]}: **{describe_params(t['params'])}**")
            lines += [f"    - {describe_params(row['params'])}: {row['psnr']:.2f} dB" for row in t["val_psnr"]]
        lines.append("")
    if networks:
        lines += ["## Networks", "", "| method | checkpoint | arch | cascades | output | trained with masks |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for label, r in networks.items():
            c = r["config"]
            lines.append(f"| {label} | `{r['checkpoint']}` | {c.get('arch')} | {c.get('cascades')} | "
                         f"{c.get('output')} | {c.get('mask_mode')} |")
        lines.append("")
    return "\n".join(lines)


def write_figures(examples: dict, reference: np.ndarray, results: dict, report: dict, img_path: Path) -> None:
    """``methods.png`` (one test cine from every method: frames, amplified errors, heart zoom, x-t
    and y-t profiles), ``psnr_boxes.png`` (per-cine PSNR of every method) and, with networks and
    classical baselines, ``paired_psnr.png`` (each network minus the best classical method, per cine)."""
    import figures

    index = report["test"]["indices"][0]
    sampling = figures.sampling_label(report["data"]["acceleration"], report["data"]["center_lines"])
    figures.plot_reconstructions(examples, img_path / "methods.png", reference,
                                 title=f"Test cine {index}, {report['masks']['label']}", sampling=sampling)
    per_cine = {label: r["per_cine"]["psnr"] for label, r in results.items()}
    figures.plot_psnr_boxes(per_cine, img_path / "psnr_boxes.png", sampling=sampling)
    networks = [label for label, r in results.items() if r["kind"] == "network"]
    classical = [label for label, r in results.items() if r["kind"] != "network" and label != ZERO_FILLED]
    if networks and classical:
        best = max(classical, key=lambda label: results[label]["psnr"]["mean"])
        figures.plot_paired_differences({label: per_cine[label] for label in (best, *networks)}, best,
                                        img_path / "paired_psnr.png", sampling=sampling,
                                        title=f"Per-cine PSNR against the best classical method, {best}")


# ----------------------------------------------------------------------------- command line
def command() -> Command:
    """``python compare.py NAME``: compare()'s options, then the data options of train.py's call."""
    data_options = [replace(option, section="data, used only without checkpoints",
                            help=CENTER_LINES_HELP if option.name == "center_lines" else option.help)
                    for option in train_options() if option.name in DATA_KEYS]
    options = options_from_signature(compare, choices={"masks": tuple(MASK_PROTOCOLS), "amp": CHOICES["amp"]},
                                     exclude=("name", "given", "command"))
    return Command("python compare.py", __doc__, options + data_options,
                   [Positional("NAME", "the comparison's name: it writes OUT_DIR/compare_NAME/ and "
                                       "IMAGES_DIR/compare_NAME/")])


def parse_command_line(argv: list[str]) -> tuple[str, dict]:
    """``NAME [--key=value ...]`` -> (name, the options given); ``--help`` lists them."""
    (name,), given = command().parse(argv)
    return name, given


if __name__ == "__main__":
    with cli_errors():  # bad input: one line on stderr, exit status 2 (--debug: traceback)
        compare_name, cli_overrides = parse_command_line(sys.argv[1:])
        compare(compare_name, **cli_overrides, given=tuple(cli_overrides),
                command=shlex.join(["python", "compare.py", *sys.argv[1:]]))
