"""Compare trained networks with the classical baselines on the same test cines and masks.

    python compare.py NAME [--runs=A,B] [--checkpoints=PATH,...] [--labels=...]
        [--baselines=view_sharing,kt_sparse,lplus_s,lplus_s_unrolled,tv_wavelet,bart_pics|none] [--masks=per_cine|fixed]
        [--max_cines=N]
        [--tune=true] [--tune_cines=8] [--batch_size=4] [--device=auto|cpu|cuda] [--amp=auto|bf16|fp16|none]
        [--split=test|all] [--adapt=STEPS [--adapt_lr=2e-5] [--adapt_crop=64] [--adapt_features=F]]
        [--data=... --num_samples=... --image_size=... --coils=1 --mask_type=variable_density|uniform --seed=... ...]
        [--out_dir=output] [--images_dir=images]
        [--help]

    python compare.py pincat --data=../shared/data/pincat.npz --split=all --runs=A,B [--adapt=STEPS]

Trains nothing. A run name ``R`` stands for ``OUT_DIR/R/best.pt``. Every checkpoint must share its
data settings (``DATA_KEYS``): the test split is rebuilt from them exactly as ``train.py`` builds it.
Without checkpoints the data options describe the data (the baselines alone are compared); their
defaults are those of the ``train(...)`` call in train.py (``settings.train_defaults``).

Every method sees the same test cines with the same masks: ``--masks=per_cine`` (default) gives
cine i the evaluation mask seeded by ``(seed, i)``; ``--masks=fixed`` gives every cine the one mask
set of ``seed`` (the study's protocol). The CS weights are tuned by mean PSNR on the first
``--tune_cines`` validation cines under the same protocol, never on the test split.

``--split=val`` evaluates the validation cines instead of the test cines, to choose between
networks without looking at the test split (use it with ``--baselines=none``: tuned there, the CS
weights would be tuned on the cines they are scored on).

``--split=all`` evaluates every cine of ``--data`` as a test cine (no split, so one cine is enough;
an external benchmark such as PINCAT): the networks are used as they are (their own data settings
play no part; every network takes the file's frame count), the sampling options are used exactly as
given (``--center_lines`` is not scaled with the image height), the images are zero-padded to the
networks' size multiples, and the CS weights are tuned on the validation cines of the embedded
phantom (``--num_samples``, ``--seed``; complex where the file's cines are, unless
``--phantom_phase`` is given) rendered at the file's size and frame count, never on the evaluated
cines.

``--coils=N`` (N > 1, the embedded phantom, docs/coils.md) gives every method the same coil k-space
and the same coil maps, estimated by ESPIRiT from each cine's centre lines; ``--mask_type=uniform``
samples every R-th line plus the centre lines (CMRxRecon's masks) instead of variable-density lines.

``--adapt=STEPS`` adds, for every network, a ``<label> + adapt`` row: a copy of the network adapted
to each test cine's own measurements (adapt.py, docs/adapt.md), then the cine reconstructed with it;
``--adapt_features=F`` gives a learned L+S or ADMM a CNN of F channels inside each iteration to adapt.
results.md also gives, for every network, the per-cine PSNR and SSIM differences against the
classical method with the best mean PSNR (mean +- std, cines better); with ``--baselines=none``, those
of every other network against the first one.

Writes ``OUT_DIR/compare_NAME/results.md`` and ``results.json`` (PSNR and SSIM mean +- std, time
per cine, parameters, tuned weights, per-cine values) and ``IMAGES_DIR/compare_NAME/methods.png``
(one test cine from every method: a frame, error maps, a zoom on the heart, x-t and y-t profiles),
``psnr_boxes.png`` and, with networks and baselines (or several networks), ``paired_psnr.png`` (per
test cine, each network's PSNR minus the reference's). An earlier comparison of the same NAME is never overwritten.
"""
from __future__ import annotations

import json
import math
import os
import shlex
import sys
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

import bart_pics
from baselines import GRIDS, METHODS, grid_edges, synchronize
from baselines import tune as tune_weights
from checkpoint import load_trained_model
from cli import Command, Positional, UserError, atomic_write, check_run_name, cli_errors, make_run_dirs, \
    check_name_length, non_negative, options_from_signature, remove_stale_temporaries_in, run_in_progress, \
    written_together
from data import CineDataset, accelerations, load_images, make_datasets, pad_to_multiple, raw_entries, split_indices
from engine import autocast, choose_autocast, describe_device, evaluate, resolve_device, run_model
from formats import load_boxes, load_cine
from metrics import summarize
from models import count_parameters, size_multiple
from reconstruct import adapted_reconstruction, check_adaptation
from sampling import check_sampling
from settings import CHOICES, train_defaults, train_options, validate_config

# The settings that make the test split, its cines and its masks; checkpoints must agree on them.
DATA_KEYS = ("data", "num_samples", "image_size", "phantom_phase", "coils", "seed", "in_channels", "acceleration",
             "center_lines", "density", "mask_type")
PHANTOM_KEYS = ("num_samples", "image_size", "phantom_phase", "coils")  # used only without a data file
CENTER_LINES_HELP = (">= 0 fully sampled central ky lines at 192 rows, scaled to the image height unless given; "
                     "with --split=all used exactly as given")
SPLITS = ("test", "val", "all")
FILE_SHAPE_KEYS = ("image_size", "in_channels")  # taken from the file with --split=all
BASELINE_LABELS = {"view_sharing": "view sharing", "kt_sparse": "k-t sparse", "lplus_s": "L+S",
                   "lplus_s_unrolled": "L+S, 10 iterations from view sharing", "tv_wavelet": "temporal TV + wavelet",
                   "tv_spatial_tv": "temporal TV + spatial TV", "bart_pics": "BART pics (tTV + wavelet)"}
EXTERNAL = {"bart_pics": (bart_pics.pics_tv_wavelet, bart_pics.GRID)}  # external programs' baselines: (solver, grid)
SOLVERS = {**METHODS, **{name: solve for name, (solve, _) in EXTERNAL.items()}}
SOLVER_GRIDS = {**GRIDS, **{name: grid for name, (_, grid) in EXTERNAL.items()}}
ZERO_FILLED = "zero-filled"
SCORES = ("psnr", "ssim", "psnr_roi", "ssim_roi")  # per-cine scores kept for every method (heart box: if known)
MASK_PROTOCOLS = {  # name -> (short label, description)
    "per_cine": ("per-cine masks", "test cine i has its own mask, seeded by (seed, i), the same for every method"),
    "fixed": ("one fixed mask", "one mask set (seeded by seed) shared by every cine and every method, "
                                "the study's protocol"),
}


def compare(name: str, *,
            runs: str = "",                       # run names, comma-separated: OUT_DIR/RUN/best.pt
            checkpoints: str = "",                # checkpoint paths, comma-separated
            labels: str = "",                     # method labels for runs then checkpoints (default: run names)
            baselines: str = "view_sharing,kt_sparse,lplus_s,lplus_s_unrolled,tv_wavelet,bart_pics",  # comma-separated, or 'none'; bart_pics: bart on PATH
            masks: str = "per_cine",              # 'per_cine' | 'fixed' (the study's protocol)
            split: str = "test",                  # 'test' | 'val' (choosing between networks) | 'all': every cine of --data
            max_cines: int = 0,                   # evaluate the first N test cines; 0 = all
            tune: bool = True,                    # tune the CS weights on validation cines (else defaults)
            tune_cines: int = 8,                  # validation cines for tuning; 0 = all
            batch_size: int = 4,                  # cines per reconstruction call
            device: str = "auto",                 # 'auto' | 'cpu' | 'cuda' | 'cuda:N'
            amp: str = "auto",                    # networks' autocast: 'auto' | 'bf16' | 'fp16' | 'none'
            adapt: int = 0,                       # > 0: add each network adapted to every test cine (at most N steps)
            adapt_lr: float = 2e-5,               # learning rate of the adaptation
            adapt_crop: int = 64,                 # columns adapted on (a multiple of the size multiples); 0 = all
            adapt_features: int = 0,              # channels of a CNN added in each iteration of a learned L+S/ADMM (>= 0); 0 = none
            cache_dir: str = "cache",             # raw k-space --data: the coil-map cache train.py filled (reused)
            workers: int = 1,                     # raw k-space --data: processes reading cines ahead (>= 0)
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
    methods = parse_method_options(options, "baselines" in given)
    if masks not in MASK_PROTOCOLS:
        raise UserError(f"--masks={masks!r}: choose one of {', '.join(MASK_PROTOCOLS)}")
    if split not in SPLITS:
        raise UserError(f"--split={split!r}: choose one of {', '.join(SPLITS)}")
    for key in ("max_cines", "tune_cines"):
        if options[key] < 0:
            raise UserError(f"--{key}={options[key]}: must be >= 0 (0 = all)")
    if batch_size < 1:
        raise UserError(f"--batch_size={batch_size}: must be a positive integer")
    torch_device = resolve_device(device)
    networks = load_networks(methods["networks"], torch_device)
    check_data_options(options, networks, set(given))
    amp_dtype, amp_reason = choose_autocast(amp, torch_device) if networks else (None, "no networks")
    notes: list[str] = []
    mask_mode = "random" if masks == "per_cine" else "fixed"
    if split == "all":
        data_config = {key: options[key] for key in DATA_KEYS}
        test_set, source = external_cines(data_config, networks, mask_mode, torch_device, notes, set(given))
        val_set = (phantom_validation(data_config, tune_cines, mask_mode, torch_device)
                   if methods["baselines"] and tune else None)
    else:
        data_config, scale_lines = data_settings(options, networks, set(given))
        images, source, meta = load_images(data_config, notes, scale_lines)
        multiple = math.lcm(1, *(size_multiple(net["config"]) for net in networks.values()))
        _, val_set, test_set = make_datasets(images, {**data_config, "mask_mode": mask_mode, "cache_dir": cache_dir,
                                                      "workers": workers}, torch_device, meta, notes, multiple)
        test_set = val_set if split == "val" else test_set  # choosing between networks: never the test cines
        del images
    rate = evaluated_acceleration(data_config, options["acceleration"], set(given), notes)
    if adapt:
        for net in networks.values():
            check_adaptation(adapt, adapt_lr, adapt_crop, size_multiple(net["config"]), test_set.shape_of(0)[-1],
                             adapt_features, net["model"])
    rows = np.arange(len(test_set))[:max_cines or None]
    val_rows = np.arange(len(val_set) if val_set is not None else 0)[:tune_cines or None]
    validation = val_set.indices[val_rows].tolist() if val_set is not None else []
    out_path, img_path = make_run_dirs(roots, folder, resume=True)  # refused above if taken

    tuning = {}
    solvers = {}
    for method in methods["baselines"]:
        params, table = choose_parameters(method, val_set, val_rows, tune, batch_size, verbose, rate)
        tuning[method] = {"params": params, "grid": {k: list(v) for k, v in SOLVER_GRIDS[method].items()} if tune
                          else None, "val_psnr": table}
        solvers[BASELINE_LABELS[method]] = (Solver(SOLVERS[method], params, verbose), None)
    entries = {ZERO_FILLED: (ZeroFilled(), None), **solvers}
    network_of = {}  # row label -> the network's label
    for label, net in networks.items():
        entries[label], network_of[label] = (net["model"], amp_dtype), label
        if adapt:
            adapting = Adapting(net["model"], net["config"], amp_dtype, verbose, steps=adapt, lr=adapt_lr,
                                crop=adapt_crop, features=adapt_features)
            entries[f"{label} + adapt"], network_of[f"{label} + adapt"] = (adapting, amp_dtype), label

    external = {BASELINE_LABELS[method] for method in methods["baselines"] if method in EXTERNAL}
    results, examples = {}, {}
    for label, (model, dtype) in entries.items():
        print(f"{label}: reconstructing {len(rows)} test cine(s)", flush=True)
        scores, seconds = run_method(model, test_set, rows, batch_size, dtype, warm=label in networks,
                                     acceleration=rate)
        example = next(iter(scores["examples"].values()))
        examples[label], reference = example["recon"], example["target"]
        net = networks.get(network_of.get(label))
        results[label] = {
            "kind": "network" if net else "external" if label in external else "baseline",
            **{key: dict(zip(("mean", "std"), summarize(scores[key]))) for key in SCORES if key in scores},
            "seconds_per_cine": seconds,
            "parameters": count_parameters(model) if net else None,
            "per_cine": {key: scores[key].tolist() for key in ("index", *SCORES) if key in scores},
            **({"checkpoint": str(net["path"]), "config": net["config"]} if net else {}),
            **({"adapt": model.infos} if isinstance(model, Adapting) else {}),
        }
    report = {
        "name": name, "command": command, "date": datetime.now().isoformat(timespec="seconds"),
        "device": describe_device(torch_device), "torch": torch.__version__,
        "autocast": str(amp_dtype).replace("torch.", "") if amp_dtype else "off", "autocast_reason": amp_reason,
        "data": {**data_config, "source": source, "notes": notes},
        "masks": {"protocol": masks, "label": MASK_PROTOCOLS[masks][0], "description": MASK_PROTOCOLS[masks][1]},
        "split": split,
        "test": {"cines": len(rows), "of": len(test_set), "indices": test_set.indices[rows].tolist()},
        "tuning": {"validation_cines": validation, "methods": tuning,
                   "source": tuning_source(split, data_config, validation)},
        "methods": results,
        "paired": paired_differences(results),
        "adaptation": {"steps": adapt, "lr": adapt_lr, "crop": adapt_crop, "features": adapt_features}
        if adapt and networks else None,
        "external": {BASELINE_LABELS["bart_pics"]: external_description()} if "bart_pics" in methods["baselines"]
        else {},
    }
    with written_together():  # the results and figures all, or none (a full disk leaves the folders empty)
        atomic_write(out_path / "results.json", json.dumps(report, indent=1))
        atomic_write(out_path / "results.md", results_markdown(report))
        write_figures(examples, reference, results, report, img_path,
                      box=None if test_set.boxes is None else test_set.boxes[rows[0]])
    print("\n" + results_table(results) + f"\n\nresults {out_path / 'results.md'}, {out_path / 'results.json'}; "
          f"figures {img_path}/")
    return report


# ----------------------------------------------------------------------------- inputs
def refuse_earlier_comparison(roots: list[Path], folder: str) -> None:
    """Refuse a comparison folder that holds an earlier comparison's files, or that a comparison in
    progress holds; the temporary files of a comparison killed while writing are removed first and
    never count as an earlier result."""
    for root in roots:
        directory = root / folder
        check_name_length(directory, temporary=False)
        holder = run_in_progress(directory) if directory.is_dir() else None
        if holder is not None:
            raise UserError(f"{directory} is in use by a comparison in progress{holder}: wait for it to end, or choose "
                            f"another NAME")
        remove_stale_temporaries_in(directory)
        if directory.is_dir() and any(directory.iterdir()):
            raise UserError(f"{directory} already holds an earlier comparison: choose another NAME")


def split_list(text: str) -> list[str]:
    return [item.strip() for item in (text or "").split(",") if item.strip()]


def parse_method_options(options: dict, baselines_given: bool = True) -> dict:
    """The baselines (names) and networks (label -> checkpoint path) the options ask for. An external
    baseline (``EXTERNAL``: BART) whose program is not installed is refused when ``--baselines``
    names it, and left out with a note when it comes from the default list."""
    chosen = split_list(options["baselines"])
    if chosen == ["none"]:
        chosen = []
    unknown = [b for b in chosen if b not in SOLVERS]
    if unknown:
        raise UserError(f"--baselines: unknown {unknown[0]!r}; choose from {', '.join(SOLVERS)} or none")
    if "bart_pics" in chosen and bart_pics.available() is None:
        if baselines_given:
            raise UserError("--baselines=...bart_pics: bart is not on PATH (install BART, docs/baselines.md)")
        chosen.remove("bart_pics")
        print("note: bart is not on PATH: no BART pics row (docs/baselines.md, 'BART cross-check')", flush=True)
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
        if not os.path.lexists(path):  # anything else (a folder, a loop of links) is named by load_trained_model
            raise UserError(f"{path}: no such checkpoint (method {label!r}; train it first or check --out_dir)")
        holder = run_in_progress(Path(path).parent)
        if holder is not None:
            raise UserError(f"{path}: its run is still training{holder}; its best.pt changes as it trains: compare it "
                            f"when the run ends")
        model, config = load_trained_model(path, device)
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
        if key == "acceleration" and isinstance(settings[key], list) and options[key] in settings[key]:
            continue  # one of the accelerations the checkpoints were trained at (evaluated_acceleration)
        if options[key] != settings[key]:
            raise UserError(f"--{key}={options[key]!r} contradicts the checkpoints' {key}={settings[key]!r}: "
                            f"with checkpoints the data settings come from them")
    return settings, False


def check_data_options(options: dict, networks: dict, given: set) -> None:
    """Check compare's data options as train.py checks them (with the first checkpoint's settings,
    else the ``train(...)`` call's): ranges, the seed, and the memory the phantom would need."""
    reference = next(iter(networks.values()))["config"] if networks else {}
    data = {key: options[key] for key in DATA_KEYS if key in given or not networks}
    config = {**train_defaults(), **reference, **data, "device": options["device"]}
    validate_config({**config, "out_channels": config["in_channels"]})


def sampling_of(config: dict, mask_mode: str) -> dict:
    """The ``CineDataset`` keywords of evaluation masks under ``config``'s sampling."""
    return dict(mask_mode=mask_mode, acceleration=config["acceleration"], center_lines=config["center_lines"],
                density=config["density"], mask_type=config.get("mask_type", "variable_density"), seed=config["seed"])


def external_cines(config: dict, networks: dict, mask_mode: str, device: torch.device, notes: list[str],
                   given: set) -> tuple[CineDataset, str]:
    """``--split=all``: every cine of the file ``config["data"]`` as a test cine, at its own frame count,
    zero-padded to the networks' size multiples, sampled with the centre lines exactly as given.
    Records the cines' frames and (H, W) in ``config`` (``in_channels``, ``image_size``) and, unless
    given, their kind (``phantom_phase``: the tuning phantom is complex where they are). Networks are
    used as they are (a dual UNet through its cyclic windows). Returns the test set and a description."""
    if config["data"] is None:
        raise UserError("--split=all evaluates every cine of a data file: give --data=FILE")
    if raw_entries(config["data"]):
        raise UserError(f"--split=all evaluates image cines; raw k-space ({config['data']}) is compared on its test "
                        f"split (or reconstructed as measured with python reconstruct.py --kspace)")
    fixed = sorted(given & set(FILE_SHAPE_KEYS))
    if fixed:
        raise UserError(f"--{fixed[0]}: with --split=all the cines of {config['data']} keep their own size and frames")
    source = str(config["data"])
    images = load_cine(source)  # [N, T, H, W], peak magnitude 1 each
    multiple = math.lcm(1, *(size_multiple(net["config"]) for net in networks.values()))
    images, boxes = pad_to_multiple(images, multiple, notes, source, load_boxes(source, len(images), images.shape[2:]))
    count, frames, height, width = images.shape
    try:
        check_sampling(height, config["acceleration"], config["center_lines"])
    except ValueError as error:
        raise UserError(f"sampling of {height}-row images: {error}") from None
    kind = "complex" if np.iscomplexobj(images) else "magnitude"
    config.update(in_channels=frames, image_size=[height, width])
    if "phantom_phase" not in given:
        config["phantom_phase"] = kind == "complex"
    notes.append(f"--split=all: every cine of {source} is a test cine; {config['center_lines']} centre lines "
                 f"exactly as given (not scaled with the image height)")
    print(notes[-1], flush=True)
    test_set = CineDataset(torch.from_numpy(images).to(device), np.arange(count), boxes=boxes,
                           **sampling_of(config, mask_mode))
    return test_set, f"{source}: {count} {kind} cine(s) of {frames}x{height}x{width}"


def phantom_validation(config: dict, count: int, mask_mode: str, device: torch.device) -> CineDataset:
    """The first ``count`` (0: all) validation cines of the embedded phantom of ``config`` (its
    ``num_samples`` cines of ``seed``, split as train.py splits them, ``phantom_phase``), rendered at
    the evaluated cines' size and frames (``image_size`` [H, W], ``in_channels``) and sampled like
    them: where ``--split=all`` tunes the CS weights, never on the evaluated cines."""
    from phantom import make_phantom_cine

    _, indices, _ = split_indices(config["num_samples"], seed=config["seed"])
    indices = indices[:count or None]
    # cine i of make_phantom_dataset(num_samples, seed=seed) draws from the i-th child of SeedSequence(seed)
    generators = [np.random.default_rng(np.random.SeedSequence(config["seed"], spawn_key=(int(i),))) for i in indices]
    cines = np.stack([make_phantom_cine(rng, frames=config["in_channels"], size=tuple(config["image_size"]),
                                        complex_phase=config["phantom_phase"]) for rng in generators])  # [n, T, H, W]
    return CineDataset(torch.from_numpy(cines).to(device), indices, **sampling_of(config, mask_mode))


def tuning_source(split: str, config: dict, validation: list[int]) -> str:
    """Where the CS weights were tuned, as a phrase for results.md."""
    if split == "test":
        return f"validation cines {validation} under the same mask protocol; never on the test split"
    if split == "val":
        return f"validation cines {validation}, also the evaluated cines: the CS rows are tuned on what they score"
    frames, (height, width) = config["in_channels"], config["image_size"]
    kind = "complex" if config["phantom_phase"] else "magnitude"
    return (f"validation cines {validation} of the embedded phantom ({config['num_samples']} {kind} cines of seed "
            f"{config['seed']}, split as train.py splits them), rendered at {frames}x{height}x{width} like the "
            f"evaluated cines, under the same mask protocol; never on the evaluated cines")


# ----------------------------------------------------------------------------- methods
class ZeroFilled(torch.nn.Module):
    """The zero-filled reconstruction ``F^-1 y`` (with coils ``A^H y``) as a method."""

    def forward(self, aliased, kspace, mask, sensitivities=None):  # [B, T, H, W] each (coils: see CineDataset)
        return aliased


class Solver(torch.nn.Module):
    """A CS baseline ``solve(kspace, mask, **params)`` as a method ``(aliased, kspace, mask) -> image``."""

    def __init__(self, solve, params: dict, verbose: bool):
        super().__init__()
        self.solve, self.params, self.verbose = solve, params, verbose

    def forward(self, aliased, kspace, mask, sensitivities=None):  # [B, T, H, W] each (coils: see CineDataset)
        return self.solve(kspace, mask, verbose=self.verbose, sensitivities=sensitivities, **self.params)


class Adapting(torch.nn.Module):
    """A network adapted to each cine before it reconstructs it (``reconstruct.adapted_reconstruction``:
    a fresh copy per cine, discarded afterwards, ending in hard data consistency); ``infos`` collects
    adapt's record of every cine."""

    def __init__(self, model: torch.nn.Module, config: dict, amp_dtype, verbose: bool, **options):
        super().__init__()
        self.model, self.config, self.amp_dtype, self.verbose = model, config, amp_dtype, verbose
        self.options = options  # steps, lr, crop, features of adapt.adapt
        self.infos: list[dict] = []

    def forward(self, aliased, kspace, mask, sensitivities=None):  # [B, T, H, W]; coil k-space [B, C, T, H, W]
        recons = []
        for i in range(len(aliased)):
            maps = None if sensitivities is None else sensitivities[i:i + 1]  # [1, C, H, W]
            recon, info = adapted_reconstruction(self.model, self.config, aliased[i:i + 1], kspace[i:i + 1],
                                                 mask[i:i + 1], maps, amp_dtype=self.amp_dtype,
                                                 log=print if self.verbose else lambda line: None, **self.options)
            recons.append(recon)
            self.infos.append(info)
        return torch.cat(recons)  # [B, T, H, W] complex64


class Timed(torch.nn.Module):
    """Wraps a method and adds up the wall-clock time of its calls (device synchronised) and the
    cines they reconstructed: reconstruction only, no metrics."""

    def __init__(self, method: torch.nn.Module):
        super().__init__()
        self.method = method
        self.seconds, self.cines = 0.0, 0

    def forward(self, aliased, kspace, mask, **coils):  # coils: sensitivities=, passed on when given
        synchronize(aliased.device)
        started = time.perf_counter()
        recon = self.method(aliased, kspace, mask, **coils)
        synchronize(aliased.device)
        self.seconds += time.perf_counter() - started
        self.cines += len(aliased)
        return recon


def run_method(model, test_set, rows, batch_size: int, amp_dtype, warm: bool, acceleration: float | None = None
               ) -> tuple[dict, float]:
    """``engine.evaluate`` of one method on the test cines ``rows`` (the first kept as an example)
    and its reconstruction time per cine; ``warm``: one untimed call first (networks), so one-off
    costs such as kernel selection are not counted."""
    timed = Timed(model)
    if warm:
        with torch.no_grad(), autocast(test_set.device, amp_dtype):
            run_model(model.eval(), test_set.batch(rows[:1]))
    scores = evaluate(timed, test_set, batch_size=batch_size, amp_dtype=amp_dtype, rows=rows, keep={int(rows[0])},
                      acceleration=acceleration)
    return scores, timed.seconds / max(timed.cines, 1)


def choose_parameters(method: str, val_set, val_rows, tuned: bool, batch_size: int, verbose: bool,
                      acceleration: float | None = None):
    """The CS weights: tuned on the validation cines ``val_rows`` (grid ``SOLVER_GRIDS[method]``; cines of
    several shapes are tuned shape by shape and their PSNRs averaged, each cine counting once) or the
    solver's defaults. Returns (params, [{"params", "psnr"}] per grid point)."""
    if not tuned:
        return {}, []
    print(f"{BASELINE_LABELS[method]}: tuning on {len(val_rows)} validation cine(s)", flush=True)
    tables = []  # (cines, rows of baselines.tune) per shape
    for chunk, batch in val_set.chunks(val_rows, max(len(val_rows), 1), acceleration):
        _, rows = tune_weights(SOLVERS[method], batch["kspace"], batch["mask"], batch["target"], SOLVER_GRIDS[method],
                               batch_size=batch_size, verbose=verbose, sensitivities=batch.get("sensitivities"))
        tables.append((len(chunk), rows))
    table = [{"params": row["params"], "psnr": sum(count * rows[i]["psnr"] for count, rows in tables)
              / sum(count for count, _ in tables)} for i, row in enumerate(tables[0][1])]
    params = dict(max(table, key=lambda row: row["psnr"])["params"])
    edges = grid_edges(params, SOLVER_GRIDS[method])
    if edges:
        print(f"note: {BASELINE_LABELS[method]} tuned at the edge of its grid ({', '.join(edges)}): the best "
              f"weight may lie beyond it (baselines.GRIDS)", flush=True)
    return params, table


def evaluated_acceleration(config: dict, given_value, given: set, notes: list[str]) -> float:
    """The one acceleration compared: the data's (the checkpoints'), or with several (a run trained at
    ``--acceleration=4,8,10``) the one given with ``--acceleration`` (one of them), else the first."""
    rates = accelerations(config)
    if len(rates) == 1:
        return rates[0]
    if "acceleration" in given:
        if isinstance(given_value, list) or float(given_value) not in rates:
            raise UserError(f"--acceleration={given_value}: compare.py compares one acceleration, one of the "
                            f"checkpoints' {', '.join(f'{r:g}' for r in rates)}")
        chosen = float(given_value)
    else:
        chosen = rates[0]
    notes.append(f"acceleration {chosen:g} of the checkpoints' {', '.join(f'{r:g}' for r in rates)} "
                 f"(--acceleration=R compares another)")
    config["acceleration"] = chosen
    return chosen


# ----------------------------------------------------------------------------- reports
def results_table(results: dict) -> str:
    """The markdown table of every method; heart-box columns where the test cines have heart boxes."""
    roi = all("psnr_roi" in r for r in results.values())
    lines = ["| method | PSNR (dB) mean ± std | SSIM mean ± std | "
             + ("heart-box PSNR (dB) | heart-box SSIM | " if roi else "") + "time per cine (s) | parameters |",
             "| --- | --- | --- | " + ("--- | --- | " if roi else "") + "--- | --- |"]
    for label, r in results.items():
        params = f"{r['parameters']:,}" if r["parameters"] is not None else "–"
        box = (f"{r['psnr_roi']['mean']:.2f} ± {r['psnr_roi']['std']:.2f} | "
               f"{r['ssim_roi']['mean']:.4f} ± {r['ssim_roi']['std']:.4f} | ") if roi else ""
        shown = f"{label} (external)" if r["kind"] == "external" else label
        lines.append(f"| {shown} | {r['psnr']['mean']:.2f} ± {r['psnr']['std']:.2f} | "
                     f"{r['ssim']['mean']:.4f} ± {r['ssim']['std']:.4f} | {box}"
                     f"{r['seconds_per_cine']:.4f} | {params} |")
    return "\n".join(lines)


def describe_params(params: dict) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in params.items()) or "the solver's defaults"


def external_description() -> str:
    """What the BART row runs, for results.md and results.json."""
    return (f"external program: BART {bart_pics.available()}, `bart pics -S -i {bart_pics.ITERATIONS} "
            f"-R T:1024:0:w -R W:3:0:{bart_pics.WAVELET_SHARE:g}w` (ADMM; the weight w is relative to BART's own "
            f"data scaling); single coil as one map of ones, coils with the maps every method gets")


def results_markdown(report: dict) -> str:
    data, test = report["data"], report["test"]
    networks = {label: r for label, r in report["methods"].items() if r["kind"] == "network"}
    everything = report["split"] == "all"
    lines = [f"# Comparison `{report['name']}`", "",
             f"    {report['command']}" if report["command"] else "", "",
             f"- date: {report['date']}; device: {report['device']}; torch {report['torch']}"
             + (f"; networks' autocast: {report['autocast']}" if networks else ""),
             f"- data: {data['source']}; acceleration {data['acceleration']:g}, {data['center_lines']} centre lines"
             f"{' (exactly as given)' if everything else ''}, "
             + ("uniform masks (every R-th line plus the centre lines, the same in every frame and cine)"
                if data["mask_type"] == "uniform" else f"{data['density']} density")
             + f", seed {data['seed']}" + (f", {data['coils']} coils" if data["coils"] > 1 else ""),
             *[f"- note: {note}" for note in data["notes"]],
             f"- test: {test['cines']} of the {test['of']} cines of the file, every one a test cine (`--split=all`: "
             f"no train/validation/test split; same cines for every method)" if everything else
             f"- test: {test['cines']} of the {test['of']} test-split cines (same cines for every method)",
             f"- masks: `--masks={report['masks']['protocol']}`, {report['masks']['label']}: "
             f"{report['masks']['description']}",
             "- metrics on magnitudes, each reference cine with peak 1 (see metrics.py); ± is the standard "
             "deviation over cines; time per cine is the wall-clock time of the reconstruction alone", "",
             results_table(report["methods"]), "",
             *[f"- {label}: {description}" for label, description in report.get("external", {}).items()],
             *([""] if report.get("external") else [])]
    tuning = report["tuning"]["methods"]
    if tuning:
        lines += ["## Baseline parameters", "",
                  f"Relative regularisation weights (see baselines.py), chosen by mean PSNR on "
                  f"{report['tuning']['source']}.", ""]
        for method, t in tuning.items():
            edges = grid_edges(t["params"], t["grid"] or {})
            lines.append(f"- {BASELINE_LABELS[method]}: **{describe_params(t['params'])}**"
                         + (f" (at the edge of the grid: {', '.join(edges)}; the method may be under-tuned)"
                            if edges else ""))
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
    if report["paired"]:
        lines += paired_markdown(report["paired"])
    if report["adaptation"]:
        lines += adaptation_markdown(report["adaptation"], report["methods"])
    return "\n".join(lines)


def paired_differences(results: dict) -> dict | None:
    """Per test cine, every network's PSNR and SSIM minus those of a reference: the classical method
    with the best mean PSNR, or without classical methods the first network (the others against
    it). Mean and std of the difference and the cines where the network scores higher (None when
    there is nothing to pair)."""
    classical = [label for label, r in results.items() if r["kind"] in ("baseline", "external") and label != ZERO_FILLED]
    networks = [label for label, r in results.items() if r["kind"] == "network"]
    if classical and networks:
        reference = max(classical, key=lambda label: results[label]["psnr"]["mean"])
        basis = "the classical method with the best mean PSNR"
    elif len(networks) > 1:
        reference, networks = networks[0], networks[1:]
        basis = "the first network compared (no classical method was)"
    else:
        return None
    methods = {}
    for label in networks:
        methods[label] = {}
        for metric in ("psnr", "ssim"):
            diff = np.subtract(results[label]["per_cine"][metric], results[reference]["per_cine"][metric])  # [N]
            mean, std = summarize(diff)
            methods[label][metric] = {"mean": mean, "std": std, "better": int((diff > 0).sum()), "cines": len(diff)}
    return {"reference": reference, "basis": basis, "methods": methods}


def paired_markdown(paired: dict) -> list[str]:
    reference = paired["reference"]
    lines = [f"## Paired differences against {reference}", "",
             f"Per test cine, each network minus {reference}, {paired['basis']}; ± is the standard deviation of "
             f"the difference over cines; better: cines where the network scores higher.", "",
             "| method | PSNR difference (dB) mean ± std | better (PSNR) | SSIM difference mean ± std "
             "| better (SSIM) |",
             "| --- | --- | --- | --- | --- |"]
    for label, row in paired["methods"].items():
        psnr, ssim = row["psnr"], row["ssim"]
        lines.append(f"| {label} | {psnr['mean']:+.2f} ± {psnr['std']:.2f} | {psnr['better']}/{psnr['cines']} | "
                     f"{ssim['mean']:+.4f} ± {ssim['std']:.4f} | {ssim['better']}/{ssim['cines']} |")
    return lines + [""]


def adaptation_markdown(options: dict, results: dict) -> list[str]:
    lines = ["## Adaptation", "",
             f"`--adapt={options['steps']}`: each `+ adapt` row fine-tunes a fresh copy of its network on every test "
             f"cine's own measurements (adapt.py: self-supervised, no reference; learning rate {options['lr']:g}, "
             f"{options['crop'] or 'all'} columns (a learned L+S or ADMM: all)"
             + (f", a CNN of {options['features']} channels added inside each iteration of a learned L+S or ADMM"
                if options.get("features") else "")
             + ", seeded by the checkpoint's seed, stopped early on held-out "
             "measured lines), reconstructs the cine from all its measurements with it and ends in hard data "
             "consistency; the copy is then discarded. Its time per cine includes the adaptation. Means over cines:",
             "", "| method | steps run | step kept | held-out k-space error before → after | adaptation (s) | columns "
                 "| CNN parameters added |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for label, r in results.items():
        if "adapt" in r:
            mean = {key: np.mean([info[key] for info in r["adapt"]]) for key in r["adapt"][0]}
            lines.append(f"| {label} | {mean['steps']:.1f} | {mean['kept_step']:.1f} | "
                         f"{mean['held_out_error_before']:.4f} → {mean['held_out_error_after']:.4f} | "
                         f"{mean['seconds']:.1f} | {mean['columns']:.0f} | {mean['added_parameters']:.0f} |")
    return lines + [""]


def write_figures(examples: dict, reference: np.ndarray, results: dict, report: dict, img_path: Path,
                  box=None) -> None:
    """``methods.png`` (one test cine from every method: frames, amplified errors, a zoom on the heart
    ``box`` (row0, row1, col0, col1; None: a box around the region that moves most), x-t
    and y-t profiles), ``psnr_boxes.png`` (per-cine PSNR of every method) and, with networks and
    classical baselines (or several networks), ``paired_psnr.png`` (each network minus the reference of
    :func:`paired_differences`, per cine)."""
    import figures

    index = report["test"]["indices"][0]
    sampling = figures.sampling_label(report["data"]["acceleration"], report["data"]["center_lines"])
    figures.plot_reconstructions(examples, img_path / "methods.png", reference,
                                 title=f"Test cine {index}, {report['masks']['label']}", sampling=sampling, box=box)
    per_cine = {label: r["per_cine"]["psnr"] for label, r in results.items()}
    figures.plot_psnr_boxes(per_cine, img_path / "psnr_boxes.png", sampling=sampling)
    paired = report["paired"]
    if paired:
        reference = paired["reference"]
        figures.plot_paired_differences({label: per_cine[label] for label in (reference, *paired["methods"])},
                                        reference, img_path / "paired_psnr.png", sampling=sampling,
                                        title=f"Per-cine PSNR against the best classical method, {reference}"
                                        if results[reference]["kind"] != "network" else
                                        f"Per-cine PSNR against {reference}")


# ----------------------------------------------------------------------------- command line
def command() -> Command:
    """``python compare.py NAME``: compare()'s options, then the data options of train.py's call."""
    data_options = [replace(option, section="data (without checkpoints; with --split=all: sampling and tuning phantom)",
                            help=CENTER_LINES_HELP if option.name == "center_lines" else option.help)
                    for option in train_options() if option.name in DATA_KEYS]
    options = options_from_signature(compare, choices={"masks": tuple(MASK_PROTOCOLS), "amp": CHOICES["amp"],
                                                       "split": SPLITS},
                                     parsers={"adapt_features": non_negative}, exclude=("name", "given", "command"))
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
