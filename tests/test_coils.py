"""Multi-coil (SENSE) physics: operators, conjugate-gradient data consistency, simulated coils and
sensitivity estimation. Tiny shapes: a few seconds."""
import numpy as np
import pytest
import torch

from baselines import kt_sparse, low_rank_plus_sparse, tune
from baselines import view_sharing as view_sharing_baseline
from metrics import psnr
from models import DataConsistency
from phantom import (coil_sensitivities, correlated_noise, make_coil_dataset, make_phantom_dataset, noise_covariance,
                     sample_anatomy)
import sampling
from sampling import (RowSense, calibration_lines, coil_combine, coil_images, data_consistency, estimate_sensitivities,
                      fft2c, interpolate_maps, sense_adjoint, sense_data_consistency, sense_forward,
                      gradient_dc, sense_normal, variable_density_mask, view_sharing, whiten_coils)

RNG = np.random.default_rng(0)


def random_complex(*shape):
    return RNG.standard_normal(shape) + 1j * RNG.standard_normal(shape)


def small_problem(batch=2, coils=4, frames=4, size=16):
    """Random complex128 image [B, T, H, W], sensitivities [B, C, H, W], mask [T, H, W], coil k-space
    [B, C, T, H, W] (zero off the mask), as torch tensors."""
    mask = variable_density_mask((frames, size, size), acceleration=3, center_lines=2, seed=1)
    kspace = random_complex(batch, coils, frames, size, size) * mask
    tensors = random_complex(batch, frames, size, size), random_complex(batch, coils, size, size), mask, kspace
    return [torch.from_numpy(np.asarray(t)) for t in tensors]


@pytest.mark.parametrize("as_torch", [False, True])
def test_sense_adjoint_is_the_adjoint_of_the_forward_operator(as_torch):
    # <A x, y> = <x, A^H y> for any image x and coil k-space y; the layouts are documented ones.
    image, sensitivities, mask, kspace = small_problem()
    if not as_torch:
        image, sensitivities, mask, kspace = (t.numpy() for t in (image, sensitivities, mask, kspace))
    forward = sense_forward(image, sensitivities, mask)
    assert forward.shape == (2, 4, 4, 16, 16)
    back = sense_adjoint(kspace, sensitivities, mask)
    assert back.shape == (2, 4, 16, 16)
    lhs = np.vdot(np.asarray(kspace), np.asarray(forward))
    rhs = np.vdot(np.asarray(back), np.asarray(image))
    assert lhs == pytest.approx(rhs, rel=1e-12)
    np.testing.assert_allclose(np.vdot(np.asarray(coil_images(image, sensitivities)), np.asarray(kspace)),
                               np.vdot(np.asarray(image), np.asarray(coil_combine(kspace, sensitivities))), rtol=1e-12)


def test_one_coil_of_sensitivity_one_is_the_single_coil_model():
    image, _, mask, _ = small_problem()
    ones = torch.ones(2, 1, 16, 16, dtype=torch.complex128)
    kspace = sense_forward(image, ones, mask)  # [B, 1, T, H, W]
    torch.testing.assert_close(kspace[:, 0], fft2c(image) * mask, rtol=0, atol=0)
    torch.testing.assert_close(sense_adjoint(kspace, ones, mask), data_consistency(0 * image, kspace[:, 0], mask))


def test_gradient_step_is_hard_data_consistency_for_one_unit_coil_and_a_descent_step_for_many():
    image, sensitivities, mask, kspace = small_problem()
    ones = torch.ones(2, 1, 16, 16, dtype=torch.complex128)
    torch.testing.assert_close(gradient_dc(image, kspace[:, :1], mask, sensitivities=ones),
                               data_consistency(image, kspace[:, 0], mask))
    sensitivities = sensitivities / sensitivities.abs().square().sum(1, keepdim=True).sqrt()  # sum |S_c|^2 = 1

    def misfit(x):
        return (sense_forward(x, sensitivities, mask) - kspace).norm()
    assert misfit(gradient_dc(image, kspace, mask, sensitivities=sensitivities)) < misfit(image)
    shift = dict(dim=(-2, -1))  # the solvers' domain: ifftshift-ed, plain FFTs
    moved = [torch.fft.ifftshift(t, **shift) for t in (image, kspace, mask, sensitivities)]
    shifted = gradient_dc(*moved[:3], sensitivities=moved[3], centered=False)
    torch.testing.assert_close(torch.fft.fftshift(shifted, **shift),
                               gradient_dc(image, kspace, mask, sensitivities=sensitivities))


def test_view_sharing_with_coils_combines_the_view_shared_coils():
    image, sensitivities, mask, _ = small_problem()
    kspace = sense_forward(image, sensitivities, mask)  # [B, C, T, H, W]
    shared = view_sharing(kspace, mask, sensitivities)  # [B, T, H, W]
    per_coil = torch.stack([view_sharing(kspace[:, c], mask) for c in range(4)], 1)  # [B, C, T, H, W]
    torch.testing.assert_close(shared, coil_combine(per_coil, sensitivities))
    ones = torch.ones(2, 1, 16, 16, dtype=torch.complex128)
    torch.testing.assert_close(view_sharing(kspace[:, :1], mask, ones), view_sharing(kspace[:, 0], mask),
                               rtol=0, atol=0)
    still = image[:, :1].expand_as(image)  # a still object: exact once every row was sampled by some frame
    interleaved = torch.zeros(4, 16, 16, dtype=torch.float64)
    for t in range(4):
        interleaved[t, t::4] = 1
    unit = sensitivities / sensitivities.abs().square().sum(1, keepdim=True).sqrt()  # sum |S_c|^2 = 1
    recovered = view_sharing(sense_forward(still, unit, interleaved).numpy(), interleaved.numpy(), unit.numpy())
    np.testing.assert_allclose(recovered, still.numpy(), atol=1e-10)


def test_normal_operator_is_self_adjoint_and_positive():
    image, sensitivities, mask, _ = small_problem()
    other = torch.from_numpy(random_complex(*image.shape))
    lhs = torch.vdot(other.flatten(), sense_normal(image, sensitivities, mask).flatten())
    rhs = torch.vdot(sense_normal(other, sensitivities, mask).flatten(), image.flatten())
    torch.testing.assert_close(lhs, rhs)
    assert torch.vdot(image.flatten(), sense_normal(image, sensitivities, mask).flatten()).real > 0


def row_problem():
    """``small_problem`` with a mask of whole rows whose frames sample different numbers of rows, one
    row weighted 0.5 (the operators multiply by the mask's values)."""
    image, sensitivities, mask, kspace = small_problem(batch=2, coils=3, frames=4, size=12)
    mask[1, 5] = 0.5
    mask[2, 0] = 1 - mask[2, 0]
    return image, sensitivities, mask, kspace * mask


def row_and_general(operation):
    """``operation(rows)`` on the row path (forced) and on the general path."""
    return operation(True), operation(False)


@pytest.mark.parametrize("centered", [True, False])
@pytest.mark.parametrize("block_bytes", [sampling.FRAME_BLOCK_BYTES, 1])  # whole cines per block | one frame
def test_row_path_equals_the_general_path(monkeypatch, centered, block_bytes):
    monkeypatch.setattr(sampling, "FRAME_BLOCK_BYTES", block_bytes)
    monkeypatch.setattr(sampling, "BLOCK_LIMIT_BYTES", block_bytes)
    image, sensitivities, mask, kspace = row_problem()
    assert RowSense.of(mask, sensitivities, (2,), image.shape[-3:], centered, rows=True) is not None
    options = dict(centered=centered)
    operations = {
        "forward": lambda rows: sense_forward(image, sensitivities, mask, rows=rows, **options),
        "adjoint": lambda rows: sense_adjoint(kspace, sensitivities, mask, rows=rows, **options),
        "normal": lambda rows: sense_normal(image, sensitivities, mask, rows=rows, **options),
        "gradient step": lambda rows: gradient_dc(image, kspace, mask, 0.7, sensitivities=sensitivities, rows=rows,
                                                  **options),
        "single-coil gradient step": lambda rows: gradient_dc(image, kspace[:, 0], mask, 0.7, rows=rows, **options),
        "CG": lambda rows: sense_data_consistency(image, kspace, sensitivities, mask, lam=0.1, iterations=4,
                                                  rows=rows, **options)}
    for name, operation in operations.items():
        fast, general = row_and_general(operation)
        assert fast.shape == general.shape and fast.dtype == general.dtype, name
        torch.testing.assert_close(fast, general, rtol=1e-12, atol=1e-12 * float(general.abs().max()), msg=name)


def test_row_path_is_adjoint_and_one_unit_coil_is_the_single_coil_model():
    image, sensitivities, mask, kspace = row_problem()
    forward = sense_forward(image, sensitivities, mask, rows=True)
    back = sense_adjoint(kspace, sensitivities, mask, rows=True)
    assert torch.vdot(kspace.flatten(), forward.flatten()).item() == pytest.approx(
        torch.vdot(back.flatten(), image.flatten()).item(), rel=1e-12)
    other = torch.from_numpy(random_complex(*image.shape))
    normal_image, normal_other = (sense_normal(x, sensitivities, mask, rows=True) for x in (image, other))
    torch.testing.assert_close(torch.vdot(other.flatten(), normal_image.flatten()),
                               torch.vdot(normal_other.flatten(), image.flatten()))
    ones = torch.ones(2, 1, 12, 12, dtype=torch.complex128)
    torch.testing.assert_close(sense_forward(image, ones, mask, rows=True)[:, 0], fft2c(image) * mask)
    binary = (mask != 0).double()  # the single-coil step's U is the mask's support
    torch.testing.assert_close(gradient_dc(image, kspace[:, :1], binary, 0.7, sensitivities=ones, rows=True),
                               gradient_dc(image, kspace[:, 0], mask, 0.7, rows=True))
    torch.testing.assert_close(gradient_dc(image, kspace[:, 0], mask, rows=True),
                               data_consistency(image, kspace[:, 0], mask))


def test_row_path_gradients_equal_the_general_paths():
    image, sensitivities, mask, kspace = row_problem()
    grads = []
    for rows in (True, False):
        inputs = [t.clone().requires_grad_(True) for t in (image, sensitivities, kspace)]
        step = gradient_dc(inputs[0], inputs[2], mask, 0.7, sensitivities=inputs[1], rows=rows)
        step.abs().square().sum().backward()
        grads.append([t.grad for t in inputs])
    for fast, general in zip(*grads):
        torch.testing.assert_close(fast, general, rtol=1e-10, atol=1e-10)


def test_the_row_path_runs_where_it_pays_and_exactly_where_the_mask_is_whole_rows():
    frames, size = 20, 192
    maps = torch.ones(1, 8, size, size, dtype=torch.complex64)
    mask = torch.from_numpy(variable_density_mask((frames, size, size), acceleration=8, seed=0))[None]
    shape = (frames, size, size)
    assert RowSense.of(mask, maps, (1,), shape, True) is not None  # 8 coils of 192 px at 8x: the measured gain
    assert RowSense.of(mask, None, (1,), shape, True) is None  # one coil: the 2D FFT is as fast
    assert RowSense.of(mask[..., :32, :32], maps[..., :32, :32], (1,), (frames, 32, 32), True) is None  # small
    dense = torch.from_numpy(variable_density_mask(shape, acceleration=2, seed=0))[None]  # half the rows
    assert RowSense.of(dense, maps, (1,), shape, True) is None
    assert RowSense.of(dense, maps, (1,), shape, True, rows=True) is not None
    image, sensitivities, _, kspace = small_problem(size=12)
    pixels = torch.from_numpy((RNG.random((4, 12, 12)) < 0.4).astype(np.float64))  # not whole rows: general path
    assert RowSense.of(pixels, sensitivities, (2,), pixels.shape, True, rows=True) is None
    fast, general = row_and_general(lambda rows: gradient_dc(image, kspace, pixels, sensitivities=sensitivities,
                                                              rows=rows))
    torch.testing.assert_close(fast, general, rtol=0, atol=0)


def explicit_solution(image, kspace, sensitivities, mask, lam):
    """``(A^H A + lam I)^-1 (A^H y + lam z)`` with the matrix of A^H A built column by column."""
    shape, n = image.shape, image.numel()
    basis = torch.eye(n, dtype=image.dtype).reshape(n, *shape)  # [n, T, H, W]: one image per unit vector
    gram = sense_normal(basis, sensitivities[None], mask).reshape(n, n).T  # column j = A^H A e_j
    rhs = (sense_adjoint(kspace, sensitivities, mask) + lam * image).flatten()
    return torch.linalg.solve(gram + lam * torch.eye(n, dtype=image.dtype), rhs).reshape(shape)


@pytest.mark.parametrize("lam", [0.05, 1.0])
def test_conjugate_gradient_data_consistency_reaches_the_exact_solution(lam):
    image, sensitivities, mask, kspace = small_problem(batch=1, coils=3, frames=2, size=6)
    image, sensitivities, mask, kspace = image[0], sensitivities[0], mask[:2, :6, :6], kspace[0]
    mask[:, ::2] = 1  # whole lines: every second row
    kspace = kspace * mask
    exact = explicit_solution(image, kspace, sensitivities, mask, lam)
    solved = sense_data_consistency(image, kspace, sensitivities, mask, lam=lam, iterations=36)
    torch.testing.assert_close(solved, exact, rtol=0, atol=1e-9)
    few = sense_data_consistency(image, kspace, sensitivities, mask, lam=lam, iterations=3)
    assert (few - exact).norm() < 0.5 * (image - exact).norm(), "a few iterations already go most of the way"


def test_conjugate_gradient_with_one_unit_coil_is_hard_and_soft_data_consistency():
    image, _, mask, kspace = small_problem()
    image, kspace, mask = image.to(torch.complex64), kspace[:, :1].to(torch.complex64), mask.float()
    ones = torch.ones(2, 1, 16, 16, dtype=torch.complex64)
    hard = sense_data_consistency(image, kspace, ones, mask, lam=0.0, iterations=2)
    torch.testing.assert_close(hard, data_consistency(image, kspace[:, 0], mask), rtol=0, atol=1e-5)
    soft_dc = DataConsistency("soft", initial_lambda=4.0)
    weight = soft_dc.weight.detach()
    soft = sense_data_consistency(image, kspace, ones, mask, lam=1 / weight, iterations=2)
    torch.testing.assert_close(soft, soft_dc(image, kspace[:, 0], mask).detach(), rtol=0, atol=1e-5)


def test_conjugate_gradient_stays_at_the_solution_once_converged_in_float32():
    # one unit coil converges in one step; later steps must not follow the rounding errors left in the
    # unmeasured k-space (the null space of A^H A), which would blow the image up
    image, _, mask, kspace = small_problem()
    image, kspace, mask = image.to(torch.complex64), kspace[:, :1].to(torch.complex64), mask.float()
    ones = torch.ones(2, 1, 16, 16, dtype=torch.complex64)
    many = sense_data_consistency(image, kspace, ones, mask, iterations=20)
    torch.testing.assert_close(many, data_consistency(image, kspace[:, 0], mask), rtol=0, atol=1e-5)


def test_conjugate_gradient_is_differentiable_and_finite_once_converged():
    image, _, mask, kspace = small_problem()
    ones = torch.ones(2, 1, 16, 16, dtype=torch.complex128)
    lam = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
    start = image.clone().requires_grad_(True)
    out = sense_data_consistency(start, kspace[:, :1], ones, mask, lam=lam, iterations=5)  # exact after 1 step
    out.abs().sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(start.grad).all() and torch.isfinite(lam.grad)


@pytest.fixture(scope="module")
def coil_phantom():
    return make_coil_dataset(2, frames=4, size=32, seed=0, coils=4)


def test_one_coil_phantom_is_todays_phantom_bit_for_bit():
    one = make_coil_dataset(2, frames=4, size=16, seed=0)
    cines, boxes = make_phantom_dataset(2, frames=4, size=16, seed=0, return_boxes=True)
    np.testing.assert_array_equal(one["reference"], cines)
    np.testing.assert_array_equal(one["heart_box"], boxes)
    assert one["kspace"].shape == (2, 1, 4, 16, 16) and (one["sensitivities"] == 1).all()
    np.testing.assert_array_equal(one["kspace"][:, 0], fft2c(cines))


def test_coil_count_is_checked():
    with pytest.raises(ValueError, match="coils"):
        make_coil_dataset(1, frames=2, size=16, coils=0)


def test_coil_phantom_layout_and_normalisation(coil_phantom):
    d = coil_phantom
    assert d["reference"].shape == (2, 4, 32, 32) and d["kspace"].shape == (2, 4, 4, 32, 32)
    assert d["sensitivities"].shape == (2, 4, 32, 32) and d["noise_covariance"].shape == (2, 4, 4)
    assert all(d[key].dtype == np.complex64 for key in ("reference", "kspace", "sensitivities"))
    np.testing.assert_allclose(np.abs(d["reference"]).max(axis=(1, 2, 3)), 1, rtol=1e-6)
    np.testing.assert_allclose((np.abs(d["sensitivities"]) ** 2).sum(1), 1, rtol=1e-5)
    full = np.ones((4, 32, 32), np.float32)
    np.testing.assert_allclose(sense_adjoint(d["kspace"], d["sensitivities"], full), d["reference"], atol=1e-5)
    body = np.abs(d["reference"][0]).mean(0) > 0.1  # [H, W]
    inside = np.abs(d["sensitivities"][0][:, body])  # [C, pixels]: every coil sees its own part of the body
    assert (inside.max(1) > 3 * inside.min(1)).all()


def test_noise_free_coil_phantom_follows_the_sense_model_exactly():
    d = make_coil_dataset(1, frames=3, size=16, seed=2, coils=3, snr=None)
    full = np.ones((3, 16, 16), np.float32)
    np.testing.assert_allclose(sense_forward(d["reference"], d["sensitivities"], full), d["kspace"], atol=1e-5)


def test_coil_noise_has_the_requested_correlations():
    covariance = noise_covariance(6, np.random.default_rng(1))  # [C, C]
    levels = np.sqrt(np.diag(covariance))
    correlation = covariance / np.outer(levels, levels)
    off = correlation[~np.eye(6, dtype=bool)]
    assert off.min() >= 0.1 - 1e-12 and off.max() <= 0.3 + 1e-12 and off.max() > 0.25
    assert np.allclose(covariance, covariance.T) and np.linalg.eigvalsh(covariance).min() > 0.4
    assert ((levels >= 0.8) & (levels <= 1.2)).all()
    noise = correlated_noise(np.random.default_rng(2), covariance, (40000,))  # [C, N]
    assert noise.shape == (6, 40000) and noise.dtype == np.complex64
    np.testing.assert_allclose(np.cov(noise.real), covariance, atol=0.03)
    np.testing.assert_allclose(np.cov(noise.imag), covariance, atol=0.03)


def test_whitening_decorrelates_the_coil_noise_and_keeps_the_sense_model():
    covariance = noise_covariance(4, np.random.default_rng(3))  # [C, C]
    noise = correlated_noise(np.random.default_rng(4), covariance, (2, 100, 100))  # [C, T, H, W]
    white = whiten_coils(noise, covariance)
    assert white.shape == noise.shape and white.dtype == np.complex64
    np.testing.assert_allclose(np.cov(white.real.reshape(4, -1)), np.eye(4), atol=0.03)
    image, sensitivities, mask, _ = small_problem()
    unmix = torch.linalg.inv(torch.linalg.cholesky(torch.from_numpy(covariance))).to(torch.complex128)
    whitened_maps = torch.einsum("cd,bdhw->bchw", unmix, sensitivities)  # L^-1 S
    torch.testing.assert_close(whiten_coils(sense_forward(image, sensitivities, mask), covariance),
                               sense_forward(image, whitened_maps, mask))


def correlation_up_to_phase(estimated, true, body):
    """``|<S_est e^{-i phi}, S>| / (||S_est|| ||S||)`` over the ``body`` pixels of maps ``[C, H, W]``, with
    ``phi`` the pixel-wise phase between them (ESPIRiT fixes the maps only up to a common phase)."""
    phase = np.angle((estimated * true.conj()).sum(0))  # [H, W]
    aligned = estimated * np.exp(-1j * phase)
    inner = abs((aligned * true.conj())[:, body].sum())
    return inner / np.sqrt((abs(aligned[:, body]) ** 2).sum() * (abs(true[:, body]) ** 2).sum())


def test_calibration_lines_are_the_centre_that_every_frame_samples():
    mask = variable_density_mask((4, 32, 8), acceleration=2, center_lines=6, seed=0)
    assert calibration_lines(mask) >= 6
    mask[1, 32 // 2 - 3] = 0  # one frame misses the first row of the 6: the centred block shrinks to 5
    assert calibration_lines(torch.from_numpy(mask)) == 5


def test_estimated_sensitivities_match_the_simulated_ones_inside_the_body(coil_phantom):
    mask = variable_density_mask((4, 32, 32), acceleration=2, center_lines=8, seed=3)
    kspace = coil_phantom["kspace"] * mask[:, None]  # [B, C, T, H, W], undersampled
    estimated = estimate_sensitivities(kspace, mask)  # [B, C, H, W]
    assert estimated.shape == (2, 4, 32, 32) and estimated.dtype == np.complex64
    for i in range(2):
        body = np.abs(coil_phantom["reference"][i]).mean(0) > 0.1  # [H, W]
        assert correlation_up_to_phase(estimated[i], coil_phantom["sensitivities"][i], body) >= 0.95
        np.testing.assert_allclose((np.abs(estimated[i]) ** 2).sum(0)[body], 1, rtol=1e-4)
    on_torch = estimate_sensitivities(torch.from_numpy(kspace[:1]), torch.from_numpy(mask))
    assert isinstance(on_torch, torch.Tensor)
    np.testing.assert_allclose(on_torch.numpy(), estimated[:1], atol=1e-5)


def test_maps_estimated_on_a_coarser_grid_are_interpolated_in_place(coil_phantom):
    p = sample_anatomy(np.random.default_rng(0), frames=2)
    coarse, fine = coil_sensitivities(p, 24, 4), coil_sensitivities(p, 48, 4)  # the same coils, two grids
    interpolated = interpolate_maps(coarse, (48, 48))
    body = np.ones((48, 48), bool)
    assert correlation_up_to_phase(interpolated, fine, body) > 0.999
    np.testing.assert_allclose((np.abs(interpolated) ** 2).sum(0), 1, rtol=1e-5)
    assert interpolate_maps(coarse, (24, 24)) is coarse
    mask = variable_density_mask((4, 32, 32), acceleration=2, center_lines=8, seed=3)
    estimated = estimate_sensitivities(coil_phantom["kspace"][:1] * mask[:, None], mask, resolution=16)
    body = np.abs(coil_phantom["reference"][0]).mean(0) > 0.1
    assert correlation_up_to_phase(estimated[0], coil_phantom["sensitivities"][0], body) >= 0.95


def test_one_coil_estimate_has_unit_magnitude_and_too_small_a_centre_is_refused():
    mask = variable_density_mask((4, 16, 16), acceleration=2, center_lines=6, seed=0)
    kspace = fft2c(make_phantom_dataset(1, frames=4, size=16, seed=0)[0])[None] * mask  # [1, T, H, W]
    np.testing.assert_allclose(np.abs(estimate_sensitivities(kspace, mask)), 1, rtol=1e-5)
    with pytest.raises(ValueError, match="at least 4 central"):
        estimate_sensitivities(kspace, variable_density_mask((4, 16, 16), acceleration=2, center_lines=2, seed=0))


@pytest.fixture(scope="module")
def undersampled_coils():
    """Two 4-coil phantom cines [2, 4, 6, 32, 32] at 4x (their own masks [2, 6, 32, 32]), the maps and
    the reference."""
    d = make_coil_dataset(2, frames=6, size=32, seed=3, coils=4)
    mask = np.stack([variable_density_mask((6, 32, 32), 4, 4, seed=s) for s in (1, 2)])
    return d["kspace"] * mask[:, None], mask, d["sensitivities"], d["reference"]


@pytest.mark.parametrize("solve", [kt_sparse, low_rank_plus_sparse, view_sharing_baseline])
def test_baselines_with_one_unit_coil_are_the_single_coil_baselines(undersampled_coils, solve):
    kspace, mask, _, _ = undersampled_coils
    single = torch.from_numpy(kspace[:, 0])  # [B, T, H, W]
    ones = torch.ones(2, 1, 32, 32, dtype=torch.complex64)
    options = {} if solve is view_sharing_baseline else dict(iterations=10, tol=0)
    expected = solve(single, mask, **options)
    torch.testing.assert_close(solve(single[:, None], mask, sensitivities=ones, **options), expected,
                               rtol=0, atol=1e-5 * float(expected.abs().max()))


@pytest.mark.parametrize("solve", [kt_sparse, low_rank_plus_sparse])
def test_multi_coil_baselines_use_the_coils(one_thread, undersampled_coils, solve):
    kspace, mask, sensitivities, reference = undersampled_coils
    recon = solve(kspace, mask, sensitivities=sensitivities)  # [B, T, H, W], numpy in and out
    assert isinstance(recon, np.ndarray) and recon.shape == (2, 6, 32, 32)
    one = solve(kspace[1], mask[1], sensitivities=sensitivities[1])  # one cine [C, T, H, W]
    np.testing.assert_allclose(one, recon[1], atol=1e-4)
    zero_filled = sense_adjoint(kspace, sensitivities, mask)
    single_coil = solve(fft2c(reference) * mask, mask)  # the same cine and mask through one coil
    for i in range(2):
        assert psnr(recon[i], reference[i]) > psnr(zero_filled[i], reference[i]) + 5
        assert psnr(recon[i], reference[i]) > psnr(single_coil[i], reference[i]) + 1, "parallel-imaging gain"


def test_tuning_passes_each_batch_its_own_sensitivities(undersampled_coils):
    kspace, mask, sensitivities, reference = undersampled_coils
    best, rows = tune("kt_sparse", kspace, mask, reference, {"lam": (0.001, 0.01)}, batch_size=1,
                      sensitivities=sensitivities, iterations=5)
    assert best["lam"] in (0.001, 0.01) and len(rows) == 2
    recon = kt_sparse(kspace, mask, sensitivities=sensitivities, lam=best["lam"], iterations=5)
    assert max(row["psnr"] for row in rows) == pytest.approx(np.mean([psnr(recon[i], reference[i]) for i in range(2)]),
                                                             abs=1e-3)
