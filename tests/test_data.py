import numpy as np
import pytest
import torch

from data import CineDataset, mask_seed, split_counts, split_indices
from formats import DataError, load_cine
from sampling import fft2c, ifft2c

RNG = np.random.default_rng(2)


def cines(n=3, dtype=np.float32):
    return (RNG.random((n, 4, 16, 16)) * 7).astype(dtype)


def test_npz_dataset_key_is_normalised_per_cine(tmp_path):
    x = cines()
    x[1] *= 40
    np.savez(tmp_path / "cine.npz", dataset=x, other=np.zeros(3))
    loaded = load_cine(tmp_path / "cine.npz")
    assert loaded.shape == x.shape and loaded.dtype == np.float32
    np.testing.assert_allclose(np.abs(loaded).reshape(3, -1).max(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(loaded[1], x[1] / x[1].max(), rtol=1e-6)


def test_single_array_npz_npy_and_complex(tmp_path):
    x = cines().astype(np.complex128) * np.exp(1j * RNG.random((3, 4, 16, 16)))
    np.savez(tmp_path / "any_name.npz", x)
    np.save(tmp_path / "cine.npy", x)
    for path in ("any_name.npz", "cine.npy"):
        loaded = load_cine(tmp_path / path)
        assert loaded.dtype == np.complex64
        np.testing.assert_allclose(np.abs(loaded).reshape(3, -1).max(1), 1.0, rtol=1e-6)


def test_integer_images_become_float(tmp_path):
    np.save(tmp_path / "int.npy", (cines() * 100).astype(np.int16))
    loaded = load_cine(tmp_path / "int.npy")
    assert loaded.dtype == np.float32 and loaded.max() == pytest.approx(1.0)


def test_explicit_key(tmp_path):
    np.savez(tmp_path / "two.npz", a=cines(), b=cines(2))
    assert load_cine(tmp_path / "two.npz", key="b").shape[0] == 2


def write(tmp_path, name, array=None, raw=None):
    path = tmp_path / name
    if raw is not None:
        path.write_bytes(raw)
    elif name.endswith(".npz"):
        np.savez(path, dataset=array)
    else:
        np.save(path, array, allow_pickle=True)
    return path


def nan_cines():
    x = cines()
    x[2, 1, 3, 3] = np.nan
    return x


def zero_cine():
    x = cines()
    x[1] = 0
    return x


@pytest.mark.parametrize("name, array, raw, message", [
    ("missing.npz", None, None, "no such file"),
    ("cine.txt", None, b"1 2 3", "unsupported file type .txt"),
    ("garbage.npz", None, b"this is not a zip file", "not a .npy/.npz file"),
    ("pickle.npy", None, b"\x80\x04K\x01.", "not a .npy/.npz file"),
    ("truncated.npy", None, b"\x93NUMPY\x01\x00", "not a readable .npy/.npz"),
    ("three_d.npz", np.ones((4, 16, 16)), None, "expected 4 dimensions.*single cine"),
    ("five_d.npy", np.ones((1, 2, 4, 16, 16)), None, "expected 4 dimensions"),
    ("empty.npy", np.ones((0, 4, 16, 16)), None, "empty"),
    ("nan.npy", nan_cines(), None, "NaN/Inf.*cine 2"),
    ("inf.npz", np.full((1, 2, 8, 8), np.inf), None, "NaN/Inf"),
    ("zero.npy", zero_cine(), None, "cine 1 is all zeros"),
    ("bool.npy", np.ones((1, 2, 8, 8), bool), None, "dtype bool"),
    ("str.npy", np.full((1, 2, 8, 8), "a"), None, "dtype <U1"),
    ("object.npy", np.empty((1, 2, 8, 8), object), None, "pickled Python objects"),
])
def test_bad_files_raise_one_line_errors_naming_the_file(tmp_path, name, array, raw, message):
    path = tmp_path / name if array is None and raw is None else write(tmp_path, name, array, raw)
    with pytest.raises(DataError, match=message) as error:
        load_cine(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_npz_without_dataset_key_and_several_arrays(tmp_path):
    np.savez(tmp_path / "two.npz", a=cines(), b=cines())
    with pytest.raises(DataError, match="no array named 'dataset'.*a, b"):
        load_cine(tmp_path / "two.npz")
    with pytest.raises(DataError, match="no array named 'c'"):
        load_cine(tmp_path / "two.npz", key="c")


def test_split_is_4_1_2_disjoint_and_reproducible():
    train, val, test = split_indices(200)
    assert (len(train), len(val), len(test)) == (114, 29, 57)
    everything = np.concatenate([train, val, test])
    assert sorted(everything) == list(range(200))
    for a, b in zip(split_indices(200, seed=0), (train, val, test)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(split_indices(200, seed=1)[0], train)
    assert split_counts(7) == (4, 1, 2)


def test_split_refuses_too_few_cines():
    with pytest.raises(ValueError, match="cannot be split"):
        split_indices(2)


def make_set(mode, train, generator=None, n=5):
    images = torch.from_numpy(RNG.random((n, 4, 32, 16)).astype(np.float32))
    return CineDataset(images, np.arange(10, 10 + n), mask_mode=mode, train=train, center_lines=2,
                       generator=generator, seed=3)


def test_example_is_undersampled_target():
    example = make_set("fixed", False)[1]
    assert set(example) == {"aliased", "target", "mask", "kspace"}
    kspace = fft2c(example["target"]) * example["mask"]
    torch.testing.assert_close(example["kspace"], kspace)
    torch.testing.assert_close(example["aliased"], ifft2c(kspace))
    assert example["aliased"].dtype == torch.complex64 and example["mask"].shape == (4, 32, 16)


def test_fixed_mode_shares_one_mask_set():
    masks = make_set("fixed", True).batch([0, 1, 4])["mask"]
    assert torch.equal(masks[0], masks[1]) and torch.equal(masks[0], masks[2])
    assert not torch.equal(masks[0, 0], masks[0, 1]), "frames still differ"


def test_random_mode_draws_fresh_masks_for_training():
    dataset = make_set("random", True, torch.Generator().manual_seed(0))
    first, second = dataset.batch([0, 0])["mask"], dataset.batch([0])["mask"]
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[0], second[0])


def test_evaluation_masks_are_per_cine_and_reproducible():
    a, b = make_set("random", False), make_set("random", False)
    assert torch.equal(a.batch([0, 1])["mask"], b.batch([0, 1])["mask"])
    masks = a.batch([0, 1])["mask"]
    assert not torch.equal(masks[0], masks[1])
    assert mask_seed(3, 10) != mask_seed(3, 11) and mask_seed(3, 10) == mask_seed(3, 10)


def test_subject_level_split_never_shares_a_subject():
    from data import split_by_subject

    subjects = np.repeat([f"patient{i:02d}" for i in range(15)], np.random.default_rng(1).integers(1, 9, 15))
    train, val, test = split_by_subject(subjects, seed=3)
    assert sorted(np.concatenate([train, val, test])) == list(range(len(subjects)))
    names = [set(subjects[part]) for part in (train, val, test)]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    assert all(len(part) for part in (train, val, test))
    again = split_by_subject(subjects, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(again, (train, val, test)))


def test_converted_subjects_and_explicit_files_fix_the_split(tmp_path):
    from data import load_images
    from helpers import train_defaults

    cines = np.random.default_rng(0).random((12, 4, 16, 16)).astype(np.float32) + 0.1
    np.savez(tmp_path / "subjects.npz", dataset=cines, subject=np.repeat(["a", "b", "c", "d"], 3))
    config = train_defaults(data=str(tmp_path / "subjects.npz"), in_channels=4, out_channels=4, center_lines=2,
                            arch="cine_unet", levels=2)
    _, _, meta = load_images(config, [], False)
    groups = [set(np.repeat(["a", "b", "c", "d"], 3)[part]) for part in meta["splits"]]
    assert not (groups[0] & groups[2]) and all(groups)
    for name, part in (("train", cines[:5]), ("val", cines[5:7]), ("test", cines[7:10])):
        np.save(tmp_path / f"{name}.npy", part)
    files = ",".join(str(tmp_path / f"{name}.npy") for name in ("train", "val", "test"))
    images, _, meta = load_images({**config, "data": files}, [], False)
    assert len(images) == 10 and [len(part) for part in meta["splits"]] == [5, 2, 3]


def test_heart_boxes_of_a_data_file_follow_the_padding_and_reach_the_ssim_window(tmp_path):
    from data import load_images
    from helpers import train_defaults

    cines = np.random.default_rng(0).random((7, 4, 14, 14)).astype(np.float32) + 0.1
    np.savez(tmp_path / "boxed.npz", dataset=cines, heart_box=np.array([2, 10, 3, 12]))
    config = train_defaults(data=str(tmp_path / "boxed.npz"), in_channels=4, out_channels=4, center_lines=2,
                            arch="cine_unet", levels=2)
    images, _, meta = load_images(config, [], False)
    assert images.shape[2:] == (16, 16) and meta["boxes"].shape == (7, 4)
    row0, row1, col0, col1 = meta["boxes"][0]
    assert row0 <= 3 and row1 >= 11 and col0 <= 4 and col1 >= 13, "the box moved with the 1-pixel padding"
    assert row1 - row0 >= 11 and col1 - col0 >= 11 and 0 <= row0 and row1 <= 16 and 0 <= col0 and col1 <= 16


@pytest.mark.parametrize("boxes, message", [
    (np.array([[0, 8, 0, 8]] * 2), r"heart boxes must be integers \[3, 4\] or \[4\]"),
    (np.array([0.0, 8, 0, 8]), "heart boxes must be integers"),
    (np.array([4, 2, 0, 8]), r"heart box \[4, 2, 0, 8\] of cine 0 is not inside its 14x14 images"),
    (np.array([[0, 8, 0, 8], [0, 8, 0, 8], [0, 15, 0, 8]]), r"heart box \[0, 15, 0, 8\] of cine 2 is not inside"),
])
def test_bad_heart_boxes_are_one_line_errors(tmp_path, boxes, message):
    from formats import DataError, load_boxes

    np.savez(tmp_path / "bad.npz", dataset=np.ones((3, 2, 14, 14), np.float32), heart_box=boxes)
    with pytest.raises(DataError, match=f"bad.npz: array 'heart_box': {message}"):
        load_boxes(tmp_path / "bad.npz", 3, (14, 14))
