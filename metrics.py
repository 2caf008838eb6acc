"""Image-quality metrics for cines, computed on magnitudes, over the whole frame or a box.

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
- NMSE of a cine: ``||recon - target||^2 / ||target||^2`` over all frames and pixels (the squared
  scikit-image ``normalized_root_mse(target, recon, normalization="euclidean")``; fastMRI's NMSE
  is the same formula on the volume).
- Region of interest (``box=``, e.g. a box around the heart): ``(row0, row1, col0, col1)``,
  half-open, in pixels of the frame; one box ``[4]`` for every cine or one per cine ``[B, 4]``
  (tensor, array or sequence of ints); the same box in every frame. With a box:
  PSNR uses the MSE over the box pixels of all frames and keeps ``data_range`` as the peak (not
  the box's maximum); NMSE sums both norms over the box pixels; SSIM averages the SSIM map of the
  *whole* frame over the box pixels whose window lies inside the image. The map is not computed on
  the cropped box because cropping would give the box artificial borders and drop its outer
  5-pixel ring from the average, a large share of a heart-sized box; so every box pixel counts
  with its true neighbourhood, as in whole-image SSIM. Boxes smaller than the 11x11 window raise
  a ``ValueError`` for SSIM: such a region's windows would mostly see what surrounds it.
  A box covering the whole frame gives the whole-image values.
- Computed in float64 with torch, on whatever device the inputs live.
- ``summarize`` reports the mean and the population standard deviation (``np.std``) over cines.
"""
from __future__ import annotations

import numpy as np
import torch

SSIM_SIGMA = 1.5
SSIM_RADIUS = int(3.5 * SSIM_SIGMA + 0.5)  # 5: an 11-tap window, as in scikit-image
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _magnitude64(x) -> torch.Tensor:
    x = torch.as_tensor(x)
    return (x.abs() if x.is_complex() else x).to(torch.float64)


def _box_mask(box, batch: int, height: int, width: int, device, min_size: int = 1) -> torch.Tensor:
    """Boolean ``[B, H, W]`` mask of the half-open boxes ``[4]`` or ``[B, 4]`` (see module docstring)."""
    box = torch.as_tensor(box, device=device)
    if box.is_floating_point() or box.is_complex() or box.shape not in ((4,), (batch, 4)):
        raise ValueError(f"box must be ints (row0, row1, col0, col1), shape [4] or [{batch}, 4], "
                         f"got {box.dtype} {list(box.shape)}")
    boxes = box.long().expand(batch, 4)  # [B, 4]
    row0, row1, col0, col1 = boxes.unbind(1)  # each [B]
    inside = (row0 >= 0) & (row1 <= height) & (col0 >= 0) & (col1 <= width)
    if not bool((inside & (row1 - row0 >= 1) & (col1 - col0 >= 1)).all()):
        raise ValueError(f"every box needs 0 <= row0 < row1 <= {height} and 0 <= col0 < col1 <= {width}, "
                         f"got {box.tolist()}")
    if not bool(((row1 - row0 >= min_size) & (col1 - col0 >= min_size)).all()):
        raise ValueError(f"boxes must be at least {min_size}x{min_size} pixels (the SSIM window), "
                         f"got {box.tolist()}")
    return box_pixels(boxes, height, width)


def box_pixels(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Boolean ``[B, H, W]`` mask of the half-open boxes ``[B, 4]`` (row0, row1, col0, col1), on
    their device, unchecked and without host synchronisation (for the training loss)."""
    row0, row1, col0, col1 = boxes.unbind(1)  # each [B]
    rows = torch.arange(height, device=boxes.device)
    cols = torch.arange(width, device=boxes.device)
    in_rows = (rows >= row0[:, None]) & (rows < row1[:, None])  # [B, H]
    in_cols = (cols >= col0[:, None]) & (cols < col1[:, None])  # [B, W]
    return in_rows[:, :, None] & in_cols[:, None, :]


def _cine_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean per cine of ``[B, T, h, w]`` values over all frames and the pixels of ``mask`` ``[B, h, w]``
    (all pixels when ``None``) -> ``[B]``."""
    if mask is None:
        return values.flatten(1).mean(1)
    values = values.reshape(mask.shape[0], -1, *mask.shape[1:])  # [B, T, h, w], T the product of middle dims
    return (values * mask[:, None]).flatten(1).sum(1) / (mask.flatten(1).sum(1) * values.shape[1])


def batch_psnr(recon, target, data_range: float = 1.0, *, box=None) -> torch.Tensor:
    """PSNR per cine, whole frame or ``box``: ``[B, T, H, W]`` inputs -> float64 ``[B]`` in dB."""
    recon, target = _magnitude64(recon), _magnitude64(target)
    mask = None if box is None else _box_mask(box, target.shape[0], *target.shape[-2:], target.device)
    mse = _cine_mean((recon - target).pow(2), mask)
    return 10 * torch.log10(data_range ** 2 / mse)


def batch_nmse(recon, target, *, box=None) -> torch.Tensor:
    """NMSE ``||recon - target||^2 / ||target||^2`` per cine, whole frame or ``box``:
    ``[B, T, H, W]`` inputs -> float64 ``[B]``."""
    recon, target = _magnitude64(recon), _magnitude64(target)
    mask = None if box is None else _box_mask(box, target.shape[0], *target.shape[-2:], target.device)
    return _cine_mean((recon - target).pow(2), mask) / _cine_mean(target.pow(2), mask)


def frame_psnr(recon, target, data_range: float = 1.0) -> np.ndarray:
    """PSNR of every frame of one cine: ``[T, H, W]`` -> numpy ``[T]`` in dB."""
    return batch_psnr(_magnitude64(recon), _magnitude64(target), data_range).cpu().numpy()


def _gaussian_window(device) -> torch.Tensor:
    offsets = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=torch.float64, device=device)
    window = torch.exp(-offsets ** 2 / (2 * SSIM_SIGMA ** 2))
    return window / window.sum()  # [11]


def _filter(images: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter, valid region only: ``[N, 1, H, W]`` -> ``[N, 1, H-10, W-10]``, as two
    products with banded matrices (float64 convolutions are slow on a CPU: 7x, docs/speed.md)."""
    return _band(images.shape[-2], window) @ images @ _band(images.shape[-1], window).T


def _band(size: int, window: torch.Tensor) -> torch.Tensor:
    """The valid 1D correlation with ``window`` (``k`` taps) as a matrix ``[size - k + 1, size]``."""
    rows, taps = size - len(window) + 1, len(window)
    columns = torch.arange(rows, device=window.device)[:, None] + torch.arange(taps, device=window.device)  # [rows, k]
    band = torch.zeros(rows, size, dtype=window.dtype, device=window.device)
    return band.scatter_(1, columns, window.expand(rows, taps))


def batch_ssim(recon, target, data_range: float = 1.0, *, box=None) -> torch.Tensor:
    """SSIM per cine (mean of per-frame 2D SSIM), whole frame or ``box``: ``[B, T, H, W]`` -> float64 ``[B]``."""
    recon, target = _magnitude64(recon), _magnitude64(target)
    batch, frames, height, width = target.shape
    if min(height, width) <= 2 * SSIM_RADIUS:
        raise ValueError(f"SSIM needs frames larger than {2 * SSIM_RADIUS + 1} pixels, got {height}x{width}")
    mask = None
    if box is not None:  # the box restricted to the pixels whose window lies inside the image
        full = _box_mask(box, batch, height, width, target.device, min_size=2 * SSIM_RADIUS + 1)
        mask = full[:, SSIM_RADIUS:height - SSIM_RADIUS, SSIM_RADIUS:width - SSIM_RADIUS]  # [B, H-10, W-10]
    x = recon.reshape(batch * frames, 1, height, width)
    y = target.reshape(batch * frames, 1, height, width)
    window = _gaussian_window(x.device)
    mu_x, mu_y = _filter(x, window), _filter(y, window)
    var_x = _filter(x * x, window) - mu_x ** 2
    var_y = _filter(y * y, window) - mu_y ** 2
    cov_xy = _filter(x * y, window) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return _cine_mean(ssim_map.reshape(batch, frames, height - 2 * SSIM_RADIUS, width - 2 * SSIM_RADIUS), mask)


def psnr(recon, target, data_range: float = 1.0, *, box=None) -> float:
    """PSNR in dB of one cine ``[T, H, W]`` against its reference (magnitudes), whole frame or ``box`` ``[4]``."""
    return float(batch_psnr(_magnitude64(recon)[None], _magnitude64(target)[None], data_range, box=box)[0])


def ssim(recon, target, data_range: float = 1.0, *, box=None) -> float:
    """SSIM of one cine ``[T, H, W]``: the mean of its per-frame 2D SSIM (see module docstring), whole frame or
    ``box`` ``[4]``."""
    return float(batch_ssim(_magnitude64(recon)[None], _magnitude64(target)[None], data_range, box=box)[0])


def nmse(recon, target, *, box=None) -> float:
    """NMSE of one cine ``[T, H, W]`` against its reference (magnitudes), whole frame or ``box`` ``[4]``."""
    return float(batch_nmse(_magnitude64(recon)[None], _magnitude64(target)[None], box=box)[0])


def summarize(values) -> tuple[float, float]:
    """Mean and population standard deviation of per-cine values."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(values.std())


def format_summary(label: str, values, digits: int = 4) -> str:
    """The study's report line: ``PSNR: mean = 29.0812, std = 1.9311``."""
    mean, std = summarize(values)
    return f"{label}: mean = {mean:.{digits}f}, std = {std:.{digits}f}"


# ----------------------------------------------------------------------------- the CMRxRecon ranking protocol
CMRXRECON_FRAMES = 3  # the first frames of a cine that CMRxRecon scores


def _matlab_round(value: float) -> int:
    """MATLAB's ``round``: halves away from zero (Python's rounds them to even)."""
    return int(np.floor(value + 0.5))


def cmrxrecon_slices(count: int) -> list[int]:
    """The slices of a file of ``count`` slices that CMRxRecon scores: the central two,
    ``round(count / 2) - 1 : round(count / 2)`` in MATLAB's 1-based indices, or all when fewer than 3."""
    if count < 3:
        return list(range(count))
    middle = _matlab_round(count / 2)
    return [middle - 2, middle - 1]


def cmrxrecon_crop(images: np.ndarray) -> np.ndarray:
    """The centre ``round(H / 2) x round(W / 3)`` of images ``[..., H, W]`` (H ky rows, W kx readout
    columns: CMRxRecon's ``round(sy / 2) x round(sx / 3)`` of MATLAB ``(sx, sy)`` = (readout, phase
    encoding)), cut about the centre pixel ``(H // 2, W // 2)`` as ``formats.crop_or_pad`` cuts."""
    height, width = images.shape[-2:]
    rows, columns = _matlab_round(height / 2), _matlab_round(width / 3)
    top, left = height // 2 - rows // 2, width // 2 - columns // 2
    return images[..., top:top + rows, left:left + columns]


def cmrxrecon_scores(recon: np.ndarray, reference: np.ndarray) -> tuple[float, float, float]:
    """PSNR, SSIM and NMSE of one cine by the CMRxRecon ranking protocol (its challenge code, cited in
    docs/training.md): magnitudes ``[T, H, W]`` (the reference: root sum of squares of the fully
    sampled coil images), cropped by :func:`cmrxrecon_crop`, the first ``CMRXRECON_FRAMES`` frames;
    every frame of each image divided by its own maximum, then scikit-image's PSNR (data range 1),
    SSIM (its default 7x7 uniform window, data range 1; a crop smaller than 7 pixels a side, as tiny
    test images give, takes the largest odd window it holds) and ``||x - y||^2 / ||y||^2``, averaged
    over the frames."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    scores = []
    for mine, theirs in zip(cmrxrecon_crop(np.abs(recon))[:CMRXRECON_FRAMES],
                            cmrxrecon_crop(np.abs(reference))[:CMRXRECON_FRAMES]):
        mine, theirs = (frame.astype(np.float64) / frame.max() for frame in (mine, theirs))
        window = min(7, min(theirs.shape) - (1 - min(theirs.shape) % 2))  # 7, or the largest odd side of a tiny crop
        scores.append((peak_signal_noise_ratio(theirs, mine, data_range=1.0),
                       structural_similarity(theirs, mine, data_range=1.0, win_size=window) if window >= 3 else np.nan,
                       float(np.sum((theirs - mine) ** 2) / np.sum(theirs ** 2))))
    return tuple(float(value) for value in np.mean(scores, axis=0))


if __name__ == "__main__":
    from cli import not_a_command

    not_a_command("metrics.py")
