import numpy as np
import pytest
import torch
from skimage.metrics import normalized_root_mse, peak_signal_noise_ratio, structural_similarity

from metrics import (batch_nmse, batch_psnr, batch_ssim, format_summary, frame_psnr, nmse, psnr, ssim,
                     summarize)

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


def skimage_box_ssim(recon, target, box):
    """skimage's full SSIM map per frame, averaged over the box pixels whose 11x11 window lies in the image."""
    row0, row1, col0, col1 = box
    maps = [structural_similarity(target[t], recon[t], data_range=1.0, gaussian_weights=True, sigma=1.5,
                                  use_sample_covariance=False, full=True)[1] for t in range(len(target))]
    inner = np.zeros(target.shape[1:], dtype=bool)  # [H, W]
    inner[5:-5, 5:-5] = True
    in_box = np.zeros_like(inner)
    in_box[row0:row1, col0:col1] = True
    return np.mean([m[inner & in_box].mean() for m in maps])


def test_nmse_matches_numpy_and_scikit_image():
    recon, target = pair()
    expected = np.sum((recon - target) ** 2) / np.sum(target ** 2)
    assert nmse(recon, target) == pytest.approx(expected, rel=1e-12)
    assert nmse(recon, target) == pytest.approx(normalized_root_mse(target, recon, normalization="euclidean") ** 2,
                                                rel=1e-12)
    phase = np.exp(1j * RNG.random(recon.shape))
    assert nmse(recon * phase, target * phase) == pytest.approx(nmse(np.abs(recon), target))


def test_box_covering_the_image_gives_whole_image_metrics():
    recon, target = (torch.from_numpy(np.stack(cines)) for cines in zip(pair(), pair(noise=0.2)))  # [2, 5, 40, 36]
    for box in [(0, 40, 0, 36), np.array([[0, 40, 0, 36]] * 2), torch.tensor([[0, 40, 0, 36]] * 2)]:
        for metric in (batch_psnr, batch_ssim, batch_nmse):
            assert torch.allclose(metric(recon, target, box=box), metric(recon, target), rtol=1e-12, atol=0)


@pytest.mark.parametrize("box", [(7, 30, 4, 25), (0, 40, 10, 36), (3, 5, 0, 1)])
def test_box_psnr_and_nmse_match_scikit_image_on_the_crop(box):
    recon, target = pair()  # [5, 40, 36]
    row0, row1, col0, col1 = box
    crop_r, crop_t = recon[:, row0:row1, col0:col1], target[:, row0:row1, col0:col1]
    assert psnr(recon, target, box=box) == pytest.approx(peak_signal_noise_ratio(crop_t, crop_r, data_range=1.0),
                                                         abs=1e-10)
    assert nmse(recon, target, box=box) == pytest.approx(
        normalized_root_mse(crop_t, crop_r, normalization="euclidean") ** 2, rel=1e-10)


@pytest.mark.parametrize("box", [(7, 30, 4, 25), (0, 11, 25, 36), (0, 40, 0, 20), (12, 23, 9, 20)])
def test_box_ssim_matches_scikit_image_map_over_the_box(box):
    recon, target = pair()  # [5, 40, 36]
    assert ssim(recon, target, box=box) == pytest.approx(skimage_box_ssim(recon, target, box), abs=1e-10)


def test_batch_with_a_box_per_cine():
    cines = [pair(noise=noise) for noise in (0.02, 0.1, 0.3)]
    recon = torch.from_numpy(np.stack([r for r, _ in cines]))  # [3, 5, 40, 36]
    target = torch.from_numpy(np.stack([t for _, t in cines]))
    boxes = np.array([[0, 20, 0, 18], [10, 40, 5, 36], [14, 30, 12, 30]])  # [3, 4]
    psnrs, ssims, nmses = (metric(recon, target, box=boxes) for metric in (batch_psnr, batch_ssim, batch_nmse))
    for i, (row0, row1, col0, col1) in enumerate(boxes):
        r, t = cines[i]
        crop_r, crop_t = r[:, row0:row1, col0:col1], t[:, row0:row1, col0:col1]
        assert psnrs[i] == pytest.approx(peak_signal_noise_ratio(crop_t, crop_r, data_range=1.0), abs=1e-10)
        assert ssims[i] == pytest.approx(skimage_box_ssim(r, t, boxes[i]), abs=1e-10)
        assert nmses[i] == pytest.approx(normalized_root_mse(crop_t, crop_r, normalization="euclidean") ** 2,
                                         rel=1e-10)
    assert psnrs[0] != pytest.approx(psnrs[1]) and ssims[1] != pytest.approx(ssims[2])


def test_invalid_boxes_raise():
    recon, target = pair(frames=2)  # [2, 40, 36]
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(recon, target, box=(0, 10, 0, 36))
    assert np.isfinite(psnr(recon, target, box=(0, 10, 0, 3)))  # small boxes are fine for PSNR and NMSE
    for box in [(0, 41, 0, 36), (-1, 20, 0, 20), (20, 20, 0, 36), (5, 30, 30, 20)]:
        with pytest.raises(ValueError, match="0 <= row0 < row1"):
            psnr(recon, target, box=box)
    with pytest.raises(ValueError, match="shape"):
        batch_nmse(recon[None], target[None], box=[[0, 20, 0, 20]] * 3)
    with pytest.raises(ValueError, match="ints"):
        nmse(recon, target, box=(0.0, 20.0, 0.0, 20.0))
