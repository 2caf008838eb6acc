"""reconstruct.py on a tiny trained checkpoint: fully sampled and k-space input, other sizes and frames."""
import numpy as np
import pytest
import torch
from PIL import Image

import reconstruct
from checkpoint import CHECKPOINT_FORMAT, load_trained_model
from cli import UserError
from data import mask_seed
from formats import crop_or_pad
from helpers import TINY, run_tool, train_defaults
from metrics import batch_psnr, batch_ssim
from models import build_model
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


@pytest.mark.parametrize("frames", [4, 9])
def test_the_6_frame_dual_unet_reconstructs_other_frame_counts_through_its_windows(checkpoint, tmp_path, frames):
    x = cines(1, frames=frames)
    np.save(tmp_path / "cine.npy", x)
    result = recon(checkpoint, tmp_path, tmp_path / "cine.npy")
    assert result["recon"].shape == (1, frames, 32, 32)
    assert_keeps_measurements(result, fft2c(x), result["mask"])
    model, _ = load_trained_model(checkpoint)
    aliased = torch.from_numpy(result["zero_filled"] / UNITS)  # the normalised zero-filled cine
    mask = torch.from_numpy(result["mask"])
    with torch.no_grad():
        expected = model(aliased, fft2c(aliased) * mask, mask).numpy() * UNITS  # the network, run here
    np.testing.assert_allclose(result["recon"], expected, atol=1e-4 * UNITS)
    assert np.abs(result["recon"] - result["zero_filled"]).max() > 1e-2 * UNITS, "the network changed the cine"


def test_dccnn_takes_any_frame_count_and_size(checkpoint, tmp_path, capsys):
    config = {**torch.load(checkpoint, weights_only=True)["config"], "arch": "dccnn"}
    torch.save({"format": CHECKPOINT_FORMAT, "config": config, "model": build_model(config).state_dict()},
               tmp_path / "dccnn.pt")
    np.save(tmp_path / "odd.npy", cines(1, frames=5, size=20))
    result = recon(tmp_path / "dccnn.pt", tmp_path, tmp_path / "odd.npy")
    assert result["recon"].shape == result["mask"].shape == (1, 5, 20, 20)
    assert "zero-padded" not in capsys.readouterr().out


# ----------------------------------------------------------------------------- frame-count-agnostic network, adaptation
ADAPT = ["--adapt", "4", "--adapt_lr", "1e-2", "--adapt_crop", "16"]


def cine_unet_checkpoint(path, **values):
    """An untrained cine_unet checkpoint (8 frames, 2 pooling levels: sizes multiples of 4, 2 hard-DC
    cascades) whose weights are perturbed as after training (its output heads are no longer zero)."""
    config = train_defaults(arch="cine_unet", prior=None, in_channels=8, out_channels=8, init_features=4, levels=2,
                            resnet_features=4, resnet_blocks=1, cascades=2, dropout=0.0, view_sharing=True,
                            center_lines=2, amp="none", **values)
    torch.manual_seed(0)
    model = build_model(config)
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Conv3d)):
            torch.nn.init.normal_(module.weight, std=0.05)
    torch.save({"format": CHECKPOINT_FORMAT, "config": config, "model": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def cine_unet(tmp_path_factory):
    return cine_unet_checkpoint(tmp_path_factory.mktemp("cine_unet") / "cine_unet.pt")


@pytest.mark.parametrize("frames", [12, 20])
def test_cine_unet_trained_on_8_frames_reconstructs_other_frame_counts(cine_unet, tmp_path, capsys, frames):
    x = cines(1, frames=frames, size=34)
    np.save(tmp_path / "cine.npy", x)
    result = recon(cine_unet, tmp_path, tmp_path / "cine.npy")
    assert "zero-padded (centred) from 34x34 to 36x36 for the network (multiples of 4)" in capsys.readouterr().out
    assert result["recon"].shape == (1, frames, 34, 34) and result["mask"].shape == (1, frames, 36, 36)
    assert np.isfinite(result["recon"]).all() and result["psnr"][0] > result["psnr_zero_filled"][0] - 3


@pytest.mark.parametrize("dc", ["hard", "soft"])
def test_adapt_keeps_every_measured_sample_and_records_the_adaptation(tmp_path, capsys, dc):
    checkpoint = cine_unet_checkpoint(tmp_path / f"{dc}.pt", dc=dc)
    x = cines(1, frames=8)
    np.save(tmp_path / "cine.npy", x)
    result = recon(checkpoint, tmp_path, tmp_path / "cine.npy", *ADAPT)
    assert_keeps_measurements(result, fft2c(x), result["mask"])
    assert result["adapt_steps"].tolist() == [4] and result["adapt_columns"].tolist() == [16]
    assert 0 <= result["adapt_kept_step"][0] <= 4 and result["adapt_seconds"][0] > 0
    assert result["adapt_error_after"][0] <= result["adapt_error_before"][0]
    plain = recon(checkpoint, tmp_path, tmp_path / "cine.npy", name="plain.npz")
    np.testing.assert_allclose(result["psnr_before_adapt"], plain["psnr"], rtol=1e-6)
    out = capsys.readouterr().out
    assert "before adaptation PSNR: mean = " in out and "held-out k-space error" in out and "kept step" in out
    assert ("hard data consistency added after the network" in out) == (dc == "soft")


def test_adaptation_is_reproducible(cine_unet, tmp_path):
    np.save(tmp_path / "cine.npy", cines(1, frames=8))
    first = recon(cine_unet, tmp_path, tmp_path / "cine.npy", *ADAPT, name="first.npz")
    again = recon(cine_unet, tmp_path, tmp_path / "cine.npy", *ADAPT, name="again.npz")
    plain = recon(cine_unet, tmp_path, tmp_path / "cine.npy", name="plain.npz")
    assert first["adapt_kept_step"][0] > 0  # the adapted weights were kept: the test compares adapted results
    np.testing.assert_array_equal(first["recon"], again["recon"])
    assert np.abs(first["recon"] - plain["recon"]).max() > 1e-6


def test_adapted_kspace_reconstruction_never_reads_unmeasured_kspace(cine_unet, tmp_path):
    """Measured k-space on a grid padded in both directions (34 -> 36): entries off the mask are
    polluted, the result is bit-identical and keeps every measured sample."""
    x = cines(1, frames=8, size=34)
    mask = variable_density_mask((8, 34, 34), 5, 2, seed=3)
    kspace = fft2c(x) * mask
    polluted = kspace + (1 - mask) * np.random.default_rng(0).standard_normal(kspace.shape) * np.abs(kspace).max()
    np.savez(tmp_path / "clean.npz", kspace=kspace, mask=mask)
    np.savez(tmp_path / "polluted.npz", kspace=polluted.astype(np.complex64), mask=mask)
    clean = recon(cine_unet, tmp_path, tmp_path / "clean.npz", *ADAPT, name="clean_out.npz")
    dirty = recon(cine_unet, tmp_path, tmp_path / "polluted.npz", *ADAPT, name="dirty_out.npz")
    np.testing.assert_array_equal(clean["recon"], dirty["recon"])
    assert_keeps_measurements(clean, kspace, mask)


@pytest.mark.parametrize("extra, message", [
    (["--adapt_crop", "10"], "--adapt_crop=10: give 0 .* or a multiple of 4"),
    (["--adapt_lr", "0"], "--adapt_lr=0.0: must be a finite number > 0"),
    (["--adapt_lr", "inf"], "--adapt_lr=inf: must be a finite number > 0"),
    (["--mask", "checker.npy"], "Cartesian mask of whole ky lines"),
])
def test_bad_adaptation_options_are_refused(cine_unet, tmp_path, extra, message):
    np.save(tmp_path / "cine.npy", cines(1, frames=8))
    np.save(tmp_path / "checker.npy", (np.indices((8, 32, 32)).sum(0) % 2).astype(np.float32))
    with pytest.raises(UserError, match=message):
        recon(cine_unet, tmp_path, tmp_path / "cine.npy", "--adapt", "2",
              *[str(tmp_path / word) if word.endswith(".npy") else word for word in extra])
    assert not (tmp_path / "recon.npz").exists()


def test_reconstruct_without_a_checkpoint_uses_the_shipped_learned_admm(tmp_path, capsys):
    """The default checkpoint (chosen on phantom validation cines and PINCAT, docs/lsnet.md) is the learned
    ADMM with four priors; it takes any frame count and size and keeps every measured sample."""
    shipped = torch.load(reconstruct.SHIPPED_CHECKPOINT, weights_only=True)
    assert shipped["config"]["arch"] == "admmnet"
    assert all(shipped["config"][key] > 0 for key in ("lambda_t", "lambda_w", "lambda_f", "lambda_r"))
    cine = make_phantom_dataset(1, frames=9, size=40, seed=6)  # [1, T, H, W]
    mask = variable_density_mask((9, 40, 40), acceleration=4, center_lines=4, seed=7)
    kspace = fft2c(cine) * mask
    np.savez(tmp_path / "scan.npz", kspace=kspace, mask=mask)
    reconstruct.main(["--input", str(tmp_path / "scan.npz"), "--out", str(tmp_path / "recon.npz"), "--device", "cpu"])
    assert f"checkpoint {reconstruct.SHIPPED_CHECKPOINT}: learned ADMM" in capsys.readouterr().out
    with np.load(tmp_path / "recon.npz") as written:
        assert written["recon"].shape == (1, 9, 40, 40)
        assert_keeps_measurements({"recon": written["recon"]}, kspace, mask)  # in the input's units
