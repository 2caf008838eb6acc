import json

import numpy as np
import pytest
import torch
from PIL import Image

import compare
from checkpoint import CHECKPOINT_FORMAT
from cli import UserError
from data import split_indices
from helpers import TINY, read_metrics, run_tool, train_defaults
from models import build_model
from phantom import make_phantom_dataset

ROWS = ["zero-filled", "view sharing", "k-t sparse", "L+S", "L+S, 10 iterations from view sharing", "ours", "DC-CNN",
        "seed config"]
COMPARE = ["cmp", "--runs=tinyA,dccnn,seed", "--labels=ours,DC-CNN,seed config", "--device=cpu", "--amp=none",
           "--tune_cines=1", "--max_cines=2", "--baselines=view_sharing,kt_sparse,lplus_s,lplus_s_unrolled"]


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
    table = next(block for block in text.split("\n\n") if block.startswith("| method | PSNR (dB)")).splitlines()[2:]
    assert [line.split(" | ")[0][2:] for line in table] == ROWS
    paired = next(block for block in text.split("\n\n") if block.startswith("| method | PSNR difference")).splitlines()
    assert [line.split(" | ")[0][2:] for line in paired[2:]] == ROWS[5:] and all("/2 |" in line for line in paired[2:])
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
    best = max(ROWS[1:5], key=lambda label: report["methods"][label]["psnr"]["mean"])
    assert report["paired"]["reference"] == best and list(report["paired"]["methods"]) == ROWS[5:]
    ours = report["paired"]["methods"]["ours"]["psnr"]
    difference = np.subtract(report["methods"]["ours"]["per_cine"]["psnr"], report["methods"][best]["per_cine"]["psnr"])
    assert ours["mean"] == pytest.approx(difference.mean()) and ours["better"] == (difference > 0).sum()
    assert report["test"]["cines"] == 2 and report["masks"]["protocol"] == "per_cine"
    for label, method in report["methods"].items():
        assert len(method["per_cine"]["psnr"]) == 2 and method["seconds_per_cine"] >= 0
        assert (method["parameters"] or 0) > 0 if method["kind"] == "network" else method["parameters"] is None
    assert set(report["tuning"]["methods"]) == {"view_sharing", "kt_sparse", "lplus_s", "lplus_s_unrolled"}
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


def test_networks_alone_are_paired_against_the_first(compared):
    cwd, _ = compared
    report = compare.compare("nets", runs="tinyA,dccnn", baselines="none", max_cines=2, device="cpu", amp="none",
                             verbose=False, out_dir=str(cwd / "output"), images_dir=str(cwd / "images"))
    assert list(report["methods"]) == ["zero-filled", "tinyA", "dccnn"]
    paired = report["paired"]
    assert paired["reference"] == "tinyA" and list(paired["methods"]) == ["dccnn"]
    per_cine = {label: np.array(report["methods"][label]["per_cine"]["psnr"]) for label in ("tinyA", "dccnn")}
    assert paired["methods"]["dccnn"]["psnr"]["mean"] == pytest.approx((per_cine["dccnn"] - per_cine["tinyA"]).mean())
    assert "## Paired differences against tinyA" in (cwd / "output/compare_nets/results.md").read_text()
    assert (cwd / "images/compare_nets/paired_psnr.png").exists()


def test_baselines_alone_on_the_fixed_mask_protocol(tmp_path):
    report = compare.compare("alone", baselines="kt_sparse", masks="fixed", tune=False, num_samples=7,
                             image_size=32, in_channels=6, center_lines=2, max_cines=1, device="cpu",
                             verbose=False, out_dir=str(tmp_path / "output"), images_dir=str(tmp_path / "images"))
    assert list(report["methods"]) == ["zero-filled", "k-t sparse"]
    assert report["tuning"]["methods"]["kt_sparse"]["params"] == {}
    text = (tmp_path / "output/compare_alone/results.md").read_text()
    assert "`--masks=fixed`, one fixed mask" in text and "the solver's defaults" in text


@pytest.mark.skipif(compare.bart_pics.available() is None, reason="BART is not installed (apt-get install bart)")
def test_temporal_tv_wavelet_and_the_external_bart_row(tmp_path):
    report = compare.compare("tv", baselines="tv_wavelet,bart_pics", tune=False, num_samples=7, image_size=32,
                             in_channels=6, center_lines=2, max_cines=1, device="cpu", verbose=False,
                             out_dir=str(tmp_path / "output"), images_dir=str(tmp_path / "images"))
    methods = report["methods"]
    assert list(methods) == ["zero-filled", "temporal TV + wavelet", "BART pics (tTV + wavelet)"]
    assert [methods[label]["kind"] for label in methods] == ["baseline", "baseline", "external"]
    assert methods["temporal TV + wavelet"]["psnr"]["mean"] > methods["zero-filled"]["psnr"]["mean"] + 3
    assert methods["BART pics (tTV + wavelet)"]["psnr"]["mean"] > methods["zero-filled"]["psnr"]["mean"] + 3
    text = (tmp_path / "output/compare_tv/results.md").read_text()
    assert "| BART pics (tTV + wavelet) (external) |" in text and "external program: BART v" in text


def test_bart_row_without_bart(monkeypatch, capsys):
    monkeypatch.setattr(compare.bart_pics, "available", lambda: None)
    options = {"baselines": "kt_sparse,bart_pics", "runs": "", "checkpoints": "", "labels": "", "out_dir": "o"}
    assert compare.parse_method_options(options, baselines_given=False)["baselines"] == ["kt_sparse"]
    assert "bart is not on PATH" in capsys.readouterr().out
    with pytest.raises(UserError, match="bart is not on PATH"):
        compare.parse_method_options(options, baselines_given=True)


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


def test_split_val_scores_the_validation_cines_never_the_test_cines(compared):
    from data import split_indices
    cwd, _ = compared
    result = run_tool("compare.py", ["valsplit", "--runs=tinyA", "--split=val", "--baselines=none", "--device=cpu",
                                     "--amp=none"], cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((cwd / "output/compare_valsplit/results.json").read_text())
    _, val, test = split_indices(14, seed=0)
    assert report["test"]["indices"] == val.tolist() and not set(report["test"]["indices"]) & set(test.tolist())
    assert report["split"] == "val" and list(report["methods"]) == ["zero-filled", "tinyA"]


# ----------------------------------------------------------------------------- --split=all: an external cine
def cine_unet_config(**values):
    """A tiny frame-count-agnostic network trained (so to speak) on 8 frames."""
    return train_defaults(arch="cine_unet", prior=None, in_channels=8, out_channels=8, init_features=4, levels=2,
                          resnet_features=4, resnet_blocks=1, cascades=2, dropout=0.0, view_sharing=True, **values)


@pytest.fixture(scope="module")
def external(tmp_path_factory):
    """One magnitude cine of 12x32x32 (a tiny PINCAT), an 8-frame cine_unet checkpoint, and their
    comparison in one call: --split=all with adaptation."""
    cwd = tmp_path_factory.mktemp("external")
    cines, boxes = make_phantom_dataset(1, frames=12, size=32, seed=5, complex_phase=False, return_boxes=True)
    np.savez(cwd / "one.npz", dataset=cines, heart_box=boxes)
    save_checkpoint(cwd / "output/net/best.pt", cine_unet_config())
    report = compare.compare("ext", runs="net", data=str(cwd / "one.npz"), split="all",
                             baselines="view_sharing,kt_sparse", adapt=2, adapt_lr=1e-2, adapt_crop=16,
                             acceleration=2.0, num_samples=7, tune_cines=1, device="cpu", amp="none", verbose=False,
                             out_dir=str(cwd / "output"), images_dir=str(cwd / "images"))
    return cwd, report


def test_every_cine_of_a_file_is_a_test_cine_and_the_cs_weights_are_tuned_on_the_phantom(external):
    cwd, report = external
    assert list(report["methods"]) == ["zero-filled", "view sharing", "k-t sparse", "net", "net + adapt"]
    assert report["split"] == "all" and report["test"] == {"cines": 1, "of": 1, "indices": [0]}
    data = report["data"]
    assert data["center_lines"] == 11 and data["in_channels"] == 12 and data["image_size"] == [32, 32]
    assert data["phantom_phase"] is False  # a magnitude file: the tuning phantom is magnitude too
    assert report["tuning"]["validation_cines"] == split_indices(7, seed=0)[1][:1].tolist()
    text = (cwd / "output/compare_ext/results.md").read_text()
    assert all(0 < method["psnr_roi"]["mean"] < 100 for method in report["methods"].values())
    for phrase in ("heart-box PSNR (dB)", "11 centre lines (exactly as given)", "`--split=all`", "of the embedded phantom (7 magnitude cines",
                   "rendered at 12x32x32 like the evaluated cines", "never on the evaluated cines"):
        assert phrase in text


def test_adapted_rows_and_paired_differences_against_the_best_cs_method(external):
    cwd, report = external
    adapted = report["methods"]["net + adapt"]
    assert adapted["kind"] == "network" and adapted["checkpoint"] == report["methods"]["net"]["checkpoint"]
    assert [info["steps"] for info in adapted["adapt"]] == [2] and adapted["adapt"][0]["columns"] == 16
    best = max(("view sharing", "k-t sparse"), key=lambda label: report["methods"][label]["psnr"]["mean"])
    assert report["paired"]["reference"] == best
    assert {row["psnr"]["cines"] for row in report["paired"]["methods"].values()} == {1}
    text = (cwd / "output/compare_ext/results.md").read_text()
    assert f"## Paired differences against {best}" in text and "## Adaptation" in text and "| net + adapt | 2.0 |" in text


def test_tuning_phantom_is_the_validation_split_rendered_at_the_data_size():
    config = dict(num_samples=7, seed=3, phantom_phase=True, in_channels=5, image_size=[32, 48], acceleration=4.0,
                  center_lines=2, density="gaussian")
    val = compare.phantom_validation(config, 0, "random", torch.device("cpu"))
    _, indices, _ = split_indices(7, seed=3)
    np.testing.assert_array_equal(val.indices, indices)
    np.testing.assert_array_equal(val.images.numpy(), make_phantom_dataset(7, frames=5, size=(32, 48), seed=3)[indices])


def test_split_all_refusals(external):
    cwd, _ = external
    dirs = dict(out_dir=str(cwd / "output"), images_dir=str(cwd / "images"), split="all", device="cpu")
    with pytest.raises(UserError, match="give --data=FILE"):
        compare.compare("refused", **dirs)
    with pytest.raises(UserError, match="--image_size: with --split=all"):
        compare.compare("refused", data=str(cwd / "one.npz"), image_size=64, given=("image_size",), **dirs)
    with pytest.raises(UserError, match="--adapt_crop=10: give 0 .* or a multiple of 4"):
        compare.compare("refused", runs="net", data=str(cwd / "one.npz"), adapt=1, adapt_crop=10,
                        acceleration=2.0, **dirs)
    assert not (cwd / "output/compare_refused").exists()
