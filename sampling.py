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
- Data consistency ``DC(x) = F^-1((1 - U) F x + U y)`` replaces the sampled lines of an image's
  k-space by the measurements.
- Coils (SENSE): coil ``c`` sees ``S_c x``, so ``y_c = U F (S_c x)``. Sensitivities are
  ``[..., C, H, W]`` (static over the frames) and coil k-space ``[..., C, T, H, W]``: the coil
  axis sits before the frames, so the cine operators above act on every coil alike. One coil of
  sensitivity 1 is the single-coil model.

This module holds the physics that the dataset, the networks and the classical baselines share:
FFTs, masks, undersampling, view sharing, data consistency and the SENSE coil operators.
Functions accept numpy arrays or torch tensors and return the same kind, except
:func:`data_consistency` and :func:`sense_data_consistency` (torch only).

    python sampling.py [PATH] [--frames=20 --size=192 --acceleration=5 ...]   # draws a mask figure
"""
from __future__ import annotations

import functools
import inspect
import math
from pathlib import Path

import numpy as np
import torch

from cli import Option, UserError, cli_errors, make_folder, options_from_signature, run_command

DENSITIES = ("gaussian", "polynomial")
MASK_TYPES = ("variable_density", "uniform")  # random lines from a density, new in every frame | equispaced (CMRxRecon)
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


def data_consistency(image: torch.Tensor, kspace: torch.Tensor, mask: torch.Tensor, *,
                     centered: bool = True) -> torch.Tensor:
    """``DC(x) = F^-1((1 - U) F x + U y)``: the k-space of ``image`` with its sampled lines replaced
    by the measurements ``kspace``, back in the image domain; every result keeps the measured
    k-space exactly.

    image, kspace: complex tensors ``[..., H, W]``; mask: 0/1 (float or bool), broadcastable.
    ``centered=False`` uses plain orthonormal FFTs, for cines already ``ifftshift``-ed in (H, W)
    (where the classical solvers run, see baselines.py).
    """
    forward, inverse = _ffts(centered)
    return inverse(torch.where(mask.bool(), kspace, forward(image)))


def _ffts(centered: bool):
    """``(F, F^-1)``: the centred FFTs, or the plain orthonormal ones (torch) of the solvers' shifted domain."""
    return (fft2c, ifft2c) if centered else (_plain_fft2, _plain_ifft2)


def _plain_fft2(x: torch.Tensor) -> torch.Tensor:
    return torch.fft.fft2(x, norm="ortho")


def _plain_ifft2(x: torch.Tensor) -> torch.Tensor:
    return torch.fft.ifft2(x, norm="ortho")


def view_sharing(kspace, mask, sensitivities=None):
    """k-t view sharing: every frame keeps its measured lines, and each k-space location it did not
    sample is filled with the mean over the frames that sampled it (the temporal average; DC-CNN's
    data sharing over all frames); locations no frame sampled stay zero.

    ``F^-1 (y_t + (1 - U_t) sum_s y_s / sum_s U_s)`` for ``kspace`` / ``mask`` ``[T, H, W]`` or
    ``[B, T, H, W]`` (entries of ``kspace`` off the mask are ignored). Keeps the sampled k-space
    exactly, has no parameters, and is exact for a static object. Returns the complex cine, shaped
    like ``kspace``.

    With ``sensitivities`` ``[..., C, H, W]``: ``kspace`` is coil k-space ``[..., C, T, H, W]``
    (mask ``[..., T, H, W]``, the same for every coil), each coil is view-shared and the result is
    their combination :func:`coil_combine`, ``[..., T, H, W]``.
    """
    was_numpy = not isinstance(kspace, torch.Tensor)
    kspace = torch.as_tensor(kspace)
    shared = ifft2c(shared_kspace(kspace, mask, coils=sensitivities is not None))
    if sensitivities is not None:
        shared = coil_combine(shared, torch.as_tensor(sensitivities, device=kspace.device))
    return shared.numpy() if was_numpy else shared


def shared_kspace(kspace: torch.Tensor, mask, *, coils: bool = False) -> torch.Tensor:
    """The k-space of :func:`view_sharing`: ``y_t + (1 - U_t) sum_s y_s / sum_s U_s`` over the frames
    (axis -3) of ``kspace`` ``[..., T, H, W]`` (``coils``: ``[..., C, T, H, W]`` with one mask
    ``[..., T, H, W]`` for every coil); location by location, so it holds in any k-space ordering
    (centred or ``ifftshift``-ed)."""
    sampled = torch.as_tensor(mask, device=kspace.device) != 0  # [..., T, H, W]
    if coils:
        sampled = sampled[..., None, :, :, :]  # [..., 1, T, H, W]: every coil
    sampled = sampled.expand(kspace.shape)
    measured = torch.where(sampled, kspace, 0)
    counts = sampled.sum(-3, keepdim=True)  # [..., 1, H, W]: frames that sampled each location
    mean = measured.sum(-3, keepdim=True) / counts.clamp_min(1)  # [..., 1, H, W]
    return torch.where(sampled, measured, mean)


# ----------------------------------------------------------------------------- coils (SENSE)
def coil_images(image, sensitivities):
    """``S x``: the image seen by every coil, ``[..., C, T, H, W]``.

    image: ``[..., T, H, W]``; sensitivities: ``[..., C, H, W]`` (one map per coil, static over
    the frames). numpy or torch, complex.
    """
    return image[..., None, :, :, :] * sensitivities[..., :, None, :, :]


def coil_combine(images, sensitivities):
    """``S^H x_c = sum_c conj(S_c) x_c``: coil images ``[..., C, T, H, W]`` -> ``[..., T, H, W]``
    (the adjoint of :func:`coil_images`; sensitivities ``[..., C, H, W]``)."""
    return (sensitivities[..., :, None, :, :].conj() * images).sum(-4)


def _accepts_numpy(operator):
    """Let a torch SENSE operator take numpy arrays too: they run as tensors (torch's FFTs and the row
    path of :class:`RowSense`), and the result is numpy when the first argument was."""
    @functools.wraps(operator)
    def wrapped(first, *args, **kwargs):
        if isinstance(first, torch.Tensor):
            return operator(first, *args, **kwargs)
        tensors = [torch.from_numpy(a if a.flags.c_contiguous and a.flags.writeable else np.array(a, order="C"))
                   if isinstance(a, np.ndarray) else a for a in (np.asarray(first), *args)]
        return operator(*tensors, **kwargs).numpy()
    return wrapped


@_accepts_numpy
def sense_forward(image, sensitivities, mask, *, centered: bool = True, rows: bool | None = None):
    """The SENSE acquisition ``A x = U F (S x)``: image ``[..., T, H, W]`` -> coil k-space
    ``[..., C, T, H, W]`` (zeros off the mask).

    sensitivities: ``[..., C, H, W]``; mask: 0/1 ``[..., T, H, W]``, the same for every coil.
    One coil of sensitivity 1 is the single-coil model ``U F x`` with a coil axis of length 1.
    ``centered=False``: plain FFTs, for everything ``ifftshift``-ed in (H, W), as in
    :func:`data_consistency`. ``rows`` (here and in the other SENSE operators): ``True``: transform
    only the sampled ky rows (:class:`RowSense`) whenever the mask is made of whole rows; ``None``
    (the default): where that was measured to be faster; ``False``: the 2D FFT of every coil, for any
    mask. All give the same result to float precision.
    """
    operator = RowSense.of(mask, sensitivities, image.shape[:-3], image.shape[-3:], centered, (image,), rows)
    if operator is not None:
        return operator.forward(image)
    forward, _ = _ffts(centered)
    return forward(coil_images(image, sensitivities)) * mask[..., None, :, :, :]


@_accepts_numpy
def sense_adjoint(kspace, sensitivities, mask, *, centered: bool = True, rows: bool | None = None):
    """``A^H y = sum_c conj(S_c) F^-1 (U y_c)``: coil k-space ``[..., C, T, H, W]`` -> the
    coil-combined image ``[..., T, H, W]`` (zero-filled when ``y`` is undersampled)."""
    operator = RowSense.of(mask, sensitivities, kspace.shape[:-4], kspace.shape[-3:], centered, (kspace,), rows)
    if operator is not None:
        return operator.apply(None, operator.measured(kspace))
    _, inverse = _ffts(centered)
    return coil_combine(inverse(kspace * mask[..., None, :, :, :]), sensitivities)


@_accepts_numpy
def sense_normal(image, sensitivities, mask, *, centered: bool = True, rows: bool | None = None):
    """``A^H A x = S^H F^-1 U F S x`` (``U^2 = U``: one mask product): image ``[..., T, H, W]`` ->
    ``[..., T, H, W]``; ``centered`` and ``rows`` as in :func:`sense_forward`."""
    operator = RowSense.of(mask, sensitivities, image.shape[:-3], image.shape[-3:], centered, (image,), rows)
    if operator is not None:
        return operator.apply(image, None)
    forward, inverse = _ffts(centered)
    kspace = forward(coil_images(image, sensitivities)) * mask[..., None, :, :, :]  # [..., C, T, H, W]
    return coil_combine(inverse(kspace), sensitivities)


def gradient_dc(image: torch.Tensor, kspace: torch.Tensor, mask: torch.Tensor, step=1.0, *, sensitivities=None,
                centered: bool = True, rows: bool | None = None) -> torch.Tensor:
    """One gradient step on ``1/2 ||A x - y||^2``: ``x - step A^H (A x - y)``, the data step of the
    proximal-gradient solvers (Otazo et al. 2015) and of the learned L+S.

    ``A = U F`` (single coil: image and kspace ``[..., T, H, W]``), or ``A = U F S`` with
    ``sensitivities`` ``[..., C, H, W]`` (kspace ``[..., C, T, H, W]``, one mask ``[..., T, H, W]``
    for every coil). ``||A|| <= 1`` when ``sum_c |S_c|^2 <= 1``, so a step in ``(0, 2)`` never
    increases the data error. Single coil, ``step = 1`` is :func:`data_consistency` (``U`` is a
    projection: the step lands exactly on the measurements), and ``0 < step < 1`` moves the
    sampled lines part of the way. ``step``: a number or a tensor broadcastable to ``image``;
    ``centered`` and ``rows`` as in :func:`sense_forward`.
    """
    single = sensitivities is None
    coil_kspace = kspace[..., None, :, :, :] if single else kspace  # [..., C, T, H, W]
    lead = np.broadcast_shapes(image.shape[:-3], coil_kspace.shape[:-4])
    operator = RowSense.of(mask, sensitivities, lead, image.shape[-3:], centered, (image, kspace), rows,
                           binary=single)
    if operator is not None:
        return image - step * operator.apply(image, operator.measured(coil_kspace))
    forward, inverse = _ffts(centered)
    if single:
        residual = torch.where(mask.bool(), forward(image) - kspace, 0)  # [..., T, H, W] U (F x - y)
        return image - step * inverse(residual)
    residual = (forward(coil_images(image, sensitivities)) - kspace) * mask[..., None, :, :, :]  # U (A x - y)
    return image - step * coil_combine(inverse(residual), sensitivities)


# When rows=None picks the row path (RowSense), measured against the general path (docs/speed.md):
ROW_PATH_MAX_FRACTION = 1 / 3  # no frame samples more than a third of the ky rows (the matrix products grow with them)
ROW_PATH_MIN_BYTES = 8 * 2 ** 20  # and the coil images of the call fill at least 8 MiB (smaller ones gain nothing)
FRAME_BLOCK_BYTES = 8 * 2 ** 20  # coil images per block of frames and per thread, at most BLOCK_LIMIT_BYTES:
BLOCK_LIMIT_BYTES = 24 * 2 ** 20  # temporaries reused from the heap (below glibc's 32 MiB mmap threshold)


class RowSense:
    """``A = U F S`` for a Cartesian mask of whole ky rows with a fully sampled readout, computed on
    the sampled rows only.

    ``U`` is constant along kx, so it commutes with the kx FFT, and ``F^-1 U F = F_y^-1 U F_y``: the
    kx transform cancels in ``A^H A`` and in the gradient step, which need 1D transforms along ky
    only, and only of the rows that some frame samples. With ``E_t`` the ``n`` rows of the (centred
    or plain) orthonormal ky DFT matrix that frame ``t`` samples (``n`` ~ ``H / R``) and ``w_t`` the
    mask's value on them, ``A^H (A x - y) = S^H E_t^H w_t (E_t S x - F_x^-1 y_rows)``: two matrix
    products of ``[n, H]`` with ``[H, W]`` per coil and frame instead of two 2D FFTs, and the
    measurements enter through a 1D inverse FFT along kx of their sampled rows. The coil images are
    formed in blocks of frames, ``FRAME_BLOCK_BYTES`` per torch thread (3 frames at 8 coils and 192
    px on one thread): the temporaries are reused from the heap instead of allocated afresh (a fresh
    47 MB coil cine costs a third of its 2D FFT in page faults), and each block's operations are
    large enough for the threads to share.

    The SENSE operators of this module take it with ``rows=True`` whenever the mask is constant along
    each row (checked: one comparison over the mask), and by default (``rows=None``) where it was
    measured to be faster than the general path (docs/speed.md): torch tensors on the CPU, at least 2
    coils, at most ``ROW_PATH_MAX_FRACTION`` of the rows in any frame (the matrix products grow with
    them, the FFT does not) and coil images of at least ``ROW_PATH_MIN_BYTES`` in the call. Elsewhere
    (any other mask, one coil, small or densely sampled cines, GPUs, where the check would synchronise
    the device and cuFFT is fast) the operators take the general 2D FFT path. Differentiable in the
    image, the k-space and the maps.
    """

    def __init__(self, index, weight, dft, maps, lead, shape, centered: bool):
        self.index = index  # [L, T, n] long: each frame's sampled rows (ascending), then unsampled rows as padding
        self.weight = weight  # [L, T, n, 1] real: the mask's value on each of those rows (0 on the padding)
        self.dft = dft  # [L, T, n, H] complex: those rows of the orthonormal ky DFT (E_t)
        self.maps = maps  # [L, C, H, W] complex, or None for one coil of sensitivity 1
        self.conj_maps = None if maps is None else maps.conj().resolve_conj()  # [L, C, H, W]: S^H's, once
        self.lead, self.shape, self.centered = lead, shape, centered  # leading axes (L = their product), (T, H, W)

    @classmethod
    def of(cls, mask, sensitivities, lead, shape, centered: bool, operands=(), rows: bool | None = None,
           binary: bool = False) -> RowSense | None:
        """The operator for ``mask`` (broadcastable to ``[*lead, T, H, W]``) and ``sensitivities``
        ``[..., C, H, W]`` (None: one unit coil), or None where the general path runs: ``rows=False``,
        a mask that is not made of whole rows, or with ``rows=None`` where the row path does not pay
        (see the class). It computes in complex128 if any of these or of ``operands`` (the image, the
        k-space) is in double precision, else in complex64. ``binary``: every sampled row weighs 1
        (the single-coil gradient step's ``U``), else the mask's value."""
        coils = 1 if sensitivities is None else sensitivities.shape[-3]
        if rows is False or not isinstance(mask, torch.Tensor) or mask.ndim < 3:
            return None
        if rows is None and (mask.device.type != "cpu" or coils < 2):
            return None
        if not bool((mask == mask[..., :1]).all()):
            return None  # not whole ky rows
        frames, height, width = shape
        maps_lead = () if sensitivities is None else sensitivities.shape[:-3]
        lead = np.broadcast_shapes(lead, mask.shape[:-3], maps_lead)
        values = mask[..., 0].expand(*lead, frames, height).reshape(-1, frames, height)  # [L, T, H]
        sampled = values != 0
        count = int(sampled.sum(-1).max()) if sampled.numel() else 0
        coil_bytes = len(values) * coils * frames * height * width * torch.complex64.itemsize
        if rows is None and (count > ROW_PATH_MAX_FRACTION * height or coil_bytes < ROW_PATH_MIN_BYTES):
            return None
        index = torch.argsort((~sampled).to(torch.uint8), dim=-1, stable=True)[..., :count]  # [L, T, n]
        double = any(t is not None and t.dtype in (torch.float64, torch.complex128)
                     for t in (mask, sensitivities, *operands))
        dtype = torch.complex128 if double else torch.complex64
        weight = torch.gather(sampled if binary else values, -1, index)[..., None].to(dtype.to_real())  # [L, T, n, 1]
        maps = None
        if sensitivities is not None:
            per_cine = sensitivities.shape[-3:]  # (C, H, W)
            maps = sensitivities.to(dtype).expand(*lead, *per_cine).reshape(-1, *per_cine)
        dft = _ky_dft(height, centered, dtype, mask.device)[index]  # [L, T, n, H]
        return cls(index, weight, dft, maps, tuple(lead), shape, centered)

    def measured(self, kspace: torch.Tensor) -> torch.Tensor:
        """``F_x^-1 y`` on each frame's sampled rows: coil k-space ``[..., C, T, H, W]`` -> ``[L, C, T, n, W]``
        (hybrid ky-x space)."""
        coils, frames, _, width = kspace.shape[-4:]
        count = self.index.shape[-1]
        index = self.index.reshape(*self.lead, 1, frames, count, 1).expand(*self.lead, coils, frames, count, width)
        picked = torch.gather(kspace.expand(*self.lead, *kspace.shape[-4:]), -2, index)  # [*lead, C, T, n, W]
        picked = picked.reshape(-1, coils, frames, count, width).to(self.dft.dtype)
        return _column_fft(picked, inverse=True, centered=self.centered)

    def apply(self, image: torch.Tensor | None, measured: torch.Tensor | None) -> torch.Tensor:
        """``S^H E^H w (E S x - m)``, i.e. ``A^H (A x - y)`` with ``m = measured(y)``; without ``measured``
        ``A^H A x``, and without ``image`` ``S^H E^H w m = A^H y``. image: ``[..., T, H, W]``. Returns
        ``[*lead, T, H, W]``."""
        if image is not None:
            image = image.to(self.dft.dtype).expand(*self.lead, *self.shape).reshape(-1, *self.shape)  # [L, T, H, W]

        def block(cines: slice, frames: slice) -> torch.Tensor:  # [l, t, H, W]
            dft = self.dft[cines, frames][:, None]  # [l, 1, t, n, H]
            if image is None:
                residual = measured[cines, :, frames]  # [l, C, t, n, W]
            else:
                residual = dft @ self._coil_images(image[cines, frames], cines)  # [l, C, t, n, W]
                if measured is not None:
                    residual = residual - measured[cines, :, frames]
            return self._combine(dft.mH @ (residual * self.weight[cines, frames][:, None]), cines)

        return self._in_blocks(block, dim=1).reshape(*self.lead, *self.shape)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``U F S x``: image ``[..., T, H, W]`` -> coil k-space ``[*lead, C, T, H, W]``, zeros off the mask."""
        image = image.to(self.dft.dtype).expand(*self.lead, *self.shape).reshape(-1, *self.shape)  # [L, T, H, W]
        height, width = self.shape[1:]

        def block(cines: slice, frames: slice) -> torch.Tensor:  # [l, C, t, H, W]
            coil = self._coil_images(image[cines, frames], cines)  # [l, C, t, H, W]
            hybrid = self.dft[cines, frames][:, None] @ coil  # [l, C, t, n, W]
            sampled = _column_fft(hybrid, inverse=False, centered=self.centered) * self.weight[cines, frames][:, None]
            index = self.index[cines, frames][:, None, :, :, None].expand(sampled.shape)
            return sampled.new_zeros(*sampled.shape[:3], height, width).scatter(-2, index, sampled)

        coils = 1 if self.maps is None else self.maps.shape[1]
        return self._in_blocks(block, dim=2).reshape(*self.lead, coils, *self.shape)

    def _coil_images(self, image: torch.Tensor, cines: slice) -> torch.Tensor:
        """``S x`` of a block ``[l, t, H, W]`` -> ``[l, C, t, H, W]``."""
        return image[:, None] if self.maps is None else coil_images(image, self.maps[cines])

    def _combine(self, images: torch.Tensor, cines: slice) -> torch.Tensor:
        """``S^H``: ``[l, C, t, H, W]`` -> ``[l, t, H, W]``."""
        return images[:, 0] if self.maps is None else (self.conj_maps[cines, :, None] * images).sum(1)

    def _in_blocks(self, block, dim: int) -> torch.Tensor:
        """``block(cines, frames)`` over ``[L, T]`` in blocks of ``FRAME_BLOCK_BYTES`` of coil images per
        thread (at most ``BLOCK_LIMIT_BYTES``), concatenated (frames along ``dim``, cines along 0)."""
        frames, height, width = self.shape
        coils = 1 if self.maps is None else self.maps.shape[1]
        block_bytes = min(FRAME_BLOCK_BYTES * torch.get_num_threads(), BLOCK_LIMIT_BYTES)
        per_block = max(1, block_bytes // (coils * height * width * self.dft.element_size()))
        cines = len(self.index)
        if per_block >= frames:
            group = per_block // frames
            return torch.cat([block(slice(b, b + group), slice(None)) for b in range(0, cines, group)])
        return torch.cat([torch.cat([block(slice(b, b + 1), slice(t, t + per_block))
                                     for t in range(0, frames, per_block)], dim) for b in range(cines)])


@functools.lru_cache(maxsize=32)
def _ky_dft(height: int, centered: bool, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The orthonormal 1D DFT along ky as a matrix ``[H, H]`` (column ``h``: the transform of a unit
    impulse at row ``h``), centred as :func:`fft2c` or plain, computed in double precision."""
    impulses = torch.eye(height, dtype=torch.complex128)
    matrix = (torch.fft.fftshift(torch.fft.fft(torch.fft.ifftshift(impulses, dim=0), dim=0, norm="ortho"), dim=0)
              if centered else torch.fft.fft(impulses, dim=0, norm="ortho"))
    return matrix.to(device=device, dtype=dtype)


def _column_fft(x: torch.Tensor, *, inverse: bool, centered: bool) -> torch.Tensor:
    """The orthonormal 1D FFT along kx (the last axis), centred as :func:`fft2c` or plain."""
    transform = torch.fft.ifft if inverse else torch.fft.fft
    if not centered:
        return transform(x, dim=-1, norm="ortho")
    return torch.fft.fftshift(transform(torch.fft.ifftshift(x, dim=-1), dim=-1, norm="ortho"), dim=-1)


CG_TOLERANCE = 100  # a CG frame has converged at a residual of CG_TOLERANCE float epsilons (relative)


def sense_data_consistency(image: torch.Tensor, kspace: torch.Tensor, sensitivities: torch.Tensor,
                           mask: torch.Tensor, *, lam=0.0, iterations: int = 10, centered: bool = True,
                           rows: bool | None = None) -> torch.Tensor:
    """SENSE data consistency: ``iterations`` conjugate-gradient steps, started at ``z = image``, on

        ``(A^H A + lam I) x = A^H y + lam z``,  i.e.  ``x = argmin ||A x - y||^2 + lam ||x - z||^2``

    (the proximal step of the data term at ``z``). ``A^H A + lam I`` acts on each frame of each
    cine alone, so every frame ``[H, W]`` runs its own CG (step sizes ``[..., T, 1, 1]``). With a
    mask of whole ky rows (``rows``, :class:`RowSense`, prepared once for every step) CG transforms
    the sampled rows only, in the inputs' own layout; otherwise it runs on ``ifftshift``-ed inputs
    with plain FFTs (the same operator, permuted; a centred FFT's shifts would cost more than the
    FFT itself), and the result is shifted back. ``centered=False``: the inputs are already
    ``ifftshift``-ed in (H, W) (the solvers' domain) and so is the result.
    A frame stops once its residual is below ``CG_TOLERANCE`` eps of its right-hand side
    ``||A^H y + lam z||`` (float rounding): past that point the residual is rounding error, partly in the
    null space of ``A^H A`` (with ``lam = 0``, the k-space that no coil measured), along which CG's
    steps would grow without bound.

    With one coil of sensitivity 1 the system is diagonal in k-space and CG solves it exactly in
    at most two steps: ``lam = 0`` gives hard data consistency (:func:`data_consistency`) and
    ``lam = 1 / w`` the soft one ``k = (F z + w y) / (1 + w)`` on the sampled lines.

    image: ``z`` ``[..., T, H, W]`` complex; kspace: ``y`` ``[..., C, T, H, W]``; sensitivities:
    ``[..., C, H, W]``; mask: 0/1 ``[..., T, H, W]``; lam: a number or a tensor broadcastable to
    ``[..., T, 1, 1]`` (>= 0; differentiable). Returns ``x``, shaped like ``image``.
    """
    lead = np.broadcast_shapes(image.shape[:-3], kspace.shape[:-4])
    operator = RowSense.of(mask, sensitivities, lead, image.shape[-3:], centered, (image, kspace), rows)
    if operator is None and centered:
        shift = dict(dim=(-2, -1))
        shifted = (torch.fft.ifftshift(t, **shift) for t in (image, kspace, sensitivities, mask))
        return torch.fft.fftshift(sense_data_consistency(*shifted, lam=lam, iterations=iterations, centered=False,
                                                         rows=False), **shift)

    def normal(v):  # (A^H A + lam I) v: [..., T, H, W]
        if operator is None:
            return sense_normal(v, sensitivities, mask, centered=False, rows=False) + lam * v
        return operator.apply(v, None) + lam * v

    x = image
    adjoint = (sense_adjoint(kspace, sensitivities, mask, centered=False, rows=False) if operator is None
               else operator.apply(None, operator.measured(kspace)))  # A^H y: [..., T, H, W]
    right_side = adjoint + lam * image
    residual = right_side - normal(x)
    direction = residual
    residual_norm = _frame_dot(residual, residual)  # [..., T, 1, 1]
    floor = (CG_TOLERANCE * torch.finfo(residual_norm.dtype).eps) ** 2 * _frame_dot(right_side, right_side)
    for _ in range(iterations):
        product = normal(direction)
        step = torch.where(residual_norm > floor, _safe_ratio(residual_norm, _frame_dot(direction, product)), 0)
        x = x + step * direction
        residual = residual - step * product
        new_norm = _frame_dot(residual, residual)
        direction = residual + _safe_ratio(new_norm, residual_norm) * direction
        residual_norm = new_norm
    return x


def _frame_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``Re <a, b>`` per frame: ``[..., H, W]`` -> real ``[..., 1, 1]``."""
    return (a.conj() * b).real.sum((-2, -1), keepdim=True)


def _safe_ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``numerator / denominator``, 0 where the denominator is 0 (a converged frame); finite
    gradients everywhere."""
    positive = denominator > 0
    return torch.where(positive, numerator / torch.where(positive, denominator, 1), 0)


def whiten_coils(kspace, covariance):
    """Noise prewhitening: ``L^-1 y`` over the coil axis, with ``covariance = L L^H`` (Cholesky)
    the receivers' noise covariance ``[C, C]`` (or ``[..., C, C]``, per cine). The whitened coils
    have uncorrelated noise of unit variance (in the units of ``covariance``), so least squares on
    them (the SENSE solvers) is the maximum-likelihood fit. Estimate the sensitivities from the
    whitened k-space (:func:`estimate_sensitivities`), as BART's and sigpy's pipelines do: the
    coils the data now hold are ``L^-1 S``, and since estimated maps have a root sum of squares of
    1, the image they give is ``x sqrt(S^H covariance^-1 S)``: the cine times a smooth shading.

    kspace: ``[..., C, T, H, W]``, numpy or torch; returns the same kind and shape.
    """
    if isinstance(kspace, torch.Tensor):
        covariance = torch.as_tensor(covariance, device=kspace.device)
        unmix = torch.linalg.inv(torch.linalg.cholesky(covariance)).to(kspace.dtype)  # [..., C, C]
    else:
        unmix = np.linalg.inv(np.linalg.cholesky(covariance)).astype(kspace.dtype)
    coils = kspace.reshape(*kspace.shape[:-3], -1)  # [..., C, T H W]
    return (unmix @ coils).reshape(kspace.shape)


def calibration_lines(mask) -> int:
    """The number ``n`` of central k-space rows that every frame samples whole, counted as
    :func:`center_rows` places a centre block (rows ``H // 2 - n // 2`` on): the calibration
    region of the data's own (time-averaged) centre. mask: 0/1 ``[T, H, W]``, numpy or torch."""
    always = (_to_numpy(mask) != 0).all(axis=(0, 2))  # [H]: rows every frame samples
    lines = 0
    while lines < len(always) and always[center_rows(len(always), lines + 1)].all():
        lines += 1
    return lines


def estimate_sensitivities(kspace, mask, *, kernel_width: int = 6, threshold: float = 0.02, crop: float = 0.0,
                           resolution: int = 64):
    """Coil sensitivities from the data's own fully sampled centre, by ESPIRiT (Uecker et al. 2014)
    as sigpy implements it (``sigpy.mri.app.EspiritCalib``, one set of maps).

    The calibration data are the :func:`calibration_lines` central rows, which every frame samples,
    averaged over the frames (the k-space of the temporal mean image): a square of that many rows
    and columns around DC, as sigpy takes it. The kernel is ``kernel_width`` wide, at most half the
    calibration lines (6 from 12 lines on; 11 lines at 192 rows give 5), since too few kernel
    positions leave ESPIRiT's eigenvalues inside the body short of 1. ``threshold``: singular values
    kept, relative to the largest. ``crop``: maps set to zero where the eigenvalue is below it; 0
    (the default) keeps them everywhere, since with 11 calibration lines sigpy's usual 0.95 blanks
    much of the body (with 24 lines 0.8-0.95 is safe and zeroes the background).
    ``resolution``: the maps are computed on the central ``resolution`` k-space rows and columns
    (the same field of view in coarser pixels; never fewer than the calibration lines) and
    interpolated to ``H x W`` (:func:`interpolate_maps`): smooth maps lose nothing (correlation
    0.9975 with the simulated maps at 192 x 192 either way) and 8 coils at 192 x 192 take 0.2 s
    instead of 2-3 s.

    kspace: coil k-space ``[..., C, T, H, W]``; mask: 0/1 broadcastable to ``[..., T, H, W]``.
    Returns complex64 maps ``[..., C, H, W]`` with ``sum_c |S_c|^2 = 1`` where not cropped and the
    phase of coil 0 removed (sigpy's convention), numpy or torch (on the k-space's device) like
    ``kspace``. Raises ``ValueError`` with fewer than 4 calibration lines.
    """
    from sigpy.mri.app import EspiritCalib  # sigpy (and numba) only when estimating

    was_torch = isinstance(kspace, torch.Tensor)
    coil_kspace = _to_numpy(kspace)  # [..., C, T, H, W]
    masks = np.broadcast_to(_to_numpy(mask), coil_kspace.shape[:-4] + coil_kspace.shape[-3:])  # [..., T, H, W]
    height, width = coil_kspace.shape[-2:]
    maps = []
    for cine, cine_mask in zip(coil_kspace.reshape(-1, *coil_kspace.shape[-4:]), masks.reshape(-1, *masks.shape[-3:])):
        lines = calibration_lines(cine_mask)
        if lines < 4:
            raise ValueError(f"sensitivity estimation needs at least 4 central k-space lines that every frame "
                             f"samples; this mask has {lines}")
        grid = min(height, max(resolution, lines)), min(width, max(resolution, lines))  # (h, w)
        columns = center_rows(width, grid[1])
        calibration = np.zeros((len(cine), *grid), np.complex64)  # [C, h, w]
        calibration[:, center_rows(grid[0], lines)] = cine[:, :, center_rows(height, lines), columns].mean(1)
        kernel = min(kernel_width, lines // 2)
        coarse = EspiritCalib(calibration, calib_width=lines, thresh=threshold, kernel_width=kernel, crop=crop,
                              show_pbar=False).run()  # [C, h, w]: the time-averaged centre's maps
        maps.append(interpolate_maps(coarse, (height, width)))
    maps = np.stack(maps).reshape(coil_kspace.shape[:-3] + coil_kspace.shape[-2:]).astype(np.complex64)
    return torch.from_numpy(maps).to(kspace.device) if was_torch else maps


def interpolate_maps(maps: np.ndarray, shape) -> np.ndarray:
    """Maps ``[C, h, w]`` on a coarse grid of the same field of view -> ``[C, H, W]``: bilinear in
    the real and imaginary parts (pixel centres aligned about the centre pixel ``(h // 2, w // 2)``
    -> ``(H // 2, W // 2)``, edges held), then divided by their root sum of squares where it is
    not 0. The same grid: returned as they are."""
    from scipy.ndimage import map_coordinates

    if maps.shape[-2:] == tuple(shape):
        return maps
    axes = [(np.arange(n) - n // 2) * m / n + m // 2 for n, m in zip(shape, maps.shape[-2:])]  # coarse coordinates
    points = np.meshgrid(*axes, indexing="ij")  # 2 x [H, W]
    fine = np.stack([map_coordinates(part, points, order=1, mode="nearest")
                     for coil in maps for part in (coil.real, coil.imag)]).reshape(len(maps), 2, *shape)
    fine = fine[:, 0] + 1j * fine[:, 1]  # [C, H, W]
    norm = np.sqrt((np.abs(fine) ** 2).sum(0))  # [H, W]
    return fine / np.where(norm > 0, norm, 1)


def _to_numpy(x) -> np.ndarray:
    """A numpy array of a numpy array or a (CPU or GPU) tensor."""
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


# ----------------------------------------------------------------------------- masks
def lines_per_frame(height: int, acceleration: float) -> int:
    """Number of ky lines sampled in every frame: ``round(H / acceleration)``."""
    return int(round(height / acceleration))


def scaled_center_lines(height: int, center_lines_at_reference: int = 11) -> int:
    """Centre lines for an image of ``height`` rows that keep the fraction of k-space that
    ``center_lines_at_reference`` lines cover at the study's 192 rows (11 at 192 -> 4 at 64)."""
    _check_center_lines(center_lines_at_reference)
    return max(1, int(round(center_lines_at_reference * height / REFERENCE_HEIGHT)))


def _check_center_lines(center_lines) -> None:
    if not isinstance(center_lines, (int, float)) or int(center_lines) != center_lines or center_lines < 0:
        raise ValueError(f"center_lines={center_lines!r}: must be a non-negative integer")


def check_sampling(height: int, acceleration: float, center_lines: int) -> None:
    """The one check of a sampling request: raise ``ValueError`` with a clear message if it is
    impossible for images of ``height`` rows."""
    if not (isinstance(acceleration, (int, float)) and math.isfinite(acceleration)) or acceleration < 1:
        raise ValueError(f"acceleration={acceleration!r}: must be a number >= 1")
    _check_center_lines(center_lines)
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


def variable_density_mask(shape=(20, 192, 192),  # frames, rows, columns [T, H, W]
                          acceleration: float = 5.0,  # >= 1: round(H / acceleration) ky lines per frame
                          center_lines: int = 11,  # fully sampled central ky lines, at most the lines per frame
                          seed: int = 0,  # the same seed gives the same mask
                          density: str = "gaussian",  # how the other lines are drawn (see line_density)
                          **density_kw) -> np.ndarray:
    """Per-frame variable-density random Cartesian mask: float32 numpy ``[T, H, W]`` of 0s and 1s.

    Every frame samples exactly ``round(H / acceleration)`` whole ky lines (38 at H=192, 5x): the
    ``center_lines`` central lines plus lines drawn from ``density`` (see :func:`line_density`),
    a different draw for every frame. The same ``seed`` gives the same mask.
    Raises ``ValueError`` for impossible requests (acceleration < 1, too many centre lines).
    """
    frames, height, width = shape
    sampler = MaskSampler(height, width, acceleration, center_lines, density, **density_kw)
    return sampler(frames, torch.Generator().manual_seed(int(seed))).numpy()


def uniform_mask(shape=(20, 192, 192),  # frames, rows, columns [T, H, W]
                 acceleration: int = 8,  # every acceleration-th ky row outside the centre block
                 center_lines: int = 24) -> np.ndarray:  # fully sampled central ky rows (CMRxRecon: 24)
    """CMRxRecon-style equispaced Cartesian mask: float32 numpy ``[T, H, W]`` of 0s and 1s, the same
    in every frame: the rows ``H // 2 + k acceleration`` (every ``acceleration``-th row, counted from
    the DC row) and the ``center_lines`` central rows (:func:`center_rows`). As in CMRxRecon the
    acceleration counts the rows outside the centre block, so more than ``1 / acceleration`` of the
    rows are sampled: 45 of 192 at 8x with 24 centre lines (4.3x overall).
    Raises ``ValueError`` for an acceleration that is not an integer >= 1 or too many centre lines.
    """
    frames, height, width = shape
    if not isinstance(acceleration, (int, np.integer)) or acceleration < 1:
        raise ValueError(f"acceleration={acceleration!r}: an equispaced mask needs an integer >= 1")
    _check_center_lines(center_lines)
    if center_lines > height:
        raise ValueError(f"center_lines={center_lines} is more than the {height} k-space rows of the image")
    rows = (np.arange(height) - height // 2) % acceleration == 0  # [H]
    rows[center_rows(height, center_lines)] = True
    return np.broadcast_to(rows[None, :, None], (frames, height, width)).astype(np.float32)


# ----------------------------------------------------------------------------- command line
MASK_FIGURE_SAMPLES = 2 ** 26  # the largest mask python sampling.py draws, frames x size x size (256 MiB)


def mask_figure(path: str = "docs/mask.png",  # the PNG to write
                *, frames: int, size: int, **sampling) -> None:
    """Draw a variable-density mask (figures.plot_mask: one frame and the ky-t pattern) to PATH."""
    from figures import plot_mask  # matplotlib only when drawing

    if not (frames >= 1 and size >= 1 and frames * size * size <= MASK_FIGURE_SAMPLES):
        raise UserError(f"--frames={frames} --size={size}: a mask figure draws 1 to {MASK_FIGURE_SAMPLES} samples "
                        f"(frames x size x size)")
    try:
        mask = variable_density_mask((frames, size, size), **sampling)
    except ValueError as error:
        raise UserError(f"sampling: {error}") from None
    make_folder(Path(path).parent)
    plot_mask(mask, path)
    print(f"wrote {path}")


def mask_options() -> list[Option]:
    """The options of ``python sampling.py``: variable_density_mask's, its shape as frames and size."""
    frames, size, _ = inspect.signature(variable_density_mask).parameters["shape"].default
    return [Option("frames", frames, "frames per cine"), Option("size", size, "rows and columns (H = W)"),
            *options_from_signature(variable_density_mask, choices={"density": DENSITIES}, exclude=("shape",))]


if __name__ == "__main__":
    with cli_errors():
        run_command(mask_figure, options=mask_options())
