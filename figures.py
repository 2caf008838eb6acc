"""Every figure of the project (the phantom's own plot aside): sampling masks and aliasing, example
reconstructions (with or without a reference), UNet branch outputs, training curves, per-frame
PSNR, method comparisons and an animated GIF of a cine.

Cines are ``[T, H, W]`` arrays (numpy or torch, real or complex); magnitudes are shown. Every image of
one cine shares a grey scale from 0 to the reference's peak magnitude (1 for normalised data). Error
maps ``|image - reference|`` use a fixed scale, ``ERROR_FRACTION`` of the reference peak, in 'inferno'.
PSNR values in titles are whole-cine values from :func:`metrics.psnr`.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image, ImageDraw

from metrics import frame_psnr, psnr

ERROR_FRACTION = 0.2  # error maps span 0 .. 0.2 x the reference peak
DPI = 100
PANEL = 2.0  # inches per image panel: 200 px at DPI, about native size for 192 x 192 cines
GIF_MIN_HEIGHT = 160  # small cines are upscaled (nearest neighbour) to at least this many rows
GIF_GAP = 4  # pixels between GIF panels
GIF_LABEL_HEIGHT = 14  # pixels of the label strip above each GIF panel
GIF_LEVELS = 128  # grey levels in the GIF: LZW packs noisy images a quarter smaller than with 256


def _array(x) -> np.ndarray:
    """numpy copy of an array or tensor (complex kept)."""
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _magnitude(x) -> np.ndarray:
    return np.abs(_array(x))


def _middle(cine: np.ndarray, frame: int | None) -> int:
    return cine.shape[0] // 2 if frame is None else frame


def _show(ax, image: np.ndarray, title: str, **kwargs):
    """imshow without ticks (pixels as blocks when enlarged, antialiased when shrunk); returns the
    image artist (for colorbars)."""
    enlarged = max(image.shape) <= PANEL * DPI
    artist = ax.imshow(image, interpolation="nearest" if enlarged else "antialiased", **kwargs)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    return artist


def _save(fig: Figure, path) -> None:
    """Save at ``DPI``; a PNG is stored with a 256-colour palette (no visible change, half the bytes)."""
    if Path(path).suffix.lower() != ".png":
        fig.savefig(path, dpi=DPI)
        return
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    palette = Image.open(buffer).convert("RGB").quantize(256, Image.Quantize.MAXCOVERAGE, dither=Image.Dither.NONE)
    palette.save(path, optimize=True)


def _error_title(vmax: float) -> str:
    return f"|error|, 0-{vmax:.2g}"


# ----------------------------------------------------------------------------- sampling
def plot_mask(mask, path, frame: int = 0) -> None:
    """Save one frame's mask (ky x kx) and the ky-t pattern of a ``[T, H, W]`` mask to ``path``."""
    mask = _array(mask)
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
    full, aliased, mask = _magnitude(full), _magnitude(aliased), _array(mask)
    frames = [0, full.shape[0] // 2] if frames is None else list(frames)
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


# ----------------------------------------------------------------------------- image panels
def plot_reconstructions(examples: list[dict], path, frame: int | None = None,
                         title: str = "Test reconstructions") -> None:
    """One row per example cine: fully sampled | zero-filled | reconstruction | |recon - target|.

    examples: dicts with ``index`` (dataset index) and ``target``, ``aliased``, ``recon``, each
    ``[T, H, W]`` (real or complex). ``frame`` (default: the middle frame) is shown; titles give the
    whole-cine PSNR. The error maps of all rows share one scale (one colorbar).
    """
    vmax_error = ERROR_FRACTION * max(_magnitude(e["target"]).max() for e in examples)
    t = _middle(_array(examples[0]["target"]), frame)
    fig = Figure(figsize=(PANEL * 4 + 0.9, (PANEL + 0.3) * len(examples) + 0.4), layout="constrained")
    axes = fig.subplots(len(examples), 4, squeeze=False)
    for row, example in zip(axes, examples):
        target, aliased, recon = (_magnitude(example[key]) for key in ("target", "aliased", "recon"))
        grey = dict(cmap="gray", vmin=0, vmax=target.max())
        _show(row[0], target[t], f"cine {example['index']}: fully sampled", **grey)
        _show(row[1], aliased[t], f"zero-filled, {psnr(aliased, target):.1f} dB", **grey)
        _show(row[2], recon[t], f"reconstruction, {psnr(recon, target):.1f} dB", **grey)
        error = _show(row[3], np.abs(recon - target)[t], _error_title(vmax_error),
                      cmap="inferno", vmin=0, vmax=vmax_error)
    fig.colorbar(error, ax=axes[:, 3], shrink=0.8)
    fig.suptitle(f"{title}, frame {t} (PSNR over the whole cine)")
    _save(fig, path)


def plot_without_reference(zero_filled, recon, path, index: int) -> None:
    """Zero-filled | reconstruction (middle frame) | the reconstruction's x-t profile through the
    middle column, magnitudes ``[T, H, W]`` on one grey scale (no reference to compare with)."""
    zero_filled, recon = _magnitude(zero_filled), _magnitude(recon)
    frames, height, width = recon.shape
    t = frames // 2
    grey = dict(cmap="gray", vmin=0, vmax=recon.max(), interpolation="nearest")
    fig = Figure(figsize=(8.5, 3.2), layout="constrained")
    axes = fig.subplots(1, 3, width_ratios=[1, 1, 0.6])
    axes[0].imshow(zero_filled[t], **grey)
    axes[0].set_title(f"zero-filled, frame {t}", fontsize=10)
    axes[1].imshow(recon[t], **grey)
    axes[1].set_title(f"reconstruction, frame {t}", fontsize=10)
    axes[2].imshow(recon[:, :, width // 2].T, aspect="auto", **grey)
    axes[2].set_title(f"x-t, column {width // 2}", fontsize=10)
    axes[2].set_xlabel("frame")
    for ax in axes:
        ax.set_yticks([])
    for ax in axes[:2]:
        ax.set_xticks([])
    fig.suptitle(f"Cine {index}: reconstruction from measured k-space (no reference)")
    fig.savefig(path, dpi=100)


def plot_branches(real: np.ndarray, imag: np.ndarray, path, frame: int | None = None, title: str = "") -> None:
    """The real- and imaginary-branch outputs of the dual UNet for one cine (``[T, H, W]`` real each):
    two panels of ``frame`` (default: middle), each on its own symmetric grey scale with a colorbar."""
    fig = Figure(figsize=(8, 3.8), layout="constrained")
    for ax, (name, cine) in zip(fig.subplots(1, 2), (("real", _array(real)), ("imaginary", _array(imag)))):
        t = _middle(cine, frame)
        limit = float(np.abs(cine).max()) or 1.0
        artist = _show(ax, cine[t], f"{name} branch, frame {t}", cmap="gray", vmin=-limit, vmax=limit)
        fig.colorbar(artist, ax=ax, shrink=0.85)
    fig.suptitle(title or "Dual UNet branch outputs")
    _save(fig, path)


def plot_method_grid(images: dict[str, np.ndarray], target: np.ndarray, path, frame: int | None = None,
                     title: str = "") -> None:
    """Methods side by side on one cine. Top row: the fully sampled reference, then each method's
    image (``images``: name -> ``[T, H, W]``, dict order) with its whole-cine PSNR. Bottom row: the
    error map ``|method - target|`` of each method on one shared scale."""
    target = _magnitude(target)
    t = _middle(target, frame)
    grey = dict(cmap="gray", vmin=0, vmax=target.max())
    vmax_error = ERROR_FRACTION * target.max()
    fig = Figure(figsize=(PANEL * (len(images) + 1) + 0.9, 2 * PANEL + 1.0), layout="constrained")
    axes = fig.subplots(2, len(images) + 1, squeeze=False)
    _show(axes[0, 0], target[t], "reference (fully sampled)", **grey)
    axes[1, 0].axis("off")
    axes[1, 0].text(0.5, 0.5, f"error maps\n{_error_title(vmax_error)}", ha="center", va="center",
                    transform=axes[1, 0].transAxes)
    for col, (name, image) in enumerate(images.items(), start=1):
        image = _magnitude(image)
        _show(axes[0, col], image[t], f"{name}, {psnr(image, target):.1f} dB", **grey)
        error = _show(axes[1, col], np.abs(image - target)[t], f"{name}: |error|",
                      cmap="inferno", vmin=0, vmax=vmax_error)
    fig.colorbar(error, ax=axes[1, 1:], shrink=0.8)
    fig.suptitle(f"{title or 'Method comparison'}, frame {t}")
    _save(fig, path)


# ----------------------------------------------------------------------------- curves
def _markers(n: int) -> dict:
    """Point markers when there are few points, so a single epoch or frame still shows."""
    return dict(marker="o", markersize=3) if n <= 40 else {}


def plot_curves(history: list[dict], path) -> None:
    """Training curves from per-epoch ``history`` rows (``epoch``, ``train_loss``, ``val_loss``,
    ``val_psnr``): loss vs epoch (log scale) on the left, validation PSNR with the best epoch marked
    on the right."""
    epochs = [row["epoch"] for row in history]
    val_psnr = np.array([row["val_psnr"] for row in history])
    best = int(np.argmax(val_psnr))
    style = _markers(len(epochs))
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax_loss, ax_psnr = fig.subplots(1, 2)
    ax_loss.plot(epochs, [row["train_loss"] for row in history], label="train", **style)
    ax_loss.plot(epochs, [row["val_loss"] for row in history], label="validation", **style)
    ax_loss.set(yscale="log", xlabel="epoch", ylabel="loss (log scale)", title="Loss")
    ax_loss.legend()
    ax_psnr.plot(epochs, val_psnr, color="C1", **style)
    ax_psnr.plot(epochs[best], val_psnr[best], "*", color="C3", markersize=12,
                 label=f"best: epoch {epochs[best]}, {val_psnr[best]:.2f} dB")
    ax_psnr.set(xlabel="epoch", ylabel="PSNR (dB)", title="Validation PSNR (mean over cines)")
    ax_psnr.legend(loc="lower right")
    for ax in (ax_loss, ax_psnr):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    _save(fig, path)


def plot_frame_psnr(zero_filled: np.ndarray, recon: np.ndarray, path) -> None:
    """Per-frame PSNR ``[N, T]`` of N test cines, zero-filled and reconstructed: the mean over cines
    of every frame with a band of +-1 standard deviation over cines."""
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    for name, values, color in (("zero-filled", zero_filled, "C0"), ("reconstruction", recon, "C1")):
        values = np.asarray(values, dtype=np.float64)  # [N, T]
        mean, std = values.mean(0), values.std(0)
        frames = np.arange(values.shape[1])
        ax.plot(frames, mean, color=color, label=f"{name}, mean {values.mean():.2f} dB", **_markers(len(frames)))
        ax.fill_between(frames, mean - std, mean + std, color=color, alpha=0.25, linewidth=0)
    ax.set(xlabel="frame", ylabel="PSNR (dB)",
           title=f"Per-frame PSNR over {np.shape(recon)[0]} test cines (mean, band: ± 1 std)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def plot_psnr_boxes(per_method: dict[str, np.ndarray], path, ylabel: str = "PSNR (dB)") -> None:
    """Box plot of per-cine values (``per_method``: name -> ``[N]``, dict order) with the cines as
    jittered points and the mean as a white diamond (its value under the method name)."""
    names = list(per_method)
    values = [np.asarray(per_method[name], dtype=np.float64).ravel() for name in names]
    rng = np.random.default_rng(0)
    fig = Figure(figsize=(1.6 * len(names) + 2.4, 4.2), layout="constrained")
    ax = fig.subplots()
    ax.boxplot(values, tick_labels=[f"{n}\nmean {v.mean():.2f}" for n, v in zip(names, values)],
               showmeans=True, showfliers=False, widths=0.5,
               meanprops=dict(marker="D", markerfacecolor="white", markeredgecolor="black", zorder=4))
    for position, v in enumerate(values, start=1):
        ax.scatter(position + rng.uniform(-0.12, 0.12, v.size), v, s=10, color="C0", alpha=0.6, zorder=3)
    ax.set(ylabel=ylabel,
           title=f"Per-cine values, {max(v.size for v in values)} cines (box: median and quartiles; diamond: mean)")
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


# ----------------------------------------------------------------------------- animation
def _to_uint8(cine: np.ndarray, vmax: float, scale: int) -> np.ndarray:
    """Magnitude ``[T, H, W]`` -> uint8 ``[T, H * scale, W * scale]`` on the grey scale 0 .. vmax."""
    levels = np.round(np.clip(cine / (vmax or 1.0), 0, 1) * (GIF_LEVELS - 1))
    return np.round(levels * (255 / (GIF_LEVELS - 1))).astype(np.uint8).repeat(scale, axis=1).repeat(scale, axis=2)


def save_gif(target, aliased, recon, path, fps: int = 8) -> None:
    """Looping GIF of a cine: reference | zero-filled | reconstruction side by side, one GIF frame
    per cine frame. Inputs ``[T, H, W]`` (real or complex), magnitudes on the reference grey scale,
    upscaled by an integer factor to at least ``GIF_MIN_HEIGHT`` rows, labelled above each panel.
    ``target=None`` (no reference) leaves the reference panel out and scales to the reconstruction.
    Pillow merges identical consecutive frames, so a static cine gives fewer GIF frames."""
    named = [("reference", target), ("zero-filled", aliased), ("reconstruction", recon)]
    labels, cines = zip(*[(label, _magnitude(x)) for label, x in named if x is not None])
    frames, height, width = cines[0].shape
    scale = max(1, math.ceil(GIF_MIN_HEIGHT / height))
    panels = [_to_uint8(cine, float(cines[0 if target is not None else -1].max()), scale) for cine in cines]
    panel_width = width * scale
    canvas = np.full((frames, GIF_LABEL_HEIGHT + height * scale, len(panels) * panel_width + (len(panels) - 1) * GIF_GAP),
                     255, np.uint8)
    for i, panel in enumerate(panels):
        left = i * (panel_width + GIF_GAP)
        canvas[:, GIF_LABEL_HEIGHT:, left:left + panel_width] = panel
    images = [Image.fromarray(frame) for frame in canvas]
    for t, image in enumerate(images):
        draw = ImageDraw.Draw(image)
        for i, label in enumerate(labels):
            draw.text((i * (panel_width + GIF_GAP) + 2, 1), label, fill=0)
        counter = f"frame {t}"
        draw.text((canvas.shape[2] - 2 - draw.textlength(counter), 1), counter, fill=96)
    images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
