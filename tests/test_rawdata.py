"""Measured k-space in (CMRxRecon .mat, ISMRMRD/MRD .h5, our k-space .npz), images out: files built
here in the exact layouts, read back, converted and reconstructed with the shipped checkpoint."""
import re

import numpy as np
import pytest
import torch

import formats
import reconstruct
from cli import UserError, cli_errors
from data import mask_seed
from formats import DataError, crop_or_pad, read_kspace
from helpers import run_tool, write_mat73
from phantom import make_coil_dataset
from sampling import fft2c, ifft2c, sense_adjoint, sense_forward, uniform_mask, variable_density_mask

RNG = np.random.default_rng(5)
N, C, T, H, W = 2, 2, 4, 16, 12  # slices, coils, frames, ky rows, kx columns: distinct, so no axis can swap


def distinct_kspace():
    """Complex ``[N, C, T, H, W]`` whose every entry is different."""
    return (RNG.standard_normal((N, C, T, H, W)) + 1j * RNG.standard_normal((N, C, T, H, W))).astype(np.complex64)


def as_matlab(kspace):
    """``[N, C, T, H, W]`` -> MATLAB's CMRxRecon order (kx, ky, coils, slices, frames)."""
    return kspace.transpose(4, 3, 1, 0, 2)


def lines(pattern):
    """A ``[T, H, W]`` mask of whole ky lines from a ``[T, H]`` 0/1 pattern."""
    return np.broadcast_to(np.asarray(pattern, np.float32)[..., None], (*np.shape(pattern), W))


# ----------------------------------------------------------------------------- CMRxRecon
def test_cmrxrecon_values_land_in_slice_coil_frame_ky_kx_and_the_mask_file_is_used(tmp_path):
    kspace = distinct_kspace()
    mask = uniform_mask((T, H, W), 4, 4)  # CMRxRecon's own: the same lines in every frame
    write_mat73(tmp_path / "cine_sax.mat", {"kspace_sub04": as_matlab(kspace * mask)}, "<f4")
    write_mat73(tmp_path / "cine_sax_mask.mat", {"mask04": mask[0].T.astype(np.float64)})  # MATLAB (kx, ky)
    data = read_kspace(tmp_path / "cine_sax.mat", str(tmp_path / "cine_sax_mask.mat"))
    assert data.kspace.shape == (N, C, T, H, W) and data.kspace.dtype == np.complex64
    np.testing.assert_array_equal(data.kspace, kspace * mask)
    np.testing.assert_array_equal(data.mask, np.broadcast_to(mask, (N, T, H, W)))
    assert data.sensitivities is None and data.pixel_size is None
    assert "'kspace_sub04'" in data.description and "mask from --mask" in data.description


def test_cmrxrecon_without_a_mask_file_takes_the_lines_holding_data(tmp_path):
    kspace = distinct_kspace()
    pattern = RNG.random((T, H)) < 0.4
    pattern[:, H // 2] = True
    write_mat73(tmp_path / "cine_sax.mat", {"kspace_sub08": as_matlab(kspace * lines(pattern))}, "<f4")
    data = read_kspace(tmp_path / "cine_sax.mat")
    np.testing.assert_array_equal(data.mask, np.broadcast_to(lines(pattern), (N, T, H, W)))
    assert "mask from the lines holding data" in data.description


def test_single_coil_cmrxrecon_is_one_coil(tmp_path):
    kspace = distinct_kspace()[:, :1]
    write_mat73(tmp_path / "single.mat", {"kspace_single_full": kspace[:, 0].transpose(3, 2, 0, 1)})  # kx ky n t
    data = read_kspace(tmp_path / "single.mat")
    np.testing.assert_allclose(data.kspace, kspace, rtol=1e-6)
    assert data.mask.all()


# ----------------------------------------------------------------------------- ISMRMRD / MRD
MRD_HEADER = """<?xml version="1.0" encoding="utf-8"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">
  <experimentalConditions><H1resonanceFrequency_Hz>63500000</H1resonanceFrequency_Hz></experimentalConditions>
  <encoding>
    <encodedSpace><matrixSize><x>{x}</x><y>{y}</y><z>1</z></matrixSize>
      <fieldOfView_mm><x>{fov_x}</x><y>{fov_y}</y><z>8</z></fieldOfView_mm></encodedSpace>
    <reconSpace><matrixSize><x>{recon_x}</x><y>{y}</y><z>1</z></matrixSize>
      <fieldOfView_mm><x>{recon_fov_x}</x><y>{fov_y}</y><z>8</z></fieldOfView_mm></reconSpace>
    <encodingLimits><kspace_encoding_step_1><minimum>0</minimum><maximum>{last}</maximum><center>{center}</center>
      </kspace_encoding_step_1></encodingLimits>
    <trajectory>cartesian</trajectory>
  </encoding>
</ismrmrdHeader>"""


def write_mrd(path, kspace, pattern, oversampled=False, center=None):
    """An MRD file of ``kspace`` ``[N, C, T, H, W]``: a noise scan first, then the lines of ``pattern``
    ``[T, H]`` (True: acquired) of every slice and frame, line ky = H // 2 of frame 0 twice (averages 0
    and 1, the second with twice the data, so the average is 1.5 times it)."""
    ismrmrd = pytest.importorskip("ismrmrd")
    count, coils, frames, height, width = kspace.shape
    recon = width // 2 if oversampled else width
    center = height // 2 if center is None else center
    with ismrmrd.Dataset(str(path), "dataset", create_if_needed=True) as dataset:
        dataset.write_xml_header(MRD_HEADER.format(x=width, y=height, fov_x=2.0 * width, fov_y=3.0 * height,
                                                   recon_x=recon, recon_fov_x=2.0 * recon, last=height - 1,
                                                   center=center))
        noise = ismrmrd.Acquisition.from_array(RNG.standard_normal((coils, width)).astype(np.complex64))
        noise.setFlag(ismrmrd.ACQ_IS_NOISE_MEASUREMENT)
        dataset.append_acquisition(noise)
        for n in range(count):
            for t in range(frames):
                for row in np.flatnonzero(pattern[t]):
                    repeats = 2 if (t, row) == (0, height // 2) else 1
                    for average in range(repeats):
                        readout = kspace[n, :, t, row] * (1 + average)  # [C, W]
                        acquisition = ismrmrd.Acquisition.from_array(readout, center_sample=width // 2)
                        acquisition.idx.kspace_encode_step_1 = row - height // 2 + center
                        acquisition.idx.slice, acquisition.idx.phase, acquisition.idx.average = n, t, average
                        dataset.append_acquisition(acquisition)


def test_mrd_readouts_land_by_their_counters_averaged_with_missing_lines_unmeasured(tmp_path):
    kspace = distinct_kspace()
    pattern = RNG.random((T, H)) < 0.5
    pattern[:, H // 2] = True
    write_mrd(tmp_path / "scan.h5", kspace, pattern, center=H // 2 + 3)  # counters run 3 rows past the lines
    data = read_kspace(tmp_path / "scan.h5")
    expected = kspace * lines(pattern)
    expected[:, :, 0, H // 2] *= 1.5  # averages 0 and 1 of 1x and 2x the data
    np.testing.assert_allclose(data.kspace, expected, rtol=1e-6)
    np.testing.assert_array_equal(data.mask, np.broadcast_to(lines(pattern), (N, T, H, W)))
    np.testing.assert_allclose(data.pixel_size, [3.0, 2.0])
    assert "frames from idx.phase" in data.description


def test_mrd_oversampled_readout_is_cropped_to_the_reconstructed_field_of_view(tmp_path):
    kspace = distinct_kspace()
    write_mrd(tmp_path / "scan.h5", kspace, np.ones((T, H), bool), oversampled=True)
    data = read_kspace(tmp_path / "scan.h5")
    assert data.kspace.shape == (N, C, T, H, W // 2) and data.mask.shape == (N, T, H, W // 2) and data.mask.all()
    averaged = kspace.copy()
    averaged[:, :, 0, H // 2] *= 1.5
    np.testing.assert_allclose(ifft2c(data.kspace), crop_or_pad(ifft2c(averaged), (H, W // 2)), atol=1e-5)
    assert "cropped to the reconstructed 12 mm (12 -> 6 columns)" in data.description


# ----------------------------------------------------------------------------- convert
def test_convert_kspace_writes_the_npz_layout_that_reads_back_the_same(tmp_path):
    kspace = distinct_kspace()
    pattern = RNG.random((T, H)) < 0.5
    pattern[:, H // 2] = True
    write_mrd(tmp_path / "scan.h5", kspace, pattern)
    formats.main(["convert", str(tmp_path / "scan.h5"), "--kspace", "--out", str(tmp_path / "k.npz")])
    written = np.load(tmp_path / "k.npz")
    assert sorted(written.files) == ["kspace", "mask", "pixel_size", "subject"]
    again = read_kspace(tmp_path / "k.npz")
    first = read_kspace(tmp_path / "scan.h5")
    np.testing.assert_array_equal(again.kspace, first.kspace)
    np.testing.assert_array_equal(again.mask, first.mask)
    np.testing.assert_array_equal(again.pixel_size, first.pixel_size)
    with pytest.raises(UserError, match="already exists"):
        formats.convert(str(tmp_path / "scan.h5"), kspace=True, out=str(tmp_path / "k.npz"))
    with pytest.raises(UserError, match="--frames: measured k-space is written as acquired"):
        formats.convert(str(tmp_path / "scan.h5"), kspace=True, frames=3, out=str(tmp_path / "x.npz"))


# ----------------------------------------------------------------------------- reconstruct --kspace
def coil_cine(tmp_path, mask):
    """A 2-coil phantom cine (1 slice, 4 frames, 16 x 16) as a CMRxRecon ``kspace_sub04`` with its
    ``mask04`` file; returns the measured k-space ``[1, C, T, H, W]``."""
    coil = make_coil_dataset(1, frames=4, size=16, coils=2, seed=3)
    measured = (coil["kspace"] * 100 * mask).astype(np.complex64)
    write_mat73(tmp_path / "cine_sax.mat", {"kspace_sub04": as_matlab(measured)}, "<f4")
    write_mat73(tmp_path / "cine_sax_mask.mat", {"mask04": mask[0].T.astype(np.float64)})
    return measured


def run_reconstruct(tmp_path, *extra, name="recon.npz"):
    reconstruct.main(["--out", str(tmp_path / name), "--device", "cpu", *extra])
    with np.load(tmp_path / name) as written:
        return {key: written[key] for key in written.files}


def test_cmrxrecon_file_reconstructs_with_estimated_maps_and_keeps_its_data(tmp_path, capsys, one_thread):
    mask = uniform_mask((4, 16, 16), 4, 6)
    measured = coil_cine(tmp_path, mask)
    result = run_reconstruct(tmp_path, "--kspace", str(tmp_path / "cine_sax.mat"), "--mask",
                             str(tmp_path / "cine_sax_mask.mat"), "--nifti", str(tmp_path / "recon.nii.gz"))
    out = capsys.readouterr().out
    assert "2 coils: sensitivities estimated" in out and "mask: the measured pattern" in out
    assert result["recon"].shape == (1, 4, 16, 16) and np.isfinite(result["recon"]).all()
    np.testing.assert_array_equal(result["mask"], mask[None])
    maps, recon = torch.from_numpy(result["sensitivities"]), torch.from_numpy(result["recon"])
    y, where = torch.from_numpy(measured), torch.from_numpy(result["mask"])
    # SENSE data consistency: the result nearly solves the normal equations A^H (A x - y) = 0 of the measurements
    # (the shipped network ends with one SENSE gradient step, never an exact fit: 1.03e-2 measured)
    residual = sense_adjoint(sense_forward(recon, maps, where) - y, maps, where)
    assert residual.abs().max() < 2e-2 * sense_adjoint(y, maps, where).abs().max()
    zero_filled = sense_adjoint(y, maps, where)
    np.testing.assert_allclose(result["zero_filled"], zero_filled.numpy(), atol=1e-4 * zero_filled.abs().max())
    nibabel = pytest.importorskip("nibabel")
    volume = nibabel.load(tmp_path / "recon.nii.gz")
    assert volume.shape == (16, 16, 1, 4)
    np.testing.assert_allclose(np.asarray(volume.dataobj), result["magnitude"].transpose(2, 3, 0, 1), rtol=1e-6)


def test_fully_sampled_kspace_with_acceleration_gets_the_checkpoints_variable_density_mask(tmp_path, capsys,
                                                                                          one_thread):
    coil = make_coil_dataset(1, frames=4, size=16, coils=2, seed=3)
    np.savez(tmp_path / "k.npz", kspace=coil["kspace"], mask=np.ones((4, 16, 16), np.float32),
             sensitivities=coil["sensitivities"], pixel_size=np.array([1.5, 1.25]))
    result = run_reconstruct(tmp_path, "--kspace", str(tmp_path / "k.npz"), "--acceleration", "2",
                             "--nifti", str(tmp_path / "r.nii"))
    expected = variable_density_mask((4, 16, 16), 2, 4, seed=mask_seed(0, 0))  # lsnet.pt: 4 centre lines, seed 0
    np.testing.assert_array_equal(result["mask"], expected[None])
    np.testing.assert_array_equal(result["sensitivities"], coil["sensitivities"])
    out = capsys.readouterr().out
    assert "2 coils: sensitivities from the file" in out and "pixels 1.5 x 1.25 mm" in out
    assert "reference: the file's fully sampled coil-combined cine" in out
    # scored against A^H y of the full k-space with the file's maps, each divided by its peak as in training
    reference = sense_adjoint(torch.from_numpy(coil["kspace"]), torch.from_numpy(coil["sensitivities"]),
                              torch.ones(4, 16, 16)).numpy()
    np.testing.assert_allclose(result["scale"], np.abs(reference).max(), rtol=1e-5)
    assert result["psnr"][0] > result["psnr_zero_filled"][0] > 0
    np.savez(tmp_path / "under.npz", kspace=coil["kspace"], mask=expected)
    with pytest.raises(UserError, match="is undersampled .* drop --acceleration"):
        run_reconstruct(tmp_path, "--kspace", str(tmp_path / "under.npz"), "--acceleration", "2", name="b.npz")


def test_single_coil_kspace_by_input_and_by_kspace_is_the_same_reconstruction(tmp_path, one_thread):
    kspace = fft2c(make_coil_dataset(1, frames=4, size=16, seed=2)["reference"])
    mask = variable_density_mask((4, 16, 16), 3, 4, seed=1)
    np.savez(tmp_path / "k.npz", kspace=kspace, mask=mask)
    by_input = run_reconstruct(tmp_path, "--input", str(tmp_path / "k.npz"), name="a.npz")
    by_kspace = run_reconstruct(tmp_path, "--kspace", str(tmp_path / "k.npz"), name="b.npz")
    for key in ("recon", "zero_filled", "mask", "scale"):
        np.testing.assert_array_equal(by_input[key], by_kspace[key])
    assert "sensitivities" not in by_kspace
    error = np.abs(fft2c(by_kspace["recon"]) * mask - kspace * mask).max()
    assert error < 1e-5 * np.abs(kspace).max()  # single coil: hard data consistency


# ----------------------------------------------------------------------------- hostile files
def hostile(tmp_path, kind):
    """A small CMRxRecon-like .mat that must be refused."""
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "cine_sax.mat"
    with h5py.File(path, "w", userblock_size=512) as file:
        compound = [("real", "<f4"), ("imag", "<f4")]
        if kind == "huge":
            file.create_dataset("kspace_full", shape=(30, 20, 10, 512, 512), dtype=compound)  # nothing written
        elif kind == "missing":
            file["other"] = np.zeros((3, 4, 5))
        elif kind == "external link":
            file["kspace_full"] = h5py.ExternalLink(str(tmp_path / "secret.h5"), "/data")
        else:
            file.create_dataset("kspace_full", data=np.zeros((2, 1, 2, 4, 4), [("real", "<f4"), ("imag", "S4")]))
    return path


HOSTILE = {"huge": r"variable 'kspace_full' \(512, 512, 10, 20, 30\) of .* declares 11.7 GiB of data in a file of",
           "missing": r"none of the numeric arrays kspace_full, kspace_sub04, .* \(found: other \(5, 4, 3\)\)",
           "external link": r"variable 'kspace_full' is a link to another file \(.*secret.h5\)",
           "wrong field type": r"none of the numeric arrays kspace_full, .* \(found: none\)"}


@pytest.mark.parametrize("kind", HOSTILE)
def test_hostile_kspace_files_are_one_line_and_exit_2(tmp_path, capsys, kind):
    path = hostile(tmp_path, kind)
    with pytest.raises(SystemExit) as stopped, cli_errors([]):
        formats.main(["convert", str(path), "--kspace", "--out", str(tmp_path / "k.npz")])
    error = capsys.readouterr().err
    assert stopped.value.code == 2 and error.count("\n") == 1 and not (tmp_path / "k.npz").exists()
    assert error.startswith(f"error: {path}: ") and re.search(HOSTILE[kind], error), error
    with pytest.raises(DataError, match=HOSTILE[kind]):
        read_kspace(path)


def test_a_hostile_file_through_the_reconstruct_command_is_exit_2(tmp_path):
    hostile(tmp_path, "huge")
    result = run_tool("reconstruct.py", ["--kspace", "cine_sax.mat", "--out", "r.npz", "--device", "cpu"], tmp_path)
    assert result.returncode == 2 and not (tmp_path / "r.npz").exists()
    assert result.stderr.startswith("error: cine_sax.mat: variable 'kspace_full'") and result.stderr.count("\n") == 1


def test_an_mrd_file_without_its_dataset_group_is_one_line(tmp_path):
    h5py = pytest.importorskip("h5py")
    pytest.importorskip("ismrmrd")
    with h5py.File(tmp_path / "scan.h5", "w") as file:
        file["other"] = np.zeros(3)
    with pytest.raises(DataError, match="scan.h5: no group 'dataset': not an ISMRMRD/MRD raw-data file"):
        read_kspace(tmp_path / "scan.h5")
    with pytest.raises(UserError, match="an MRD file says itself which lines were acquired"):
        read_kspace(tmp_path / "scan.h5", mask="m.npy")


def test_adaptation_on_coil_kspace_passes_the_sensitivities(tmp_path, capsys, one_thread):
    coil = make_coil_dataset(1, frames=4, size=16, coils=2, seed=3)
    mask = variable_density_mask((4, 16, 16), 1.25, 4, seed=1)  # enough lines outside the centre to hold some out
    np.savez(tmp_path / "k.npz", kspace=coil["kspace"] * mask, mask=mask, sensitivities=coil["sensitivities"])
    result = run_reconstruct(tmp_path, "--kspace", str(tmp_path / "k.npz"), "--adapt", "1", "--adapt_crop", "0")
    assert result["adapt_steps"].tolist() == [1] and np.isfinite(result["recon"]).all()
    assert np.isfinite(result["adapt_error_before"]).all()
    maps, recon = torch.from_numpy(coil["sensitivities"]), torch.from_numpy(result["recon"] / result["scale"])
    y, where = torch.from_numpy(coil["kspace"] * mask / result["scale"]), torch.from_numpy(mask[None])
    residual = sense_adjoint(sense_forward(recon, maps, where) - y, maps, where)
    assert residual.abs().max() < 1e-2 * sense_adjoint(y, maps, where).abs().max()


def test_phantom_coil_kspace_file_is_reconstructed_and_scored(tmp_path, one_thread):
    from phantom import phantom_figure
    phantom_figure(str(tmp_path / "coils.npz"), count=1, frames=4, size=24, coils=3)
    with np.load(tmp_path / "coils.npz") as written:
        assert written["kspace"].shape == (1, 3, 4, 24, 24) and written["mask"].all()
        assert "sensitivities" not in written.files  # a scanner's file: the maps are estimated
    result = run_reconstruct(tmp_path, "--kspace", str(tmp_path / "coils.npz"), "--acceleration", "3")
    assert np.isfinite(result["recon"]).all() and result["psnr"][0] > result["psnr_zero_filled"][0]


def test_adaptation_with_no_line_to_hold_out_is_one_line(tmp_path, one_thread):
    coil = make_coil_dataset(1, frames=4, size=16, coils=2, seed=3)
    mask = variable_density_mask((4, 16, 16), 4, 4, seed=1)  # 4 lines a frame: all in the centre, none to hold out
    np.savez(tmp_path / "k.npz", kspace=coil["kspace"] * mask, mask=mask, sensitivities=coil["sensitivities"])
    with pytest.raises(UserError, match=r"--adapt=1: the mask leaves too few ky lines outside its fully sampled "
                                        r"centre to hold 15% of them out"):
        run_reconstruct(tmp_path, "--kspace", str(tmp_path / "k.npz"), "--adapt", "1", "--adapt_crop", "0")
    assert not (tmp_path / "recon.npz").exists()
