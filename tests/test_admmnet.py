"""The learned temporal TV + wavelet network (models.ADMMNet) against the classical solver it unrolls
(baselines.tv_wavelet), one coil and coils."""
import numpy as np
import pytest
import torch

from baselines import tv_wavelet
from cli import UserError
from helpers import fit
from models import ADMMNet, acts_locally, build_model, parameter_groups
from phantom import make_coil_dataset
from sampling import fft2c, sense_adjoint, undersample, variable_density_mask

pytestmark = pytest.mark.usefixtures("one_thread")
ALL = {"tv_t": 0.01, "wavelet": 0.003, "nuclear": 0.02, "fourier_t": 0.003}


def problem(batch=2, frames=6, size=24, seed=0):
    """Random complex cines ``[B, T, H, W]`` with a static background, undersampled 4x."""
    generator = torch.Generator().manual_seed(seed)
    background = torch.randn((batch, 1, size, size), generator=generator, dtype=torch.complex64)
    target = background + 0.3 * torch.randn((batch, frames, size, size), generator=generator, dtype=torch.complex64)
    mask = torch.from_numpy(np.stack([variable_density_mask((frames, size, size), acceleration=4, center_lines=2,
                                                            seed=seed + i) for i in range(batch)]))
    aliased, kspace = undersample(target, mask)
    return aliased, kspace, mask, target


def classical(kspace, mask, weights, iterations, **options):
    keys = {"tv_t": "lambda_t", "wavelet": "lambda_w", "nuclear": "lambda_r", "fourier_t": "lambda_f"}
    return tv_wavelet(kspace, mask, **{keys[name]: weights.get(name, 0.0) for name in keys}, iterations=iterations,
                      tol=0, start="view_sharing", **options)


def randomise(net):
    torch.manual_seed(3)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    return net


@pytest.mark.parametrize("weights", [{"tv_t": 0.003, "wavelet": 0.00075}, ALL])
def test_untrained_admmnet_is_k_iterations_of_tv_wavelet(weights):
    aliased, kspace, mask, _ = problem()
    with torch.no_grad():
        learned = ADMMNet(iterations=3, weights=weights)(aliased, kspace, mask)
    expected = classical(kspace, mask, weights, 3)
    assert (learned - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_untrained_admmnet_with_coils_is_k_iterations_of_tv_wavelet_with_coils():
    data = make_coil_dataset(1, frames=6, size=24, seed=2, coils=4)
    mask = torch.from_numpy(variable_density_mask((6, 24, 24), 4, 4, seed=5))[None]
    kspace = torch.from_numpy(data["kspace"]) * mask[:, None]  # [1, C, T, H, W]
    maps = torch.from_numpy(data["sensitivities"])  # [1, C, H, W]
    aliased = sense_adjoint(kspace, maps, mask)
    with torch.no_grad():
        learned = ADMMNet(iterations=3, weights=ALL)(aliased, kspace, mask, sensitivities=maps)
    expected = classical(kspace, mask, ALL, 3, sensitivities=maps)
    assert (learned - expected).abs().max() <= 1e-5 * expected.abs().max()
    net = randomise(ADMMNet(iterations=2, weights=ALL)).eval()  # trained or not: one unit coil is the single coil
    aliased, single, mask, _ = problem(batch=1, seed=7)
    ones = torch.ones(1, 1, 24, 24, dtype=torch.complex64)
    with torch.no_grad():
        torch.testing.assert_close(net(aliased, single[:, None], mask, sensitivities=ones),
                                   net(aliased, single, mask), atol=1e-5 * float(aliased.abs().max()), rtol=0)


def test_trained_admmnet_keeps_the_data_is_scale_equivariant_and_takes_any_frames_and_size():
    net = randomise(ADMMNet(iterations=2, weights=ALL)).eval()
    for frames, size in ((4, 16), (7, 21)):
        aliased, kspace, mask, _ = problem(frames=frames, size=size)
        with torch.no_grad():
            out, scaled = net(aliased, kspace, mask), net(5 * aliased, 5 * kspace, mask)
        assert out.shape == aliased.shape
        torch.testing.assert_close(scaled, 5 * out, atol=1e-4 * float(out.abs().max()), rtol=1e-4)
        sampled = mask.bool()
        assert (fft2c(out)[sampled] - kspace[sampled]).abs().max() <= 1e-5 * kspace.abs().max()


def test_training_moves_the_weights_and_lowers_the_error():
    aliased, kspace, mask, target = problem(seed=1, size=16)
    net = ADMMNet(iterations=3)
    optimizer = torch.optim.Adam(parameter_groups(net, 1e-3, 1e-4))
    assert {id(p) for p in optimizer.param_groups[1]["params"]} == {id(p) for p in net.parameters()}
    errors = fit(net, optimizer, aliased, kspace, mask, target, steps=6)
    assert errors[-1] < errors[0]
    assert not torch.allclose(net.log_weights["tv_t"].detach(), torch.full((3,), np.log(0.003)))
    assert not acts_locally(net)


def test_admmnet_as_the_cascades_prior_and_its_settings():
    from checkpoint import CHECKPOINT_FORMAT, validate_checkpoint
    from settings import train_defaults, validate_network
    config = {**train_defaults(), "arch": "dual_unet", "prior": "admmnet", "cascades": 1, "iterations": 2,
              "in_channels": 6, "out_channels": 6, "init_features": 4, "resnet_features": 4, "resnet_blocks": 1}
    net = build_model(config)
    assert isinstance(net.prior, ADMMNet) and net.prior.names == ("tv_t", "wavelet")
    aliased, kspace, mask, _ = problem(size=16)
    with torch.no_grad():
        out = net(aliased, kspace, mask)
    expected = classical(kspace, mask, {"tv_t": config["lambda_t"], "wavelet": config["lambda_w"]}, 2)
    # float32 rounding of the learned exp(log w) and exp(log rho), amplified by the image update, whose condition
    # number is about 700 with the small rho_w = 0.0015 of the default wavelet weight
    assert (out - expected).abs().max() <= 1e-4 * expected.abs().max()
    alone = {**config, "arch": "admmnet", "lambda_r": 0.01}
    validate_checkpoint({"format": CHECKPOINT_FORMAT, "config": alone, "model": build_model(alone).state_dict()},
                        "admm.pt")
    with pytest.raises(UserError, match="weights do not fit"):
        validate_checkpoint({"format": CHECKPOINT_FORMAT, "config": alone, "model": net.state_dict()}, "admm.pt")
    with pytest.raises(UserError, match="at least one of"):
        validate_network({**alone, "lambda_t": 0.0, "lambda_w": 0.0, "lambda_r": 0.0})
    with pytest.raises(UserError, match="--lambda_w"):
        validate_network({**alone, "lambda_w": -0.1})
