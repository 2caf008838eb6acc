"""reconstruct.py on a tiny trained checkpoint: fully sampled and k-space input, other sizes and frames."""
import numpy as np
import pytest
import torch
from PIL import Image

import reconstruct
from cli import UserError
from data import mask_seed
from formats import crop_or_pad
from helpers import TINY, run_tool
from metrics import batch_psnr, batch_ssim
from models import CHECKPOINT_FORMAT, build_model
from phantom import make_phantom_dataset
from sampling import fft2c, ifft2c, variable_density_mask

UNITS = 7.0  # input intensities are not normalised: outputs must come back in these units


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A 1-epoch dual-UNet run with one hard-DC cascade: 6 frames, acceleration 5, 2 centre lines."""
    cwd = tmp_path_factory.mktemp("run")
    result = run_tool("train.py", ["tiny", *TINY, "--num_epochs=1", "--cascades=1", "--figures=false"], cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd / "output" / "tiny" / "best.pt"


def cines(n, frames=6, size=32, seed=1):
    return make_phantom_dataset(n, frames=frames, size=size, seed=seed) * UNITS


def recon(checkpoint, tmp_path, input_path, *extra, name="recon.npz"):
    """Run reconstruct.main in-process; returns the arrays of the .npz it wrote."""
    out = tmp_path / name
    reconstruct.main(["--checkpoint", str(checkpoint), "--input", str(input_path), "--out", str(out),
                      "--device", "cpu", "--batch_size", "2", *extra])
    with np.load(out) as written:
        return {key: written[key] for key in written.files}


def assert_keeps_measurements(result, kspace, mask):
    """Hard data consistency: the output's k-space equals the measurements on the mask."""
    error = np.abs(fft2c(result["recon"]) * mask - kspace * mask).max()
    assert error < 1e-5 * np.abs(kspace).max()


def test_fully_sampled_input_gets_the_evaluation_masks_and_metrics(checkpoint, tmp_path, capsys):
    x = cines(2)
    np.savez(tmp_path / "full.npz", dataset=x)
    result = recon(checkpoint, tmp_path, tmp_path / "full.npz", "--figures", str(tmp_path / "figs"))
    assert result["recon"].shape == (2, 6, 32, 32) and result["recon"].dtype == np.complex64
    np.testing.assert_allclose(result["magnitude"], np.abs(result["recon"]), rtol=1e-6)
    masks = np.stack([variable_density_mask((6, 32, 32), 5, 2, seed=mask_seed(0, i)) for i in range(2)])
    np.testing.assert_array_equal(result["mask"], masks)
    np.testing.assert_allclose(result["scale"], UNITS, rtol=1e-6)
    np.testing.assert_allclose(result["zero_filled"], ifft2c(fft2c(x) * masks), atol=1e-5 * UNITS)
    assert_keeps_measurements(result, fft2c(x), masks)
    reference = torch.from_numpy(x / UNITS)
    for key, score in (("psnr", batch_psnr), ("ssim", batch_ssim)):
        np.testing.assert_allclose(result[key], score(result["recon"] / UNITS, reference), rtol=1e-4)
        np.testing.assert_allclose(result[key + "_zero_filled"], score(result["zero_filled"] / UNITS, reference),
                                   rtol=1e-4)
    out = capsys.readouterr().out
    assert "mask_seed(0, i)" in out and "PSNR: mean = " in out and "zero-filled SSIM: mean = " in out
    for i in range(2):
        assert (tmp_path / "figs" / f"cine_{i:03d}.png").stat().st_size > 1000
        assert Image.open(tmp_path / "figs" / f"cine_{i:03d}.gif").n_frames == 6


def test_single_cine_with_a_given_mask(checkpoint, tmp_path):
    x = cines(1)
    mask = variable_density_mask((6, 32, 32), 3, 4, seed=9)
    np.save(tmp_path / "one.npy", x[0])  # [T, H, W]
    np.save(tmp_path / "mask.npy", mask)
    result = recon(checkpoint, tmp_path, tmp_path / "one.npy", "--mask", str(tmp_path / "mask.npy"))
    assert result["recon"].shape == (1, 6, 32, 32) and result["psnr"].shape == (1,)
    np.testing.assert_array_equal(result["mask"], mask[None])
    assert_keeps_measurements(result, fft2c(x), mask)


def test_other_image_size_is_padded_for_the_network_and_cropped_back(checkpoint, tmp_path, capsys):
    x = cines(2, size=40)
    np.save(tmp_path / "full40.npy", x)
    result = recon(checkpoint, tmp_path, tmp_path / "full40.npy")
    assert "zero-padded (centred) from 40x40 to 48x48" in capsys.readouterr().out
    assert result["recon"].shape == (2, 6, 40, 40) and result["mask"].shape == (2, 6, 48, 48)
    padded = crop_or_pad(x, (48, 48))
    np.testing.assert_allclose(result["zero_filled"], crop_or_pad(ifft2c(fft2c(padded) * result["mask"]), (40, 40)),
                               atol=1e-5 * UNITS)
    np.save(tmp_path / "mask40.npy", np.ones((6, 40, 40), np.float32))
    with pytest.raises(UserError, match=r"expected \[T, H, W\] = \(6, 48, 48\).*zero-padded from 40x40"):
        recon(checkpoint, tmp_path, tmp_path / "full40.npy", "--mask", str(tmp_path / "mask40.npy"), name="b.npz")


def test_measured_kspace_keeps_its_measurements_on_a_padded_grid(checkpoint, tmp_path, capsys):
    x = cines(2, size=40)
    mask = variable_density_mask((6, 40, 40), 4, 4, seed=3)
    kspace = fft2c(x)  # fully sampled: the entries off the mask must be ignored
    np.savez(tmp_path / "kspace.npz", kspace=kspace, mask=mask)
    result = recon(checkpoint, tmp_path, tmp_path / "kspace.npz", "--figures", str(tmp_path / "figs"))
    out = capsys.readouterr().out
    assert "k-space zero-padded (centred, unmeasured) from 40x40 to 48x48" in out and "no PSNR/SSIM" in out
    assert result["recon"].shape == (2, 6, 40, 40) and "psnr" not in result
    np.testing.assert_array_equal(result["mask"], np.broadcast_to(mask, (2, 6, 40, 40)))
    np.testing.assert_allclose(result["zero_filled"], ifft2c(kspace * mask), atol=1e-5 * np.abs(x).max())
    assert_keeps_measurements(result, kspace, mask)
    assert np.abs(result["recon"] - result["zero_filled"]).max() > 1e-3  # the network did change the image
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["cine_000.gif", "cine_000.png", "cine_001.gif",
                                                                    "cine_001.png"]
    assert Image.open(tmp_path / "figs" / "cine_000.gif").n_frames == 6


def test_kspace_without_a_mask_and_existing_output_are_refused(checkpoint, tmp_path):
    np.savez(tmp_path / "kspace.npz", kspace=fft2c(cines(1)))
    with pytest.raises(UserError, match="holds 'kspace' but no 'mask'"):
        recon(checkpoint, tmp_path, tmp_path / "kspace.npz")
    (tmp_path / "recon.npz").write_bytes(b"keep")
    with pytest.raises(UserError, match="recon.npz: already exists"):
        recon(checkpoint, tmp_path, tmp_path / "kspace.npz")
    assert (tmp_path / "recon.npz").read_bytes() == b"keep"


def test_wrong_frame_count_is_one_line_and_exit_2(checkpoint, tmp_path):
    np.save(tmp_path / "five.npy", cines(1, frames=5))
    result = run_tool("reconstruct.py", ["--checkpoint", str(checkpoint), "--input", "five.npy", "--out", "r.npz"],
                      tmp_path)
    assert result.returncode == 2 and not (tmp_path / "r.npz").exists()
    assert result.stderr.strip() == ("error: five.npy: 5 frames, but the checkpoint's dual UNet reconstructs exactly "
                                     "6 (in_channels); resample first: python formats.py convert five.npy --frames 6 "
                                     "--out NEW.npz")


def test_dccnn_takes_any_frame_count_and_size(checkpoint, tmp_path, capsys):
    config = {**torch.load(checkpoint, weights_only=True)["config"], "arch": "dccnn"}
    torch.save({"format": CHECKPOINT_FORMAT, "config": config, "model": build_model(config).state_dict()},
               tmp_path / "dccnn.pt")
    np.save(tmp_path / "odd.npy", cines(1, frames=5, size=20))
    result = recon(tmp_path / "dccnn.pt", tmp_path, tmp_path / "odd.npy")
    assert result["recon"].shape == result["mask"].shape == (1, 5, 20, 20)
    assert "zero-padded" not in capsys.readouterr().out
