"""``--coils=N`` end to end: train.py and compare.py on the phantom seen through 2 coils (tiny: 6 frames,
32x32, 14 cines, one epoch), ``--coils=1`` as the single-coil runs, the refusals, and uniform masks."""
import json
import re

import numpy as np
import pytest
import torch

import train
from checkpoint import LEGACY_SETTINGS
from cli import UserError
from data import CineDataset, load_images, make_datasets
from helpers import TINY, read_metrics, run_tool, train_defaults
from sampling import uniform_mask
from settings import resolve_config

COILS = [*TINY, "--center_lines=4", "--coils=2"]  # ESPIRiT needs at least 4 centre lines
SHORT = ["--num_epochs=1", "--cascades=1"]


@pytest.fixture(scope="module")
def coil_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("coils")
    result = run_tool("train.py", ["coils2", *COILS, *SHORT], cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd, result


def test_two_coil_run_trains_validates_tests_and_records_its_coils(coil_run):
    cwd, result = coil_run
    metrics = read_metrics(cwd / "output" / "coils2")
    assert metrics["config"]["coils"] == 2
    for key in ("psnr", "ssim", "psnr_zero_filled", "psnr_roi"):
        assert np.isfinite(metrics["test"][key]).all() and len(metrics["test"][key]) == 4
    assert np.isfinite(metrics["history"][0]["val_psnr"])
    assert "2 coils, maps estimated by ESPIRiT from 4 centre lines" in result.stdout
    best = torch.load(cwd / "output" / "coils2" / "best.pt", weights_only=False)
    last = torch.load(cwd / "output" / "coils2" / "last.pt", weights_only=False)
    assert best["config"]["coils"] == 2 and last["data"]["coils"] == 2 and "sigpy" in last["data"]
    assert (cwd / "images" / "coils2" / "reconstructions.png").is_file()


def test_resuming_with_other_coils_is_refused(coil_run):
    cwd, _ = coil_run
    result = run_tool("train.py", ["coils2", *TINY, "--center_lines=4", "--coils=3", *SHORT, "--resume"], cwd)
    assert result.returncode == 2 and "coils 2 -> 3" in result.stderr, result.stderr[-2000:]


def test_compare_gives_every_method_the_same_coil_data(coil_run):
    cwd, _ = coil_run
    result = run_tool("compare.py", ["c2", "--runs=coils2", "--baselines=view_sharing,kt_sparse",
                                     "--tune_cines=1", "--max_cines=2", "--device=cpu", "--verbose=false",
                                     "--adapt=1", "--adapt_crop=0"], cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((cwd / "output" / "compare_c2" / "results.json").read_text())
    assert report["data"]["coils"] == 2 and "2 coils" in report["data"]["source"]
    assert list(report["methods"]) == ["zero-filled", "view sharing", "k-t sparse", "coils2", "coils2 + adapt"]
    assert all(np.isfinite(r["psnr"]["mean"]) for r in report["methods"].values())
    assert report["methods"]["k-t sparse"]["psnr"]["mean"] > report["methods"]["zero-filled"]["psnr"]["mean"]
    assert "2 coils" in (cwd / "output" / "compare_c2" / "results.md").read_text()


@pytest.mark.parametrize("tool, options, message", [
    ("train.py", ["--coils=2", "--data=x.npz"], "error: --coils=2: simulates coils on the embedded phantom"),
    ("compare.py", ["--coils=2", "--data=x.npz"], "error: --coils=2: simulates coils on the embedded phantom"),
])
def test_bad_coil_options_are_one_line_and_exit_2(tmp_path, tool, options, message):
    data = [*TINY[:3], "--device=cpu"] if tool == "compare.py" else TINY
    result = run_tool(tool, ["bad", *data, *options], tmp_path)
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "output").exists()


@pytest.mark.parametrize("options, message", [
    ({"coils": 0}, "--coils=0: must be an integer from 1 to 64"),
    ({"coils": 65}, "--coils=65: must be an integer from 1 to 64"),
    ({"coils": 2.0}, "--coils=2.0: must be an integer"),
    ({"coils": 2, "phantom_phase": False}, "--coils=2: coil images are complex"),
    ({"coils": 2, "train_sizes": "32,48"}, "--coils=2: --train_sizes is single-coil only"),
])
def test_bad_coil_settings_are_refused(options, message):
    with pytest.raises(UserError, match=re.escape(message)):
        resolve_config(train_defaults(**options), {"scale": "cpu"})


def test_coil_count_must_be_a_number_and_the_centre_wide_enough_for_espirit():
    with pytest.raises(UserError, match="--coils=abc"):
        train.parse_command_line(["run", "--coils=abc"])
    config = train_defaults(num_samples=14, image_size=32, in_channels=6, out_channels=6, center_lines=2, coils=2)
    with pytest.raises(UserError, match="--coils=2: the coil maps are estimated .* at least 4; center_lines is 2"):
        load_images(config, [], False)


def test_one_coil_is_the_single_coil_data_exactly():
    # coils=1 (and a config from before --coils and --mask_type) take the single-coil path: the same
    # cines, masks and batches, without sensitivities.
    values = dict(num_samples=14, image_size=32, in_channels=6, out_channels=6, center_lines=2, device="cpu")
    legacy = {key: value for key, value in train_defaults(**values).items() if key not in LEGACY_SETTINGS}
    made = []
    for config in (train_defaults(**values, coils=1), legacy):
        images, _, meta = load_images(config, [], False)
        made.append((images, make_datasets(images, config, torch.device("cpu"), meta)))
    (images, sets), (legacy_images, legacy_sets) = made
    assert np.array_equal(images, legacy_images)
    for part, legacy_part in zip(sets[1:], legacy_sets[1:]):
        batch, legacy_batch = part.batch([0, 1]), legacy_part.batch([0, 1])
        assert "sensitivities" not in batch and batch.keys() == legacy_batch.keys()
        assert all(torch.equal(batch[key], legacy_batch[key]) for key in batch)


def test_one_coil_given_or_not_gives_the_same_run(tmp_path):
    runs = {}
    for name, extra in (("default", []), ("one", ["--coils=1"])):
        result = run_tool("train.py", [name, *TINY, "--num_epochs=1", "--arch=lsnet", "--figures=false", *extra],
                          tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[name] = read_metrics(tmp_path / "output" / name)
    assert runs["default"]["test"] == runs["one"]["test"]
    assert [row["val_loss"] for row in runs["default"]["history"]] == [row["val_loss"] for row in runs["one"]["history"]]


def test_uniform_masks_are_cmrxrecon_equispaced_for_every_cine_and_draw():
    images = torch.zeros((3, 4, 32, 32), dtype=torch.complex64)
    expected = torch.from_numpy(uniform_mask((4, 32, 32), 4, 4))
    for training in (False, True):
        dataset = CineDataset(images, np.arange(3), mask_mode="random", train=training, acceleration=4.0, center_lines=4,
                              mask_type="uniform", generator=torch.Generator())
        assert all(torch.equal(mask, expected) for mask in dataset.batch([0, 1, 2])["mask"])
