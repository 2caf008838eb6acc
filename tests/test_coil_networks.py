"""The networks with coils (``sensitivities=``): cascades with SENSE data consistency and the learned L+S
with the SENSE gradient step. Tiny shapes (4 frames, 24x24, 4 coils): a few seconds."""
import numpy as np
import pytest
import torch

from baselines import low_rank_plus_sparse
from models import LSNet, build_model
from phantom import make_coil_dataset
from sampling import gradient_dc, sense_adjoint, sense_forward, variable_density_mask
from settings import train_defaults

FRAMES, SIZE, COILS = 4, 24, 4


@pytest.fixture(scope="module")
def coil_problem():
    """Two 4-coil phantom cines at 4x: coil k-space [2, 4, 4, 24, 24] (zero off the mask), masks
    [2, 4, 24, 24], maps [2, 4, 24, 24] and the coil-combined zero-filled cines A^H y [2, 4, 24, 24]."""
    d = make_coil_dataset(2, frames=FRAMES, size=SIZE, seed=5, coils=COILS)
    mask = torch.from_numpy(np.stack([variable_density_mask((FRAMES, SIZE, SIZE), 4, 2, seed=s) for s in (1, 2)]))
    kspace = torch.from_numpy(d["kspace"]) * mask[:, None]
    sensitivities = torch.from_numpy(d["sensitivities"])
    return kspace, mask, sensitivities, sense_adjoint(kspace, sensitivities, mask)


def tiny_config(**values):
    """A checkpoint's run config, as train.py saves it, for a tiny frame-agnostic cascade."""
    return {**train_defaults(), "arch": "cine_unet", "prior": None, "cascades": 2, "in_channels": FRAMES,
            "out_channels": FRAMES, "init_features": 4, "resnet_features": 4, "resnet_blocks": 1, "iterations": 2,
            **values}


def randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Move every weight (zero-initialised heads included) and learned number off its start, as training does."""
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model.eval()


def data_error(image, kspace, sensitivities, mask) -> torch.Tensor:
    """``||A x - y|| / ||y||`` per cine ``[B]``."""
    return (sense_forward(image, sensitivities, mask) - kspace).flatten(1).norm(dim=1) / kspace.flatten(1).norm(dim=1)


@pytest.mark.parametrize("values", [dict(dc="hard"), dict(dc="soft", view_sharing=False),
                                    dict(prior="lsnet")], ids=["hard", "soft", "lsnet_prior"])
def test_checkpoint_network_reconstructs_coil_kspace_and_fits_the_data(coil_problem, values):
    kspace, mask, sensitivities, aliased = coil_problem
    net = randomise(build_model(tiny_config(**values)))
    with torch.no_grad():
        out = net(aliased, kspace, mask, sensitivities=sensitivities)
    assert out.shape == (2, FRAMES, SIZE, SIZE) and out.dtype == torch.complex64
    assert (data_error(out, kspace, sensitivities, mask) < data_error(aliased, kspace, sensitivities, mask)).all()


NETWORKS = {"hard": lambda: build_model(tiny_config(dc="hard")),
            "soft": lambda: build_model(tiny_config(dc="soft", view_sharing=False)),
            "lsnet": lambda: LSNet(iterations=2, features=4),
            "lsnet_prior": lambda: build_model(tiny_config(prior="lsnet"))}


@pytest.mark.parametrize("name", NETWORKS)
def test_one_unit_coil_is_the_single_coil_network(coil_problem, name):
    kspace, mask, _, _ = coil_problem
    single = kspace[:, 0]  # [B, T, H, W]: coil 0's k-space as a single-coil scan
    aliased = sense_adjoint(single[:, None], torch.ones(2, 1, SIZE, SIZE, dtype=torch.complex64), mask)
    net = randomise(NETWORKS[name]())
    with torch.no_grad():
        expected = net(aliased, single, mask)
        out = net(aliased, single[:, None], mask, sensitivities=torch.ones(2, 1, SIZE, SIZE, dtype=torch.complex64))
    assert (out - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_untrained_lsnet_with_coils_is_k_iterations_of_lplus_s_then_a_sense_step(coil_problem):
    # The classical iteration's last step is the SENSE gradient step (step 1); the network's final step
    # is one more such step (the hard DC of one unit coil), never an exact fit that amplifies noise.
    kspace, mask, sensitivities, aliased = coil_problem
    net = LSNet(iterations=3, lambda_l=0.02, lambda_s=0.005, features=4)
    with torch.no_grad():
        learned = net(aliased, kspace, mask, sensitivities=sensitivities)
    classical = low_rank_plus_sparse(kspace, mask, lambda_l=0.02, lambda_s=0.005, iterations=3, tol=0,
                                     start="view_sharing", sensitivities=sensitivities)
    expected = gradient_dc(classical, kspace, mask, 1.0, sensitivities=sensitivities)
    assert (learned - expected).abs().max() <= 1e-5 * expected.abs().max()
    assert (learned - classical).abs().max() > 1e-4 * expected.abs().max(), "the final SENSE step must act"
    assert (data_error(learned, kspace, sensitivities, mask) < data_error(classical, kspace, sensitivities, mask)).all()


def test_coil_networks_learn_through_the_conjugate_gradients(coil_problem):
    kspace, mask, sensitivities, aliased = coil_problem
    net = build_model(tiny_config(dc="soft", prior="lsnet", checkpointing=True)).train()
    net(aliased, kspace, mask, sensitivities=sensitivities).abs().sum().backward()
    for parameter in (net.dcs[0].raw_lambda, net.prior.raw_step, net.prior.log_lambda_s):
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all() and parameter.grad.abs().sum() > 0


def adapt_quietly(model, kspace, mask, **options):
    from adapt import adapt
    return adapt(model, kspace, mask, steps=4, lr=1e-3, crop=16, check_every=2, seed=0, log=lambda *a: None, **options)


def test_adaptation_on_coil_kspace_is_the_single_coil_one_for_one_unit_coil(coil_problem):
    kspace, mask, _, _ = coil_problem
    single = kspace[:1, 0]  # [1, T, H, W]
    model = randomise(build_model(tiny_config(levels=2)))
    _, expected = adapt_quietly(model, single, mask[:1])
    _, info = adapt_quietly(model, single[:, None], mask[:1], sensitivities=torch.ones(1, 1, SIZE, SIZE,
                                                                                        dtype=torch.complex64))
    assert info["columns"] == expected["columns"] == 16 and info["steps"] == expected["steps"]
    for key in ("held_out_error_before", "held_out_error_after"):
        assert info[key] == pytest.approx(expected[key], rel=1e-4)


def test_adaptation_on_coil_kspace_keeps_its_data_fit(coil_problem):
    kspace, mask, sensitivities, aliased = coil_problem
    model, info = adapt_quietly(randomise(build_model(tiny_config(levels=2))), kspace, mask,
                                sensitivities=sensitivities)
    assert info["held_out_error_after"] <= info["held_out_error_before"]
    with torch.no_grad():
        out = model(aliased, kspace, mask, sensitivities=sensitivities)
    assert (data_error(out, kspace, sensitivities, mask) < data_error(aliased, kspace, sensitivities, mask)).all()
