"""Image-quality metrics for cines, computed on magnitudes.

What is computed, precisely (the README repeats this):

- Inputs are cines ``[T, H, W]`` (or batches ``[B, T, H, W]`` for the ``batch_*`` functions);
  complex inputs are reduced to their magnitude first. Nothing is clipped or renormalised: data
  are normalised so each reference cine has peak magnitude 1 and ``data_range=1.0`` by default.
- PSNR of a cine: ``10 log10(data_range^2 / MSE)`` with the MSE over all frames and pixels of the
  cine (scikit-image ``peak_signal_noise_ratio`` on the 3D array).
- SSIM of a cine: the mean over frames of 2D SSIM with an 11x11 Gaussian window (sigma 1.5,
  truncated at 3.5 sigma), K1 = 0.01, K2 = 0.03, population covariances, averaged over the pixels
  whose window lies inside the image (scikit-image ``structural_similarity(...,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`` per frame, then the mean).
- Computed in float64 with torch, on whatever device the inputs live.
- ``summarize`` reports the mean and the population standard deviation (``np.std``) over cines.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

SSIM_SIGMA = 1.5
SSIM_RADIUS = int(3.5 * SSIM_SIGMA + 0.5)  # 5: an 11-tap window, as in scikit-image
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _magnitude64(x) -> torch.Tensor:
    x = torch.as_tensor(x)
    return (x.abs() if x.is_complex() else x).to(torch.float64)


def batch_psnr(recon, target, data_range: float = 1.0) -> torch.Tensor:
    """PSNR per cine: ``[B, T, H, W]`` inputs -> float64 ``[B]`` in dB."""
    recon, target = _magnitude64(recon), _magnitude64(target)
    mse = (recon - target).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range ** 2 / mse)


def frame_psnr(recon, target, data_range: float = 1.0) -> np.ndarray:
    """PSNR of every frame of one cine: ``[T, H, W]`` -> numpy ``[T]`` in dB."""
    return batch_psnr(_magnitude64(recon), _magnitude64(target), data_range).cpu().numpy()


def _gaussian_window(device) -> torch.Tensor:
    offsets = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=torch.float64, device=device)
    window = torch.exp(-offsets ** 2 / (2 * SSIM_SIGMA ** 2))
    return window / window.sum()  # [11]


def _filter(images: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter, valid region only: ``[N, 1, H, W]`` -> ``[N, 1, H-10, W-10]``."""
    images = F.conv2d(images, window.view(1, 1, -1, 1))
    return F.conv2d(images, window.view(1, 1, 1, -1))


def batch_ssim(recon, target, data_range: float = 1.0) -> torch.Tensor:
    """SSIM per cine (mean of per-frame 2D SSIM): ``[B, T, H, W]`` -> float64 ``[B]``."""
    recon, target = _magnitude64(recon), _magnitude64(target)
    batch, frames, height, width = target.shape
    if min(height, width) <= 2 * SSIM_RADIUS:
        raise ValueError(f"SSIM needs frames larger than {2 * SSIM_RADIUS + 1} pixels, got {height}x{width}")
    x = recon.reshape(batch * frames, 1, height, width)
    y = target.reshape(batch * frames, 1, height, width)
    window = _gaussian_window(x.device)
    mu_x, mu_y = _filter(x, window), _filter(y, window)
    var_x = _filter(x * x, window) - mu_x ** 2
    var_y = _filter(y * y, window) - mu_y ** 2
    cov_xy = _filter(x * y, window) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return ssim_map.reshape(batch, -1).mean(1)


def psnr(recon, target, data_range: float = 1.0) -> float:
    """PSNR in dB of one cine ``[T, H, W]`` against its reference (magnitudes)."""
    return float(batch_psnr(_magnitude64(recon)[None], _magnitude64(target)[None], data_range)[0])


def ssim(recon, target, data_range: float = 1.0) -> float:
    """SSIM of one cine ``[T, H, W]``: the mean of its per-frame 2D SSIM (see module docstring)."""
    return float(batch_ssim(_magnitude64(recon)[None], _magnitude64(target)[None], data_range)[0])


def summarize(values) -> tuple[float, float]:
    """Mean and population standard deviation of per-cine values."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(values.std())


def format_summary(label: str, values, digits: int = 4) -> str:
    """The study's report line: ``PSNR: mean = 29.0812, std = 1.9311``."""
    mean, std = summarize(values)
    return f"{label}: mean = {mean:.{digits}f}, std = {std:.{digits}f}"
