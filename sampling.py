"""Cartesian k-space sampling for dynamic MRI: centered FFTs, variable-density masks, undersampling.

Conventions used throughout the project:

- A cine is ``[T, H, W]`` and a batch ``[B, T, H, W]``; the last two axes are image rows (y) and
  columns (x).
- Phase encoding runs along the rows: a Cartesian mask samples whole k-space lines ky, so
  ``mask[..., ky, :]`` is all 0 or all 1. The readout kx (columns) is always fully sampled.
- ``F = fftshift . fft2(norm="ortho") . ifftshift`` over the last two axes: centered (DC at
  ``(H // 2, W // 2)``) and unitary, so ``F^-1 = F^H`` and energy is preserved (Parseval).
- The acquisition is ``y = U F m`` and the zero-filled (aliased) image ``b = F^-1 U F m``, with
  ``U`` the binary mask (1 = sampled, 0 = not).

Functions accept numpy arrays or torch tensors and return the same kind.
"""
from __future__ import annotations

import math

import numpy as np
import torch

DENSITIES = ("gaussian", "polynomial")
REFERENCE_HEIGHT = 192  # the study's image height, at which 11 centre lines are used


# ----------------------------------------------------------------------------- FFT
def fft2c(image):
    """Centered orthonormal 2D FFT over the last two axes: image ``[..., H, W]`` -> k-space.

    numpy arrays and torch tensors (real or complex) are accepted; half-precision tensors are
    promoted to float32 because torch has no bf16/fp16 FFT for arbitrary sizes.
    """
    return _centered_fft2(image, inverse=False)


def ifft2c(kspace):
    """Centered orthonormal inverse 2D FFT over the last two axes: k-space ``[..., H, W]`` -> image."""
    return _centered_fft2(kspace, inverse=True)


def _centered_fft2(x, inverse: bool):
    """``fftshift(fft2(ifftshift(x), norm="ortho"))`` over the last two axes (``ifft2`` if inverse)."""
    if isinstance(x, torch.Tensor):
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        transform = torch.fft.ifft2 if inverse else torch.fft.fft2
        shifted = torch.fft.ifftshift(x, dim=(-2, -1))
        return torch.fft.fftshift(transform(shifted, norm="ortho"), dim=(-2, -1))
    transform = np.fft.ifft2 if inverse else np.fft.fft2
    shifted = np.fft.ifftshift(x, axes=(-2, -1))
    return np.fft.fftshift(transform(shifted, norm="ortho"), axes=(-2, -1))


def undersample(images, mask):
    """Retrospective undersampling ``b = F^-1 U F m``.

    images: ``[T, H, W]`` or ``[B, T, H, W]``, real or complex (numpy or torch).
    mask:   0/1 array broadcastable to ``images`` (``[T, H, W]`` or ``[B, T, H, W]``).
    Returns ``(aliased, kspace)``: the complex zero-filled image and the sampled k-space
    ``U F m`` (zeros on unsampled lines), both shaped like ``images``.
    """
    kspace = fft2c(images) * mask
    return ifft2c(kspace), kspace


# ----------------------------------------------------------------------------- masks
def lines_per_frame(height: int, acceleration: float) -> int:
    """Number of ky lines sampled in every frame: ``round(H / acceleration)``."""
    return int(round(height / acceleration))


def scaled_center_lines(height: int, center_lines_at_reference: int = 11) -> int:
    """Centre lines for an image of ``height`` rows that keep the fraction of k-space that
    ``center_lines_at_reference`` lines cover at the study's 192 rows (11 at 192 -> 4 at 64)."""
    return max(1, int(round(center_lines_at_reference * height / REFERENCE_HEIGHT)))


def check_sampling(height: int, acceleration: float, center_lines: int) -> None:
    """Raise ``ValueError`` with a clear message if the sampling request is impossible."""
    if not (isinstance(acceleration, (int, float)) and math.isfinite(acceleration)) or acceleration < 1:
        raise ValueError(f"acceleration must be a number >= 1, got {acceleration!r}")
    if int(center_lines) != center_lines or center_lines < 0:
        raise ValueError(f"center_lines must be a non-negative integer, got {center_lines!r}")
    if center_lines > height:
        raise ValueError(f"center_lines={center_lines} is more than the {height} k-space rows of the image")
    budget = lines_per_frame(height, acceleration)
    if center_lines > budget:
        raise ValueError(
            f"acceleration={acceleration:g} allows round({height}/{acceleration:g}) = {budget} lines per frame, "
            f"fewer than center_lines={center_lines}: lower the acceleration or the centre lines")


def center_rows(height: int, center_lines: int) -> slice:
    """Rows of the fully sampled centre block, placed around the DC row ``height // 2``."""
    start = height // 2 - center_lines // 2
    return slice(start, start + center_lines)


def line_density(height: int, center_lines: int, density: str = "gaussian", *, sigma: float = 0.3,
                 uniform: float = 0.05, decay: float = 3.0) -> np.ndarray:
    """Probability of drawing each ky row outside the centre block: float64 ``[H]``, sums to 1,
    zero on the centre rows. ``k = (ky - H // 2) / (H / 2)`` is the normalised distance from DC.

    - ``"gaussian"``: ``exp(-k^2 / (2 sigma^2)) + uniform``: a Gaussian around DC on a uniform floor,
      the kt-FOCUSS-style density used for dynamic MRI (DC-CNN, CRNN).
    - ``"polynomial"``: ``(1 - |k| / k_max)^decay`` with ``k_max`` just beyond the edge so every row
      keeps a non-zero chance (Lustig-style polynomial variable density).
    """
    k = (np.arange(height) - height // 2) / (height / 2)
    if density == "gaussian":
        pdf = np.exp(-k ** 2 / (2 * sigma ** 2)) + uniform
    elif density == "polynomial":
        pdf = (1 - np.abs(k) / (np.abs(k).max() + 1 / height)) ** decay
    else:
        raise ValueError(f"density must be one of {DENSITIES}, got {density!r}")
    pdf[center_rows(height, center_lines)] = 0
    return pdf / pdf.sum()


class MaskSampler:
    """Draws single-frame Cartesian masks ``[num, H, W]`` (float32 0/1) on one device.

    Each mask holds the ``center_lines`` central rows plus ``round(H / acceleration) -
    center_lines`` rows drawn without replacement from :func:`line_density`, by Gumbel-top-k
    (equivalent to sequential weighted sampling without replacement). The draw is vectorised
    over masks and stays on ``device``: no host round trip inside a training loop.
    """

    def __init__(self, height: int, width: int, acceleration: float = 5, center_lines: int = 11,
                 density: str = "gaussian", device=None, **density_kw):
        check_sampling(height, acceleration, center_lines)
        self.height, self.width = height, width
        self.n_random = lines_per_frame(height, acceleration) - center_lines
        self.center = center_rows(height, center_lines)
        with np.errstate(divide="ignore"):
            log_p = np.log(line_density(height, center_lines, density, **density_kw))
        self.log_p = torch.from_numpy(log_p).to(device=device, dtype=torch.float32)  # [H], -inf at centre

    def __call__(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``num`` independent masks, float32 ``[num, H, W]``; ``generator`` lives on the device."""
        device = self.log_p.device
        uniform = torch.rand((num, self.height), generator=generator, device=device).clamp_(min=1e-12)
        keys = self.log_p - torch.log(-torch.log(uniform))  # [num, H]: log p + Gumbel noise
        rows = torch.zeros((num, self.height), device=device)
        if self.n_random > 0:
            rows.scatter_(1, keys.topk(self.n_random, dim=1).indices, 1.0)
        rows[:, self.center] = 1.0
        return rows[:, :, None].expand(num, self.height, self.width).contiguous()


def variable_density_mask(shape=(20, 192, 192), acceleration: float = 5.0, center_lines: int = 11,
                          seed: int = 0, density: str = "gaussian", **density_kw) -> np.ndarray:
    """Per-frame variable-density random Cartesian mask: float32 numpy ``[T, H, W]`` of 0s and 1s.

    Every frame samples exactly ``round(H / acceleration)`` whole ky lines (38 at H=192, 5x): the
    ``center_lines`` central lines plus lines drawn from ``density`` (see :func:`line_density`),
    a different draw for every frame. The same ``seed`` gives the same mask.
    Raises ``ValueError`` for impossible requests (acceleration < 1, too many centre lines).
    """
    frames, height, width = shape
    sampler = MaskSampler(height, width, acceleration, center_lines, density, **density_kw)
    return sampler(frames, torch.Generator().manual_seed(int(seed))).numpy()


# ----------------------------------------------------------------------------- figures
def plot_mask(mask, path, frame: int = 0) -> None:
    """Save one frame's mask (ky x kx) and the ky-t pattern of a ``[T, H, W]`` mask to ``path``."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    mask = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask)
    frames, height, width = mask.shape
    ky_t = mask[:, :, 0].T  # [H, T]
    lines = int(ky_t[:, frame].sum())
    fig = Figure(figsize=(10, 4.5), layout="constrained")
    ax_frame, ax_kt = fig.subplots(1, 2, width_ratios=[1, 1.3])
    ax_frame.imshow(mask[frame], cmap="gray", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    ax_frame.set(title=f"frame {frame}: {lines}/{height} lines (R = {height / lines:.2f})",
                 xlabel="kx (readout, fully sampled)", ylabel="ky (phase encoding)")
    ax_kt.imshow(ky_t, cmap="gray", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    ax_kt.set(title=f"ky-t pattern: {frames} frames, a different draw per frame",
              xlabel="frame t", ylabel="ky (phase encoding)")
    ax_kt.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"Variable-density Cartesian sampling (white = sampled), "
                 f"mean R = {mask.size / mask.sum():.2f}")
    fig.savefig(path, dpi=110)


def plot_aliasing(full, aliased, mask, path, frames=None) -> None:
    """Save fully sampled | zero-filled (aliased) | mask for chosen frames of one cine.

    full, aliased: ``[T, H, W]`` (magnitudes are shown on one grey scale); mask: ``[T, H, W]``.
    frames defaults to the first and middle frame.
    """
    from matplotlib.figure import Figure

    from metrics import frame_psnr

    full, aliased, mask = (np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a)
                           for a in (full, aliased, mask))
    frames = [0, full.shape[0] // 2] if frames is None else list(frames)
    full, aliased = np.abs(full), np.abs(aliased)
    psnr_t = frame_psnr(aliased, full)
    vmax = full.max()
    fig = Figure(figsize=(9, 3.1 * len(frames)), layout="constrained")
    axes = fig.subplots(len(frames), 3, squeeze=False)
    for row, t in zip(axes, frames):
        row[0].imshow(full[t], cmap="gray", vmin=0, vmax=vmax)
        row[0].set_title(f"fully sampled, frame {t}")
        row[1].imshow(aliased[t], cmap="gray", vmin=0, vmax=vmax)
        row[1].set_title(f"zero-filled, {psnr_t[t]:.1f} dB")
        row[2].imshow(mask[t], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        row[2].set_title(f"mask, R = {mask[t].size / mask[t].sum():.2f}")
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    import sys
    from pathlib import Path

    from cli import UserError, cli_errors, keyword_defaults, parse_overrides

    with cli_errors():
        args = sys.argv[1:]
        target = Path(args[0] if args and not args[0].startswith("--") else "docs/mask.png")
        options = keyword_defaults(variable_density_mask)  # the function's defaults, with shape as frames, size
        options["frames"], options["size"], _ = options.pop("shape")
        options.update(parse_overrides([a for a in args if a.startswith("--")], options))
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            mask = variable_density_mask((options["frames"], options["size"], options["size"]),
                                         options["acceleration"], options["center_lines"], options["seed"],
                                         options["density"])
        except ValueError as error:
            raise UserError(f"sampling: {error}") from None
        plot_mask(mask, target)
        print(f"wrote {target}")
