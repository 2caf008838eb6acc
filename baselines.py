"""Classical compressed-sensing baselines for Cartesian cine MRI, single-coil or, given coil
sensitivities (``sensitivities=``), multi-coil (SENSE: ``A = U F S``, ``sampling.sense_forward``).

Notation (as in ``sampling.py``): a cine ``x`` is ``[T, H, W]`` (or a batch ``[B, T, H, W]``),
``F`` the centred orthonormal 2D FFT over (H, W), ``U`` the binary mask and ``y = U F x_true``
the sampled k-space (zeros off the mask). ``F_t`` is the orthonormal DFT along time (axis -3,
the temporal DC at index 0) and ``soft(z, tau) = z max(|z| - tau, 0) / |z|`` the complex
soft-threshold. ``DC(x) = F^-1((1 - U) F x + y)`` is hard data consistency
(``sampling.data_consistency``): it replaces the sampled k-space lines by the measurements, so
every reconstruction returned here has exactly the measured lines (to float precision).

With coils the k-space is ``[C, T, H, W]`` / ``[B, C, T, H, W]``, ``x0 = A^H y`` (the coil-combined
zero-filled cine) and ``DC`` is the SENSE gradient step ``x - A^H (A x - y)`` (step 1, Otazo et al.'s
multi-coil iteration), which is hard data consistency for one coil of sensitivity 1.

- :func:`view_sharing`: ``sampling.view_sharing`` (the temporal mean fills unsampled k-space) as a
  timed baseline.

- :func:`kt_sparse`: ``min_x  lam ||F_t x||_1 + 1/2 ||U F x - y||^2`` (x-f sparsity, Lustig /
  Otazo style) by FISTA with step 1 (``U F`` has norm 1), whose gradient step is exactly ``DC``.
- :func:`lplus_s_unrolled`: L+S for a fixed 10 iterations from the view-shared cine (the untrained
  ``models.LSNet``).
- :func:`low_rank_plus_sparse`: L+S (Otazo, Candes & Sodickson 2015),
  ``min  lam_L ||L||_* + lam_S ||F_t S||_1 + 1/2 ||U F (L + S) - y||^2`` with ``L`` the Casorati
  matrix ``[H W, T]`` of the low-rank part, by their iteration: singular-value thresholding for
  ``L``, soft-thresholding of the temporal spectrum for ``S``, then ``M = DC(L + S)``.
- :func:`tv_wavelet`: temporal total variation + spatial l1-wavelet (BART's ``pics -R T -R W``),
  ``min 1/2 ||A x - y||^2 + t_t ||D_t x||_1 + t_w ||Psi x||_1`` (optionally spatial TV,
  temporal-Fourier l1 and the nuclear norm: :func:`penalties`), by ADMM run to its minimiser
  (:func:`admm_iteration`, the iteration ``models.ADMMNet`` unrolls), then ``DC``;
  :func:`tv_spatial_tv` is its spatial-TV variant.

Regularisation weights are relative: ``lam`` and ``lam_S`` multiply ``max |F_t x0|`` and
``lam_L`` the largest singular value of the Casorati matrix of ``x0``, where ``x0 = F^-1 y`` is
the zero-filled cine, each per cine. Scaling the k-space by ``c`` therefore scales the
reconstruction by ``c``, and one setting works across cines.

Functions take numpy arrays or torch tensors, run on the input's device (CPU or GPU) in its
precision (complex64 for float32 data) and return the kind they were given.

The iteration count is part of the method, as in the original papers (fixed iterations or a loose
tolerance): run to convergence, the L1 term of k-t sparse fills the ky rows that no frame sampled
with an image-domain "sparse static image" guess, and PSNR drifts down again after its peak
(on the phantom at 5x, FISTA peaks near 30-50 iterations; L+S is flat from 50 to 200). Leaving the
static component f = 0 unthresholded (``threshold_static=False``) was 1-4 dB worse there.
"""
from __future__ import annotations

import functools
import itertools
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pywt
import torch
import torch.nn.functional as F

from metrics import batch_psnr
from sampling import coil_combine, data_consistency, gradient_dc, sense_adjoint, sense_forward, sense_normal, \
    shared_kspace
from sampling import view_sharing as view_shared_image

# Grids for tuning on validation cines (relative weights, see the module docstring) around the
# defaults, wide enough that the best point lies inside them on the complex phantom at 64x64, 5x
# (k-t sparse 0.003; L+S 0.01 and 0.003: output/compare_main/results.md of docs/results.md).
# Relative weights tried by tune(): wide enough for noise-free single-coil cines (small weights) and
# for noisy multi-coil data (8 coils at 8x picks the large ones); compare.py flags a pick at an edge.
KT_GRID = {"lam": (0.0003, 0.001, 0.003, 0.01, 0.03)}
LPLUSS_GRID = {"lambda_l": (0.003, 0.01, 0.03, 0.1, 0.3), "lambda_s": (0.001, 0.003, 0.01, 0.03)}
TV_WAVELET_GRID = {"lambda_t": (0.001, 0.003, 0.01, 0.03, 0.1), "lambda_w": (0.0001, 0.0003, 0.001, 0.003, 0.01)}
TV_SPATIAL_GRID = {"lambda_t": (0.001, 0.003, 0.01, 0.03, 0.1), "lambda_xy": (0.0001, 0.0003, 0.001, 0.003, 0.01)}
STARTS = ("zero_filled", "view_sharing")  # where the L+S iterations start


# ----------------------------------------------------------------------------- operators
def temporal_fft(x: torch.Tensor) -> torch.Tensor:
    """``F_t x``: orthonormal DFT along time (axis -3); ``[..., T, H, W]`` complex."""
    return torch.fft.fft(x, dim=-3, norm="ortho")


def temporal_ifft(z: torch.Tensor) -> torch.Tensor:
    """``F_t^-1 z`` along time (axis -3)."""
    return torch.fft.ifft(z, dim=-3, norm="ortho")


def soft_threshold(z: torch.Tensor, tau) -> torch.Tensor:
    """Complex soft-threshold ``z max(|z| - tau, 0) / |z|`` (``tau`` broadcasts against ``z``)."""
    magnitude = z.abs()
    gain = (magnitude - tau).clamp_min(0) / magnitude.clamp_min(torch.finfo(magnitude.dtype).tiny)
    return z * gain


def casorati(x: torch.Tensor) -> torch.Tensor:
    """``[B, T, H, W]`` -> the Casorati matrices ``[B, H W, T]`` (one column per frame)."""
    return x.flatten(2).transpose(1, 2)


def singular_value_threshold(matrix: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """``U soft(Sigma, tau) V^H`` of tall matrices ``[B, m, n]`` (m >= n), ``tau`` ``[B]``.

    Computed through the small Gram matrix ``C^H C = V Sigma^2 V^H`` (``[B, n, n]``, Hermitian
    eigendecomposition) as ``C h(C^H C)``, ``h(lambda) = max(1 - tau / sqrt(lambda), 0)``: exact,
    and far faster than a full SVD of the tall matrix on both CPU and GPU. Singular values below
    about 1e-3 of the largest lose precision in float32, which matters only for thresholds that
    small. Differentiable in ``matrix`` and ``tau`` with gradients that stay finite when singular
    values repeat (:class:`GramShrink`), so unrolled networks can learn ``tau``.
    """
    return matrix @ GramShrink.apply(matrix.mH @ matrix, tau)


class GramShrink(torch.autograd.Function):
    """``h(G) = V diag(h(lambda)) V^H`` of Hermitian positive semi-definite ``G = V diag(lambda) V^H``
    ``[B, n, n]`` with ``h(lambda) = max(1 - tau / sqrt(lambda), 0)``, ``tau`` ``[B]`` real.

    The backward pass is the Daleckii-Krein formula ``dG = V ((V^H dH V) o Gamma) V^H`` with the
    divided differences ``Gamma_ij = (h_i - h_j) / (lambda_i - lambda_j)`` (``h'`` where the
    eigenvalues coincide): bounded for the Lipschitz ``h``, unlike autograd through ``eigh``, whose
    ``1 / (lambda_i - lambda_j)`` is infinite for the repeated noise-level singular values of a cine.
    """

    @staticmethod
    def forward(ctx, gram: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        eigenvalues, v = torch.linalg.eigh(gram)  # ascending, [B, n], [B, n, n]
        sigma = eigenvalues.clamp_min(0).sqrt()  # [B, n] singular values
        gain = (sigma - tau[:, None]).clamp_min(0) / sigma.clamp_min(torch.finfo(sigma.dtype).tiny)  # [B, n]
        ctx.save_for_backward(sigma, v, gain, tau)
        return (v * gain[:, None, :].to(v.dtype)) @ v.mH

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        sigma, v, gain, tau = ctx.saved_tensors
        tiny = torch.finfo(sigma.dtype).tiny
        inner = v.mH @ grad @ v  # [B, n, n]
        inner = (inner + inner.mH) / 2  # only Hermitian perturbations of G exist
        active = sigma > tau[:, None]  # [B, n]: singular values that survive the threshold
        slope = torch.where(active, tau[:, None] / (2 * sigma.clamp_min(tiny) ** 3), 0)  # h'(lambda) [B, n]
        lam = sigma ** 2
        gap = lam[:, :, None] - lam[:, None, :]  # [B, n, n]
        close = gap.abs() <= 1e-6 * lam.amax(-1, keepdim=True)[..., None].clamp_min(tiny)
        divided = (gain[:, :, None] - gain[:, None, :]) / torch.where(close, 1, gap)
        gamma = torch.where(close, (slope[:, :, None] + slope[:, None, :]) / 2, divided)  # [B, n, n] real
        grad_gram = v @ (inner * gamma.to(inner.dtype)) @ v.mH
        dgain_dtau = torch.where(active, -1 / sigma.clamp_min(tiny), 0)  # [B, n]
        grad_tau = (inner.diagonal(dim1=-2, dim2=-1).real * dgain_dtau).sum(-1)  # [B]
        return grad_gram, grad_tau


def largest_singular_value(matrix: torch.Tensor) -> torch.Tensor:
    """The largest singular value of each matrix ``[B, m, n]`` -> ``[B]`` (real)."""
    return torch.linalg.eigvalsh(matrix.mH @ matrix)[:, -1].clamp_min(0).sqrt()


# ----------------------------------------------------------------------------- sparsifying transforms
WAVELET = "db2"  # Daubechies with 2 vanishing moments (4 taps): BART's wavelet ("dau2")
WAVELET_LEVELS = 3  # decomposition levels: frames are zero-padded to multiples of 2**3


def temporal_difference(x: torch.Tensor, circular: bool = True) -> torch.Tensor:
    """``D_t x``: forward differences along time (axis -3), ``x[t + 1] - x[t]``, ``[..., T, H, W]``.
    ``circular``: the last frame's difference is ``x[0] - x[T - 1]`` (a cine is one periodic
    heartbeat); otherwise it is 0."""
    difference = torch.roll(x, -1, dims=-3) - x
    return difference if circular else _drop_last_frame(difference)


def temporal_difference_adjoint(z: torch.Tensor, circular: bool = True) -> torch.Tensor:
    """``D_t^H z = z[t - 1] - z[t]`` (with ``z[-1] = z[T - 1]``, or 0 when not ``circular``)."""
    z = z if circular else _drop_last_frame(z)
    return torch.roll(z, 1, dims=-3) - z


def _drop_last_frame(x: torch.Tensor) -> torch.Tensor:
    """``x`` ``[..., T, H, W]`` with its last frame set to 0."""
    return torch.cat([x[..., :-1, :, :], torch.zeros_like(x[..., -1:, :, :])], -3)


def spatial_gradient(x: torch.Tensor) -> torch.Tensor:
    """``D_xy x``: circular forward differences along the rows and the columns of every frame of
    ``x`` ``[..., T, H, W]`` -> ``[..., 2, T, H, W]`` (row then column differences). Circular as
    BART's, so that ``D_xy^H D_xy`` is diagonal in k-space; a circular shift of the frames (the
    solvers' ``ifftshift``) leaves its total variation unchanged."""
    return torch.stack([torch.roll(x, -1, dims=-2) - x, torch.roll(x, -1, dims=-1) - x], -4)


def spatial_gradient_adjoint(g: torch.Tensor) -> torch.Tensor:
    """``D_xy^H g`` (minus the divergence): ``[..., 2, T, H, W]`` -> ``[..., T, H, W]``."""
    rows, columns = g.unbind(-4)
    return torch.roll(rows, 1, dims=-2) - rows + torch.roll(columns, 1, dims=-1) - columns


@functools.lru_cache(maxsize=64)
def wavelet_level(name: str, length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """One level of PyWavelets' periodized discrete wavelet transform along an axis of even
    ``length``, as its matrix ``[length, length]``: ``pywt.dwt`` of the identity, the approximation
    coefficients in the first ``length / 2`` rows and the details in the others. Orthogonal for an
    orthogonal wavelet (the Daubechies family)."""
    low, high = pywt.dwt(np.eye(length), name, mode="periodization", axis=0)  # [length / 2, length] each
    return torch.as_tensor(np.concatenate([low, high]), dtype=dtype, device=device)


def wavelet_shape(height: int, width: int, levels: int = WAVELET_LEVELS) -> tuple[int, int]:
    """The size of the wavelet coefficients of a ``[height, width]`` frame: each side rounded up to
    a multiple of ``2**levels`` (the frame is zero-padded at the bottom and right)."""
    multiple = 2 ** levels
    return -(-height // multiple) * multiple, -(-width // multiple) * multiple


def wavelet_forward(x: torch.Tensor, levels: int = WAVELET_LEVELS, name: str = WAVELET) -> torch.Tensor:
    """``Psi x``: the orthogonal 2D wavelet transform of every frame of ``x`` ``[..., H, W]``
    (complex: real and imaginary parts alike), zero-padded at the bottom and right to
    :func:`wavelet_shape` ``[..., H', W']``: PyWavelets' ``wavedec2(mode="periodization")`` laid
    out as its ``coeffs_to_array`` (the coarse approximation in the top-left
    ``H' / 2**levels x W' / 2**levels`` corner). ``Psi^H Psi = I`` (the padding is an isometry), and
    ``Psi Psi^H = I`` when no padding is needed."""
    height, width = x.shape[-2:]
    padded_height, padded_width = wavelet_shape(height, width, levels)
    parts = F.pad(torch.stack([x.real, x.imag]), (0, padded_width - width, 0, padded_height - height))
    coefficients = _analysis(parts, levels, name)  # [2, ..., H', W'] real
    return torch.complex(coefficients[0], coefficients[1])


def wavelet_adjoint(c: torch.Tensor, shape: tuple[int, int], levels: int = WAVELET_LEVELS,
                    name: str = WAVELET) -> torch.Tensor:
    """``Psi^H c``: coefficients ``[..., H', W']`` of :func:`wavelet_forward` -> frames ``[..., H, W]``
    (``shape`` = (H, W)): the inverse transform, cropped."""
    frames = _synthesis(torch.stack([c.real, c.imag]), levels, name)  # [2, ..., H', W'] real
    return torch.complex(frames[0], frames[1])[..., :shape[0], :shape[1]]


def _analysis(x: torch.Tensor, levels: int, name: str) -> torch.Tensor:
    """``levels`` levels of the separable transform of real frames ``[..., h, w]``, each level on the
    previous one's approximation (top-left quarter)."""
    if levels == 0:
        return x
    rows = wavelet_level(name, x.shape[-2], x.dtype, x.device)
    columns = wavelet_level(name, x.shape[-1], x.dtype, x.device)
    c = rows @ x @ columns.T  # [..., h, w]: quarters (approximation, details)
    half_h, half_w = x.shape[-2] // 2, x.shape[-1] // 2
    top = torch.cat([_analysis(c[..., :half_h, :half_w], levels - 1, name), c[..., :half_h, half_w:]], -1)
    return torch.cat([top, c[..., half_h:, :]], -2)


def _synthesis(c: torch.Tensor, levels: int, name: str) -> torch.Tensor:
    """The inverse (and adjoint) of :func:`_analysis`."""
    if levels == 0:
        return c
    half_h, half_w = c.shape[-2] // 2, c.shape[-1] // 2
    top = torch.cat([_synthesis(c[..., :half_h, :half_w], levels - 1, name), c[..., :half_h, half_w:]], -1)
    c = torch.cat([top, c[..., half_h:, :]], -2)
    rows = wavelet_level(name, c.shape[-2], c.dtype, c.device)
    columns = wavelet_level(name, c.shape[-1], c.dtype, c.device)
    return rows.T @ c @ columns


def shifted_wavelets(x: torch.Tensor, offsets, levels: int = WAVELET_LEVELS, name: str = WAVELET) -> torch.Tensor:
    """The wavelet transforms of the frames of ``x`` ``[B, T, H, W]`` circularly shifted by each
    ``(dy, dx)`` of ``offsets`` (cycle spinning), stacked and divided by ``sqrt(len(offsets))``:
    ``[B, n, T, H', W']``, an isometry (``K^H K = I``: a tight frame)."""
    scale = math.sqrt(len(offsets))
    return torch.stack([wavelet_forward(torch.roll(x, offset, dims=(-2, -1)), levels, name)
                        for offset in offsets], 1) / scale


def shifted_wavelets_adjoint(c: torch.Tensor, shape, offsets, levels: int = WAVELET_LEVELS,
                             name: str = WAVELET) -> torch.Tensor:
    """The adjoint of :func:`shifted_wavelets`: ``[B, n, T, H', W']`` -> ``[B, T, H, W]``."""
    scale = math.sqrt(len(offsets))
    return sum(torch.roll(wavelet_adjoint(c[:, j], shape, levels, name), (-dy, -dx), dims=(-2, -1))
               for j, (dy, dx) in enumerate(offsets)) / scale


def wavelet_details(height: int, width: int, levels: int = WAVELET_LEVELS, *, like: torch.Tensor) -> torch.Tensor:
    """``[H', W']`` real: 1 on the detail coefficients of :func:`wavelet_forward`, 0 on the coarse
    approximation, which the l1 penalty leaves alone (it holds the image's mean brightness, not
    edges)."""
    padded_height, padded_width = wavelet_shape(height, width, levels)
    weights = torch.ones(padded_height, padded_width, dtype=like.real.dtype, device=like.device)
    weights[:padded_height >> levels, :padded_width >> levels] = 0
    return weights


# ----------------------------------------------------------------------------- penalties of the ADMM solver
@dataclass(frozen=True)
class Penalty:
    """A convex penalty ``t ||K x||`` of :func:`admm_iteration` on cines ``[B, T, H, W]`` complex in
    the solvers' shifted domain (the wavelet shifts back to the centred frames first).

    forward: ``K``; adjoint: ``K^H``; shrink: ``(v, t)`` -> the proximal step
    ``argmin_w t ||w|| + 1/2 ||w - v||^2`` (``t`` ``[B]``, a threshold per cine); norm: ``||K x||``
    per cine ``[B]`` from the coefficients ``K x``; gram: ``(T, H, W, like)`` -> ``K^H K`` in the
    plain 2D Fourier domain of the frames, a real ``[T, T]`` matrix for every k-space point
    (broadcastable to ``[H, W, T, T]``); scale: what its relative weight multiplies
    (:func:`penalty_scales`).
    """
    forward: Callable
    adjoint: Callable
    shrink: Callable
    norm: Callable
    gram: Callable
    scale: str


def shrink_isotropic(g: torch.Tensor, t) -> torch.Tensor:
    """Soft-thresholding of gradients ``[..., 2, T, H, W]`` by the length of each pixel's (row,
    column) pair: the proximal step of isotropic total variation (``t`` broadcastable)."""
    length = g.abs().square().sum(-4, keepdim=True).sqrt()  # [..., 1, T, H, W]
    return g * (length - t).clamp_min(0) / length.clamp_min(torch.finfo(length.dtype).tiny)


def _per_cine(t, like: torch.Tensor):
    """Per-cine values ``[B]`` shaped to broadcast against ``like`` ``[B, ...]`` (a number or a
    0-dimensional tensor as it is)."""
    return t.reshape(-1, *(1,) * (like.dim() - 1)) if isinstance(t, torch.Tensor) and t.dim() else t


def temporal_gram(frames: int, circular: bool = True, *, like: torch.Tensor) -> torch.Tensor:
    """``D_t^H D_t`` as a real ``[T, T]`` matrix (a circulant second difference when ``circular``)."""
    basis = torch.eye(frames, dtype=like.real.dtype, device=like.device)[:, :, None, None]  # [T, T, 1, 1]
    return temporal_difference_adjoint(temporal_difference(basis, circular), circular)[..., 0, 0]


def spatial_gram(height: int, width: int, *, like: torch.Tensor) -> torch.Tensor:
    """``D_xy^H D_xy`` in the plain 2D Fourier domain: ``[H, W]`` real, ``4 sin^2(pi k_y / H) +
    4 sin^2(pi k_x / W)`` (the eigenvalues of the circular Laplacian)."""
    dtype, device = like.real.dtype, like.device
    rows = 4 * torch.sin(math.pi * torch.arange(height, dtype=dtype, device=device) / height) ** 2
    columns = 4 * torch.sin(math.pi * torch.arange(width, dtype=dtype, device=device) / width) ** 2
    return rows[:, None] + columns[None, :]


def penalties(shape: tuple[int, int], circular: bool = True, levels: int = WAVELET_LEVELS,
              wavelet: str = WAVELET, wavelet_shifts: int = 1) -> dict[str, Penalty]:
    """The penalties the ADMM solvers can combine, by name, for frames of ``shape`` (H, W):

    - ``tv_t``: temporal total variation ``||D_t x||_1`` (``circular`` differences, see
      :func:`temporal_difference`);
    - ``wavelet``: l1 of the detail coefficients of the orthogonal wavelet transform of every frame
      (:func:`wavelet_forward`, ``levels`` levels of ``wavelet``); ``Psi^H Psi = I``; with
      ``wavelet_shifts = m > 1``, the mean of that l1 over the frames circularly shifted by
      ``(dy, dx)``, ``0 <= dy, dx < m`` (deterministic cycle spinning, :func:`shifted_wavelets`);
    - ``tv_xy``: isotropic spatial total variation of every frame (:func:`spatial_gradient`);
    - ``fourier_t``: l1 of the temporal spectrum ``||F_t x||_1`` (k-t sparse's prior), ``F_t`` unitary;
    - ``nuclear``: the nuclear norm of the Casorati matrix ``[H W, T]`` (L+S's low-rank prior).

    The weights of the first three are relative to the zero-filled cine's largest magnitude, that of
    ``fourier_t`` to its largest temporal Fourier coefficient and that of ``nuclear`` to its largest
    singular value (:func:`penalty_scales`).
    """
    def details(c: torch.Tensor) -> torch.Tensor:  # [H', W']: the coefficients the wavelet l1 counts
        return wavelet_details(*shape, levels, like=c)

    offsets = [(dy, dx) for dy in range(wavelet_shifts) for dx in range(wavelet_shifts)]
    copies = math.sqrt(len(offsets))  # the wavelet penalty is the mean l1 over the shifted transforms

    def l1(c: torch.Tensor) -> torch.Tensor:
        return c.abs().flatten(1).sum(1)

    def soft(v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return soft_threshold(v, _per_cine(t, v))

    def identity(frames: int, height: int, width: int, like: torch.Tensor) -> torch.Tensor:
        return torch.eye(frames, dtype=like.real.dtype, device=like.device)

    def spatial(frames: int, height: int, width: int, like: torch.Tensor) -> torch.Tensor:  # [H, W, T, T]
        return spatial_gram(height, width, like=like)[..., None, None] * identity(frames, height, width, like)

    def casorati_svt(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return singular_value_threshold(casorati(x), t).transpose(1, 2).reshape(x.shape)

    return {
        "tv_t": Penalty(forward=lambda x: temporal_difference(x, circular),
                        adjoint=lambda z: temporal_difference_adjoint(z, circular), shrink=soft, norm=l1,
                        gram=lambda frames, height, width, like: temporal_gram(frames, circular, like=like),
                        scale="peak"),
        "wavelet": Penalty(forward=lambda x: shifted_wavelets(from_shifted(x), offsets, levels, wavelet),
                           adjoint=lambda c: to_shifted_image(shifted_wavelets_adjoint(c, shape, offsets, levels,
                                                                                       wavelet)),
                           shrink=lambda c, t: soft_threshold(c, _per_cine(t, c) * details(c) / copies),
                           norm=lambda c: l1(c * details(c)) / copies, gram=identity, scale="peak"),
        "tv_xy": Penalty(forward=spatial_gradient, adjoint=spatial_gradient_adjoint,
                         shrink=lambda g, t: shrink_isotropic(g, _per_cine(t, g)),
                         norm=lambda g: l1(g.abs().square().sum(-4).sqrt()),
                         gram=spatial,
                         scale="peak"),
        "fourier_t": Penalty(forward=temporal_fft, adjoint=temporal_ifft, shrink=soft, norm=l1, gram=identity,
                             scale="spectrum"),
        "nuclear": Penalty(forward=lambda x: x, adjoint=lambda z: z, shrink=casorati_svt,
                           norm=lambda x: torch.linalg.svdvals(casorati(x)).sum(-1), gram=identity, scale="singular"),
    }


def penalty_scales(x0: torch.Tensor, terms: dict[str, Penalty]) -> dict[str, torch.Tensor]:
    """What the relative weights of ``terms`` multiply, per cine ``[B]`` (real), for the zero-filled
    cine ``x0`` ``[B, T, H, W]``: by each term's ``scale``, ``peak`` the cine's largest magnitude,
    ``spectrum`` its largest temporal Fourier coefficient, ``singular`` the largest singular value
    of its Casorati matrix."""
    compute = {"peak": lambda: x0.abs().flatten(1).amax(1),
               "spectrum": lambda: temporal_fft(x0).abs().flatten(1).amax(1),
               "singular": lambda: largest_singular_value(casorati(x0))}
    scales = {scale: compute[scale]() for scale in {term.scale for term in terms.values()}}
    return {name: scales[term.scale] for name, term in terms.items()}


def penalty_thresholds(scales: dict, weights: dict) -> dict[str, torch.Tensor]:
    """The thresholds ``t_i = w_i scale_i`` ``[B]`` of the relative weights ``w_i`` (numbers or
    0-dimensional tensors) and the :func:`penalty_scales`, keyed by penalty name."""
    return {name: weight * scales[name] for name, weight in weights.items()}


# ----------------------------------------------------------------------------- ADMM
def objective(x: torch.Tensor, kspace: torch.Tensor, sampled: torch.Tensor, maps, terms: dict[str, Penalty],
              thresholds: dict) -> torch.Tensor:
    """``1/2 ||A x - y||^2 + sum_i t_i ||K_i x||`` per cine ``[B]`` for cines ``x`` ``[B, T, H, W]`` in
    the solvers' shifted domain (k-space ``y`` and ``sampled`` shifted too; ``maps`` None for one coil)."""
    if maps is None:
        residual = torch.where(sampled, torch.fft.fft2(x, norm="ortho") - kspace, 0)  # [B, T, H, W]
    else:
        residual = sense_forward(x, maps, sampled, centered=False) - kspace  # [B, C, T, H, W], 0 off the mask
    value = torch.view_as_real(residual).flatten(1).square().sum(1) / 2
    return value + sum(thresholds[name] * term.norm(term.forward(x)) for name, term in terms.items())


def kspace_matrices(sampled: torch.Tensor, terms: dict[str, Penalty], rhos: dict, *, like: torch.Tensor
                    ) -> torch.Tensor:
    """``(U + sum_i rho_i K_i^H K_i)^-1`` in the plain 2D Fourier domain of the frames: real
    ``[B, H, W', T, T]`` (``W' = 1`` when every k-space row is sampled whole and no term varies
    along k_x), one ``[T, T]`` inverse per k-space point; ``sampled`` ``[B, T, H, W]`` bool (shifted)
    and ``U`` its diagonal, ``rhos`` numbers, 0-dimensional or ``[B]`` tensors keyed like ``terms``. It is
    the single-coil ADMM image update, exactly, and the preconditioner of the multi-coil one."""
    frames, height, width = sampled.shape[-3:]
    # whole rows sampled (the masks of sampling.py); on the meta device (FLOP counting) assumed, its values unknown
    rows_only = sampled.device.type == "meta" or bool((sampled == sampled[..., :1]).all())
    u = (sampled[..., :1] if rows_only else sampled).permute(0, 2, 3, 1).to(like.real.dtype)  # [B, H, W', T]
    system = torch.diag_embed(u)  # [B, H, W', T, T]
    for name, term in terms.items():
        system = system + _per_cine(rhos[name], system) * term.gram(frames, height, width, like)
    return torch.linalg.inv(system)


def apply_kspace_matrices(matrices: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``F^-1 M F x`` for cines ``x`` ``[B, T, H, W]`` (shifted domain, plain FFTs) and real matrices
    ``M`` ``[B, H, W', T, T]`` acting along time at every k-space point (``W' = 1``: the same for
    every k_x of a row)."""
    kspace = torch.view_as_real(torch.fft.fft2(x, norm="ortho").transpose(1, 2).contiguous())  # [B, H, T, W, 2]
    if matrices.shape[2] == 1:  # one matrix per row: a batch of [T, T] @ [T, 2 W] products
        mixed = (matrices[:, :, 0] @ kspace.flatten(-2)).unflatten(-1, kspace.shape[-2:])
    else:
        mixed = torch.einsum("bhwst,bhtwc->bhswc", matrices, kspace)
    return torch.fft.ifft2(torch.view_as_complex(mixed.contiguous()).transpose(1, 2), norm="ortho")


def image_update(kspace: torch.Tensor, sampled: torch.Tensor, maps, terms: dict[str, Penalty], rhos: dict,
                 cg_steps: int, like: torch.Tensor):
    """The ADMM image update ``x = (A^H A + sum_i rho_i K_i^H K_i)^-1 (A^H y + pull)`` as a function
    ``(pull, x_previous) -> x`` of cines ``[B, T, H, W]`` (shifted domain). Single coil (``maps``
    None): exact, one FFT pair (:func:`kspace_matrices`). With coils (``maps`` ``[B, C, H, W]``):
    ``cg_steps`` conjugate-gradient steps from ``x_previous``, preconditioned by the single-coil
    inverse (exact for one coil of sensitivity 1, and close when the maps' root sum of squares is 1)."""
    matrices = kspace_matrices(sampled, terms, rhos, like=like)
    measured = (torch.fft.ifft2(kspace, norm="ortho") if maps is None
                else sense_adjoint(kspace, maps, sampled, centered=False))  # A^H y [B, T, H, W]
    if maps is None:
        return lambda pull, previous: apply_kspace_matrices(matrices, measured + pull)

    def normal(x: torch.Tensor) -> torch.Tensor:
        return sense_normal(x, maps, sampled, centered=False) + sum(
            _per_cine(rhos[name], x) * term.adjoint(term.forward(x)) for name, term in terms.items())

    return lambda pull, previous: preconditioned_cg(normal, lambda r: apply_kspace_matrices(matrices, r),
                                                    measured + pull, previous, cg_steps)


def preconditioned_cg(normal, precondition, right_side: torch.Tensor, x: torch.Tensor, steps: int) -> torch.Tensor:
    """``steps`` preconditioned conjugate-gradient steps on ``normal(x) = right_side`` from ``x``, for
    Hermitian positive-definite ``normal`` and ``precondition`` on cines ``[B, ...]`` (one system
    per cine)."""
    def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # [B, 1, ..., 1] real
        return _per_cine((a.conj() * b).real.flatten(1).sum(1), a)

    tiny = torch.finfo(x.real.dtype).tiny
    residual = right_side - normal(x)
    preconditioned = precondition(residual)
    direction, alignment = preconditioned, dot(residual, preconditioned)
    for _ in range(steps):
        product = normal(direction)
        step = alignment / dot(direction, product).clamp_min(tiny)
        x, residual = x + step * direction, residual - step * product
        preconditioned = precondition(residual)
        new_alignment = dot(residual, preconditioned)
        direction = preconditioned + new_alignment / alignment.clamp_min(tiny) * direction
        alignment = new_alignment
    return x


def admm_iteration(x: torch.Tensor, splits: dict, duals: dict, update, terms: dict[str, Penalty],
                   thresholds: dict, rhos: dict) -> tuple[torch.Tensor, dict, dict]:
    """One ADMM iteration (Boyd et al. 2011, as BART's ``pics``) for
    ``min_x 1/2 ||A x - y||^2 + sum_i t_i ||K_i x||`` split as ``v_i = K_i x``, on cines ``x``
    ``[B, T, H, W]`` complex (shifted domain), with the unscaled duals ``lambda_i``::

        x         = (A^H A + sum_i rho_i K_i^H K_i)^-1 (A^H y + sum_i K_i^H (rho_i v_i - lambda_i))    update
        v_i       = shrink_i(K_i x + lambda_i / rho_i, t_i / rho_i)                                   the proximal step
        lambda_i += rho_i (K_i x - v_i)

    ``update``: :func:`image_update` for these ``rhos``; splits (``v_i``), duals (``lambda_i``),
    thresholds (``t_i`` ``[B]``) and rhos (numbers, 0-dimensional or ``[B]`` tensors,
    :func:`admm_rhos`) keyed by the names of
    ``terms`` (:func:`penalties`). Converges to a minimiser for any ``rho_i > 0``. Returns
    ``(x, splits, duals)``.
    """
    rho = {name: _per_cine(rhos[name], splits[name]) for name in terms}  # [B, 1, ...] each
    x = update(sum(terms[name].adjoint(rho[name] * splits[name] - duals[name]) for name in terms), x)
    new_splits, new_duals = {}, {}
    for name, term in terms.items():
        coefficients = term.forward(x)
        new_splits[name] = term.shrink(coefficients + duals[name] / rho[name], thresholds[name] / rhos[name])
        new_duals[name] = duals[name] + rho[name] * (coefficients - new_splits[name])
    return x, new_splits, new_duals


# ----------------------------------------------------------------------------- input handling
def _prepare(kspace, mask, sensitivities=None):
    """The solvers' inputs in the shifted domain, plus how to return the result.

    Every step of the solvers acts pixel by pixel in (y, x) (temporal FFT, soft-threshold, coil
    sensitivities) or is blind to the order of the pixels (the SVD of the Casorati matrix), so they
    run on ``ifftshift``-ed cines with plain FFTs: ``y' = ifftshift(y)`` and ``x' = ifftshift(x)``,
    which saves the shifts of every centred FFT. Returns ``(y' [B, T, H, W] complex (coil k-space
    [B, C, T, H, W] with sensitivities), sampled' bool [B, T, H, W], was_numpy, single)`` on the
    k-space's device.
    """
    was_numpy = not isinstance(kspace, torch.Tensor)
    kspace = torch.as_tensor(kspace)
    if not kspace.is_complex():
        kspace = kspace.to(torch.complex64)
    coil_axes = 0 if sensitivities is None else 1
    if kspace.dim() - coil_axes not in (3, 4):
        coils = "" if sensitivities is None else "C, "
        raise ValueError(f"kspace must be [{coils}T, H, W] or [B, {coils}T, H, W], got shape {tuple(kspace.shape)}")
    single = kspace.dim() - coil_axes == 3
    if single:
        kspace = kspace[None]
    sampled = torch.as_tensor(mask, device=kspace.device) != 0
    sampled = (sampled[None] if sampled.dim() == 3 else sampled).expand(kspace.shape[:1] + kspace.shape[-3:])
    coil_sampled = sampled if sensitivities is None else sampled[:, None]  # [B, (1,) T, H, W]
    return to_shifted(kspace, coil_sampled)[0], to_shifted_image(sampled), was_numpy, single


def to_shifted(kspace: torch.Tensor, sampled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centred k-space ``[..., H, W]`` (zeroed off the mask) and the bool mask, ``ifftshift``-ed in
    (H, W): the solvers' domain, where plain FFTs replace centred ones (see :func:`_prepare`)."""
    return to_shifted_image(torch.where(sampled, kspace, 0)), to_shifted_image(sampled)


def to_shifted_image(x: torch.Tensor) -> torch.Tensor:
    """A centred cine ``[..., H, W]`` (or mask, or coil maps) into the solvers' shifted domain."""
    return torch.fft.ifftshift(x, dim=(-2, -1))


def from_shifted(x: torch.Tensor) -> torch.Tensor:
    """A cine ``[..., H, W]`` of the solvers' shifted domain back to the centred layout."""
    return torch.fft.fftshift(x, dim=(-2, -1))


def _data_step(kspace, sampled, sensitivities, single: bool):
    """The solvers' data step in the shifted domain, their start ``x0`` ``[B, T, H, W]`` and the
    shifted maps: hard data consistency and the zero-filled cine for single-coil k-space (maps
    None); with ``sensitivities`` (``[C, H, W]`` or ``[B, C, H, W]``, ``sum_c |S_c|^2 <= 1``) the
    SENSE gradient step of step 1 and the coil-combined zero-filled cine ``A^H y`` (Otazo et al.
    2015's multi-coil iteration)."""
    if sensitivities is None:
        return ((lambda x: data_consistency(x, kspace, sampled, centered=False)),
                torch.fft.ifft2(kspace, norm="ortho"), None)
    maps = to_shifted_image(torch.as_tensor(sensitivities, device=kspace.device))
    maps = maps[None] if single else maps  # [B, C, H, W]
    return ((lambda x: gradient_dc(x, kspace, sampled, sensitivities=maps, centered=False)),
            sense_adjoint(kspace, maps, sampled, centered=False), maps)


def _finish(x: torch.Tensor, was_numpy: bool, single: bool):
    """Back from the shifted domain to ``[T, H, W]`` / ``[B, T, H, W]`` of the input's kind."""
    x = from_shifted(x)
    x = x[0] if single else x
    return x.cpu().numpy() if was_numpy else x


def _relative_change(new: torch.Tensor, old: torch.Tensor) -> float:
    """Largest ``||new - old|| / ||old||`` over the cines of a batch."""
    def norms(x: torch.Tensor) -> torch.Tensor:  # [B]; through the real view: torch's complex norm is far slower on CPU
        return torch.view_as_real(x).flatten(1).norm(dim=1)

    change = norms(new - old) / norms(old).clamp_min(1e-30)
    return float(change.max())


def _report(name: str, cines: int, iterations: int, seconds: float) -> None:
    print(f"{name}: {cines} cine(s), {iterations} iterations, {seconds:.2f} s, "
          f"{seconds / cines:.3f} s per cine", flush=True)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA) so that wall-clock times are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- solvers
@torch.no_grad()
def kt_sparse(kspace, mask, *, lam: float = 0.001, iterations: int = 50, tol: float = 1e-3,
              threshold_static: bool = True, verbose: bool = False, sensitivities=None):
    """k-t sparse CS: L1 on the temporal Fourier transform with hard data consistency.

    Solves ``min_x  tau ||F_t x||_1 + 1/2 ||U F x - y||^2`` with ``tau = lam max|F_t x0|`` per cine
    by FISTA (step 1): ``v <- F_t^-1 soft(F_t DC(z), tau)``, ``z`` the momentum extrapolation of
    ``v``; returns ``DC(v)``, which keeps the sampled k-space exactly.

    kspace: sampled k-space ``y`` ``[T, H, W]`` or ``[B, T, H, W]`` (complex; zero off the mask).
    mask: 0/1 of the same shape (a ``[T, H, W]`` mask is shared by a batch).
    lam: relative threshold; iterations / tol: stop after ``iterations`` or when the relative
    change of every cine falls below ``tol`` (the defaults stop near the PSNR peak, see the module
    docstring). threshold_static=False leaves the temporal DC component ``f = 0`` (the static
    image) unthresholded. verbose: print the time per cine.
    sensitivities: coil maps ``[C, H, W]`` or ``[B, C, H, W]`` for coil k-space ``[C, T, H, W]`` /
    ``[B, C, T, H, W]`` (``sampling.sense_forward``): ``DC`` becomes the SENSE gradient step
    ``x - A^H (A x - y)`` and ``x0 = A^H y``.
    Returns the complex reconstruction, shaped and typed like ``kspace`` (without the coil axis).
    """
    kspace, sampled, was_numpy, single = _prepare(kspace, mask, sensitivities)
    synchronize(kspace.device)
    started = time.perf_counter()
    consistent, x0, _ = _data_step(kspace, sampled, sensitivities, single)  # x0: [B, T, H, W] zero-filled (shifted)
    tau = lam * temporal_fft(x0).abs().flatten(1).amax(1)[:, None, None, None]  # [B, 1, 1, 1]
    if not threshold_static:
        tau = tau.expand(-1, x0.shape[1], 1, 1).clone()  # [B, T, 1, 1]
        tau[:, 0] = 0
    v_old, z, t = x0, x0, 1.0
    for done in range(1, iterations + 1):
        v = temporal_ifft(soft_threshold(temporal_fft(consistent(z)), tau))
        t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
        z = v + ((t - 1) / t_next) * (v - v_old)
        converged = _relative_change(v, v_old) < tol
        v_old, t = v, t_next
        if converged:
            break
    x = consistent(v_old)
    synchronize(kspace.device)
    if verbose:
        _report("k-t sparse", len(x), done, time.perf_counter() - started)
    return _finish(x, was_numpy, single)


def relative_scales(x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What the relative weights multiply: the largest singular value of the Casorati matrix of the
    zero-filled cine ``x0`` ``[B, T, H, W]`` and its largest temporal Fourier coefficient, each
    ``[B]`` (real)."""
    return largest_singular_value(casorati(x0)), temporal_fft(x0).abs().flatten(1).amax(1)


def lplus_s_parts(m: torch.Tensor, s: torch.Tensor, l_prev: torch.Tensor, tau_l: torch.Tensor,
                  tau_s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The low-rank and sparse parts of one L+S iteration (Otazo et al. 2015, Algorithm 1) on cines
    ``[B, T, H, W]`` complex: ``L = SVT(M - S, tau_l)``, ``S = F_t^-1 soft(F_t (M - L_prev), tau_s)``
    (``tau_l`` ``[B]``, ``tau_s`` broadcastable to ``[B, T, H, W]``); the caller's data consistency
    of ``L + S`` completes the iteration."""
    low = singular_value_threshold(casorati(m - s), tau_l)  # [B, H W, T]
    low = low.transpose(1, 2).reshape(m.shape)  # [B, T, H, W]
    return low, temporal_ifft(soft_threshold(temporal_fft(m - l_prev), tau_s))


def initial_cine(kspace: torch.Tensor, sampled: torch.Tensor, start: str, maps: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """The iterations' start ``[B, T, H, W]`` in the solvers' shifted domain, from measured k-space
    ``[B, T, H, W]`` (or coil k-space ``[B, C, T, H, W]`` with shifted ``maps`` ``[B, C, H, W]``,
    then coil-combined): the zero-filled cine or the view-shared one (``sampling.shared_kspace``)."""
    if start not in STARTS:
        raise ValueError(f"start must be one of {STARTS}, got {start!r}")
    filled = kspace if start == "zero_filled" else shared_kspace(kspace, sampled, coils=maps is not None)
    images = torch.fft.ifft2(filled, norm="ortho")
    return images if maps is None else coil_combine(images, maps)


@torch.no_grad()
def low_rank_plus_sparse(kspace, mask, *, lambda_l: float = 0.03, lambda_s: float = 0.003,
                         iterations: int = 100, tol: float = 1e-4, start: str = "zero_filled",
                         verbose: bool = False, sensitivities=None):
    """L+S: low-rank plus sparse decomposition (Otazo et al. 2015) with hard data consistency.

    Models the cine as ``M = L + S``: ``L`` low rank as a Casorati matrix ``[H W, T]`` (the
    background and the slow, global changes) and ``S`` sparse in ``F_t`` (the moving heart).
    Starting from ``M = M0``, ``S = 0``, ``L_prev = M0``, each iteration is (their Algorithm 1)::

        L = SVT(M - S, lambda_l sigma_max(x0))
        S = F_t^-1 soft(F_t (M - L_prev), lambda_s max|F_t x0|)
        M = DC(L + S)

    and ``M`` is returned (it keeps the sampled k-space exactly). ``M0`` is the zero-filled cine
    ``x0`` (``start="zero_filled"``, the paper's) or the view-shared one (``"view_sharing"``, the
    start of ``models.LSNet``). Arguments as in :func:`kt_sparse` (``tol=0``: exactly
    ``iterations``); ``lambda_l`` is relative to the largest singular value of the zero-filled
    Casorati matrix, ``lambda_s`` to the largest temporal Fourier coefficient of ``x0``; with
    ``sensitivities`` ``DC`` is the SENSE gradient step, as in :func:`kt_sparse`.
    """
    kspace, sampled, was_numpy, single = _prepare(kspace, mask, sensitivities)
    synchronize(kspace.device)
    started = time.perf_counter()
    consistent, x0, maps = _data_step(kspace, sampled, sensitivities, single)  # x0: [B, T, H, W] zero-filled (shifted)
    sigma_max, peak = relative_scales(x0)  # [B] each
    tau_l, tau_s = lambda_l * sigma_max, lambda_s * peak[:, None, None, None]  # [B], [B, 1, 1, 1]
    m = x0 if start == "zero_filled" else initial_cine(kspace, sampled, start, maps)  # [B, T, H, W]
    s, l_prev = torch.zeros_like(m), m
    for done in range(1, iterations + 1):
        low, s = lplus_s_parts(m, s, l_prev, tau_l, tau_s)
        m_new = consistent(low + s)
        converged = _relative_change(m_new, m) < tol
        m, l_prev = m_new, low
        if converged:
            break
    synchronize(kspace.device)
    if verbose:
        _report("L+S", len(m), done, time.perf_counter() - started)
    return _finish(m, was_numpy, single)


def lplus_s_unrolled(kspace, mask, *, lambda_l: float = 0.01, lambda_s: float = 0.003, iterations: int = 10,
                     verbose: bool = False, sensitivities=None):
    """:func:`low_rank_plus_sparse` stopped after exactly ``iterations`` iterations from the
    view-shared cine: what ``models.LSNet`` computes before training (train.py's ``--arch=lsnet``,
    ``iterations=10``), the classical point the learned L+S starts from."""
    return low_rank_plus_sparse(kspace, mask, lambda_l=lambda_l, lambda_s=lambda_s, iterations=iterations, tol=0,
                                start="view_sharing", verbose=verbose, sensitivities=sensitivities)


WEIGHTS = {"lambda_t": "tv_t", "lambda_w": "wavelet", "lambda_xy": "tv_xy", "lambda_f": "fourier_t",
           "lambda_r": "nuclear"}  # the ADMM solvers' weight keywords and the penalties they weigh
RHO = 5.0  # ADMM's penalty parameters rho_i = RHO t_i / max|x0|: every proximal step thresholds at max|x0| / RHO
CG_STEPS = 3  # preconditioned CG steps of a multi-coil image update


def admm_rhos(weights: dict, rho) -> dict:
    """ADMM's penalty parameters ``rho_i = rho w_i`` from the relative weights ``w_i`` (numbers or
    tensors): every proximal step then thresholds at the term's scale over ``rho`` (``max|x0| / rho``
    for the total variations and the wavelet), which converged in 50-100 iterations on the phantom
    for weights from 0.001 to 0.03 (``rho`` 5 to 10), where a fixed ``rho_i`` (BART's) converges
    slowly for some weights."""
    return {name: rho * weight for name, weight in weights.items()}


def chosen_penalties(shape, weights: dict, **options) -> dict[str, Penalty]:
    """The :func:`penalties` (``options``: circular, levels, wavelet) that ``weights`` ``{name:
    weight}`` give a weight, in the order of ``penalties``."""
    return {name: term for name, term in penalties(shape, **options).items() if name in weights}


@torch.no_grad()
def tv_wavelet(kspace, mask, *, lambda_t: float = 0.01, lambda_w: float = 0.0003, lambda_xy: float = 0.0,
               lambda_f: float = 0.0, lambda_r: float = 0.0, iterations: int = 100, tol: float = 1e-4,
               rho: float = RHO, cg_steps: int = CG_STEPS, circular: bool = True, wavelet: str = WAVELET,
               levels: int = WAVELET_LEVELS, wavelet_shifts: int = 1, start: str = "zero_filled", verbose: bool = False,
               sensitivities=None):
    """Temporal total variation + spatial l1-wavelet CS (the priors of BART's ``pics -R T -R W``),
    with optional spatial TV, temporal-Fourier l1 and nuclear-norm terms, solved to its minimiser::

        min_x  1/2 ||A x - y||^2 + t_t ||D_t x||_1 + t_w ||Psi x||_1 + t_xy TV_xy(x) + t_f ||F_t x||_1 + t_r ||x||_*

    by ADMM (:func:`admm_iteration`, ``rho`` for every term), whose image update is exact for one
    coil (a ``[T, T]`` solve per k-space point) and ``cg_steps`` preconditioned CG steps with coils;
    returns the last iterate after hard data consistency (with coils the SENSE gradient step, as
    :func:`kt_sparse`), so it keeps the sampled k-space exactly. The terms are those of
    :func:`penalties` (``D_t`` circular unless ``circular=False``; ``Psi`` an orthogonal wavelet
    transform of every frame, ``levels`` levels of ``wavelet``, details only; ``TV_xy`` isotropic;
    ``||x||_*`` the nuclear norm of the Casorati matrix); a weight of 0 leaves its term out.

    lambda_t, lambda_w, lambda_xy: relative to the zero-filled cine's largest magnitude
    ``max |x0|``; lambda_f: to its largest temporal Fourier coefficient (as :func:`kt_sparse`);
    lambda_r: to its largest singular value (as :func:`low_rank_plus_sparse`), each per cine, so
    scaling the k-space by ``c`` scales the result by ``c``. iterations / tol: stop after
    ``iterations`` or when the relative change of every cine and of every split ``v_i`` falls below
    ``tol``. start:
    ``"zero_filled"`` (``x0``) or ``"view_sharing"``. Other arguments as in :func:`kt_sparse`.
    """
    kspace, sampled, was_numpy, single = _prepare(kspace, mask, sensitivities)
    synchronize(kspace.device)
    started = time.perf_counter()
    consistent, x0, maps = _data_step(kspace, sampled, sensitivities, single)  # x0: [B, T, H, W] zero-filled (shifted)
    weights = {WEIGHTS[key]: value for key, value in dict(lambda_t=lambda_t, lambda_w=lambda_w, lambda_xy=lambda_xy,
                                                          lambda_f=lambda_f, lambda_r=lambda_r).items() if value}
    if not weights or min(weights.values()) < 0 or rho <= 0:
        raise ValueError(f"tv_wavelet needs weights >= 0 (one of them > 0) and rho > 0; got {weights}, rho={rho}")
    terms = chosen_penalties(x0.shape[-2:], weights, circular=circular, levels=levels, wavelet=wavelet,
                             wavelet_shifts=wavelet_shifts)
    thresholds, rhos = penalty_thresholds(penalty_scales(x0, terms), weights), admm_rhos(weights, rho)
    update = image_update(kspace, sampled, maps, terms, rhos, cg_steps, like=x0)
    x = x0 if start == "zero_filled" else initial_cine(kspace, sampled, start, maps)  # [B, T, H, W]
    splits = {name: term.forward(x) for name, term in terms.items()}
    duals = {name: torch.zeros_like(split) for name, split in splits.items()}
    for done in range(1, iterations + 1):
        new, new_splits, duals = admm_iteration(x, splits, duals, update, terms, thresholds, rhos)
        converged = max(_relative_change(new, x), *(_relative_change(new_splits[n], splits[n]) for n in terms)) < tol
        x, splits = new, new_splits
        if converged:
            break
    if verbose:  # the minimised objective per cine, before the final data consistency
        value = objective(x, kspace, sampled, maps, terms, thresholds)
    x = consistent(x)
    synchronize(kspace.device)
    if verbose:
        _report("temporal TV + wavelet", len(x), done, time.perf_counter() - started)
        print(f"  objective per cine: {' '.join(f'{v:.4g}' for v in value.tolist())}", flush=True)
    return _finish(x, was_numpy, single)


def view_sharing(kspace, mask, *, verbose: bool = False, sensitivities=None):
    """k-t view sharing (:func:`sampling.view_sharing`, no parameters) as a baseline with the
    solvers' interface: ``kspace`` / ``mask`` ``[T, H, W]`` or ``[B, T, H, W]``, numpy or torch
    (with ``sensitivities``, coil k-space combined as in :func:`kt_sparse`); verbose: print the
    time per cine."""
    device = torch.as_tensor(kspace).device
    synchronize(device)
    started = time.perf_counter()
    x = view_shared_image(kspace, mask, sensitivities)
    synchronize(device)
    if verbose:
        _report("view sharing", len(x) if x.ndim == 4 else 1, 1, time.perf_counter() - started)
    return x


def tv_spatial_tv(kspace, mask, *, lambda_t: float = 0.01, lambda_xy: float = 0.001, **options):
    """:func:`tv_wavelet` with spatial total variation instead of the wavelet (``lambda_w = 0``);
    ``options``: the other keywords of :func:`tv_wavelet`."""
    return tv_wavelet(kspace, mask, lambda_t=lambda_t, lambda_w=0.0, lambda_xy=lambda_xy, **options)


METHODS = {"view_sharing": view_sharing, "kt_sparse": kt_sparse, "lplus_s": low_rank_plus_sparse,
           "lplus_s_unrolled": lplus_s_unrolled, "tv_wavelet": tv_wavelet, "tv_spatial_tv": tv_spatial_tv}
GRIDS = {"view_sharing": {}, "kt_sparse": KT_GRID, "lplus_s": LPLUSS_GRID, "lplus_s_unrolled": LPLUSS_GRID,
         "tv_wavelet": TV_WAVELET_GRID, "tv_spatial_tv": TV_SPATIAL_GRID}


# ----------------------------------------------------------------------------- tuning
def grid_points(grid: dict) -> list[dict]:
    """Every combination of a grid ``{name: values}`` as keyword dicts, in row-major order."""
    names = list(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]


def tune(method, kspace, mask, target, grid: dict, *, batch_size: int = 8, verbose: bool = False,
         sensitivities=None, **fixed) -> tuple[dict, list[dict]]:
    """Pick the regularisation of ``method`` by mean PSNR over the cines given (validation cines:
    never pass test cines here).

    method: a name in ``METHODS`` or a solver ``f(kspace, mask, **params)``; kspace, mask, target:
    ``[N, T, H, W]`` (target: the fully sampled cines, magnitude or complex); grid: ``{name:
    values}``, every combination is tried; ``fixed``: further keywords for every call;
    sensitivities: ``[N, C, H, W]`` for coil k-space ``[N, C, T, H, W]``, passed cine by cine.
    Returns ``(best params, rows)``, rows ``{"params", "psnr"}`` per grid point (mean PSNR in dB).
    """
    solve = METHODS[method] if isinstance(method, str) else method
    target = torch.as_tensor(target)
    rows = []
    for params in grid_points(grid):
        scores = []
        for i in range(0, len(target), batch_size):
            coils = {} if sensitivities is None else {"sensitivities": sensitivities[i:i + batch_size]}
            recon = torch.as_tensor(solve(kspace[i:i + batch_size], mask[i:i + batch_size], **params, **fixed, **coils))
            scores.append(batch_psnr(recon, target[i:i + batch_size].to(recon.device)))
        rows.append({"params": params, "psnr": float(torch.cat(scores).mean())})
        if verbose:
            print(f"  tune {getattr(solve, '__name__', method)} {params}: mean PSNR {rows[-1]['psnr']:.2f} dB "
                  f"on {len(target)} cine(s)", flush=True)
    best = max(rows, key=lambda row: row["psnr"])
    return dict(best["params"]), rows


def grid_edges(params: dict, grid: dict) -> list[str]:
    """The weights of ``params`` that the tuning put on the smallest or largest value of their
    ``grid`` (of more than one value): the best may lie beyond it, so the method may be under-tuned."""
    return [f"{name}={params[name]:g} ({'smallest' if params[name] == min(values) else 'largest'} of the grid)"
            for name, values in grid.items() if len(values) > 1 and params.get(name) in (min(values), max(values))]


if __name__ == "__main__":
    from cli import not_a_command

    not_a_command("baselines.py", "the classical methods run with python compare.py NAME --baselines=... "
                                   "(--help lists them)")
