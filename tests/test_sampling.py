import numpy as np
import pytest
import torch

from figures import plot_aliasing, plot_mask
from helpers import run_tool
from sampling import (MaskSampler, uniform_mask, center_rows, data_consistency, fft2c, ifft2c, line_density, lines_per_frame,
                      scaled_center_lines, undersample, variable_density_mask, view_sharing)

RNG = np.random.default_rng(0)


def random_complex(*shape):
    return RNG.standard_normal(shape) + 1j * RNG.standard_normal(shape)


def test_fft2c_matches_numpy_reference():
    x = random_complex(3, 12, 10)
    expected = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=(-2, -1))), axes=(-2, -1)) / np.sqrt(12 * 10)
    np.testing.assert_allclose(fft2c(x), expected, atol=1e-12)


def test_fft2c_torch_matches_numpy():
    x = random_complex(2, 3, 16, 9)
    np.testing.assert_allclose(fft2c(torch.from_numpy(x)).numpy(), fft2c(x), atol=1e-10)
    np.testing.assert_allclose(ifft2c(torch.from_numpy(x)).numpy(), ifft2c(x), atol=1e-10)


@pytest.mark.parametrize("as_torch", [False, True])
def test_fft_round_trip_and_parseval(as_torch):
    x = random_complex(4, 15, 16)
    x = torch.from_numpy(x) if as_torch else x
    k = fft2c(x)
    back = ifft2c(k)
    assert np.allclose(np.asarray(back), np.asarray(x), atol=1e-12)
    energy_x = float((abs(x) ** 2).sum())
    energy_k = float((abs(k) ** 2).sum())
    assert energy_k == pytest.approx(energy_x, rel=1e-12)


def test_dc_sits_at_the_centre():
    k = fft2c(np.ones((8, 10)))
    peak = np.unravel_index(np.abs(k).argmax(), k.shape)
    assert peak == (4, 5)
    assert abs(k[4, 5]) == pytest.approx(np.sqrt(80))


def test_fft_of_half_precision_tensor_is_promoted():
    x = torch.rand(2, 16, 16, dtype=torch.bfloat16)
    assert fft2c(x).dtype == torch.complex64


def test_mask_is_binary_whole_lines_with_exact_count():
    mask = variable_density_mask((20, 192, 192), acceleration=5, center_lines=11, seed=3)
    assert mask.shape == (20, 192, 192) and mask.dtype == np.float32
    assert set(np.unique(mask)) == {0.0, 1.0}
    assert (mask == mask[:, :, :1]).all(), "every row must be all 0 or all 1"
    assert (mask[:, :, 0].sum(1) == 38).all(), "round(192 / 5) = 38 lines per frame"
    assert mask[:, center_rows(192, 11), :].all(), "the 11 central lines are always sampled"
    assert mask.size / mask.sum() == pytest.approx(192 / 38)


def test_center_block_is_around_dc():
    rows = center_rows(192, 11)
    assert (rows.start, rows.stop) == (91, 102) and 96 in range(rows.start, rows.stop)


def test_frames_differ_and_seed_reproduces():
    a = variable_density_mask((20, 64, 32), center_lines=4, seed=7)
    b = variable_density_mask((20, 64, 32), center_lines=4, seed=7)
    c = variable_density_mask((20, 64, 32), center_lines=4, seed=8)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    assert len({a[t, :, 0].tobytes() for t in range(20)}) == 20, "each frame must get its own draw"


@pytest.mark.parametrize("density", ["gaussian", "polynomial"])
def test_empirical_density_falls_off_from_the_centre(density):
    height = 96
    mask = variable_density_mask((4000, height, 1), acceleration=4, center_lines=6, density=density, seed=1)
    frequency = mask[:, :, 0].mean(0)  # [H] how often each row is sampled
    distance = np.abs(np.arange(height) - height // 2)
    bands = [frequency[(distance >= lo) & (distance < lo + 8)].mean() for lo in (4, 12, 20, 28, 36)]
    assert all(a > b for a, b in zip(bands, bands[1:])), bands
    assert frequency.min() > 0 or density == "polynomial"


def test_line_density_is_a_distribution_without_centre():
    for density in ("gaussian", "polynomial"):
        p = line_density(64, 5, density)
        assert p.sum() == pytest.approx(1) and (p >= 0).all()
        assert (p[center_rows(64, 5)] == 0).all()
    with pytest.raises(ValueError, match="density"):
        line_density(64, 5, "uniform")


@pytest.mark.parametrize("kwargs, message", [
    (dict(acceleration=0.5), "acceleration"),
    (dict(acceleration=float("nan")), "acceleration"),
    (dict(acceleration=20, center_lines=11), "fewer than center_lines"),
    (dict(center_lines=300), "more than the"),
])
def test_impossible_masks_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        variable_density_mask((2, 192, 8), **kwargs)


def test_full_budget_of_centre_lines_is_allowed():
    mask = variable_density_mask((2, 20, 4), acceleration=2, center_lines=10)
    assert (mask[:, :, 0].sum(1) == 10).all()


def test_scaled_center_lines_and_line_budget():
    assert scaled_center_lines(192) == 11
    assert scaled_center_lines(64) == 4
    assert scaled_center_lines(8) == 1
    assert lines_per_frame(192, 5) == 38 and lines_per_frame(64, 5) == 13


def test_mask_sampler_on_device_generator_is_reproducible():
    sampler = MaskSampler(32, 8, 4, 4)
    a = sampler(6, torch.Generator().manual_seed(2))
    b = sampler(6, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and a.shape == (6, 32, 8)
    assert (a[:, :, 0].sum(1) == 8).all()


def test_undersample_with_full_mask_returns_input():
    x = RNG.random((5, 16, 16))
    aliased, kspace = undersample(x, np.ones_like(x))
    np.testing.assert_allclose(aliased, x, atol=1e-12)
    np.testing.assert_allclose(kspace, fft2c(x), atol=1e-12)


def test_undersample_batch_keeps_only_sampled_lines():
    x = torch.rand(2, 4, 32, 32)
    mask = torch.from_numpy(variable_density_mask((4, 32, 32), center_lines=2))
    aliased, kspace = undersample(x, mask)
    assert aliased.shape == (2, 4, 32, 32) and aliased.is_complex()
    assert (kspace[:, mask == 0] == 0).all()
    torch.testing.assert_close(fft2c(aliased), kspace, atol=1e-5, rtol=0)
    assert not torch.allclose(aliased.abs(), x, atol=1e-2), "undersampling must alias"


def test_forward_operator_is_adjoint_of_zero_filling():
    # A = U F and A^H = F^H U: <A x, y> = <x, A^H y> for any x (image) and y (k-space).
    mask = variable_density_mask((3, 16, 12), acceleration=3, center_lines=2, seed=5)
    x, y = random_complex(3, 16, 12), random_complex(3, 16, 12)
    lhs = np.vdot(y, mask * fft2c(x))
    rhs = np.vdot(ifft2c(mask * y), x)
    assert lhs == pytest.approx(rhs, rel=1e-12)


def test_data_consistency_keeps_the_measurements_and_the_rest_of_the_image():
    mask = torch.from_numpy(variable_density_mask((3, 16, 12), acceleration=3, center_lines=2, seed=5))
    image = torch.from_numpy(random_complex(2, 3, 16, 12))
    kspace = torch.from_numpy(random_complex(2, 3, 16, 12)) * mask
    result = data_consistency(image, kspace, mask)
    torch.testing.assert_close(fft2c(result) * mask, kspace)
    torch.testing.assert_close(fft2c(result) * (1 - mask), fft2c(image) * (1 - mask))
    shift = dict(dim=(-2, -1))  # the solvers' domain: ifftshift-ed cines, plain FFTs
    shifted = data_consistency(torch.fft.ifftshift(image, **shift), torch.fft.ifftshift(kspace, **shift),
                               torch.fft.ifftshift(mask, **shift), centered=False)
    torch.testing.assert_close(torch.fft.fftshift(shifted, **shift), result)


def test_view_sharing_fills_unsampled_kspace_with_the_temporal_mean():
    mask = variable_density_mask((4, 16, 8), acceleration=4, center_lines=2, seed=1)
    kspace = random_complex(4, 16, 8)  # entries off the mask are ignored
    shared = view_sharing(kspace, mask)
    assert isinstance(shared, np.ndarray) and shared.shape == (4, 16, 8)
    filled = fft2c(shared)
    np.testing.assert_allclose(filled[mask == 1], kspace[mask == 1], atol=1e-12)
    row = int(np.flatnonzero((mask[:, :, 0].sum(0) > 0) & (mask[:, :, 0].sum(0) < 4))[0])  # sampled by some frames
    frames = mask[:, row, 0] == 1
    mean = kspace[frames, row].mean(0)  # [W]: the temporal mean of the measured lines
    np.testing.assert_allclose(filled[~frames, row], np.broadcast_to(mean, filled[~frames, row].shape), atol=1e-12)


def test_mask_and_aliasing_figures(tmp_path):
    mask = variable_density_mask((6, 32, 32), center_lines=2)
    x = RNG.random((6, 32, 32))
    aliased, _ = undersample(x, mask)
    plot_mask(mask, tmp_path / "mask.png")
    plot_aliasing(x, aliased, mask, tmp_path / "aliasing.png", frames=[0, 3])
    assert (tmp_path / "mask.png").stat().st_size > 5000
    assert (tmp_path / "aliasing.png").stat().st_size > 5000


def test_mask_figure_command(tmp_path):
    done = run_tool("sampling.py", ["mask.png", "--size=32", "--frames", "4", "--center_lines=2"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "mask.png").stat().st_size > 5000
    refused = run_tool("sampling.py", ["bad.png", "--size=32", "--center_lines=40"], tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.strip().startswith("error: sampling:") and "center" in refused.stderr
    assert not (tmp_path / "bad.png").exists()


def test_uniform_mask_is_cmrxrecon_style_equispaced_rows_and_a_centre_block():
    mask = uniform_mask((3, 192, 8), acceleration=8, center_lines=24)
    assert mask.shape == (3, 192, 8) and mask.dtype == np.float32
    assert (mask == mask[:1]).all() and (mask == mask[..., :1]).all(), "whole lines, the same in every frame"
    rows = np.flatnonzero(mask[0, :, 0])
    outside = rows[(rows < 84) | (rows >= 108)]
    assert set(range(84, 108)) <= set(rows) and ((outside - 96) % 8 == 0).all()
    assert len(rows) == 45 and len(outside) == 21  # 24 + 24 - 3 rows of the grid inside the centre block
    for bad in (dict(acceleration=2.5), dict(acceleration=0), dict(center_lines=200)):
        with pytest.raises(ValueError):
            uniform_mask((3, 192, 8), **{"acceleration": 8, "center_lines": 24, **bad})
