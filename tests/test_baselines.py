import numpy as np
import pytest
import torch

from baselines import GRIDS, METHODS, kt_sparse, low_rank_plus_sparse, singular_value_threshold, tune, view_sharing
from helpers import tiny_problem
from metrics import psnr
from sampling import fft2c, undersample

SOLVERS = [kt_sparse, low_rank_plus_sparse]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    """Two tiny phantom cines [2, 6, 32, 32], their own 5x masks, zero-filled images and k-space."""
    return tiny_problem(32, 5)


@pytest.mark.parametrize("solve", SOLVERS)
def test_solvers_keep_the_sampled_kspace_exactly(tiny, solve):
    _, mask, _, kspace = tiny
    recon = solve(kspace, mask)
    assert recon.shape == kspace.shape and recon.is_complex()
    measured = mask.bool()
    error = (fft2c(recon) - kspace)[measured].abs().max()
    assert error < 1e-5 * kspace.abs().max()
    assert (fft2c(recon)[~measured].abs() > 1e-3).any(), "the unsampled lines are filled in"


@pytest.mark.parametrize("solve", SOLVERS)
def test_solvers_beat_zero_filling_on_a_phantom_cine(tiny, solve):
    target, mask, aliased, kspace = tiny
    recon = solve(kspace[0].numpy(), mask[0].numpy())  # one cine, numpy in and out
    assert isinstance(recon, np.ndarray) and recon.shape == (6, 32, 32)
    assert psnr(recon, target[0]) > psnr(aliased[0], target[0]) + 5  # untuned weights, only 6 frames


@pytest.mark.parametrize("solve", SOLVERS)
def test_weights_are_relative_to_the_data(tiny, solve):
    _, mask, _, kspace = tiny
    recon = solve(kspace, mask, iterations=20, tol=0)
    scaled = solve(100 * kspace, mask, iterations=20, tol=0)
    assert torch.allclose(scaled, 100 * recon, rtol=1e-3, atol=1e-4 * scaled.abs().max())


@pytest.mark.parametrize("solve", SOLVERS)
def test_a_batch_is_solved_cine_by_cine(tiny, solve):
    _, mask, _, kspace = tiny
    batch = solve(kspace, mask, iterations=10, tol=0)
    single = solve(kspace[1], mask[1], iterations=10, tol=0)
    assert torch.allclose(batch[1], single, atol=1e-5)


def test_view_sharing_keeps_the_measurements_and_recovers_a_static_object(tiny):
    target, mask, aliased, kspace = tiny
    shared = view_sharing(kspace, mask)
    assert (fft2c(shared) - kspace)[mask.bool()].abs().max() < 1e-5 * kspace.abs().max()
    assert psnr(shared[0], target[0]) > psnr(aliased[0], target[0]) + 3
    static = target[:1, :1].expand(1, 6, 32, 32).clone()  # one frame, six times
    never = 1 - mask[:1].amax(1, keepdim=True)  # [1, 1, H, W]: lines no frame samples
    first = (torch.arange(6) == 0).view(1, 6, 1, 1)
    joint = torch.maximum(mask[:1], never * first)  # frame 0 takes those: every line is sampled somewhere
    _, static_kspace = undersample(static, joint)
    torch.testing.assert_close(view_sharing(static_kspace, joint).abs(), static, atol=1e-5, rtol=0)


def test_tolerance_stops_early_and_verbose_reports_time(tiny, capsys):
    _, mask, _, kspace = tiny
    kt_sparse(kspace, mask, iterations=50, tol=10.0, verbose=True)
    low_rank_plus_sparse(kspace, mask, iterations=50, tol=10.0, verbose=True)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("k-t sparse: 2 cine(s), 1 iterations") and out[0].endswith("s per cine")
    assert out[1].startswith("L+S: 2 cine(s), 1 iterations")


def test_singular_value_threshold_matches_the_svd():
    matrix = torch.randn(3, 200, 6, dtype=torch.complex128)
    tau = torch.tensor([0.0, 5.0, 1e3], dtype=torch.float64)
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    expected = u @ torch.diag_embed((s - tau[:, None]).clamp_min(0).to(u.dtype)) @ vh
    assert torch.allclose(singular_value_threshold(matrix, tau), expected, atol=1e-8)


def test_tuning_uses_only_the_cines_given_and_picks_the_best(tiny):
    target, mask, _, kspace = tiny
    calls = []

    def solve(k, m, *, weight):  # the reference of cine 1, off by 0.01 + |weight - 2| / 100
        calls.append((k, m))
        return target[1:] + 0.01 + abs(weight - 2) / 100

    best, rows = tune(solve, kspace[1:], mask[1:], target[1:], {"weight": [1, 2, 4]})
    assert best == {"weight": 2} and [row["params"] for row in rows] == [{"weight": w} for w in (1, 2, 4)]
    assert len(calls) == 3 and all(torch.equal(k, kspace[1:]) and torch.equal(m, mask[1:]) for k, m in calls)
    assert rows[1]["psnr"] == pytest.approx(psnr(target[1] + 0.01, target[1]))
    assert rows[1]["psnr"] > rows[0]["psnr"] > rows[2]["psnr"]


def test_tuning_a_named_method_over_its_grid(tiny):
    target, mask, _, kspace = tiny
    best, rows = tune("kt_sparse", kspace, mask, target, GRIDS["kt_sparse"], iterations=5)
    assert len(rows) == len(GRIDS["kt_sparse"]["lam"]) and best["lam"] in GRIDS["kt_sparse"]["lam"]
    assert set(METHODS) == set(GRIDS)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("solve", SOLVERS)
def test_solvers_run_on_the_gpu(tiny, solve):
    _, mask, _, kspace = tiny
    on_gpu = solve(kspace.cuda(), mask.cuda(), iterations=10, tol=0)
    assert on_gpu.device.type == "cuda"
    assert torch.allclose(on_gpu.cpu(), solve(kspace, mask, iterations=10, tol=0), atol=1e-4)


def test_grid_edges_names_the_weights_tuned_at_the_end_of_their_grid():
    from baselines import grid_edges
    grid = {"lambda_l": (0.003, 0.01, 0.1), "lambda_s": (0.001, 0.003), "fixed": (1,)}
    assert grid_edges({"lambda_l": 0.01, "lambda_s": 0.001, "fixed": 1}, grid) == ["lambda_s=0.001 (smallest of the grid)"]
    assert grid_edges({"lambda_l": 0.1, "lambda_s": 0.002, "fixed": 1}, grid) == ["lambda_l=0.1 (largest of the grid)"]
    assert grid_edges({}, {}) == []
