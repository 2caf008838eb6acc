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

import itertools
import math
import time

import torch

from metrics import batch_psnr
from sampling import coil_combine, data_consistency, gradient_dc, sense_adjoint, shared_kspace
from sampling import view_sharing as view_shared_image

# Grids for tuning on validation cines (relative weights, see the module docstring) around the
# defaults, wide enough that the best point lies inside them on the complex phantom at 64x64, 5x
# (k-t sparse 0.003; L+S 0.01 and 0.003: output/compare_main/results.md of docs/results.md).
# Relative weights tried by tune(): wide enough for noise-free single-coil cines (small weights) and
# for noisy multi-coil data (8 coils at 8x picks the large ones); compare.py flags a pick at an edge.
KT_GRID = {"lam": (0.0003, 0.001, 0.003, 0.01, 0.03)}
LPLUSS_GRID = {"lambda_l": (0.003, 0.01, 0.03, 0.1, 0.3), "lambda_s": (0.001, 0.003, 0.01, 0.03)}
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
    change = (new - old).flatten(1).norm(dim=1) / old.flatten(1).norm(dim=1).clamp_min(1e-30)
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


METHODS = {"view_sharing": view_sharing, "kt_sparse": kt_sparse, "lplus_s": low_rank_plus_sparse,
           "lplus_s_unrolled": lplus_s_unrolled}
GRIDS = {"view_sharing": {}, "kt_sparse": KT_GRID, "lplus_s": LPLUSS_GRID, "lplus_s_unrolled": LPLUSS_GRID}


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
