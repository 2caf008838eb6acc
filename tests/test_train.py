import numpy as np
import pytest
import torch
from PIL import Image

import train
from cli import UserError
from helpers import TINY, read_metrics, run_tool

OUTPUTS = ["output.txt", "metrics.json", "last.pt", "best.pt"]
FIGURES = ["mask.png", "aliasing.png", "reconstructions.png", "branches.png", "curves.png", "frame_psnr.png",
           "cine.gif"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("train")
    result = run_tool("train.py", ["tiny", *TINY, "--num_epochs=8", "--cascades=1"], cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd, result


def test_cli_run_writes_every_output(tiny_run):
    cwd, result = tiny_run
    for name in OUTPUTS:
        assert (cwd / "output" / "tiny" / name).stat().st_size > 0, name
    for name in FIGURES:
        assert (cwd / "images" / "tiny" / name).stat().st_size > 1000, name
    assert Image.open(cwd / "images" / "tiny" / "cine.gif").n_frames == 6
    assert "test PSNR" in result.stdout and "images/tiny/" in result.stdout


def test_report_holds_config_epochs_and_test_summary(tiny_run):
    cwd, _ = tiny_run
    text = (cwd / "output" / "tiny" / "output.txt").read_text()
    assert '"cascades": 1' in text and "split 8/2/4" in text
    epoch_lines = [line for line in text.splitlines() if line[:5].strip().isdigit()]
    assert len(epoch_lines) == 8 and len(epoch_lines[0].split()) == 8
    for label in ("zero-filled PSNR", "zero-filled SSIM", "PSNR", "SSIM", "test loss (L2)"):
        assert f"\n{label}: mean = " in text


def test_training_beats_the_untrained_network(tiny_run):
    cwd, _ = tiny_run
    metrics = read_metrics(cwd / "output" / "tiny")
    test = metrics["test"]
    assert len(test["psnr"]) == 4 and np.array(test["frame_psnr"]).shape == (4, 6)
    # the untrained residual network is the identity: it scores exactly the zero-filled PSNR
    assert np.mean(test["psnr"]) > np.mean(test["psnr_zero_filled"]) + 0.5
    assert metrics["history"][-1]["train_loss"] < metrics["history"][0]["train_loss"]


def test_best_checkpoint_holds_weights_config_and_epoch(tiny_run):
    cwd, _ = tiny_run
    best = torch.load(cwd / "output" / "tiny" / "best.pt", weights_only=True)
    assert best["config"]["cascades"] == 1 and 1 <= best["epoch"] <= 8 and "model" in best


def test_command_line_overrides_reach_train():
    name, overrides = train.parse_command_line(["run1", "--cascades=3", "--dropout=0", "--data=x.npz",
                                                "--channels_last=false", "--initial_lr=3e-4", "--view_sharing"])
    assert name == "run1"
    assert overrides == {"cascades": 3, "dropout": 0.0, "data": "x.npz", "channels_last": False, "initial_lr": 3e-4,
                         "view_sharing": True}
    config, _, _ = train.resolve_config(train_call(), overrides)
    assert config["cascades"] == 3 and config["initial_lr"] == 3e-4
    assert train.build_model(config).view_sharing, "every model keyword reaches the network"


@pytest.mark.parametrize("argv, message", [
    (["run", "--cascade=3"], "unknown option --cascade .*--cascades"),
    (["run", "--cascades=three"], "--cascades=three"),
    (["run", "cascades=3"], "usage"),
    ([], "usage"),
])
def test_bad_command_lines(argv, message):
    with pytest.raises(UserError, match=message):
        train.parse_command_line(argv)


def train_call(**values):
    """The keyword values of a train(...) call, with the signature's defaults for the rest."""
    from cli import keyword_defaults
    call = keyword_defaults(train.train)
    call.pop("overrides")
    return {**call, **values}


def test_cpu_scale_down_keeps_command_line_values():
    config, notes, scale_lines = train.resolve_config(train_call(scale="cpu"), {"num_epochs": 7})
    assert config["num_epochs"] == 7, "explicit values are never scaled"
    assert config["image_size"] == train.CPU_SCALE["image_size"]
    assert config["init_features"] == train.CPU_SCALE["init_features"]
    assert scale_lines and "image_size 192 -> 64" in notes[0]
    full, notes, scale_lines = train.resolve_config(train_call(scale="full"), {})
    assert full["image_size"] == 192 and not notes and not scale_lines


def test_centre_lines_scale_with_image_height():
    config = train.resolve_config(train_call(scale="cpu"), {})[0]
    notes = []
    train.load_images({**config, "num_samples": 3}, notes, True)
    assert any("center_lines 11 -> 4" in note for note in notes)


def test_learning_rate_schedule():
    factor = train.lr_factor("warmup_cosine", total_steps=100, warmup=0.1)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(55) == pytest.approx(0.5) and factor(99) < 0.01
    assert all(factor(s) >= factor(s + 1) for s in range(10, 99))
    assert train.lr_factor("constant", 100, 0.1)(50) == 1.0
