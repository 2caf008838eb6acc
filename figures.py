"""Every figure of the project (the phantom's own plot aside): sampling masks and aliasing,
reconstructions with profiles and a heart zoom, UNet branch outputs, training curves, per-frame PSNR,
method comparisons (per-cine boxes and paired differences against the best classical method) and
an animated GIF of a cine.

Conventions shared by every figure:

- Cines are ``[T, H, W]`` arrays (numpy or torch, real or complex); magnitudes are shown. Every image
  of one cine shares a grey scale from 0 to the reference's peak magnitude (1 for normalised data).
- Error maps ``|image - reference|`` are amplified ``ERROR_GAIN`` times: their colour scale spans
  0 .. peak / ``ERROR_GAIN`` ('inferno'), and their titles say so (``|error| ×5``).
- PSNR and SSIM in titles are whole-cine values from :func:`metrics.psnr` and :func:`metrics.ssim`
  (heart-box values from the same functions with ``box=``).
- The heart is where the reference moves most: the pixel of largest temporal standard deviation of
  the magnitude, smoothed (:func:`heart_center`); the zoom shows a square box around it
  (:func:`heart_box`), and the x-t and y-t profiles cut through it.
- Figure titles carry the sampling, ``R = 5, 4 centre lines`` (:func:`sampling_label`, or
  :func:`mask_label` measured from a mask).
"""
from __future__ import annotations

import io
import math
import textwrap
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter

from cli import atomic_write
from metrics import frame_psnr, psnr, ssim

ERROR_GAIN = 5  # error maps are shown x5: their scale spans 0 .. peak / 5
HEART_SMOOTHING = 1 / 16  # Gaussian sigma of the motion map, as a fraction of the image height
HEART_BOX = 0.375  # side of the heart zoom box as a fraction of the smaller image side
DPI = 100
PANEL = 2.0  # inches per image panel: 200 px at DPI, about native size for 192 x 192 cines
ROW_COLOUR, COLUMN_COLOUR, BOX_COLOUR = "#00d5ff", "#ff9f1c", "#ffe14d"  # x-t line, y-t line, heart box
GIF_MIN_HEIGHT = 160  # small cines are upscaled (nearest neighbour) to at least this many rows
GIF_GAP = 4  # pixels between GIF panels
GIF_LABEL_HEIGHT = 14  # pixels of the label strip above each GIF panel (and of the caption strip below)
GIF_LEVELS = 128  # grey levels in the GIF: LZW packs noisy images a quarter smaller than with 256
SPIKE_WINDOW = 5  # training curves: a point is compared with the median of this many neighbours


def _array(x) -> np.ndarray:
    """numpy copy of an array or tensor (complex kept)."""
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _magnitude(x) -> np.ndarray:
    return np.abs(_array(x))


def _middle(cine: np.ndarray, frame: int | None) -> int:
    return cine.shape[0] // 2 if frame is None else frame


def _show(ax, image: np.ndarray, title: str = "", **kwargs):
    """imshow without ticks (pixels as blocks when enlarged, antialiased when shrunk); returns the
    image artist (for colorbars)."""
    enlarged = max(image.shape) <= PANEL * DPI
    artist = ax.imshow(image, interpolation="nearest" if enlarged else "antialiased", **kwargs)
    if title:
        ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return artist


def save_figure(fig: Figure, path, dpi: int = DPI) -> None:
    """Save ``fig`` at ``dpi`` through :func:`cli.atomic_write` (a temporary file, then a rename: a
    full disk or a kill never leaves a truncated figure under its name); the format is the suffix's."""
    kind = Path(path).suffix.lower().lstrip(".") or "png"
    atomic_write(Path(path), lambda file: fig.savefig(file, format=kind, dpi=dpi))


def _save(fig: Figure, path) -> None:
    """Save at ``DPI``; a PNG is stored with a 256-colour palette (no visible change, half the bytes).
    Written through :func:`cli.atomic_write`, like every figure."""
    if Path(path).suffix.lower() != ".png":
        save_figure(fig, path)
        return
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    palette = Image.open(buffer).convert("RGB").quantize(256, Image.Quantize.MAXCOVERAGE, dither=Image.Dither.NONE)
    atomic_write(Path(path), lambda file: palette.save(file, format="PNG", optimize=True))


def _with_sampling(title: str, sampling: str) -> str:
    return f"{title} ({sampling})" if sampling else title


def _wrap(text: str, width: int) -> str:
    """``text`` wrapped at ``width`` characters, never inside ``R = 5`` or ``|error| ×5``."""
    glue = "\0"
    kept = text.replace("R = ", f"R{glue}={glue}").replace(" ×", f"{glue}×")
    return textwrap.fill(kept, width).replace(glue, " ")


def _safe_ssim(image, reference, box=None) -> float:
    """SSIM, or NaN where the frame (or box) is smaller than SSIM's 11x11 window."""
    try:
        return ssim(image, reference, box=box)
    except ValueError:
        return float("nan")


# ----------------------------------------------------------------------------- labels
def sampling_label(acceleration: float, center_lines: int) -> str:
    """``R = 5, 4 centre lines``: the sampling in every figure title."""
    return f"R = {acceleration:g}, {center_lines} centre line{'s' if center_lines != 1 else ''}"


def mask_center_lines(mask) -> int:
    """The number of contiguous ky lines around row ``H // 2`` that every frame of a ``[T, H, W]``
    mask samples."""
    lines = _array(mask)[:, :, 0] > 0  # [T, H]
    always = lines.all(0)
    centre = lines.shape[1] // 2
    if not always[centre]:
        return 0
    low = high = centre
    while low > 0 and always[low - 1]:
        low -= 1
    while high < len(always) - 1 and always[high + 1]:
        high += 1
    return int(high - low + 1)


def mask_label(mask) -> str:
    """The sampling of a ``[T, H, W]`` mask as measured from it: ``R = 5.04, 4 centre lines``."""
    mask = _array(mask)
    acceleration = mask.size / max(float(mask.sum()), 1.0)
    return sampling_label(float(f"{acceleration:.3g}"), mask_center_lines(mask))


# ----------------------------------------------------------------------------- the heart
def heart_center(reference) -> tuple[int, int]:
    """(row, column) where the cine moves most: the maximum of the temporal standard deviation of
    the magnitude ``[T, H, W]``, smoothed with a Gaussian of ``HEART_SMOOTHING`` x H pixels.
    A static cine gives the centre of the image."""
    cine = _magnitude(reference).astype(np.float64)
    motion = gaussian_filter(cine.std(axis=0), sigma=max(1.0, HEART_SMOOTHING * cine.shape[1]))
    if not motion.max() > 0:
        return cine.shape[1] // 2, cine.shape[2] // 2
    row, col = np.unravel_index(int(np.argmax(motion)), motion.shape)
    return int(row), int(col)


def heart_box(center: tuple[int, int], shape: tuple[int, int], fraction: float = HEART_BOX) -> tuple[int, int, int, int]:
    """A square box ``(row0, row1, col0, col1)`` (half-open) of side ``fraction`` x the smaller image
    side around ``center``, shifted to lie inside the image of ``shape`` ``(H, W)``."""
    height, width = shape
    side = max(4, min(height, width, round(fraction * min(height, width))))
    row0 = min(max(center[0] - side // 2, 0), height - side)
    col0 = min(max(center[1] - side // 2, 0), width - side)
    return row0, row0 + side, col0, col0 + side


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
    fig.suptitle(f"Variable-density Cartesian sampling (white = sampled), {mask_label(mask)} "
                 f"(R is the mean over frames)")
    save_figure(fig, path, dpi=110)


def plot_aliasing(full, aliased, mask, path, frames=None) -> None:
    """Save fully sampled | zero-filled (aliased) | mask for chosen frames of one cine.

    full, aliased: ``[T, H, W]`` (magnitudes are shown on one grey scale); mask: ``[T, H, W]``.
    frames defaults to the first and middle frame.
    """
    full, aliased, mask = _magnitude(full), _magnitude(aliased), _array(mask)
    frames = [0, full.shape[0] // 2] if frames is None else list(frames)
    psnr_t = frame_psnr(aliased, full)
    vmax = full.max()
    fig = Figure(figsize=(9, 3.1 * len(frames) + 0.4), layout="constrained")
    axes = fig.subplots(len(frames), 3, squeeze=False)
    for row, t in zip(axes, frames):
        _show(row[0], full[t], f"fully sampled, frame {t}", cmap="gray", vmin=0, vmax=vmax)
        _show(row[1], aliased[t], f"zero-filled, {psnr_t[t]:.1f} dB, SSIM "
                                  f"{_safe_ssim(aliased[t:t + 1], full[t:t + 1]):.3f}", cmap="gray", vmin=0, vmax=vmax)
        _show(row[2], mask[t], f"mask, R = {mask[t].size / mask[t].sum():.2f}", cmap="gray", vmin=0, vmax=1)
    fig.suptitle(f"Aliasing of undersampling, {mask_label(mask)} (PSNR and SSIM of the frame)")
    _save(fig, path)


# ----------------------------------------------------------------------------- reconstructions
def plot_reconstructions(images: dict, path, reference=None, *, frame: int | None = None, title: str = "",
                         sampling: str = "", gain: float = ERROR_GAIN, box=None) -> None:
    """One cine, one column per image: the reference (if any), then ``images`` (name -> ``[T, H, W]``,
    dict order: zero-filled, reconstruction, or every method of a comparison).

    Rows: ``frame`` (default: the middle one) with the heart box and the profile lines; with a
    reference, the error map ``|image - reference|`` amplified ``gain`` times; the zoom on the heart;
    the x-t profile along the row through the heart (x across, time down) and the y-t profile along
    its column (y down, time across). Titles give the whole-cine PSNR and SSIM, and the heart box's.
    ``box`` ``(row0, row1, col0, col1)``: the heart box to zoom on and score (default: :func:`heart_box`
    around :func:`heart_center`). Without a reference the heart is found in the last image and there
    are no errors or metrics.
    """
    cines = {name: _magnitude(image) for name, image in images.items()}
    target = None if reference is None else _magnitude(reference)
    if target is not None:
        cines = {"reference (fully sampled)": target, **cines}
    shown = target if target is not None else list(cines.values())[-1]
    frames, height, width = shown.shape
    t = _middle(shown, frame)
    row, col = heart_center(shown)
    box = heart_box((row, col), (height, width)) if box is None else tuple(int(v) for v in box)
    peak = float(shown.max()) or 1.0
    grey = dict(cmap="gray", vmin=0, vmax=peak)
    kinds = ["frame", *(["error"] if target is not None else []), "zoom", "x-t", "y-t"]
    ratios = {"frame": 1.0, "error": 1.0, "zoom": 1.0, "x-t": max(0.45, min(1.0, frames / width)), "y-t": 0.8}
    panel = 1.8
    fig = Figure(figsize=(panel * len(cines) + 1.0, panel * sum(ratios[k] for k in kinds) + 1.3),
                 layout="constrained")
    axes = fig.subplots(len(kinds), len(cines), squeeze=False, height_ratios=[ratios[k] for k in kinds])
    axes = dict(zip(kinds, axes))
    error_artist = None
    for j, (name, cine) in enumerate(cines.items()):
        is_reference = target is not None and j == 0
        if target is not None and not is_reference:
            heading = f"{name}\n{psnr(cine, target):.2f} dB, SSIM {_safe_ssim(cine, target):.3f}"
            zoom_title = f"heart: {psnr(cine, target, box=box):.2f} dB, {_safe_ssim(cine, target, box=box):.3f}"
        else:
            heading, zoom_title = f"{name}\n", ""
        ax = axes["frame"][j]
        _show(ax, cine[t], heading, **grey)
        ax.add_patch(Rectangle((box[2] - 0.5, box[0] - 0.5), box[3] - box[2], box[1] - box[0], fill=False,
                               edgecolor=BOX_COLOUR, linewidth=1.2))
        ax.axhline(row, color=ROW_COLOUR, linewidth=0.8, linestyle=(0, (4, 3)))
        ax.axvline(col, color=COLUMN_COLOUR, linewidth=0.8, linestyle=(0, (4, 3)))
        if "error" in axes:
            ax = axes["error"][j]
            if is_reference:
                ax.axis("off")
                colorbar_axes = ax.inset_axes([0.42, 0.04, 0.1, 0.92])
            else:
                error_artist = _show(ax, np.abs(cine - target)[t], f"|error| ×{gain:g}", cmap="inferno", vmin=0,
                                     vmax=peak / gain)
        ax = axes["zoom"][j]
        _show(ax, cine[t, box[0]:box[1], box[2]:box[3]], zoom_title, **grey)
        for spine in ax.spines.values():
            spine.set_edgecolor(BOX_COLOUR)
            spine.set_linewidth(1.5)
        _show(axes["x-t"][j], cine[:, row, :], aspect="auto", **grey)  # [T, W]: x across, time down
        _show(axes["y-t"][j], cine[:, :, col].T, aspect="auto", **grey)  # [H, T]: y down, time across
        axes["x-t"][j].axhline(t, color="white", linewidth=0.6, alpha=0.5)
        axes["y-t"][j].axvline(t, color="white", linewidth=0.6, alpha=0.5)
    labels = {"frame": f"frame {t}", "error": "", "zoom": "heart zoom (box)",
              "x-t": f"x-t, row {row}\n(time down)", "y-t": f"y-t, column {col}\n(time across)"}
    for kind, label in labels.items():
        if kind in axes:
            axes[kind][0].set_ylabel(label, fontsize=9)
    axes["x-t"][0].yaxis.label.set_color("#0090b0")
    axes["y-t"][0].yaxis.label.set_color("#c87000")
    if error_artist is not None:
        bar = fig.colorbar(error_artist, cax=colorbar_axes)
        bar.set_label(f"|error|, shown ×{gain:g}", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    heading = title or ("Reconstruction" if target is not None else "Reconstruction without a reference")
    detail = ("PSNR, SSIM: whole cine; heart: the yellow box" if target is not None
              else "no reference: no errors, no metrics")
    width = int(12 * fig.get_figwidth())  # characters per line at fontsize 10
    lines = [f"{heading}, {sampling + ', ' if sampling else ''}frame {t}",
             f"{detail}; profiles through the heart (most motion): x-t along the blue row, y-t along the orange column"]
    fig.suptitle("\n".join(_wrap(line, width) for line in lines), fontsize=10)
    _save(fig, path)


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


# ----------------------------------------------------------------------------- curves
def _markers(n: int) -> dict:
    """Point markers when there are few points, so a single epoch or frame still shows."""
    return dict(marker="o", markersize=3) if n <= 40 else {}


def spikes(values, *, log: bool, floor: float) -> np.ndarray:
    """Boolean mask of isolated spikes in a curve: points whose distance from the median of the
    ``SPIKE_WINDOW`` points around them exceeds both ``floor`` and 5 times the median such distance
    (in decades when ``log``). The first point is never a spike (an initial fall is a trend)."""
    v = np.asarray(values, dtype=np.float64)
    v = np.log10(np.maximum(v, 1e-300)) if log else v
    half = SPIKE_WINDOW // 2
    local = np.array([np.median(v[max(0, i - half):i + half + 1]) for i in range(len(v))])
    distance = np.abs(v - local)
    flagged = distance > max(floor, 5 * float(np.median(distance)) if len(v) else floor)
    flagged[:1] = False
    return flagged | ~np.isfinite(v)


def robust_limits(curves: list, *, log: bool, floor: float, margin: float = 0.08) -> tuple[float, float]:
    """Axis limits that hold every point of ``curves`` except isolated spikes (:func:`spikes`), with
    ``margin`` of the range added on each side (in decades when ``log``)."""
    kept = [np.asarray(c, dtype=np.float64)[~spikes(c, log=log, floor=floor)] for c in curves]
    kept = np.concatenate([k[np.isfinite(k)] for k in kept])
    if log:
        kept = np.log10(kept[kept > 0])
    low, high = float(kept.min()), float(kept.max())
    pad = margin * (high - low) if high > low else (0.05 if log else max(0.5, 0.01 * abs(high)))
    low, high = low - pad, high + pad
    return (10 ** low, 10 ** high) if log else (low, high)


def _mark_off_scale(ax, epochs, values, limits, color, name: str) -> list[str]:
    """Draw points outside ``limits`` as triangles at the axis edge; returns their descriptions."""
    notes = []
    for epoch, value in zip(epochs, values):
        if limits[0] <= value <= limits[1]:
            continue
        above = value > limits[1]
        edge = limits[1] if above else limits[0]
        ax.plot(epoch, edge, "^" if above else "v", color=color, markersize=8, clip_on=False, zorder=5)
        notes.append(f"{name} {value:.3g} at epoch {epoch}")
    return notes


def plot_curves(history: list[dict], path, sampling: str = "") -> None:
    """Training curves from per-epoch ``history`` rows (``epoch``, ``train_loss``, ``val_loss``,
    ``val_psnr``, ``lr``): loss (log scale), validation PSNR with the best epoch marked, and the
    learning rate. The loss and PSNR axes are fitted to the curves without their isolated spikes
    (:func:`robust_limits`): a spike is drawn as a triangle at the edge and named in the title."""
    epochs = [row["epoch"] for row in history]
    train_loss = np.array([row["train_loss"] for row in history], dtype=np.float64)
    val_loss = np.array([row["val_loss"] for row in history], dtype=np.float64)
    val_psnr = np.array([row["val_psnr"] for row in history], dtype=np.float64)
    best = int(np.nanargmax(val_psnr))
    style = _markers(len(epochs))
    fig = Figure(figsize=(14, 4.2), layout="constrained")
    ax_loss, ax_psnr, ax_lr = fig.subplots(1, 3)
    ax_loss.plot(epochs, train_loss, label="train", **style)
    ax_loss.plot(epochs, val_loss, label="validation", **style)
    limits = robust_limits([train_loss, val_loss], log=True, floor=0.5)
    ax_loss.set(yscale="log", ylim=limits, xlabel="epoch", ylabel="loss (log scale)")
    off = (_mark_off_scale(ax_loss, epochs, train_loss, limits, "C0", "train")
           + _mark_off_scale(ax_loss, epochs, val_loss, limits, "C1", "validation"))
    ax_loss.set_title("Loss" + (f"\noff scale (▲▼): {'; '.join(off[:3])}{' ...' if len(off) > 3 else ''}"
                                if off else ""), fontsize=10)
    ax_loss.legend()
    ax_psnr.plot(epochs, val_psnr, color="C1", **style)
    ax_psnr.plot(epochs[best], val_psnr[best], "*", color="C3", markersize=12,
                 label=f"best: epoch {epochs[best]}, {val_psnr[best]:.2f} dB")
    limits = robust_limits([val_psnr], log=False, floor=2.0)
    ax_psnr.set(ylim=limits, xlabel="epoch", ylabel="PSNR (dB)")
    off = _mark_off_scale(ax_psnr, epochs, val_psnr, limits, "C1", "PSNR")
    ax_psnr.set_title("Validation PSNR (mean over cines)"
                      + (f"\noff scale (▲▼): {'; '.join(off[:3])}{' ...' if len(off) > 3 else ''}" if off else ""),
                      fontsize=10)
    ax_psnr.legend(loc="lower right")
    lr = [row.get("lr", float("nan")) for row in history]
    ax_lr.plot(epochs, lr, color="C2", **style)
    ax_lr.set(xlabel="epoch", ylabel="learning rate", ylim=(0, 1.08 * (np.nanmax(lr) if np.isfinite(lr).any() else 1)))
    ax_lr.set_title("Learning rate (at the end of each epoch)", fontsize=10)
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    for ax in (ax_loss, ax_psnr, ax_lr):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    fig.suptitle(_with_sampling(f"Training curves, {len(epochs)} epoch{'s' if len(epochs) != 1 else ''}", sampling))
    _save(fig, path)


def plot_frame_psnr(zero_filled: np.ndarray, recon: np.ndarray, path, sampling: str = "") -> None:
    """Per-frame PSNR ``[N, T]`` of N test cines, zero-filled and reconstructed: the mean over cines
    of every frame with a band of +-1 standard deviation over cines (the cines that have the frame:
    NaN marks the frames past a shorter cine's last)."""
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.subplots()
    for name, values, color in (("zero-filled", zero_filled, "C0"), ("reconstruction", recon, "C1")):
        values = np.asarray(values, dtype=np.float64)  # [N, T], NaN past a shorter cine's last frame
        mean, std = np.nanmean(values, 0), np.nanstd(values, 0)
        frames = np.arange(values.shape[1])
        ax.plot(frames, mean, color=color, label=f"{name}, mean {np.nanmean(values):.2f} dB", **_markers(len(frames)))
        ax.fill_between(frames, mean - std, mean + std, color=color, alpha=0.25, linewidth=0)
    ax.set(xlabel="frame", ylabel="PSNR (dB)")
    ax.set_title(_with_sampling(f"Per-frame PSNR over {np.shape(recon)[0]} test cines", sampling)
                 + "\nmean over cines, band: ± 1 std", fontsize=10)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def plot_psnr_boxes(per_method: dict[str, np.ndarray], path, ylabel: str = "PSNR (dB)", sampling: str = "") -> None:
    """Box plot of per-cine values (``per_method``: name -> ``[N]``, dict order) with the cines as
    jittered points and the mean as a white diamond (its value under the method name)."""
    names = list(per_method)
    values = [np.asarray(per_method[name], dtype=np.float64).ravel() for name in names]
    rng = np.random.default_rng(0)
    fig = Figure(figsize=(1.6 * len(names) + 2.4, 4.4), layout="constrained")
    ax = fig.subplots()
    ax.boxplot(values, tick_labels=[f"{n}\nmean {v.mean():.2f}" for n, v in zip(names, values)],
               showmeans=True, showfliers=False, widths=0.5,
               meanprops=dict(marker="D", markerfacecolor="white", markeredgecolor="black", zorder=4))
    for position, v in enumerate(values, start=1):
        ax.scatter(position + rng.uniform(-0.12, 0.12, v.size), v, s=10, color="C0", alpha=0.6, zorder=3)
    ax.set(ylabel=ylabel)
    ax.set_title(_with_sampling(f"Per-cine values, {max(v.size for v in values)} test cines", sampling)
                 + "\nbox: median and quartiles; diamond: mean; dots: cines", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def plot_paired_differences(per_method: dict[str, np.ndarray], baseline: str, path, sampling: str = "",
                            metric: str = "PSNR", unit: str = "dB", title: str = "") -> None:
    """Paired per-cine differences against one method: for every other method of ``per_method``
    (name -> per-cine values ``[N]``, the same cines in the same order), ``value - baseline's value``
    per cine. Left: the differences, one column of dots per method, with their mean ± std and how
    many cines are better. Right: each method's value against the baseline's, with the diagonal."""
    reference = np.asarray(per_method[baseline], dtype=np.float64).ravel()
    others = {name: np.asarray(v, dtype=np.float64).ravel() for name, v in per_method.items() if name != baseline}
    rng = np.random.default_rng(0)
    fig = Figure(figsize=(max(5.0, 1.7 * len(others) + 2.5) + 5.0, 4.8), layout="constrained")
    ax_diff, ax_scatter = fig.subplots(1, 2, width_ratios=[max(1.0, 0.35 * len(others) + 0.6), 1])
    ax_diff.axhline(0, color="black", linewidth=1)
    labels = []
    for position, (name, values) in enumerate(others.items(), start=1):
        diff = values - reference
        better = int((diff > 0).sum())
        color = f"C{position - 1}"
        ax_diff.scatter(position + rng.uniform(-0.15, 0.15, diff.size), diff, s=14, color=color, alpha=0.7, zorder=3)
        ax_diff.errorbar(position + 0.3, diff.mean(), yerr=diff.std(), fmt="D", color="black", markersize=5, capsize=4)
        labels.append(f"{name}\n{diff.mean():+.2f} ± {diff.std():.2f} {unit}\nbetter on {better}/{diff.size}")
        ax_scatter.scatter(reference, values, s=14, color=color, alpha=0.7, label=f"{name} ({better}/{diff.size} above)")
    ax_diff.set_xticks(range(1, len(others) + 1), labels, fontsize=8)
    ax_diff.set_xlim(0.4, len(others) + 0.8)
    ax_diff.set(ylabel=f"{metric} − {metric} of {baseline} ({unit})")
    ax_diff.set_title(f"Per test cine: method − {baseline}\ndots: cines; diamond: mean ± std", fontsize=10)
    ax_diff.grid(axis="y", alpha=0.3)
    everything = np.concatenate([reference, *others.values()])
    low, high = float(everything.min()), float(everything.max())
    pad = 0.05 * (high - low) or 0.5
    ax_scatter.plot([low - pad, high + pad], [low - pad, high + pad], color="black", linewidth=1, label="equal")
    ax_scatter.set(xlim=(low - pad, high + pad), ylim=(low - pad, high + pad), aspect="equal",
                   xlabel=f"{baseline}, {metric} ({unit})", ylabel=f"method, {metric} ({unit})")
    ax_scatter.set_title(f"{metric} per cine (above the line: better than {baseline})", fontsize=10)
    ax_scatter.legend(fontsize=8, loc="upper left")
    ax_scatter.grid(alpha=0.3)
    fig.suptitle(_with_sampling(f"{title or f'Paired {metric} differences against {baseline}'}, "
                                f"{reference.size} test cines", sampling))
    _save(fig, path)


# ----------------------------------------------------------------------------- animation
def _to_uint8(cine: np.ndarray, vmax: float, scale: int, grey_levels: int = GIF_LEVELS) -> np.ndarray:
    """Magnitude ``[T, H, W]`` -> uint8 ``[T, H * scale, W * scale]`` on the grey scale 0 .. vmax."""
    levels = np.round(np.clip(cine / (vmax or 1.0), 0, 1) * (grey_levels - 1))
    return np.round(levels * (255 / (grey_levels - 1))).astype(np.uint8).repeat(scale, axis=1).repeat(scale, axis=2)


def save_gif(target, aliased, recon, path, fps: int = 8, caption: str = "", *, min_height: int = GIF_MIN_HEIGHT,
             grey_levels: int = GIF_LEVELS) -> None:
    """Looping GIF of a cine: reference | zero-filled | reconstruction side by side, one GIF frame
    per cine frame. Inputs ``[T, H, W]`` (real or complex), magnitudes on the reference grey scale,
    upscaled by an integer factor to at least ``min_height`` rows, labelled above each panel;
    ``caption`` (for example the sampling) is written in a strip below the panels. Fewer
    ``grey_levels`` give a smaller file (noise compresses badly).
    ``target=None`` (no reference) leaves the reference panel out and scales to the reconstruction.
    Pillow merges identical consecutive frames, so a static cine gives fewer GIF frames. Written
    through :func:`cli.atomic_write`: never a truncated GIF under ``path``."""
    named = [("reference", target), ("zero-filled", aliased), ("reconstruction", recon)]
    labels, cines = zip(*[(label, _magnitude(x)) for label, x in named if x is not None])
    frames, height, width = cines[0].shape
    scale = max(1, math.ceil(min_height / height))
    vmax = float(cines[0 if target is not None else -1].max())
    panels = [_to_uint8(cine, vmax, scale, grey_levels) for cine in cines]
    panel_width = width * scale
    below = GIF_LABEL_HEIGHT if caption else 0
    canvas = np.full((frames, GIF_LABEL_HEIGHT + height * scale + below,
                      len(panels) * panel_width + (len(panels) - 1) * GIF_GAP), 255, np.uint8)
    for i, panel in enumerate(panels):
        left = i * (panel_width + GIF_GAP)
        canvas[:, GIF_LABEL_HEIGHT:GIF_LABEL_HEIGHT + height * scale, left:left + panel_width] = panel
    images = [Image.fromarray(frame) for frame in canvas]
    for t, image in enumerate(images):
        draw = ImageDraw.Draw(image)
        for i, label in enumerate(labels):
            draw.text((i * (panel_width + GIF_GAP) + 2, 1), label, fill=0)
        counter = f"frame {t}"
        draw.text((canvas.shape[2] - 2 - draw.textlength(counter), 1), counter, fill=96)
        if caption:
            draw.text((2, canvas.shape[1] - GIF_LABEL_HEIGHT + 1), caption, fill=0)
    atomic_write(Path(path), lambda file: images[0].save(file, format="GIF", save_all=True, append_images=images[1:],
                                                        duration=round(1000 / fps), loop=0))


if __name__ == "__main__":
    from cli import not_a_command

    not_a_command("figures.py")
