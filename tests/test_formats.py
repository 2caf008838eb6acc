"""Format readers and ``python formats.py convert``: round trips through files built here."""
import re
import sys

import numpy as np
import pytest

from cli import UserError
from formats import DataError, convert, crop_or_pad, load_cine, read_cines, resample_frames, select_frames
import formats
from helpers import run_tool, write_mat73

RNG = np.random.default_rng(7)


def source_cines(n=2, frames=5, height=12, width=10, complex_=False):
    """Positive test cines ``[n, t, x, y]`` of distinct axis lengths (a swapped axis cannot pass)."""
    x = RNG.random((n, frames, height, width)) + 0.1
    return x * np.exp(1j * RNG.random(x.shape)) if complex_ else x


def peak_normalised(x):
    return x / np.abs(x).reshape(len(x), -1).max(1)[:, None, None, None]


def converted(tmp_path, inputs, **options):
    out = tmp_path / "out.npz"
    dataset = convert(*[tmp_path / name for name in inputs], out=out, log=lambda line: None, **options)
    np.testing.assert_allclose(load_cine(out), dataset, rtol=1e-6)
    return dataset


# ----------------------------------------------------------------------------- formats
def test_npy_and_npz_with_axes(tmp_path):
    x = source_cines()
    np.save(tmp_path / "cines.npy", x.transpose(2, 3, 1, 0))  # stored as (x, y, t, n)
    np.savez(tmp_path / "one.npz", image=x[0])  # a single cine [t, x, y]
    np.testing.assert_allclose(converted(tmp_path, ["cines.npy"], axes="xytn"), peak_normalised(x), rtol=1e-6)
    out = tmp_path / "single.npz"
    convert(tmp_path / "one.npz", out=out, log=lambda line: None)
    np.testing.assert_allclose(load_cine(out), peak_normalised(x[:1]), rtol=1e-6)


def test_axes_must_describe_the_array(tmp_path):
    np.save(tmp_path / "cines.npy", source_cines())
    for axes in ("xyt", "ntxx", "nxyz"):
        with pytest.raises(DataError, match="--axes"):
            read_cines(tmp_path / "cines.npy", axes=axes)
    np.save(tmp_path / "flat.npy", np.ones((4, 4)))
    with pytest.raises(DataError, match=r"flat.npy: expected \[t, x, y\]"):
        read_cines(tmp_path / "flat.npy")


def test_mat_v5_real_and_complex_key_guessed_or_given(tmp_path):
    from scipy.io import savemat

    x, z = source_cines(1), source_cines(1, complex_=True)
    savemat(tmp_path / "real.mat", {"cine": x[0].transpose(1, 2, 0), "pixel_spacing": np.array([1.5, 1.5])})
    savemat(tmp_path / "two.mat", {"a": x[0].transpose(1, 2, 0), "b": z[0].transpose(1, 2, 0)})
    np.testing.assert_allclose(converted(tmp_path, ["real.mat"], axes="xyt"), peak_normalised(x), rtol=1e-6)
    with pytest.raises(DataError, match="2 arrays of 3 or more dimensions.*--key"):
        read_cines(tmp_path / "two.mat", axes="xyt")
    cines, description = read_cines(tmp_path / "two.mat", key="b", axes="xyt")
    assert cines.dtype.kind == "c" and "v5" in description
    np.testing.assert_allclose(cines, z)


def test_mat_v73_is_transposed_back_to_matlab_order(tmp_path):
    z = source_cines(2, complex_=True)
    write_mat73(tmp_path / "v73.mat", {"kdata": z.transpose(2, 3, 1, 0)})  # MATLAB size: x, y, t, n
    cines, description = read_cines(tmp_path / "v73.mat", axes="xytn")
    assert "v7.3" in description
    np.testing.assert_allclose(cines, z)
    np.testing.assert_allclose(converted(tmp_path, ["v73.mat"], axes="xytn"), peak_normalised(z), rtol=1e-5)


def test_nifti_every_slice_is_a_cine_and_empty_slices_are_skipped(tmp_path):
    nibabel = pytest.importorskip("nibabel")
    volume = RNG.random((12, 10, 3, 5)).astype(np.float32)  # (x, y, slice, t)
    volume[:, :, 1] = 0
    nibabel.save(nibabel.Nifti1Image(volume, np.eye(4)), tmp_path / "patient001_4d.nii.gz")
    dataset = converted(tmp_path, ["patient001_4d.nii.gz"])
    expected = volume[:, :, [0, 2]].transpose(2, 3, 0, 1)  # slice z -> cine [t, x, y]
    assert dataset.shape == (2, 5, 12, 10)
    np.testing.assert_allclose(dataset, peak_normalised(expected), rtol=1e-6)


def write_dicom_frame(path, pixels, trigger_time, instance, slope=2.0, intercept=10.0):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = MRImageStorage, meta.MediaStorageSOPInstanceUID, "MR"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.TriggerTime, ds.InstanceNumber = trigger_time, instance
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.ImagePositionPatient = [0.0, 0.0, 12.5]
    ds.save_as(path, enforce_file_format=True)
    return pydicom


def test_dicom_frames_ordered_by_trigger_time_and_rescaled(tmp_path):
    frames = (RNG.random((5, 12, 10)) * 1000).astype(np.uint16)
    folder = tmp_path / "sax_5"
    folder.mkdir()
    # file names and instance numbers run against the trigger times: only TriggerTime orders correctly
    for t in range(5):
        write_dicom_frame(folder / f"IM{4 - t:04d}.dcm", frames[t], trigger_time=30.0 * t, instance=5 - t)
    (folder / "notes.txt").write_text("not DICOM")
    cines, description = read_cines(folder)
    assert "TriggerTime then InstanceNumber" in description and "1 non-image file(s) skipped" in description
    np.testing.assert_allclose(cines, 2.0 * frames[None] + 10.0)
    np.testing.assert_allclose(converted(tmp_path, ["sax_5"]), peak_normalised(2.0 * frames[None] + 10), rtol=1e-6)


def test_dicom_folder_of_two_slices_is_refused(tmp_path):
    pydicom = write_dicom_frame(tmp_path / "a.dcm", np.ones((4, 4)), 0.0, 1)
    second = pydicom.dcmread(tmp_path / "a.dcm")
    second.ImagePositionPatient = [0.0, 0.0, 20.0]
    second.save_as(tmp_path / "b.dcm")
    with pytest.raises(DataError, match="2 slice positions"):
        read_cines(tmp_path)


@pytest.mark.parametrize("module, name", [("nibabel", "x_4d.nii.gz"), ("pydicom", "folder"), ("h5py", "v73.mat")])
def test_missing_extra_says_what_to_install(tmp_path, monkeypatch, module, name):
    path = tmp_path / name
    if name == "folder":
        path.mkdir()
    else:
        path.write_bytes(b"\x00" * 512 + b"\x89HDF\r\n\x1a\n" + b"\x00" * 64)
    monkeypatch.setitem(sys.modules, module, None)  # makes "import module" fail
    message = rf"^{re.escape(str(path))}: reading .* needs {module}: pip install -r requirements-extras\.txt$"
    with pytest.raises(DataError, match=message):
        read_cines(path)


# ----------------------------------------------------------------------------- conforming
def test_resampling_is_identity_for_equal_frames_and_keeps_a_periodic_sinusoid():
    x = source_cines(frames=7)
    assert resample_frames(x, 7) is x
    for before, after in ((30, 20), (12, 20)):
        t = np.arange(before)[None, :, None, None]
        cine = 2 + np.cos(2 * np.pi * t / before) * np.ones((1, 1, 3, 4))
        expected = 2 + np.cos(2 * np.pi * np.arange(after) / after)
        resampled = resample_frames(cine, after)
        assert resampled.shape == (1, after, 3, 4)
        np.testing.assert_allclose(resampled[0, :, 1, 2], expected, atol=0.04)  # linear: O((2 pi / T)^2 / 8)
    magnitude = np.zeros((1, 4, 2, 2))
    magnitude[:, 1] = 1  # a sharp pulse: interpolation never undershoots to negative values
    assert resample_frames(magnitude, 9).min() >= 0


def test_select_keeps_evenly_spaced_measured_frames():
    x = source_cines(frames=30)
    np.testing.assert_array_equal(select_frames(x, 20), x[:, [0, 1, 3, 4, 6, 7, 9, 10, 12, 13, 15, 16, 18, 19,
                                                              21, 22, 24, 25, 27, 28]])
    with pytest.raises(DataError, match="cannot select 40 frames from 30"):
        select_frames(x, 40)


def test_crop_and_pad_keep_the_centre():
    x = source_cines(1, 2, 12, 9)
    padded = crop_or_pad(x, (16, 16))
    assert padded.shape == (1, 2, 16, 16)
    assert padded[0, 0, 8, 8] == x[0, 0, 6, 4]  # the FFT centre pixel stays the centre
    np.testing.assert_array_equal(crop_or_pad(padded, (12, 9)), x)
    cropped = crop_or_pad(x, (6, 5))
    assert cropped.shape == (1, 2, 6, 5) and cropped[0, 0, 3, 2] == x[0, 0, 6, 4]


def test_mixed_inputs_are_conformed_into_one_dataset(tmp_path):
    from scipy.io import savemat

    a, b = source_cines(2, 8, 12, 12), source_cines(1, 6, 10, 14, complex_=True)
    np.save(tmp_path / "a.npy", a)
    savemat(tmp_path / "b.mat", {"img": b[0]})  # 3-D: one cine [t, x, y]
    inputs, out, lines = [tmp_path / "a.npy", tmp_path / "b.mat"], tmp_path / "mixed.npz", []
    with pytest.raises(UserError, match="different frame counts .*choose one with --frames"):
        convert(*inputs, out=out, log=lines.append)
    with pytest.raises(UserError, match="different image sizes .*choose one with --size"):
        convert(*inputs, out=out, frames=6, log=lines.append)
    assert not out.exists()
    dataset = convert(*inputs, out=out, frames=6, size=(12, 12), log=lines.append)
    assert dataset.shape == (3, 6, 12, 12) and dataset.dtype == np.complex64
    np.testing.assert_allclose(dataset[:2], peak_normalised(resample_frames(a, 6)), rtol=1e-5)
    np.testing.assert_allclose(dataset[2:], peak_normalised(crop_or_pad(b, (12, 12))), rtol=1e-5)
    assert "frames 8 -> 6 (periodic linear interpolation)" in lines[-3]
    assert "size 10x14 -> 12x12 (centre crop/zero-pad)" in lines[-2]
    assert "magnitude inputs made complex" in lines[-1]


def test_convert_cli_prints_what_it_did_and_refuses_to_overwrite(tmp_path):
    x = source_cines(2, 8, 12, 12)
    np.save(tmp_path / "a.npy", x)
    result = run_tool("formats.py", ["convert", "a.npy", "--out", "cine.npz", "--frames", "4", "--size", "16x8",
                                     "--select"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "frames 8 -> 4 (evenly spaced frames selected)" in result.stdout
    assert "size 12x12 -> 16x8 (centre crop/zero-pad)" in result.stdout and "wrote cine.npz" in result.stdout
    written = (tmp_path / "cine.npz").read_bytes()
    np.testing.assert_allclose(load_cine(tmp_path / "cine.npz"), peak_normalised(crop_or_pad(x[:, ::2], (16, 8))),
                               rtol=1e-6)
    again = run_tool("formats.py", ["convert", "a.npy", "missing.npy", "--out=cine.npz"], tmp_path)
    assert again.returncode == 2 and again.stderr.strip() == "error: cine.npz: already exists; choose another " \
                                                             "--out or remove it first"
    assert (tmp_path / "cine.npz").read_bytes() == written
    with pytest.raises(DataError, match="missing.npy: no such file or folder"):
        convert(tmp_path / "a.npy", tmp_path / "missing.npy", out=tmp_path / "new.npz")
    assert not (tmp_path / "new.npz").exists()


def test_convert_writes_the_heart_box_of_every_cine(tmp_path):
    np.save(tmp_path / "a.npy", source_cines(2, 8, 12, 12))
    convert(tmp_path / "a.npy", out=tmp_path / "boxed.npz", heart_box="2,9,3,11", log=lambda line: None)
    with np.load(tmp_path / "boxed.npz") as written:
        np.testing.assert_array_equal(written["heart_box"], [[2, 9, 3, 11]] * 2)
    with pytest.raises(DataError, match=r"--heart_box=2,13,3,11: heart box \[2, 13, 3, 11\] of cine 0 is not inside"):
        convert(tmp_path / "a.npy", out=tmp_path / "outside.npz", heart_box="2,13,3,11")
    assert not (tmp_path / "outside.npz").exists()


@pytest.mark.parametrize("args, message", [
    (["convert", "a.npy"], "option --out is required"),
    (["convert", "a.npy", "--out=b.npz", "--heart_box=1,2,3"], "--heart_box=1,2,3: expected four integers"),
    (["convert", "a.npy", "--out=b.npz", "--frame=4"], r"unknown option --frame \(did you mean --frames\?\)"),
    (["convert", "a.npy", "--out=b.npz", "--frames=0"], "--frames=0: expected a positive integer"),
    (["convert", "a.npy", "--out=b.npz", "--size=12y8"], "--size=12y8: expected SIZE or HEIGHTxWIDTH"),
    (["convert", "a.npy", "--out=b.npz", "--select"], "--select needs --frames"),
    (["transform", "a.npy"], "usage: python formats.py convert"),
])
def test_convert_cli_refuses_bad_options(tmp_path, monkeypatch, args, message):
    np.save(tmp_path / "a.npy", source_cines())
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=message):
        formats.main(args)
    assert not (tmp_path / "b.npz").exists()
