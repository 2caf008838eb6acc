"""Temporal TV + wavelet CS (baselines.tv_wavelet): its transforms, proximal steps and ADMM iteration,
tested from first principles (adjoints, closed forms, PyWavelets, convergence)."""
import numpy as np
import pytest
import pywt
import torch

import baselines
from baselines import (admm_iteration, image_update, objective, penalties, shrink_isotropic, soft_threshold,
                       spatial_gradient, spatial_gradient_adjoint, spatial_gram, temporal_difference,
                       temporal_difference_adjoint, temporal_gram, tv_wavelet, wavelet_adjoint, wavelet_forward)
from helpers import tiny_problem
from metrics import psnr
from sampling import fft2c

pytestmark = pytest.mark.usefixtures("one_thread")


def random_complex(*shape, seed=0, dtype=torch.complex128):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=dtype)


def inner(a, b):
    return (a.conj() * b).sum()


@pytest.fixture(scope="module")
def tiny():
    """Two phantom cines [2, 6, 24, 24], their own 4x masks, k-space."""
    return tiny_problem(24, 4)


# ----------------------------------------------------------------------------- transforms
@pytest.mark.parametrize("circular", [True, False])
def test_temporal_differences_their_adjoint_and_gram(circular):
    x, z = random_complex(2, 5, 3, 4, seed=1), random_complex(2, 5, 3, 4, seed=2)
    d = temporal_difference(x, circular)
    torch.testing.assert_close(d[:, 1], x[:, 2] - x[:, 1])
    torch.testing.assert_close(d[:, 4], x[:, 0] - x[:, 4] if circular else torch.zeros_like(x[:, 4]))
    torch.testing.assert_close(inner(d, z), inner(x, temporal_difference_adjoint(z, circular)))
    gram = temporal_gram(5, circular, like=x)  # [T, T] real
    expected = temporal_difference_adjoint(temporal_difference(x, circular), circular)
    torch.testing.assert_close(torch.einsum("st,bthw->bshw", gram.to(x.dtype), x), expected)


def test_spatial_gradient_adjoint_and_its_fourier_diagonal():
    x, g = random_complex(1, 2, 6, 5, seed=3), random_complex(1, 2, 2, 6, 5, seed=4)
    torch.testing.assert_close(inner(spatial_gradient(x), g), inner(x, spatial_gradient_adjoint(g)))
    normal = spatial_gradient_adjoint(spatial_gradient(x))
    diagonal = torch.fft.ifft2(spatial_gram(6, 5, like=x) * torch.fft.fft2(x))  # circular Laplacian eigenvalues
    torch.testing.assert_close(normal, diagonal)


@pytest.mark.parametrize("name", ["haar", "db2", "db4"])
def test_wavelet_is_pywavelets_periodized_transform(name):
    frame = random_complex(32, 40, seed=5)
    coefficients = wavelet_forward(frame[None], levels=2, name=name)[0]
    parts = [pywt.coeffs_to_array(pywt.wavedec2(part.numpy(), name, mode="periodization", level=2))[0]
             for part in (frame.real, frame.imag)]
    np.testing.assert_allclose(coefficients.numpy(), parts[0] + 1j * parts[1], atol=1e-12)


@pytest.mark.parametrize("shape", [(16, 24), (13, 21)])
def test_wavelet_reconstructs_perfectly_and_its_adjoint_is_its_inverse(shape):
    x = random_complex(2, 3, *shape, seed=6)
    c = wavelet_forward(x)  # zero-padded to multiples of 8
    assert c.shape[-2:] == baselines.wavelet_shape(*shape)
    torch.testing.assert_close(wavelet_adjoint(c, shape), x)  # Psi^H Psi = I
    torch.testing.assert_close(c.norm(), x.norm())  # an isometry
    other = random_complex(*c.shape, seed=7)
    torch.testing.assert_close(inner(c, other), inner(x, wavelet_adjoint(other, shape)))


def test_shifted_wavelets_are_a_tight_frame():
    x = random_complex(1, 2, 13, 16, seed=8)
    offsets = [(0, 0), (0, 1), (1, 0), (1, 1)]
    c = baselines.shifted_wavelets(x, offsets)  # [1, 4, 2, 16, 16]
    torch.testing.assert_close(baselines.shifted_wavelets_adjoint(c, (13, 16), offsets), x)  # K^H K = I
    other = random_complex(*c.shape, seed=9)
    torch.testing.assert_close(inner(c, other), inner(x, baselines.shifted_wavelets_adjoint(other, (13, 16), offsets)))
    torch.testing.assert_close(c[:, 1] * 2, wavelet_forward(torch.roll(x, 1, dims=-1)))


# ----------------------------------------------------------------------------- proximal steps
def test_soft_threshold_and_isotropic_shrinkage_closed_forms():
    z = torch.tensor([3 + 4j, -0.6j, 0j], dtype=torch.complex128)
    torch.testing.assert_close(soft_threshold(z, 2.0), torch.tensor([(3 + 4j) * 3 / 5, 0, 0], dtype=torch.complex128))
    pair = torch.tensor([3, 4j], dtype=torch.complex128).reshape(2, 1, 1, 1)  # one pixel's (row, column) gradient
    torch.testing.assert_close(shrink_isotropic(pair, 1.0), pair * 4 / 5)
    torch.testing.assert_close(shrink_isotropic(pair, 6.0), torch.zeros_like(pair))


def run_admm(kspace, sampled, maps, weights, iterations, x=None, **options):
    """``iterations`` ADMM iterations of the tv_wavelet problem (shifted domain, no final data consistency)."""
    x0 = torch.fft.ifft2(kspace, norm="ortho") if maps is None else baselines.sense_adjoint(kspace, maps, sampled,
                                                                                           centered=False)
    terms = baselines.chosen_penalties(x0.shape[-2:], weights, **options)
    thresholds = baselines.penalty_thresholds(baselines.penalty_scales(x0, terms), weights)
    rhos = baselines.admm_rhos(weights, baselines.RHO)
    update = image_update(kspace, sampled, maps, terms, rhos, baselines.CG_STEPS, like=x0)
    x = x0 if x is None else x
    splits = {name: term.forward(x) for name, term in terms.items()}
    duals = {name: torch.zeros_like(v) for name, v in splits.items()}
    for _ in range(iterations):
        x, splits, duals = admm_iteration(x, splits, duals, update, terms, thresholds, rhos)
    return x, objective(x, kspace, sampled, maps, terms, thresholds)


@pytest.mark.parametrize("circular", [True, False])
def test_temporal_tv_of_a_fully_sampled_step_is_its_closed_form_prox(circular):
    """Fully sampled single coil, ``A`` unitary: the problem is the TV prox of the cine; for a step
    (frames 0-2 at 1, 3-7 at 3) the plateaus move together by ``k t / n`` (k = 2 jumps when circular)."""
    step = torch.tensor([1.0] * 3 + [3.0] * 5, dtype=torch.complex128)[:, None, None].expand(8, 2, 2)[None]
    kspace = torch.fft.fft2(step, norm="ortho")
    x, _ = run_admm(kspace, torch.ones(1, 8, 2, 2, dtype=torch.bool), None, {"tv_t": 0.1}, 300, circular=circular)
    t = 0.1 * 3.0  # relative weight times max|x0|
    jumps = 2 if circular else 1
    expected = torch.tensor([1 + jumps * t / 3] * 3 + [3 - jumps * t / 5] * 5, dtype=torch.float64)
    torch.testing.assert_close(x[0, :, 0, 0].real, expected, atol=1e-6, rtol=0)
    assert x.imag.abs().max() < 1e-9


# ----------------------------------------------------------------------------- the solver
def test_admm_converges_to_the_minimiser(tiny):
    _, mask, _, kspace = tiny
    shifted, sampled = baselines.to_shifted(kspace[:1].to(torch.complex128), mask[:1].bool())
    weights = {"tv_t": 0.01, "wavelet": 0.003, "tv_xy": 0.001}
    values, iterates = [], []
    for iterations in (4, 16, 64, 256):
        x, value = run_admm(shifted, sampled, None, weights, iterations)
        values.append(float(value))
        iterates.append(x)
    assert values[0] > values[1] > values[2] >= values[3] - 1e-9 * values[3]
    assert values[2] - values[3] < 3e-3 * values[3], "converged"
    distances = [float((x - iterates[-1]).norm() / iterates[-1].norm()) for x in iterates[:-1]]
    assert distances[0] > distances[1] > distances[2] and distances[2] < 1e-2
    terms = baselines.chosen_penalties((24, 24), weights)
    scales = baselines.penalty_scales(torch.fft.ifft2(shifted, norm="ortho"), terms)
    thresholds = baselines.penalty_thresholds(scales, weights)
    for seed in range(3):  # nearby cines score higher
        nearby = iterates[-1] + 0.003 * random_complex(*shifted.shape, seed=seed)
        assert float(objective(nearby, shifted, sampled, None, terms, thresholds)) > values[3]


def test_tv_wavelet_keeps_the_data_is_scale_equivariant_and_beats_zero_filling(tiny):
    target, mask, aliased, kspace = tiny
    recon = tv_wavelet(kspace, mask, iterations=40, tol=0)
    assert recon.shape == kspace.shape and recon.is_complex()
    measured = mask.bool()
    assert (fft2c(recon) - kspace)[measured].abs().max() < 1e-5 * kspace.abs().max()
    scaled = tv_wavelet(100 * kspace, mask, iterations=40, tol=0)
    torch.testing.assert_close(scaled, 100 * recon, rtol=1e-3, atol=1e-4 * float(scaled.abs().max()))
    one = tv_wavelet(kspace[1].numpy(), mask[1].numpy(), iterations=40, tol=0)  # numpy in and out, cine by cine
    assert isinstance(one, np.ndarray)
    np.testing.assert_allclose(one, recon[1].numpy(), atol=1e-5)
    for i in range(2):
        assert psnr(recon[i], target[i]) > psnr(aliased[i], target[i]) + 3


def test_tv_wavelet_with_one_unit_coil_is_the_single_coil_solver(tiny):
    _, mask, _, kspace = tiny
    options = dict(lambda_t=0.01, lambda_w=0.003, lambda_r=0.01, iterations=8, tol=0)
    expected = tv_wavelet(kspace, mask, **options)
    with_coil = tv_wavelet(kspace[:, None], mask, sensitivities=torch.ones(2, 1, 24, 24, dtype=torch.complex64),
                           **options)
    torch.testing.assert_close(with_coil, expected, rtol=0, atol=1e-5 * float(expected.abs().max()))


def test_every_penalty_keeps_the_problem_solvable(tiny):
    target, mask, aliased, kspace = tiny
    for weights in (dict(lambda_t=0.0, lambda_w=0.0, lambda_f=0.003), dict(lambda_t=0.0, lambda_w=0.0, lambda_r=0.03),
                    dict(lambda_t=0.003, lambda_w=0.0, lambda_xy=0.001)):
        recon = tv_wavelet(kspace[:1], mask[:1], iterations=30, tol=0, **weights)
        assert psnr(recon[0], target[0]) > psnr(aliased[0], target[0]) + 3, weights
    with pytest.raises(ValueError, match="one of them > 0"):
        tv_wavelet(kspace, mask, lambda_t=0.0, lambda_w=0.0)
    assert set(penalties((4, 4))) == set(baselines.WEIGHTS.values())
