"""The learned L+S network (models.LSNet) and the pieces it shares with baselines.low_rank_plus_sparse."""
import numpy as np
import pytest
import torch

from baselines import low_rank_plus_sparse, singular_value_threshold
from helpers import fit
from models import LSNet, parameter_groups
from sampling import data_consistency, fft2c, gradient_dc, undersample, variable_density_mask


def problem(batch=2, frames=6, size=24, seed=0):
    """Random complex cines ``[B, T, H, W]`` with a low-rank background, undersampled 4x."""
    generator = torch.Generator().manual_seed(seed)
    background = torch.randn((batch, 1, size, size), generator=generator, dtype=torch.complex64)
    moving = 0.3 * torch.randn((batch, frames, size, size), generator=generator, dtype=torch.complex64)
    target = background + moving
    mask = torch.from_numpy(np.stack([variable_density_mask((frames, size, size), acceleration=4, center_lines=2,
                                                            seed=seed + i) for i in range(batch)]))
    aliased, kspace = undersample(target, mask)
    return aliased, kspace, mask, target


def randomise(net: LSNet) -> LSNet:
    """Move every learned number off its initial value, as training does."""
    torch.manual_seed(3)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return net


@pytest.mark.parametrize("start", ["view_sharing", "zero_filled"])
def test_untrained_lsnet_is_k_iterations_of_lplus_s(start):
    aliased, kspace, mask, _ = problem()
    net = LSNet(iterations=4, lambda_l=0.02, lambda_s=0.005, features=4, view_sharing=start == "view_sharing")
    with torch.no_grad():
        learned = net(aliased, kspace, mask)
    classical = low_rank_plus_sparse(kspace, mask, lambda_l=0.02, lambda_s=0.005, iterations=4, tol=0, start=start)
    assert (learned - classical).abs().max() <= 1e-5 * classical.abs().max()


def test_gradient_step_of_one_is_data_consistency():
    aliased, kspace, mask, target = problem()
    guess = target + 0.1
    torch.testing.assert_close(gradient_dc(guess, kspace, mask, 1.0), data_consistency(guess, kspace, mask),
                               atol=1e-5, rtol=0)


def test_gradient_step_moves_sampled_lines_by_its_size():
    _, kspace, mask, target = problem()
    guess = target * 0.5
    stepped = fft2c(gradient_dc(guess, kspace, mask, 0.25))
    expected = torch.where(mask.bool(), 0.75 * fft2c(guess) + 0.25 * kspace, fft2c(guess))
    torch.testing.assert_close(stepped, expected, atol=1e-5, rtol=0)


def test_svt_gradient_matches_finite_differences():
    generator = torch.Generator().manual_seed(0)
    matrix = torch.randn((2, 12, 5), generator=generator, dtype=torch.complex128, requires_grad=True)
    tau = torch.tensor([0.5, 1.5], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(singular_value_threshold, (matrix, tau))


def test_svt_gradient_is_finite_for_repeated_singular_values():
    matrix = torch.zeros((1, 10, 4), dtype=torch.complex64)
    matrix[0, :4] = torch.eye(4)  # four equal singular values
    matrix.requires_grad_(True)
    tau = torch.tensor([0.3], requires_grad=True)
    singular_value_threshold(matrix, tau).abs().sum().backward()
    assert torch.isfinite(torch.view_as_real(matrix.grad)).all() and torch.isfinite(tau.grad).all()


def test_lsnet_keeps_every_measured_sample():
    aliased, kspace, mask, _ = problem()
    net = randomise(LSNet(iterations=3, features=4))
    with torch.no_grad():
        out = net(aliased, kspace, mask)
    sampled = mask.bool()
    assert (fft2c(out)[sampled] - kspace[sampled]).abs().max() <= 1e-5 * kspace.abs().max()


def test_lsnet_is_scale_equivariant_and_agnostic_to_frames_and_size():
    net = randomise(LSNet(iterations=3, features=4)).eval()
    for frames, size in ((4, 16), (9, 40)):
        aliased, kspace, mask, _ = problem(frames=frames, size=size)
        with torch.no_grad():
            out, scaled = net(aliased, kspace, mask), net(7 * aliased, 7 * kspace, mask)
        assert out.shape == aliased.shape
        torch.testing.assert_close(scaled, 7 * out, atol=1e-4 * out.abs().max().item(), rtol=1e-4)


def test_lsnet_never_reads_unmeasured_kspace():
    aliased, kspace, mask, _ = problem()
    net = randomise(LSNet(iterations=2, features=4)).eval()
    polluted = torch.where(mask.bool(), kspace, 1e3)
    with torch.no_grad():
        torch.testing.assert_close(net(aliased, polluted, mask), net(aliased, kspace, mask))


def test_training_moves_thresholds_and_lowers_the_error():
    aliased, kspace, mask, target = problem(seed=1)
    net = LSNet(iterations=3)
    optimizer = torch.optim.Adam(parameter_groups(net, 1e-3, 1e-4))
    errors = fit(net, optimizer, aliased, kspace, mask, target, steps=15)
    assert errors[-1] < errors[0]
    assert not torch.allclose(net.log_lambda_s.detach(), torch.full((3,), np.log(0.003), dtype=torch.float32))


def test_physics_parameters_learn_faster_without_weight_decay():
    net = LSNet(iterations=2, features=4)
    weights, physics = parameter_groups(net, 1e-3, 1e-4)
    assert physics["weight_decay"] == 0 and physics["lr"] > weights["lr"]
    assert {id(p) for p in physics["params"]} == {id(p) for p in net.physics_parameters()}
    assert len(weights["params"]) + len(physics["params"]) == len(list(net.parameters()))


def test_cascades_with_an_lsnet_prior_start_as_lplus_s():
    from settings import train_defaults
    from models import CineReconNet, build_model
    config = {**train_defaults(), "arch": "dual_unet", "prior": "lsnet", "cascades": 2, "iterations": 3,
              "in_channels": 6, "out_channels": 6, "init_features": 4, "resnet_features": 4, "resnet_blocks": 1}
    net = build_model(config)
    assert isinstance(net, CineReconNet) and isinstance(net.prior, LSNet)
    aliased, kspace, mask, _ = problem(size=16)
    with torch.no_grad():
        out = net(aliased, kspace, mask)
    classical = low_rank_plus_sparse(kspace, mask, lambda_l=config["lambda_l"], lambda_s=config["lambda_s"],
                                     iterations=3, tol=0, start="view_sharing")
    assert (out - classical).abs().max() <= 1e-5 * classical.abs().max()
    groups = parameter_groups(net, 1e-3, 0.0)
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in net.prior.physics_parameters()}


# ----------------------------------------------------------------------------- trained checkpoints and reconstruct.py
@pytest.fixture(scope="module")
def lsnet_checkpoint(tmp_path_factory):
    """A 1-epoch lsnet run on 8-frame phantom cines of 64x64."""
    from helpers import run_tool
    cwd = tmp_path_factory.mktemp("lsnet")
    result = run_tool("train.py", ["ls8", "--arch=lsnet", "--iterations=2", "--num_samples=14", "--image_size=64",
                                   "--in_channels=8", "--out_channels=8", "--batch_size=2", "--num_epochs=1",
                                   "--center_lines=4", "--scale=full", "--device=cpu", "--amp=none",
                                   "--figures=false"], cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd / "output" / "ls8" / "best.pt"


@pytest.mark.parametrize("frames, size", [(12, 96), (20, 192)])
def test_lsnet_checkpoint_reconstructs_other_frame_counts_and_sizes(lsnet_checkpoint, tmp_path, frames, size):
    import reconstruct
    from phantom import make_phantom_dataset
    cine = make_phantom_dataset(1, frames=frames, size=size, seed=2)  # [1, T, H, W]
    mask = variable_density_mask((frames, size, size), acceleration=5, center_lines=6, seed=3)
    np.savez(tmp_path / "scan.npz", kspace=fft2c(cine) * mask, mask=mask)
    reconstruct.main(["--checkpoint", str(lsnet_checkpoint), "--input", str(tmp_path / "scan.npz"),
                      "--out", str(tmp_path / "recon.npz"), "--device", "cpu"])
    with np.load(tmp_path / "recon.npz") as written:
        recon = written["recon"]
    assert recon.shape == (1, frames, size, size)
    measured = fft2c(cine) * mask
    assert np.abs(fft2c(recon) * mask - measured).max() <= 1e-5 * np.abs(measured).max()
    zero_filled = np.fft.ifft2(np.fft.ifftshift(measured, axes=(-2, -1)), norm="ortho")
    assert np.abs(recon - cine).mean() < np.abs(np.abs(zero_filled) - np.abs(cine)).mean()


def test_training_that_only_hurts_keeps_the_untrained_network(tmp_path, monkeypatch):
    import train
    from helpers import train_defaults

    def harmful_epoch(model, *args, **kwargs):  # an epoch that makes validation worse
        with torch.no_grad():
            model.log_lambda_s.fill_(5.0)  # thresholds that remove every temporal frequency
        return 1.0

    monkeypatch.setattr(train, "train_epoch", harmful_epoch)
    _, given = train.parse_command_line(["hurt", "--arch=lsnet", "--iterations=2", "--num_samples=14",
                                         "--image_size=32", "--in_channels=6", "--out_channels=6", "--batch_size=2",
                                         "--num_epochs=2", "--center_lines=2", "--scale=full", "--device=cpu",
                                         "--amp=none", "--figures=false", f"--out_dir={tmp_path}"])
    train.train("hurt", given, **train_defaults())
    best = torch.load(tmp_path / "hurt" / "best.pt", weights_only=True)
    assert best["epoch"] == 0 and best["model"]["log_lambda_s"].eq(np.log(0.003)).all()
    assert "untrained network (epoch 0): validation PSNR" in (tmp_path / "hurt" / "output.txt").read_text()


# ----------------------------------------------------------------------------- scan-specific adaptation
@pytest.mark.parametrize("lr", [1e-4, 3.0])
def test_adaptation_never_raises_the_held_out_error(lr):
    from adapt import adapt
    _, kspace, mask, _ = problem(batch=1, frames=8, size=32, seed=4)
    net = LSNet(iterations=3, features=4)
    adapted, info = adapt(net, kspace, mask, steps=6, lr=lr, check_every=2, crop=16, log=lambda *a: None)
    assert info["held_out_error_after"] <= info["held_out_error_before"]
    assert info["columns"] == 32  # an LSNet couples every pixel: never adapted on a band of columns
    if info["kept_step"] == 0:  # nothing helped: the checkpoint's numbers come back unchanged
        for before, after in zip(net.parameters(), adapted.parameters()):
            assert torch.equal(before, after)
