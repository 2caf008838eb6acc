import json

import numpy as np
import pytest
import torch
from PIL import Image

import compare
from cli import UserError
from helpers import TINY, read_metrics, run_tool
from models import CHECKPOINT_FORMAT, build_model

ROWS = ["zero-filled", "view sharing", "k-t sparse", "L+S", "ours", "DC-CNN", "seed config"]
COMPARE = ["cmp", "--runs=tinyA,dccnn,seed", "--labels=ours,DC-CNN,seed config", "--device=cpu", "--amp=none",
           "--tune_cines=1", "--max_cines=2"]


pytestmark = pytest.mark.usefixtures("one_thread")


def save_checkpoint(path, config):
    """An untrained checkpoint of ``config`` in the format train.py writes."""
    path.parent.mkdir(parents=True)
    torch.save({"format": CHECKPOINT_FORMAT, "config": config, "epoch": 1, "val_psnr": 0.0,
                "model": build_model(config).state_dict()}, path)


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """A tiny trained run, a DC-CNN and a seed-config checkpoint on its data, and their comparison."""
    cwd = tmp_path_factory.mktemp("compare")
    trained = run_tool("train.py", ["tinyA", *TINY, "--num_epochs=2", "--cascades=1", "--figures=false"], cwd)
    assert trained.returncode == 0, trained.stderr[-3000:]
    config = torch.load(cwd / "output/tinyA/best.pt", weights_only=True)["config"]
    save_checkpoint(cwd / "output/dccnn/best.pt", {**config, "arch": "dccnn", "cascades": 2})
    save_checkpoint(cwd / "output/seed/best.pt",
                    {**config, "cascades": 0, "mask_mode": "fixed", "output": "sigmoid"})
    save_checkpoint(cwd / "output/other_seed/best.pt", {**config, "seed": 1})
    result = run_tool("compare.py", COMPARE, cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd, result


def test_comparison_writes_the_table_and_figures(compared):
    cwd, result = compared
    text = (cwd / "output/compare_cmp/results.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("| ") and "±" in line][1:]  # after the header
    assert [line.split(" | ")[0][2:] for line in table] == ROWS
    assert "--masks=per_cine" in text and "lam=" in text and "lambda_l=" in text
    assert "python compare.py cmp --runs=tinyA,dccnn,seed" in text
    for name in ("methods.png", "psnr_boxes.png"):
        with Image.open(cwd / "images/compare_cmp" / name) as image:
            assert image.width > 400 and image.height > 200
    assert "L+S" in result.stdout and "s per cine" in result.stdout


def test_results_json_holds_every_method_per_cine(compared):
    cwd, _ = compared
    report = json.loads((cwd / "output/compare_cmp/results.json").read_text())
    assert list(report["methods"]) == ROWS
    assert report["test"]["cines"] == 2 and report["masks"]["protocol"] == "per_cine"
    for label, method in report["methods"].items():
        assert len(method["per_cine"]["psnr"]) == 2 and method["seconds_per_cine"] >= 0
        assert (method["parameters"] or 0) > 0 if method["kind"] == "network" else method["parameters"] is None
    assert set(report["tuning"]["methods"]) == {"view_sharing", "kt_sparse", "lplus_s"}
    assert not set(report["tuning"]["validation_cines"]) & set(report["test"]["indices"])
    zero = report["methods"]["zero-filled"]["psnr"]["mean"]
    assert report["methods"]["k-t sparse"]["psnr"]["mean"] > zero + 5
    assert report["methods"]["L+S"]["psnr"]["mean"] > zero + 5
    assert report["methods"]["view sharing"]["psnr"]["mean"] > zero + 3


def test_same_test_cines_and_masks_as_train(compared):
    """The run's own test scores (train.py, per-cine masks) are reproduced for the same cines."""
    cwd, _ = compared
    test = read_metrics(cwd / "output/tinyA")["test"]
    report = json.loads((cwd / "output/compare_cmp/results.json").read_text())
    assert report["test"]["indices"] == test["index"][:2]
    np.testing.assert_allclose(report["methods"]["ours"]["per_cine"]["psnr"], test["psnr"][:2], rtol=1e-6)
    np.testing.assert_allclose(report["methods"]["zero-filled"]["per_cine"]["psnr"], test["psnr_zero_filled"][:2],
                               rtol=1e-6)


def test_a_second_comparison_of_the_same_name_is_refused(compared):
    cwd, _ = compared
    before = (cwd / "output/compare_cmp/results.md").read_text()
    again = run_tool("compare.py", COMPARE, cwd)
    assert again.returncode == 2 and "already holds an earlier comparison" in again.stderr
    assert "Traceback" not in again.stderr
    assert (cwd / "output/compare_cmp/results.md").read_text() == before


def test_checkpoints_with_other_data_settings_are_refused(compared):
    cwd, _ = compared
    dirs = dict(out_dir=str(cwd / "output"), images_dir=str(cwd / "images"))
    with pytest.raises(UserError, match="other_seed.* has seed=1 .* seed=0"):
        compare.compare("mismatch", runs="tinyA,other_seed", **dirs)
    with pytest.raises(UserError, match="--image_size=64 contradicts"):
        compare.compare("mismatch", runs="tinyA", image_size=64, given=("image_size",), **dirs)
    with pytest.raises(UserError, match="no such checkpoint"):
        compare.compare("mismatch", runs="missing", **dirs)
    assert not (cwd / "output/compare_mismatch").exists()


def test_baselines_alone_on_the_fixed_mask_protocol(tmp_path):
    report = compare.compare("alone", baselines="kt_sparse", masks="fixed", tune=False, num_samples=7,
                             image_size=32, in_channels=6, center_lines=2, max_cines=1, device="cpu",
                             verbose=False, out_dir=str(tmp_path / "output"), images_dir=str(tmp_path / "images"))
    assert list(report["methods"]) == ["zero-filled", "k-t sparse"]
    assert report["tuning"]["methods"]["kt_sparse"]["params"] == {}
    text = (tmp_path / "output/compare_alone/results.md").read_text()
    assert "`--masks=fixed`, one fixed mask" in text and "the solver's defaults" in text


@pytest.mark.parametrize("options, message", [
    (dict(baselines="kt_sparse,fista"), "unknown 'fista'"),
    (dict(runs="a,b", labels="x"), "1 label"),
    (dict(runs="a", labels="L+S"), r"'L\+S' is taken"),
    (dict(masks="random"), "--masks='random'"),
    (dict(runs="../up"), "run name"),
])
def test_bad_options_are_refused(tmp_path, options, message):
    with pytest.raises(UserError, match=message):
        compare.compare("bad", out_dir=str(tmp_path / "o"), images_dir=str(tmp_path / "i"), **options)


def test_command_line_parsing():
    name, overrides = compare.parse_command_line(["x", "--runs=a,b", "--max_cines=3", "--tune=false"])
    assert name == "x" and overrides == {"runs": "a,b", "max_cines": 3, "tune": False}
    with pytest.raises(UserError, match="unknown option --run "):
        compare.parse_command_line(["x", "--run=a"])
    with pytest.raises(UserError, match="usage"):
        compare.parse_command_line([])
