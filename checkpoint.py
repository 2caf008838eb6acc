"""Checkpoints: the one place where cinerecon's .pt files are written, read, checked and resumed.

A checkpoint is a dict saved by ``torch.save``: ``format`` (:data:`CHECKPOINT_FORMAT`), ``config``
(the resolved run settings, enough to build the network), ``model`` (its state dict) and, in a run's
``last.pt``, the training state (:data:`RESUME_KEYS`) and the ``data`` fingerprint it was trained on
(``data.data_fingerprint``). Loading never runs code (``weights_only=True``); every file or
content that cannot be used is one ``UserError`` naming the file.

- writing: :func:`save_checkpoint` (atomic), :func:`snapshot` (everything ``last.pt`` holds);
- reading: :func:`load_checkpoint`, :func:`validate_checkpoint`, :func:`load_trained_model`;
- resuming: :func:`check_resumable`, :func:`finished_summary`, :func:`restore`, :func:`restore_rng`.
"""
from __future__ import annotations

import json
import pickle
import warnings
from functools import partial
from pathlib import Path

import torch

from cli import UserError, atomic_write, check_readable
from data import CineDataset, SizeGroups
from models import ARCHS, build_model
from settings import validate_network

CHECKPOINT_FORMAT = "cinerecon-checkpoint-v1"
# Keys that may differ when a run is resumed: they change how, not what, is computed.
RUN_CONTROL_KEYS = ("device", "amp", "compile", "channels_last", "checkpointing", "checkpoint_every",
                    "figures", "resume", "scale", "out_dir", "images_dir", "eval_batch_size", "workers", "cache_dir")
TORCH_FILE_STARTS = (b"PK\x03\x04", b"\x80")  # torch.save's zip archive; the legacy format, a pickle
TORCH_BOILERPLATE = ("Weights only load failed", "Check the documentation")  # lines of torch's refusal, not its reason
RESUME_KEYS = ("optimizer", "scheduler", "scaler", "rng", "state")  # what last.pt holds beyond the weights
LOOP_STATE = ("epoch", "batch", "loss_sum", "seen", "history", "best")  # last.pt's "state"
# What reconstruct.py, compare.py and the benchmarks read from a checkpoint's config besides the network's shape.
CHECKPOINT_SETTINGS = ("arch", "in_channels", "acceleration", "center_lines", "density", "seed", "amp", "mask_mode")
# Settings added after checkpoints were first written, with the values that reproduce the runs of those checkpoints.
LEGACY_SETTINGS = {"coils": 1, "mask_type": "variable_density", "lambda_t": 0.01, "lambda_w": 0.0003, "lambda_r": 0.0,
                   "lambda_f": 0.0}


def save_checkpoint(checkpoint: dict, path: Path) -> None:
    """``torch.save`` through :func:`cli.atomic_write`: a kill leaves the previous file intact, and a
    failed write (disk full) stops the run with one line saying how to continue it."""
    atomic_write(path, partial(torch.save, checkpoint),
                 then="continue the run with the same command plus --resume")


def load_checkpoint(path, map_location="cpu") -> dict:
    """A cinerecon checkpoint, loaded with ``weights_only=True`` (no code can run), from a regular file
    (not a folder, a named pipe or a loop of symbolic links) that starts as a torch file does and
    holds the :data:`CHECKPOINT_FORMAT` marker; anything else (missing, truncated, foreign, unsafe)
    is one ``UserError`` naming the file."""
    path = check_readable(path, missing="no such checkpoint file", expected="a checkpoint file (.pt)")
    with open(path, "rb") as file:
        head = file.read(4)
    if not head.startswith(TORCH_FILE_STARTS):
        raise UserError(f"{path}: not a torch file (neither the zip archive that torch.save writes nor a pickle); "
                        f"expected a checkpoint written by train.py")
    try:
        with warnings.catch_warnings():  # torch warns of a raw pickle's protocol before refusing it below
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        detail = str(error).partition("WeightsUnpickler error:")[2] or str(error)
        reason = next((line.strip() for line in detail.splitlines()
                       if line.strip() and not line.strip().startswith(TORCH_BOILERPLATE)), "unreadable")[:160]
        raise UserError(f"{path}: refused: not a file that loads without running code (a raw pickle, or Python "
                        f"objects beyond tensors and plain values) ({reason})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
        raise UserError(f"{path}: not a readable checkpoint, truncated or not a torch file ({reason})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: not a cinerecon checkpoint (no '{CHECKPOINT_FORMAT}' marker)")
    return checkpoint


def _weights_mismatch(expected: dict, weights: dict) -> str:
    """How ``weights`` differ from the state dict ``expected`` ('' when they fit)."""
    missing = [key for key in expected if key not in weights]
    unexpected = [key for key in weights if key not in expected]
    reshaped = [key for key in expected if key in weights and tuple(weights[key].shape) != tuple(expected[key].shape)]
    parts = [f"{len(missing)} missing, e.g. {missing[0]}"] if missing else []
    parts += [f"{len(unexpected)} unexpected, e.g. {unexpected[0]}"] if unexpected else []
    parts += [f"{len(reshaped)} of another shape, e.g. {reshaped[0]} {tuple(weights[reshaped[0]].shape)} instead "
              f"of {tuple(expected[reshaped[0]].shape)}"] if reshaped else []
    return "; ".join(parts)


def validate_checkpoint(checkpoint: dict, path, resumable: bool = False) -> None:
    """Refuse, in one line, a checkpoint whose contents cannot be used: missing keys, a config with
    an unknown arch or one that builds no network, weights that do not fit the network its config
    describes (checked on the meta device: nothing is allocated), and with ``resumable`` missing
    training state."""
    if resumable and "state" not in checkpoint:
        raise UserError(f"{path}: holds weights only (no training state) and cannot be resumed")
    missing = [key for key in ("config", "model", *(RESUME_KEYS if resumable else ())) if key not in checkpoint]
    if missing:
        raise UserError(f"{path}: incomplete checkpoint, it lacks {', '.join(missing)}")
    config, weights = checkpoint["config"], checkpoint["model"]
    if not (isinstance(config, dict) and isinstance(weights, dict)
            and all(isinstance(value, torch.Tensor) for value in weights.values())):
        raise UserError(f"{path}: damaged checkpoint: 'config' must be a dict of settings and 'model' one of tensors")
    if resumable and not (isinstance(checkpoint["state"], dict) and set(LOOP_STATE) <= set(checkpoint["state"])):
        raise UserError(f"{path}: damaged checkpoint: its training state must hold {', '.join(LOOP_STATE)}")
    if config.get("arch") not in ARCHS:
        raise UserError(f"{path}: unknown arch {config.get('arch')!r} (known: {', '.join(ARCHS)}): the checkpoint "
                        f"is damaged or from another version of cinerecon")
    try:
        lacking = next((key for key in CHECKPOINT_SETTINGS if key not in config), None)
        if lacking:
            raise KeyError(lacking)
        validate_network(config)
        with torch.device("meta"):
            expected = build_model({**config, "checkpointing": False}).state_dict()
    except KeyError as error:
        raise UserError(f"{path}: its config lacks the setting {error.args[0]!r}: the checkpoint is damaged or "
                        f"from another version of cinerecon") from None
    except UserError as error:
        raise UserError(f"{path}: its config: {error}") from None
    except (ValueError, TypeError, RuntimeError) as error:
        raise UserError(f"{path}: its config describes no network ({str(error).splitlines()[0][:160]})") from None
    mismatch = _weights_mismatch(expected, weights)
    if mismatch:
        raise UserError(f"{path}: the weights do not fit the {config['arch']} network its config describes "
                        f"({mismatch})")


def load_trained_model(path, device="cpu") -> tuple[torch.nn.Module, dict]:
    """The trained network of a checkpoint (eval mode, on ``device``) and the run config it was saved
    with; a file or contents that cannot be used is one ``UserError`` (:func:`validate_checkpoint`)."""
    checkpoint = load_checkpoint(path, map_location=device)
    validate_checkpoint(checkpoint, path)
    model = build_model({**checkpoint["config"], "checkpointing": False}).to(device)
    model.load_state_dict(checkpoint["model"])
    return model.eval(), {**LEGACY_SETTINGS, **checkpoint["config"]}


def snapshot(model, optimizer, scheduler, scaler, train_set: SizeGroups, config: dict, state: dict,
             data: dict) -> dict:
    """Everything needed to continue exactly where training stands (``last.pt``); ``data``: the
    :func:`data_fingerprint` of the run."""
    rng = {"torch": torch.get_rng_state(), "masks": train_set.generator.get_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {"format": CHECKPOINT_FORMAT, "config": config, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "rng": rng, "state": state, "data": data}


def _shown(value) -> str:
    """A fingerprint value in a message (digests shortened)."""
    return f"{value[:12]}..." if isinstance(value, str) and len(value) > 16 else repr(value)


def check_resumable(checkpoint: dict, config: dict, path: Path, data: dict) -> None:
    """Refuse to resume ``last.pt`` if its contents cannot be used (:func:`validate_checkpoint`), if
    the config changed what is computed (model, data, optimiser), or if the data differ from the
    checkpoint's ``data`` fingerprint (checkpoints written before fingerprints are not checked)."""
    validate_checkpoint(checkpoint, path, resumable=True)
    saved = {**LEGACY_SETTINGS, **checkpoint["config"]}
    differ = sorted(key for key in set(saved) | set(config)
                    if key not in RUN_CONTROL_KEYS and saved.get(key) != config.get(key))
    if differ:
        detail = ", ".join(f"{key} {saved.get(key)!r} -> {config.get(key)!r}" for key in differ)
        raise UserError(f"{path}: cannot resume with a different configuration ({detail})")
    trained_on = checkpoint.get("data", data)
    differ = sorted(key for key in set(trained_on) | set(data) if trained_on.get(key) != data.get(key))
    if differ:
        detail = ", ".join(f"{key} {_shown(trained_on.get(key))} -> {_shown(data.get(key))}" for key in differ)
        raise UserError(f"{path}: cannot resume on different data ({detail}): the run was trained on other "
                        f"data; restore them, or start a new run")


def finished_summary(checkpoint: dict, config: dict, out_dir: Path) -> dict | None:
    """The test summary in ``out_dir/metrics.json`` of a run whose ``last.pt`` has every epoch done,
    or None when the run still has to train or test (a damaged metrics.json is written again)."""
    if checkpoint["state"]["epoch"] < config["num_epochs"]:
        return None
    try:
        return json.loads((Path(out_dir) / "metrics.json").read_text())["summary"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):  # damaged: tested (and written) again
        return None


def restore(checkpoint: dict, model, optimizer, scheduler, scaler) -> dict:
    """Load the training state of ``last.pt``; returns the loop state (epoch, batch, history, best)."""
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    scaler.load_state_dict(checkpoint["scaler"])
    return checkpoint["state"]


def restore_rng(rng: dict, train_set: CineDataset | SizeGroups) -> None:
    """Continue the random streams of an interrupted epoch (dropout and training masks)."""
    torch.set_rng_state(rng["torch"])
    train_set.generator.set_state(rng["masks"])
    if "cuda" in rng and train_set.generator.device.type == "cuda":
        torch.cuda.set_rng_state_all(rng["cuda"])


if __name__ == "__main__":
    from cli import not_a_command

    not_a_command("checkpoint.py")
