"""Training on raw multi-coil k-space streamed from disk (issue 25): CMRxRecon-style phantom trees
written by phantom.py, read a slice at a time, split by subject, coil maps cached, scored by our
metrics and by the CMRxRecon protocol."""
from pathlib import Path

import numpy as np
import pytest
import torch

import data
import reconstruct
import train
from cli import cli_errors
from data import MapCache, StreamedCines, scan_raw, split_by_subject, split_indices
from formats import DataError, inspect_kspace, read_array_item, read_kspace, read_kspace_slice
from helpers import read_metrics, run_tool, train_defaults
from metrics import cmrxrecon_crop, cmrxrecon_scores, cmrxrecon_slices
from phantom import make_coil_dataset, subject_cines, write_cmrxrecon_tree
from sampling import uniform_mask

SHARED_MRD = Path(__file__).resolve().parents[2] / "shared" / "data" / "nhlbi_mrd_14coil_one_frame.h5"
TREE = dict(subjects=3, slices=2, frames=4, sizes=[(32, 16), (16, 32)], coils=2, accelerations=[4], center_lines=4,
            seed=1)
LSNET = ["--arch=lsnet", "--iterations=2", "--batch_size=2", "--device=cpu", "--amp=none", "--scale=full",
         "--figures=false", "--initial_lr=3e-3", "--workers=1"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A tiny CMRxRecon-style tree: 3 subjects, 2 slices each, 2 coils, 4 frames, two matrices, 4x masks."""
    folder = tmp_path_factory.mktemp("raw") / "tree"
    write_cmrxrecon_tree(folder, **TREE, log=lambda line: None)
    return folder


def sampling(**changes):
    return {**dict(acceleration=4.0, center_lines=4, density="gaussian", mask_type="uniform", mask_mode="random",
                   seed=0), **changes}


def test_tree_holds_every_subject_slice_and_mask_as_cmrxrecon_ships_them(tree):
    cines = scan_raw([str(tree)], [])
    assert [(c.subject.split("/")[-1], c.slice) for c in cines] == [(f"P00{s}", j) for s in (1, 2, 3) for j in (0, 1)]
    assert {c.shape for c in cines} == {(2, 4, 32, 16), (2, 4, 16, 32)}  # [C, T, ky, kx]: subjects alternate sizes
    expected = subject_cines(1, 2, frames=4, size=(16, 32), coils=2, seed=1)["kspace"]  # P002
    for cine in cines[2:4]:
        kspace, measured = read_kspace_slice(cine.volume, cine.slice)
        assert np.array_equal(kspace, expected[cine.slice]) and measured.all()
    mask_file = cines[0].shipped[4]
    assert mask_file.name == "cine_sax_mask.mat" and "AccFactor04" in str(mask_file)
    sub = read_kspace(mask_file.parent / "cine_sax.mat", str(mask_file))
    assert np.array_equal(sub.mask[0], uniform_mask((4, 32, 16), 4, 4))  # the equispaced 4x mask, 4 centre lines
    full = read_kspace(cines[0].volume.path)
    assert np.array_equal(sub.kspace, full.kspace * sub.mask[:, None])


def test_one_slice_per_subject_is_the_coil_phantom_cine_for_cine():
    one = subject_cines(3, 1, frames=4, size=16, coils=2, seed=2)
    dataset = make_coil_dataset(4, frames=4, size=16, coils=2, seed=2)
    assert np.array_equal(one["kspace"][0], dataset["kspace"][3])


def test_split_by_subject_is_split_by_cine_with_one_cine_per_subject():
    for count in (7, 20, 100):
        by_subject = split_by_subject([f"P{i:03d}" for i in range(count)], seed=4)
        assert all(np.array_equal(a, b) for a, b in zip(by_subject, split_indices(count, seed=4)))


def test_streamed_batches_hold_one_shape_and_draw_fresh_masks(tree, tmp_path):
    cines = scan_raw([str(tree)], [])
    cache = MapCache(tmp_path / "cache", 4)
    generator = torch.Generator().manual_seed(0)
    streamed = StreamedCines(cines, np.arange(len(cines)), cache, lambda h, w: (h, w), sampling(mask_type="variable_density"),
                             torch.device("cpu"), workers=0, generator=generator)
    assert streamed.counts == [2, 4] and streamed.shapes == [(4, 16, 32), (4, 32, 16)]
    order = [torch.tensor([0, 1]), torch.tensor([2, 5]), torch.tensor([3, 4])]
    batches = list(streamed.batches(order))
    assert [tuple(b["target"].shape) for b in batches] == [(2, 4, 16, 32), (2, 4, 32, 16), (2, 4, 32, 16)]
    first = batches[1]
    assert first["kspace"].shape == (2, 2, 4, 32, 16) and first["sensitivities"].shape == (2, 2, 32, 16)
    assert not torch.equal(first["mask"][0], first["mask"][1]), "each example its own fresh mask"
    assert torch.equal(first["kspace"], first["kspace"] * first["mask"][:, None]), "nothing off the mask"
    assert float(torch.stack([b["target"].abs().amax((1, 2, 3)) for b in batches]).max()) == pytest.approx(1, abs=1e-6)
    rows = [row for chunk, _ in streamed.chunks(np.arange(6), 4, 4.0) for row in chunk]
    assert sorted(rows) == list(range(6))


def first_read(cine):
    """What MapCache.prepare reads for ``cine``: its k-space and the centre rows that calibrate."""
    return lambda: (data.fully_sampled_slice(cine), data.centre_mask(cine.shape[2], 4))


def test_coil_maps_are_estimated_once_then_read_from_the_cache(tree, tmp_path, monkeypatch):
    calls = []
    estimate = data.estimate_sensitivities
    monkeypatch.setattr(data, "estimate_sensitivities", lambda *a, **k: calls.append(1) or estimate(*a, **k))
    cines = scan_raw([str(tree)], [])
    first = MapCache(tmp_path / "cache", 4)
    maps = [first.maps(cine, cine.shape[2:], first_read(cine)) for cine in cines]
    assert len(calls) == len(cines) == first.estimated
    again = MapCache(tmp_path / "cache", 4)  # a later run
    for cine, earlier in zip(cines, maps):
        again.prepare(cine, cine.shape[2:])
        assert np.array_equal(again.maps(cine, cine.shape[2:]), earlier)
    assert len(calls) == len(cines) and again.estimated == 0
    other = MapCache(tmp_path / "cache", 6)  # other calibration lines: other maps
    other.prepare(cines[0], cines[0].shape[2:])
    assert len(calls) == len(cines) + 1
    assert not list((tmp_path / "cache").rglob(".*tmp*")), "no temporary file is left behind"


def test_coil_tree_trains_to_the_same_test_metrics_as_coil_phantom(tmp_path):
    """The same 7 cines, as --coils=2 phantom cines in memory or as a tree read from disk: the same
    split, maps, masks, batches and weights, so the same test metrics."""
    write_cmrxrecon_tree(tmp_path / "tree", subjects=7, slices=1, frames=4, sizes=[(16, 16)], coils=2,
                         accelerations=[], center_lines=4, seed=0, log=lambda line: None)
    common = [*LSNET, "--num_epochs=2", "--center_lines=4", "--acceleration=4", "--in_channels=4",
              "--out_channels=4"]
    memory = run_tool("train.py", ["memory", "--coils=2", "--num_samples=7", "--image_size=16", "--fresh_data=false",
                                   *common], tmp_path)
    assert memory.returncode == 0, memory.stderr[-2000:]
    disk = run_tool("train.py", ["disk", "--data=tree", *common], tmp_path)
    assert disk.returncode == 0, disk.stderr[-2000:]
    a, b = (read_metrics(tmp_path / "output" / name)["test"] for name in ("memory", "disk"))
    assert a["index"] == b["index"]
    for key in ("psnr", "ssim", "nmse", "psnr_zero_filled"):
        np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-4, err_msg=key)
    report = (tmp_path / "output" / "disk" / "output.txt").read_text()
    assert "7 estimated (ESPIRiT) and 0 taken from the cache" in report and "CMRxRecon protocol PSNR" in report


def test_several_accelerations_are_scored_one_by_one(tree, tmp_path, capsys):
    result = run_tool("train.py", ["multi", f"--data={tree}", *LSNET, "--num_epochs=1", "--center_lines=4",
                                   "--mask_type=uniform", "--acceleration=2,4", "--in_channels=4", "--out_channels=4"],
                      tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = read_metrics(tmp_path / "output" / "multi")
    assert metrics["config"]["acceleration"] == [2.0, 4.0]
    assert metrics["test"]["acceleration"] == [2.0, 2.0, 4.0, 4.0]  # the test subject's two slices at each
    assert metrics["summary"]["psnr_zero_filled@2x"]["mean"] > metrics["summary"]["psnr_zero_filled@4x"]["mean"]
    assert "at acceleration 4 (2 cines):" in (tmp_path / "output" / "multi" / "output.txt").read_text()
    # reconstruct.py reuses the maps the run cached: the same file, calibration lines and grid
    file = next((tree / "MultiCoil" / "Cine" / "TrainingSet" / "FullSample" / "P003").glob("*.mat"))
    reconstruct.main(["--checkpoint", str(tmp_path / "output" / "multi" / "best.pt"), "--kspace", str(file),
                      "--acceleration=4", "--cache_dir", str(tmp_path / "cache"), "--out", str(tmp_path / "r.npz"),
                      "--device=cpu"])
    assert f"sensitivities from the cache {tmp_path / 'cache'}/ (0 of 2 slice(s) estimated now" in capsys.readouterr().out


@pytest.mark.parametrize("damage, message", [
    ("empty_subject", "a subject folder of FullSample with no k-space file"),
    ("mask", "mask of shape"),
    ("nan", "NaN/Inf k-space values"),
    ("undersampled", "is not fully sampled"),
])
def test_bad_trees_are_one_line_naming_the_file_and_write_nothing(tmp_path, damage, message, monkeypatch, capsys):
    folder = tmp_path / "tree"
    write_cmrxrecon_tree(folder, **{**TREE, "subjects": 7, "slices": 1}, log=lambda line: None)
    base = folder / "MultiCoil" / "Cine" / "TrainingSet"
    if damage == "empty_subject":
        (base / "FullSample" / "P099").mkdir()
    elif damage == "mask":
        from formats import write_mat73
        (base / "AccFactor04" / "P002" / "cine_sax_mask.mat").unlink()
        write_mat73(base / "AccFactor04" / "P002" / "cine_sax_mask.mat", {"mask04": np.ones((5, 7), np.uint8)})
    else:
        from formats import write_mat73
        target = base / "FullSample" / "P003" / "cine_sax.mat"
        kspace = read_kspace(target).kspace.transpose(4, 3, 1, 0, 2).copy()
        kspace[0, 0, 0, 0, 0] = np.nan if damage == "nan" else kspace[0, 0, 0, 0, 0]
        if damage == "undersampled":
            kspace[:, 3] = 0  # a ky line missing in every coil and frame
        target.unlink()
        write_mat73(target, {"kspace_full": kspace})
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop, cli_errors():
        name, given = train.parse_command_line(["bad", "--data=tree", *LSNET, "--num_epochs=1", "--center_lines=4",
                                                "--acceleration=4", "--in_channels=4", "--out_channels=4"])
        train.train(name, given, **train_defaults())
    lines = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(lines) == 1 and message in lines[0], lines
    assert lines[0].startswith("error: ") and ("tree" in lines[0])
    assert not (tmp_path / "output" / "bad").exists() and not (tmp_path / "images" / "bad").exists()


def test_a_file_named_twice_or_copied_is_refused(tree, tmp_path):
    file = next((tree / "MultiCoil" / "Cine" / "TrainingSet" / "FullSample" / "P001").glob("*.mat"))
    with pytest.raises(DataError, match="named twice"):
        scan_raw([str(tree), str(file)], [])
    import shutil
    from data import check_distinct_files
    shutil.copy(file, tmp_path / "copy.mat")
    with pytest.raises(DataError, match="the same k-space as"):
        check_distinct_files(scan_raw([str(tree), str(tmp_path / "copy.mat")], []), tmp_path / "cache")


def test_cmrxrecon_protocol_scores_the_central_slices_first_frames_and_centre(tmp_path):
    assert cmrxrecon_slices(1) == [0] and cmrxrecon_slices(2) == [0, 1]
    assert cmrxrecon_slices(10) == [3, 4] and cmrxrecon_slices(11) == [4, 5]  # MATLAB round(11/2) = 6: slices 5:6
    image = np.arange(2 * 12 * 9, dtype=float).reshape(2, 12, 9)
    assert cmrxrecon_crop(image).shape == (2, 6, 3) and cmrxrecon_crop(image)[0, 0, 0] == image[0, 3, 3]
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    rng = np.random.default_rng(0)
    reference = rng.random((5, 24, 30)) + 0.5
    recon = reference * 3 + 0.1 * rng.random((5, 24, 30))  # a scale the protocol forgives: frames by their max
    crop = (slice(0, 3), slice(6, 18), slice(10, 20))
    psnr = np.mean([peak_signal_noise_ratio(reference[crop][t] / reference[crop][t].max(),
                                            recon[crop][t] / recon[crop][t].max(), data_range=1) for t in range(3)])
    ssim = np.mean([structural_similarity(reference[crop][t] / reference[crop][t].max(),
                                          recon[crop][t] / recon[crop][t].max(), data_range=1) for t in range(3)])
    got = cmrxrecon_scores(recon, reference)
    assert got[0] == pytest.approx(psnr) and got[1] == pytest.approx(ssim) and 0 < got[2] < 0.01


def test_npz_items_are_read_alone_compressed_or_not(tmp_path):
    array = np.arange(5 * 3 * 4, dtype=np.complex64).reshape(5, 3, 4)
    np.savez(tmp_path / "plain.npz", kspace=array)
    np.savez_compressed(tmp_path / "packed.npz", kspace=array)
    np.savez(tmp_path / "fortran.npz", kspace=np.asfortranarray(array))
    for name in ("plain", "packed"):
        assert np.array_equal(read_array_item(tmp_path / f"{name}.npz", "kspace", 3), array[3])
    with pytest.raises(DataError, match="Fortran order"):
        read_array_item(tmp_path / "fortran.npz", "kspace", 1)
    with pytest.raises(DataError, match="item 5 of 5"):
        read_array_item(tmp_path / "plain.npz", "kspace", 5)


@pytest.mark.skipif(not SHARED_MRD.is_file(), reason="the shared real MRD file is not here (../shared/data)")
def test_a_real_scanner_mrd_file_reads_a_slice_at_a_time_as_whole():
    whole = read_kspace(SHARED_MRD)
    volume = inspect_kspace(SHARED_MRD)
    assert volume.shape == whole.kspace.shape == (1, 14, 1, 144, 192)  # 384 readout samples cropped to 192
    kspace, measured = read_kspace_slice(volume, 0)
    assert np.array_equal(kspace, whole.kspace[0]) and np.array_equal(measured, whole.mask[0])
    assert measured[0, :, 0].sum() == 68  # every third line and a calibration block


def test_torchrun_deals_whole_subjects_to_each_process_in_equal_batch_counts():
    from data import size_batches, subject_batches
    subjects = np.array(["a", "a", "b", "c", "c", "c", "d", "e", "e", "f"])  # rows 0-5: group 0, rows 6-9: group 1
    counts = [6, 4]
    ranks = [subject_batches(subjects, counts, 2, seed=1, epoch=3, rank=r, world=2) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1])
    seen = [set(subjects[torch.cat(batches).numpy()]) for batches in ranks]
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(subjects)
    for batches in ranks:
        assert all((batch < 6).all() or (batch >= 6).all() for batch in batches), "a batch never mixes groups"
    again = subject_batches(subjects, counts, 2, seed=1, epoch=3, rank=0, world=2)
    assert all(torch.equal(a, b) for a, b in zip(again, ranks[0]))
    moved = subject_batches(subjects, counts, 2, seed=1, epoch=4, rank=0, world=2)
    assert not all(torch.equal(a, b) for a, b in zip(moved, ranks[0])), "a new deal every epoch"
    streamed = type("Train", (), {"subjects": subjects, "counts": counts})()
    from data import epoch_batches
    one = epoch_batches(streamed, 2, seed=1, epoch=3)
    assert all(torch.equal(a, b) for a, b in zip(one, size_batches(counts, 2, 1, 3)))


@pytest.mark.parametrize("options, message", [
    (["--sizes=8x8"], "--sizes=8x8: expected matrices HxW (ky x kx) of 16..512"),
    (["--center_lines=40"], "--center_lines=40 at 16 rows"),
    (["--accelerations=4,x"], "expected sizes HxW,HxW,... and integer accelerations"),
    (["--slices=32", "--coils=64", "--frames=200", "--sizes=512x512"], "would need about"),
    (["--subjects=0"], "--subjects=0: must be 1..1000"),
])
def test_phantom_tree_options_are_checked_before_anything_is_rendered(tmp_path, capsys, options, message):
    import phantom
    with pytest.raises(SystemExit) as stop:
        phantom.main([str(tmp_path / "tree"), "--layout=cmrxrecon", "--sizes=16x16", *options])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not list(tmp_path.iterdir()), "nothing written"


def test_phantom_tree_command_writes_a_tree_and_never_over_one(tmp_path, capsys):
    import phantom
    tiny = ["--layout=cmrxrecon", "--subjects=1", "--slices=1", "--sizes=16x16", "--frames=2", "--coils=2",
            "--accelerations=2", "--center_lines=4"]
    phantom.main([str(tmp_path / "tree"), *tiny])
    assert (tmp_path / "tree" / "MultiCoil" / "Cine" / "TrainingSet" / "AccFactor02" / "P001" / "cine_sax_mask.mat").is_file()
    with pytest.raises(SystemExit) as stop:
        phantom.main([str(tmp_path / "tree"), *tiny])
    assert stop.value.code == 2 and "already exists" in capsys.readouterr().err


@pytest.mark.skipif(not SHARED_MRD.is_file(), reason="the shared real MRD file is not here (../shared/data)")
def test_a_real_scanner_file_reconstructs_keeping_its_measurements_with_cached_maps(tmp_path, capsys):
    for name in ("first.npz", "second.npz"):
        reconstruct.main(["--kspace", str(SHARED_MRD), "--out", str(tmp_path / name), "--device=cpu",
                          "--cache_dir", str(tmp_path / "cache")])
    out = capsys.readouterr().out
    assert "(1 of 1 slice(s) estimated now" in out and "(0 of 1 slice(s) estimated now" in out
    whole = read_kspace(SHARED_MRD)
    with np.load(tmp_path / "second.npz") as written:
        images = {key: written[key][0] for key in ("recon", "zero_filled")}  # [T, H, W] in the file's units
        maps, measured = written["sensitivities"][0], written["mask"][0].astype(bool)  # [C, H, W], [T, H, W]
    from sampling import fft2c
    misfit = {key: np.linalg.norm(fft2c(image[None] * maps[:, None])[:, measured] - whole.kspace[0][:, measured])
              for key, image in images.items()}  # || U F S x - y || over every coil's measured samples
    assert misfit["recon"] < 0.8 * misfit["zero_filled"], misfit  # measured: 0.59 of it
