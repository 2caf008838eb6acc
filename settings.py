"""A run's configuration: its options, their allowed values, the CPU scale-down, and the checks
that refuse impossible settings before anything is computed or written.

The defaults live in one place only: the ``train(...)`` call at the bottom of train.py, read here
(:func:`train_options`, :func:`train_defaults`) for train.py's command line and for every tool
that builds the same model or data (compare.py, the benchmarks).
"""
from __future__ import annotations

import math
from pathlib import Path

from cli import Option, UserError, options_from_call
from data import MASK_MODES, training_sizes
from engine import AMP_DTYPES, TRAINING_COPIES, check_device, check_network_size, cuda_requested
from formats import check_memory
from models import ADMM_WEIGHTS, ARCHS, ATTENTION, DC_MODES, OUTPUTS, PRIORS, size_multiple, smallest_side
from phantom import PHANTOM_RENDER, phantom_bytes
from sampling import DENSITIES, MASK_TYPES

# Applied when there is no CUDA device (scale="auto") or with scale="cpu", to every key not given
# on the command line: a run that finishes in minutes on 2 CPU cores (12 epochs: under 10 minutes in
# float32 on a Zen 3 EPYC without AVX-512 or bf16, the slowest CPU measured; docs/speed.md).
CPU_SCALE = dict(image_size=64, num_samples=100, init_features=16, resnet_features=8, resnet_blocks=1, cascades=3,
                 num_epochs=12, batch_size=4, checkpointing=False, workers=1)
# The allowed values of the options that take one of a few words.
CHOICES = dict(arch=ARCHS, prior=PRIORS, attention=ATTENTION, dc=DC_MODES, output=OUTPUTS, mask_mode=MASK_MODES,
               density=DENSITIES, mask_type=MASK_TYPES, loss_tpe=("L1", "L2"), lr_schedule=("warmup_cosine", "constant"),
               amp=("auto", *AMP_DTYPES), scale=("auto", "cpu", "full"))
PARSERS = dict(heart_weight=lambda text: None if text.lower() == "none" else float(text),  # default None
               prior=lambda text: None if text.lower() == "none" else text,
               acceleration=lambda text: parse_accelerations(text))
POSITIVE = ("num_samples", "image_size", "in_channels", "init_features", "resnet_features", "num_epochs", "levels",
            "batch_size", "checkpoint_every", "iterations")
NON_NEGATIVE = ("cascades", "resnet_blocks", "eval_batch_size", "sparse_features", "workers")
NUMBER_RULES = (("dropout", lambda value: 0 <= value < 1, "in [0, 1)"),
                ("initial_lr", lambda value: value > 0, "a finite number > 0"),
                ("weight_decay", lambda value: value >= 0, "a finite number >= 0"),
                ("grad_clip", lambda value: value >= 0, "a finite number >= 0"),
                ("warmup", lambda value: 0 <= value < 1, "in [0, 1)"),
                ("lambda_l", lambda value: 0 < value < 1, "in (0, 1): a threshold relative to the data"),
                ("lambda_s", lambda value: 0 < value < 1, "in (0, 1): a threshold relative to the data"),
                *((key, lambda value: 0 <= value < 1, "in [0, 1): a weight relative to the data, 0 = off")
                  for key in ADMM_WEIGHTS))
TRAIN_SCRIPT = Path(__file__).resolve().with_name("train.py")
PHANTOM_COPIES = 3  # phantom cines held at once: as rendered, split into datasets, the next epoch's fresh ones
MAX_COILS = 64  # receive coils of the simulated array (--coils)
MAX_ACCELERATIONS = 8  # accelerations one run may train and evaluate at (--acceleration=4,8,10)


def train_options() -> list[Option]:
    """The options of ``python train.py``: the keywords of the ``train(...)`` call at the bottom of
    train.py, their values the defaults and their trailing comments the help."""
    return options_from_call(TRAIN_SCRIPT, "train", choices=CHOICES, parsers=PARSERS)


def train_defaults() -> dict:
    """Every setting of a run with its default (the ``train(...)`` call as written)."""
    return {option.name: option.default for option in train_options()}


def resolve_config(call: dict, overrides: dict) -> tuple[dict, list[str], bool]:
    """The call's values, then the CPU scale-down for keys not overridden, then the overrides.

    Returns (config, notes on what was changed, whether the centre lines still scale with the image
    height, see ``data.load_images``).
    """
    config = {**call, **overrides}
    notes = []
    scaled = config["scale"] == "cpu" or (config["scale"] == "auto" and not cuda_requested(config["device"]))
    if scaled:
        changed = [f"{key} {config[key]} -> {value}" for key, value in CPU_SCALE.items()
                   if key not in overrides and config[key] != value]
        config.update({key: value for key, value in CPU_SCALE.items() if key not in overrides})
        if changed:
            reason = "--scale=cpu" if config["scale"] == "cpu" else "no CUDA device"
            notes.append(f"{reason}: scaled down to a CPU configuration that finishes in minutes "
                         f"({', '.join(changed)}); --scale=full runs the call as written")
    validate_config(config)
    return config, notes, scaled and "center_lines" not in overrides


def validate_config(config: dict) -> None:
    """Refuse impossible settings with a message naming the option (the sampling is checked
    against the image height when the images are loaded)."""
    validate_network(config, TRAINING_COPIES)
    if not (config["data"] is None or isinstance(config["data"], str) and config["data"]):
        raise UserError(f"--data={config['data']!r}: expected the path of a .npz or .npy file (or none: the phantom)")
    check_device(config["device"])
    if config["out_channels"] != config["in_channels"]:
        raise UserError(f"--out_channels={config['out_channels']}: must equal in_channels="
                        f"{config['in_channels']} (one output per frame of the dual UNet's window)")
    if config["heart_weight"] is not None:
        check_number(config, "heart_weight", lambda value: value >= 0, "None or a finite number >= 0")
    if config["output"] == "sigmoid" and config["phantom_phase"]:
        raise UserError("--output=sigmoid is for magnitude targets with cascades=0 only")
    multiple = size_multiple(config)
    if config["data"] is None and config["image_size"] % multiple:
        raise UserError(f"--image_size={config['image_size']}: must be a multiple of {multiple} "
                        f"(the {config['arch']} network pools {multiple.bit_length() - 1} times)")
    check_coils(config)
    if config["data"] is None:
        check_phantom_size(config)
    if config["train_sizes"] is not None:
        check_train_sizes(config)


def validate_network(config: dict, copies: int = 1) -> None:
    """Refuse impossible settings of the network, its sampling, coils and seed, the part of a config
    that a checkpoint carries too (every one of them that ``config`` holds), and a network whose
    ``copies`` of the weights would not fit in memory: checked before any layer is built. The one
    validation of a checkpoint's settings, for every command that loads one
    (``checkpoint.validate_checkpoint``)."""
    for key, allowed in CHOICES.items():
        if key in config and config[key] not in allowed:
            raise UserError(f"--{key}={config[key]!r}: choose one of {', '.join(map(str, allowed))}")
    for key in POSITIVE:
        if key in config and (not _is_integer(config[key]) or config[key] < 1):
            raise UserError(f"--{key}={config[key]!r}: must be a positive integer")
    for key in NON_NEGATIVE + ("center_lines",):
        if key in config and (not _is_integer(config[key]) or config[key] < 0):
            raise UserError(f"--{key}={config[key]!r}: must be a non-negative integer")
    if "seed" in config and not (_is_integer(config["seed"]) and 0 <= config["seed"] < 2 ** 63):
        raise UserError(f"--seed={config['seed']!r}: must be an integer from 0 to 2^63 - 1")
    if "coils" in config and not (_is_integer(config["coils"]) and 1 <= config["coils"] <= MAX_COILS):
        raise UserError(f"--coils={config['coils']!r}: must be an integer from 1 to {MAX_COILS}")
    for key, allowed, rule in NUMBER_RULES:
        if key in config:
            check_number(config, key, allowed, rule)
    if "acceleration" in config:
        check_accelerations(config)
    if "admmnet" in (config["arch"], config.get("prior")) and not any(config.get(key) for key in ADMM_WEIGHTS):
        raise UserError(f"--arch/--prior=admmnet: give at least one of {', '.join('--' + k for k in ADMM_WEIGHTS)} "
                        f"a weight > 0 (the penalties it learns)")
    if config["arch"] == "dccnn" and config["cascades"] < 1:
        raise UserError("--arch=dccnn needs --cascades >= 1 (DC-CNN is a cascade with data consistency)")
    if config.get("output") == "sigmoid" and config["arch"] == "cine_unet":
        raise UserError("--output=sigmoid is for arch=dual_unet only (cine_unet is residual)")
    if config.get("output") == "sigmoid" and config["cascades"] > 0:
        raise UserError("--output=sigmoid is for magnitude targets with cascades=0 only")
    check_network_size(config, copies)


def parse_accelerations(text: str) -> float | list[float]:
    """``--acceleration``: one number (``5``), or several (``4,8,10``) as a list."""
    values = [float(part) for part in text.split(",")]
    return values[0] if len(values) == 1 else values


def check_accelerations(config: dict) -> None:
    """``acceleration``: a finite number >= 1, or a list of 2 to ``MAX_ACCELERATIONS`` different ones."""
    value = config["acceleration"]
    values = value if isinstance(value, list) else [value]
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 1
                  for v in values)
    if not (numbers and 1 <= len(values) <= MAX_ACCELERATIONS and len(set(values)) == len(values)):
        shown = ",".join(map(str, values)) if isinstance(value, list) else repr(value)
        raise UserError(f"--acceleration={shown}: must be a finite number >= 1, or up to {MAX_ACCELERATIONS} "
                        f"different ones separated by commas (each training batch draws one)")


def check_number(config: dict, key: str, allowed, rule: str) -> None:
    """Refuse ``config[key]`` unless it is a finite number (not a bool) that ``allowed`` accepts."""
    value = config[key]
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and allowed(value)):
        raise UserError(f"--{key}={value!r}: must be {rule}")


def _is_integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_coils(config: dict) -> None:
    """``coils`` (an integer from 1 to ``MAX_COILS``: :func:`validate_network`) more than 1 only with
    the embedded complex phantom at one training size (the maps are estimated at the run's centre lines)."""
    coils = config["coils"]
    if coils == 1:
        return
    if config["data"] is not None:
        raise UserError(f"--coils={coils}: simulates coils on the embedded phantom; --data files hold coil-combined "
                        f"images")
    if not config["phantom_phase"]:
        raise UserError(f"--coils={coils}: coil images are complex; drop --phantom_phase=false")
    if config["train_sizes"] is not None:
        raise UserError(f"--coils={coils}: --train_sizes is single-coil only (train at --image_size)")


def check_train_sizes(config: dict) -> None:
    """``train_sizes`` needs fresh phantom cines and sizes the network takes."""
    sizes = training_sizes(config)
    if config["data"] is not None or not config["fresh_data"]:
        raise UserError(f"--train_sizes={config['train_sizes']}: needs the embedded phantom with fresh_data=true "
                        f"(it renders every size anew each epoch)")
    multiple, smallest = size_multiple(config), smallest_side(config)
    bad = [size for size in sizes if size % multiple or size < smallest]
    if bad:
        raise UserError(f"--train_sizes={config['train_sizes']}: {bad[0]} is not a multiple of {multiple} of at "
                        f"least {smallest} (the {config['arch']} network)")
    largest, frames = sizes[-1], config["in_channels"]
    check_memory(f"--train_sizes={config['train_sizes']}", PHANTOM_RENDER * frames * largest * largest * 8,
                 f"rendering one phantom cine of {frames}x{largest}x{largest}")


def check_phantom_size(config: dict) -> None:
    """Refuse phantom images smaller than the network takes, and a phantom that would not fit in
    memory, before anything is rendered."""
    size, count, frames, coils = config["image_size"], config["num_samples"], config["in_channels"], config["coils"]
    smallest = smallest_side(config)
    if size < smallest:
        raise UserError(f"--image_size={size}: too small for the {config['arch']} network, which needs at least "
                        f"{smallest}")
    kept = coils if coils > 1 else 0  # coil cines kept beside each cine: its coil k-space
    check_memory(f"--num_samples={count} --image_size={size}" + f" --coils={coils}" * bool(kept),
                 phantom_bytes(count, frames, size, kept, PHANTOM_COPIES),
                 f"the phantom's {count} cines of {frames}x{size}x{size}" + f" through {coils} coils" * bool(kept))


if __name__ == "__main__":
    from cli import not_a_command

    not_a_command("settings.py")
