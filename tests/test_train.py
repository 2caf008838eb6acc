import ast
import json
import re
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

import train
from cli import UserError
from data import load_images
from engine import lr_factor
from helpers import ROOT, TINY, project_sources, read_metrics, run_tool, train_defaults
from models import build_model
from settings import CHOICES, CPU_SCALE, resolve_config, train_options

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
    assert '"cascades": 1' in text and "split 8/2/4" in text and "\nprecision: float32 (--amp=none as given)\n" in text
    epoch_lines = [line for line in text.splitlines() if line[:5].strip().isdigit()]
    assert len(epoch_lines) == 8 and len(epoch_lines[0].split()) == 9
    for label in ("zero-filled PSNR", "zero-filled SSIM", "PSNR", "SSIM", "NMSE", "heart-box PSNR", "test loss (L1)"):
        assert f"\n{label}: mean = " in text


def test_training_beats_the_untrained_network(tiny_run):
    cwd, _ = tiny_run
    metrics = read_metrics(cwd / "output" / "tiny")
    test = metrics["test"]
    assert len(test["psnr"]) == 4 and np.array(test["frame_psnr"]).shape == (4, 6)
    # the untrained residual network is the identity: it scores exactly the zero-filled PSNR
    assert np.mean(test["psnr"]) > np.mean(test["psnr_zero_filled"]) + 0.1
    assert metrics["history"][-1]["val_loss"] < metrics["history"][0]["val_loss"]  # fixed cines: fresh ones differ


def test_best_checkpoint_holds_weights_config_and_epoch(tiny_run):
    cwd, _ = tiny_run
    best = torch.load(cwd / "output" / "tiny" / "best.pt", weights_only=True)
    assert best["config"]["cascades"] == 1 and 0 <= best["epoch"] <= 8 and "model" in best  # 0: untrained was best


def test_command_line_overrides_reach_train():
    name, overrides = train.parse_command_line(["run1", "--cascades=3", "--dropout=0", "--data=x.npz",
                                                "--channels_last=false", "--initial_lr", "3e-4", "--view_sharing",
                                                "--compile", "false", "--seed", "-2"])
    assert name == "run1"
    assert overrides == {"cascades": 3, "dropout": 0.0, "data": "x.npz", "channels_last": False, "initial_lr": 3e-4,
                         "view_sharing": True, "compile": False, "seed": -2}
    config, _, _ = resolve_config(train_defaults(), {**overrides, "seed": 2})  # -2 parses, and seeds are >= 0
    assert config["cascades"] == 3 and config["initial_lr"] == 3e-4
    assert build_model(config).view_sharing, "every model keyword reaches the network"


@pytest.mark.parametrize("argv, message", [
    (["run", "--cascade=3"], "unknown option --cascade .*--cascades"),
    (["run", "--cascades=three"], "--cascades=three"),
    (["run", "cascades=3"], "usage"),
    ([], "usage"),
    (["run", "--amp=fp32"], "--amp='fp32': choose one of auto, bf16, fp16, none"),
    (["run", "--heart_weight=heavy"], "--heart_weight=heavy: could not convert"),
    (["run", "--num_epochs"], "--num_epochs needs a value"),
    (["run", "--config=missing.json"], "--config=missing.json: not a readable JSON file"),
])
def test_bad_command_lines(argv, message):
    with pytest.raises(UserError, match=message):
        train.parse_command_line(argv)


def test_cpu_scale_down_keeps_command_line_values():
    config, notes, scale_lines = resolve_config(train_defaults(scale="cpu"), {"num_epochs": 7})
    assert config["num_epochs"] == 7, "explicit values are never scaled"
    assert config["image_size"] == CPU_SCALE["image_size"]
    assert config["init_features"] == CPU_SCALE["init_features"]
    assert scale_lines and "image_size 192 -> 64" in notes[0]
    full, notes, scale_lines = resolve_config(train_defaults(scale="full"), {})
    assert full["image_size"] == 192 and not notes and not scale_lines


def test_centre_lines_scale_with_image_height():
    config = resolve_config(train_defaults(scale="cpu"), {})[0]
    notes = []
    load_images({**config, "num_samples": 3}, notes, True)
    assert any("center_lines 11 -> 4" in note for note in notes)


def test_learning_rate_schedule():
    factor = lr_factor("warmup_cosine", total_steps=100, warmup=0.1)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(55) == pytest.approx(0.5) and factor(99) < 0.01
    assert all(factor(s) >= factor(s + 1) for s in range(10, 99))
    assert lr_factor("constant", 100, 0.1)(50) == 1.0


# ----------------------------------------------------------------------------- the train(...) call and --help
def test_every_setting_is_a_documented_keyword_of_the_call():
    """The call at the bottom is the one source of the defaults: train() repeats none of them, every
    keyword has a comment, and the allowed values a comment names are the ones the checks accept."""
    options = train_options()
    assert [o.name for o in options][:4] == ["data", "num_samples", "image_size", "phantom_phase"]
    assert all(o.help for o in options), [o.name for o in options if not o.help]
    assert {o.name for o in options} >= {"in_channels", "out_channels", "init_features", "num_epochs",
                                         "weight_decay", "batch_size", "initial_lr", "loss_tpe"}
    for option in options:
        named = set(re.findall(r"'(\w+)'", option.help))
        if option.name in CHOICES:
            assert named <= set(CHOICES[option.name]), (option.name, named)
    signature = next(node for node in ast.parse((ROOT / "train.py").read_text()).body
                     if isinstance(node, ast.FunctionDef) and node.name == "train")
    assert not signature.args.kw_defaults and not signature.args.defaults, "train() must not repeat the defaults"


def test_help_lists_every_option_with_its_default(tmp_path):
    result = run_tool("train.py", ["--help"], tmp_path)
    assert result.returncode == 0 and not result.stderr
    for option in train_options():
        assert f"--{option.name} " in result.stdout
    assert "[default: 200]" in result.stdout and "one of: L1, L2" in result.stdout and "--config" in result.stdout
    assert not (tmp_path / "output").exists()


def test_unknown_option_is_one_line_with_a_suggestion(tmp_path):
    result = run_tool("train.py", ["run", "--num_epoch=3"], tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: unknown option --num_epoch (did you mean --num_epochs?); python train.py --help lists them"]


def test_config_file_reruns_a_run_and_options_still_win(tiny_run, tmp_path):
    cwd, _ = tiny_run
    saved = read_metrics(cwd / "output" / "tiny")["config"]
    (tmp_path / "metrics.json").write_text(json.dumps({"config": {**saved, "resume": True}}))
    name, given = train.parse_command_line(["again", f"--config={tmp_path / 'metrics.json'}", "--num_epochs", "2"])
    assert name == "again" and given["num_epochs"] == 2 and "resume" not in given
    assert {**given, "num_epochs": saved["num_epochs"]} == {k: v for k, v in saved.items() if k != "resume"}
    config, notes, _ = resolve_config(train_defaults(), given)
    assert config == {**saved, "num_epochs": 2} and not notes, "the saved configuration exactly, nothing scaled"
    (tmp_path / "foreign.json").write_text(json.dumps({"config": {"learning_rate": 1}}))
    with pytest.raises(UserError, match="'learning_rate' is not an option of python train.py"):
        train.parse_command_line(["again", f"--config={tmp_path / 'foreign.json'}"])


def test_layout_no_module_imports_train():
    sources = [p for p in project_sources() if "tests" not in p.relative_to(ROOT).parts and p.name != "train.py"]
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) else []
            assert "train" not in names, f"{path} imports train.py"
    assert len((ROOT / "train.py").read_text().splitlines()) <= 400


@pytest.mark.parametrize("venv", [".venv", "venv", "env"])
def test_layout_scans_the_project_not_a_virtualenv_inside_it(tmp_path, venv):
    (tmp_path / "module.py").write_text("x = 1\n")
    package = tmp_path / venv / "lib" / "python3.11" / "site-packages"
    package.mkdir(parents=True)
    (tmp_path / venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (package / "broken.py").write_text("print 'python 2'\n")  # a package's file that does not parse
    assert project_sources(tmp_path) == [tmp_path / "module.py"]  # not a git checkout: the fallback
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "add", "module.py"], check=True)
    assert project_sources(tmp_path) == [tmp_path / "module.py"]  # what git tracks, whatever the venv is called


def test_fresh_phantom_cines_are_new_every_epoch_and_reproducible():
    from data import FreshPhantom, render_phantom

    config = train_defaults(image_size=32, in_channels=4, seed=5, num_epochs=3)
    stream, again = (FreshPhantom(config, [3], torch.device("cpu")) for _ in range(2))
    (first,), (second,) = stream.cines(0), stream.cines(1)
    assert first.shape == (3, 4, 32, 32) and first.is_complex()
    assert not torch.equal(first, second), "every epoch draws new cines"
    torch.testing.assert_close(again.cines(1)[0], second, atol=0, rtol=0)  # a resumed run gets the same cines
    fixed, boxes = render_phantom(config, 3, config["seed"])
    assert not np.allclose(fixed, first.numpy()), "training cines differ from the fixed validation/test cines"
    assert (boxes[:, 1] - boxes[:, 0] >= 11).all() and (boxes[:, 3] - boxes[:, 2] >= 11).all()
    stream.close()
    again.close()


def test_fresh_phantom_renders_every_training_size_reproducibly():
    from data import FreshPhantom

    config = train_defaults(image_size=32, train_sizes="48,32", in_channels=4, seed=5, num_epochs=2)
    stream, again = (FreshPhantom(config, [3, 2], torch.device("cpu")) for _ in range(2))
    small, large = stream.cines(0)
    assert small.shape == (3, 4, 32, 32) and large.shape == (2, 4, 48, 48)
    for mine, theirs in zip(again.cines(0), (small, large)):
        torch.testing.assert_close(mine, theirs, atol=0, rtol=0)
    # the same anatomy seen at another size is not the same cine resampled: each size draws its own
    assert not torch.equal(small[:2].abs().mean((1, 2, 3)), large.abs().mean((1, 2, 3)))
    stream.close()
    again.close()


@pytest.mark.parametrize("options, message", [
    (dict(train_sizes="32,40"), "--train_sizes=32,40: 40 is not a multiple of 16"),
    (dict(train_sizes="32,big"), "--train_sizes=32,big: expected comma-separated image sizes"),
    (dict(train_sizes="32,64", fresh_data=False), "needs the embedded phantom with fresh_data=true"),
    (dict(train_sizes="32,64", data="cine.npz"), "needs the embedded phantom with fresh_data=true"),
    (dict(heart_weight=-1.0), "--heart_weight=-1.0: must be None or a finite number >= 0"),
])
def test_bad_training_options_are_refused(options, message):
    with pytest.raises(UserError, match=message):
        resolve_config(train_defaults(), {"scale": "full", "device": "cpu", **options})


def test_multi_size_run_trains_on_every_size(tmp_path):
    result = run_tool("train.py", ["sizes", *TINY, "--num_epochs=2", "--train_sizes=32,48", "--figures=false"],
                      tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = (tmp_path / "output" / "sizes" / "output.txt").read_text()
    assert "training sizes: 32 px x 4 cines (2 centre lines), 48 px x 2 cines (3 centre lines)" in report
    metrics = read_metrics(tmp_path / "output" / "sizes")
    assert metrics["config"]["train_sizes"] == "32,48" and len(metrics["test"]["psnr"]) == 4


def test_cine_unet_run_draws_every_figure(tmp_path):
    result = run_tool("train.py", ["cine", *TINY, "--num_epochs=1", "--cascades=1", "--arch=cine_unet", "--levels=2"],
                      tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in FIGURES:
        assert (tmp_path / "images" / "cine" / name).stat().st_size > 1000, name
