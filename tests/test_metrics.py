import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from metrics import batch_psnr, batch_ssim, format_summary, frame_psnr, psnr, ssim, summarize

RNG = np.random.default_rng(1)


def pair(frames=5, height=40, width=36, noise=0.05):
    target = RNG.random((frames, height, width))
    return target + noise * RNG.standard_normal(target.shape), target


def skimage_ssim(recon, target):
    return np.mean([structural_similarity(target[t], recon[t], data_range=1.0, gaussian_weights=True, sigma=1.5,
                                          use_sample_covariance=False) for t in range(len(target))])


@pytest.mark.parametrize("shape, noise", [((5, 40, 36), 0.05), ((3, 64, 64), 0.2), ((2, 17, 23), 0.01)])
def test_psnr_and_ssim_match_scikit_image(shape, noise):
    recon, target = pair(*shape, noise=noise)
    assert psnr(recon, target) == pytest.approx(peak_signal_noise_ratio(target, recon, data_range=1.0), abs=1e-4)
    assert ssim(recon, target) == pytest.approx(skimage_ssim(recon, target), abs=1e-4)


def test_complex_inputs_use_magnitude():
    recon, target = pair()
    phase = np.exp(1j * RNG.random(recon.shape))
    assert psnr(recon * phase, target) == pytest.approx(psnr(np.abs(recon), target))
    assert ssim(torch.from_numpy(recon * phase), torch.from_numpy(target)) == pytest.approx(ssim(np.abs(recon), target))


def test_batch_metrics_are_per_cine():
    recon, target = pair()
    worse, _ = pair(noise=0.3)
    stack_r = torch.from_numpy(np.stack([recon, worse + (target - target)]))
    stack_t = torch.from_numpy(np.stack([target, target]))
    values = batch_psnr(stack_r, stack_t)
    assert values.shape == (2,) and values[0] == pytest.approx(psnr(recon, target))
    assert batch_ssim(stack_r, stack_t)[0] == pytest.approx(ssim(recon, target))


def test_frame_psnr_per_frame():
    recon, target = pair(frames=3)
    values = frame_psnr(recon, target)
    assert values.shape == (3,)
    assert values[1] == pytest.approx(peak_signal_noise_ratio(target[1], recon[1], data_range=1.0))


def test_identical_images_and_data_range():
    _, target = pair()
    assert ssim(target, target) == pytest.approx(1.0)
    assert psnr(target, target) == float("inf")
    recon, _ = pair()
    assert psnr(recon * 2, target * 2, data_range=2.0) == pytest.approx(psnr(recon, target))


def test_ssim_needs_frames_larger_than_the_window():
    with pytest.raises(ValueError, match="larger than 11"):
        ssim(np.zeros((2, 10, 30)), np.zeros((2, 10, 30)))


def test_summarize_and_report_format():
    values = [28.0, 30.0, 29.0, 31.5]
    mean, std = summarize(values)
    assert mean == pytest.approx(np.mean(values)) and std == pytest.approx(np.std(values))
    assert format_summary("PSNR", values) == f"PSNR: mean = {np.mean(values):.4f}, std = {np.std(values):.4f}"
