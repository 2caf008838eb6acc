"""Scan-specific self-supervised adaptation of a trained network (``reconstruct.py --adapt=STEPS``).

A network trained on the phantom meets a new scan whose anatomy, contrast and noise it has not
seen. This module fine-tunes it on the scan's own measurements, with no fully sampled reference,
by self-supervised learning via data undersampling (SSDU, Yaman et al. 2020) in its zero-shot,
scan-specific form (ZS-SSL, Yaman et al. 2022):

- the measured ky lines of every frame, centre block excluded, are split once into a held-out set
  ``Gamma`` (``holdout`` of them) that no training step sees, and the rest;
- every step draws a fresh split of the rest into lines the network sees (``Theta``, plus the
  centre block) and lines the loss compares against (``Lambda``, ``loss_fraction`` of them);
  the loss is the normalised L2 + L1 k-space error on ``Lambda``:
  ``||U_L (F x - y)||_2 / ||U_L y||_2 + ||U_L (F x - y)||_1 / ||U_L y||_1``;
- every ``check_every`` steps the network, given every measured line but ``Gamma``, predicts
  ``Gamma``; the weights with the lowest held-out error are kept, and adaptation stops after
  ``patience`` checks without improvement; weights adapted on a band of columns are kept only if
  they also lower the held-out error on all columns (else the checkpoint's weights are returned);
- the final reconstruction uses every measured line and ends with hard data consistency, so it
  keeps every measured sample exactly.

Unmeasured k-space is never read: the inputs are multiplied by the mask first.

Coils: with ``sensitivities`` ``[B, C, H, W]`` the measurements are coil k-space ``[B, C, T, H, W]``
(one mask for every coil), the network gets them with the coil-combined zero-filled cine ``A^H y``
(``models``' coil convention) and the loss compares ``U F (S x)`` with every coil's lines.

Speed: the readout (kx, the image columns) is fully sampled, so the problem separates along x.
Adaptation runs on a band of ``crop`` columns (where the view-shared cine moves most, that is the
heart), which is an exact smaller problem: its k-space is the 1D Fourier transform, along the
cropped columns, of the measured data's hybrid (ky, x) space. A network with an LSNet (learned
L+S) adapts on all columns: its singular-value thresholding couples every pixel, so a band is a
different problem. Its per-iteration thresholds and steps learn at ``models.PHYSICS_LR`` times
``lr`` (``models.parameter_groups``), the CNNs' weights at ``lr``.

Capacity (``features``): a learned L+S or ADMM alone has a few dozen numbers to adapt. With
``features > 0`` the copy gets a small CNN inside each unrolled iteration (``models.add_corrections``:
a :class:`models.SparseCorrection` per iteration, initialised from ``seed``, its head at zero so that
the copy starts as the checkpoint, bit for bit); these CNNs learn from scratch at ``features_lr``
times ``lr`` and, like the rest of the copy, are discarded after the scan's reconstruction. If no
check beats the checkpoint, the checkpoint's own network (without them) reconstructs the scan.
"""
from __future__ import annotations

import copy
import math
import time

import torch

from models import PHYSICS_LR, acts_locally, add_corrections, parameter_groups
from sampling import fft2c, ifft2c, sense_adjoint, sense_forward, view_sharing


# ----------------------------------------------------------------------------- k-space helpers
def _centered_fft1(x: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """Centred orthonormal 1D FFT along the last axis (columns, kx <-> x)."""
    transform = torch.fft.ifft if inverse else torch.fft.fft
    return torch.fft.fftshift(transform(torch.fft.ifftshift(x, dim=-1), dim=-1, norm="ortho"), dim=-1)


def crop_columns(kspace: torch.Tensor, start: int, width: int) -> torch.Tensor:
    """The k-space ``[..., H, width]`` of image columns ``start:start + width`` of the cine whose
    k-space is ``kspace`` ``[..., H, W]``: exact whenever the mask is constant along kx."""
    hybrid = _centered_fft1(kspace, inverse=True)  # [..., ky, x]
    return _centered_fft1(hybrid[..., start:start + width])


class NoHeldOutLines(ValueError):
    """A mask with no measured line outside its fully sampled centre to hold out: nothing can judge
    the adaptation."""


def moving_band(kspace: torch.Tensor, mask: torch.Tensor, width: int, sensitivities=None) -> int:
    """First column of the ``width`` columns where the view-shared cine varies most over time
    (coil k-space ``[B, C, T, H, W]`` with ``sensitivities`` ``[B, C, H, W]``: the coil-combined one)."""
    image = view_sharing(kspace, mask, sensitivities).abs()  # [B, T, H, W]
    motion = image.std(dim=1).sum(dim=(0, 1))  # [W]
    window = torch.nn.functional.conv1d(motion[None, None], torch.ones(1, 1, width))[0, 0]  # [W - width + 1]
    return int(window.argmax())


def row_mask(mask: torch.Tensor) -> torch.Tensor:
    """Sampled ky rows ``[B, T, H]`` (bool) of a Cartesian mask ``[B, T, H, W]``."""
    return mask[..., 0] != 0


def center_block(rows: torch.Tensor) -> slice:
    """The contiguous block of ky rows around the DC row ``H // 2`` that every frame sampled
    (``rows`` ``[B, T, H]`` bool); empty if the DC row is not always sampled."""
    always = rows.flatten(0, -2).all(0)  # [H]
    low = high = rows.shape[-1] // 2
    if not always[low]:
        return slice(low, low)
    while low > 0 and always[low - 1]:
        low -= 1
    while high + 1 < len(always) and always[high + 1]:
        high += 1
    return slice(low, high + 1)


def split_rows(rows: torch.Tensor, fraction: float, center: slice, generator: torch.Generator) -> torch.Tensor:
    """Pick ``round(fraction * n)`` of the ``n`` sampled rows of every frame outside ``center``, and
    at least one where ``n >= 2`` (a frame with few peripheral lines, as in small images, still
    holds one out and keeps one to learn from).

    rows: ``[B, T, H]`` bool; returns the picked rows ``[B, T, H]`` bool (a subset of ``rows``).
    """
    candidates = rows.clone()
    candidates[..., center] = False
    keys = torch.rand(rows.shape, generator=generator, device=rows.device)
    keys[~candidates] = 2.0  # never picked
    available = candidates.sum(-1, keepdim=True)  # [B, T, 1]
    count = (available * fraction).round().long()
    count = torch.where(available >= 2, count.clamp_min(1), count)
    order = keys.argsort(-1).argsort(-1)  # rank of every row among its frame's rows
    return order < count


def _expand(rows: torch.Tensor, width: int) -> torch.Tensor:
    """Rows ``[B, T, H]`` bool -> a float mask ``[B, T, H, W]``."""
    return rows[..., None].expand(*rows.shape, width).float()


def on_coils(mask: torch.Tensor, sensitivities) -> torch.Tensor:
    """A mask ``[B, T, H, W]`` as it multiplies k-space: ``[B, 1, T, H, W]`` for coil k-space
    (``sensitivities`` given), else itself."""
    return mask if sensitivities is None else mask[:, None]


def kspace_error(recon: torch.Tensor, kspace: torch.Tensor, rows: torch.Tensor, sensitivities=None) -> torch.Tensor:
    """Normalised L2 + L1 error of ``F recon`` (with ``sensitivities`` ``[B, C, H, W]``: ``F (S recon)``
    against coil k-space ``[B, C, T, H, W]``) against the measurements on ``rows`` ``[B, T, H]``."""
    expanded = _expand(rows, kspace.shape[-1])  # [B, T, H, W]
    where = on_coils(expanded, sensitivities)
    # U F (S recon): with coils the SENSE operator, which transforms only the compared rows where that pays
    predicted = fft2c(recon) if sensitivities is None else sense_forward(recon, sensitivities, expanded)
    diff = torch.view_as_real((predicted - kspace) * where)
    reference = torch.view_as_real(kspace * where)
    return diff.norm() / reference.norm() + diff.abs().sum() / reference.abs().sum()


# ----------------------------------------------------------------------------- adaptation
def adapt(model: torch.nn.Module, kspace: torch.Tensor, mask: torch.Tensor, *, steps: int = 60,
          lr: float = 2e-5, loss_fraction: float = 0.4, holdout: float = 0.15, check_every: int = 5,
          patience: int = 4, crop: int = 64, seed: int = 0, features: int = 0, features_lr: float = PHYSICS_LR,
          amp_dtype=None, sensitivities=None, log=print) -> tuple[torch.nn.Module, dict]:
    """Fine-tune a copy of ``model`` on one scan's measurements; returns ``(adapted model, info)``.

    kspace: measured k-space ``[B, T, H, W]`` complex (B cines of one scan, e.g. slices);
    mask: ``[B, T, H, W]`` 0/1 (whole ky lines; the centre block that every frame sampled is always
    shown to the network); crop: columns to adapt on (0 or >= W: all); sensitivities: coil maps
    ``[B, C, H, W]`` for coil k-space ``[B, C, T, H, W]`` (see the module docstring); features: give
    each iteration of a learned L+S or ADMM without a CNN inside a :class:`models.SparseCorrection`
    of this many channels (``models.add_corrections``; seeded by ``seed``, heads at zero, so the copy
    starts as the checkpoint), which learns at ``features_lr`` times ``lr``; 0: adapt what the
    checkpoint has. The model's batch normalisation layers, if any, keep their running statistics.
    ``info`` holds the steps run, the step whose weights were kept, the held-out error before and
    after, the seconds, the columns and the parameters of the CNNs added.
    """
    started = time.perf_counter()
    device = kspace.device
    generator = torch.Generator(device=device).manual_seed(seed)
    full = (kspace * on_coils(mask, sensitivities), mask, sensitivities)  # never read unmeasured k-space
    kspace, mask, _ = full
    width = kspace.shape[-1]
    if 0 < crop < width and acts_locally(model):
        start = moving_band(kspace, mask, crop, sensitivities)
        kspace, mask = crop_columns(kspace, start, crop) * on_coils(mask[..., :crop], sensitivities), mask[..., :crop]
        sensitivities = None if sensitivities is None else sensitivities[..., start:start + crop]  # [B, C, H, crop]
    rows = row_mask(mask)  # [B, T, H]
    center = center_block(rows)
    held_out = split_rows(rows, holdout, center, generator)  # Gamma, fixed
    if not held_out.flatten(1).any(1).all():
        raise NoHeldOutLines(f"the mask leaves too few ky lines outside its fully sampled centre to hold "
                         f"{holdout:.0%} of them out: adaptation needs an undersampled periphery")
    trainable = rows & ~held_out

    original, model = model, copy.deepcopy(model)
    model.eval()  # dropout off and batch-norm statistics frozen; gradients still flow
    groups = parameter_groups(model, lr, 0.0)  # an LSNet's or ADMMNet's CS numbers at PHYSICS_LR * lr
    with torch.random.fork_rng(devices=[]):  # the added CNNs' initial weights: by the seed, on the CPU
        torch.manual_seed(seed)
        added = add_corrections(model, features)  # [] for features=0 or a network with CNNs already
    groups += [{"params": added, "lr": features_lr * lr, "weight_decay": 0.0}] if added else []
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(groups)

    def forward(net, data, seen: torch.Tensor) -> torch.Tensor:
        measured, _, maps = data
        seen_mask = _expand(seen, measured.shape[-1])  # [B, T, H, W]
        shown = measured * on_coils(seen_mask, maps)
        # no weight-cast cache: inside a caller's autocast region it would outlive optimiser steps
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None, cache_enabled=False):
            if maps is None:
                return net(ifft2c(shown), shown, seen_mask)
            return net(sense_adjoint(shown, maps, seen_mask), shown, seen_mask, sensitivities=maps)

    def held_out_error(net=model, data=(kspace, mask, sensitivities)) -> float:
        """The error on the held-out lines; infinite where the network's output is not finite."""
        with torch.no_grad():
            try:
                error = float(kspace_error(forward(net, data, trainable), data[0], held_out, data[2]))
            except torch.linalg.LinAlgError:
                return math.inf
        return error if math.isfinite(error) else math.inf

    best_error = first_error = held_out_error()
    best_state, best_step, waited, done = copy.deepcopy(model.state_dict()), 0, 0, 0
    for done in range(1, steps + 1):
        loss_rows = split_rows(trainable, loss_fraction, center, generator)  # Lambda
        try:
            loss = kspace_error(forward(model, (kspace, mask, sensitivities), trainable & ~loss_rows), kspace,
                                loss_rows, sensitivities)
        except torch.linalg.LinAlgError:  # an eigendecomposition of non-finite values: the step diverged
            loss = torch.tensor(float("nan"))
        if not torch.isfinite(loss):
            log(f"adapt step {done}: the loss is not finite; the best weights so far are kept")
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if done % check_every == 0 or done == steps:
            error = held_out_error()
            log(f"adapt step {done}: loss {loss.item():.4f}, held-out k-space error {error:.4f}")
            if error < best_error:
                best_error, best_state, best_step, waited = error, copy.deepcopy(model.state_dict()), done, 0
            else:
                waited += 1
                if waited >= patience:
                    break
    model.load_state_dict(best_state)
    if best_step and kspace.shape[-1] < width:  # adapted on a band of columns: check the whole scan too
        before, after = held_out_error(original, full), held_out_error(model, full)
        if not after < before:
            log(f"adaptation rejected: on all {width} columns the held-out k-space error would rise from "
                f"{before:.4f} to {after:.4f}; the checkpoint's weights are kept")
            best_step, best_error = 0, first_error
    if not best_step:  # the checkpoint's own network, without the added CNNs (their heads are still zero)
        model = copy.deepcopy(original)
    info = {"steps": done, "kept_step": best_step, "held_out_error_before": first_error,
            "held_out_error_after": best_error, "seconds": time.perf_counter() - started,
            "columns": int(kspace.shape[-1]), "added_parameters": sum(p.numel() for p in added)}
    return model.eval(), info


if __name__ == "__main__":
    from cli import not_a_command

    not_a_command("adapt.py", "adaptation runs with python reconstruct.py --adapt=STEPS or python compare.py NAME "
                               "--adapt=STEPS")
