"""Synthetic short-axis cardiac cine MRI: the embedded default dataset when no data are given.

Anatomy model (bSSFP-like contrast: blood and fat bright, muscle and myocardium grey, lungs dark).
Geometry lives in normalised body coordinates (1 = half the field of view, x to the image right,
y down = posterior), so every image size renders the same anatomy. Tissues are painted back to front
with soft masks (a sigmoid of an approximate signed distance, over ``EDGE_PX`` pixels):

- torso: a lumpy ellipse (flatter front than back) with subcutaneous fat of varying thickness under
  the skin, a chest-wall muscle layer (thicker at the back) holding rib cross-sections and the
  sternum, and a thoracic cavity filled with mediastinal tissue;
- two lungs (dark, with sparse bright vessels), the liver (lower left = patient right, with bright
  vessels), sometimes the stomach (lower right), paraspinal muscles, a vertebral body (marrow in a dark
  cortical rim) with the spinal canal (bright CSF around the cord), the oesophagus and the bright
  descending aorta beside the spine;
- the heart, per frame: a left-ventricular blood pool in a myocardial ring whose area is conserved
  angle by angle (systole shrinks the cavity and thickens the wall, the free wall more than the
  septum), a right-ventricular crescent with a thin free wall between the two insertion points, two
  papillary muscles riding on the LV wall, and epicardial fat, thickest at the RV insertions.

Randomised per cine: body size, aspect, outline, rotation and offset; fat and muscle thickness; ribs;
lung, liver and stomach size; spine and aorta; heart size, position and orientation; LV fractional
area change (the 2D ejection fraction, ``EF_RANGE``) and RV contraction; the heartbeat (systole
shorter than diastole, rapid filling, diastasis and atrial kick, periodic over the frames, random
end-diastolic phase); tissue intensities; smooth texture fields; a coil-like multiplicative bias;
Rician noise (complex Gaussian noise, then the magnitude) and, optionally, a smooth background phase.
The anatomy is drawn before anything size-dependent, so a seed gives the same subject at every size.
The static anatomy is rendered once per cine; only a window around the heart is rendered per frame.
"""
from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from scipy.special import expit

EDGE_PX = 0.7  # width of the soft edges, in pixels
REFERENCE_SIZE = 192  # the image size at which the noise level is specified
EF_RANGE = (0.45, 0.7)  # LV fractional area change (2D ejection fraction)
RV_WALL = 0.018  # RV free-wall thickness, body units
SEPTAL_MOTION = 0.25  # the free wall ejects 1 + this, the septum 1 - this, of the mean
RIB_ANGLES = np.array([-2.65, -2.25, -1.95, -1.2, -0.9, -0.5, -0.1, 0.35, 2.8, 3.25])  # on the cavity
ANGLES = np.linspace(-np.pi, np.pi, 360, endpoint=False)  # to integrate angular profiles


# ----------------------------------------------------------------------------- parameters
def contraction_curve(frames: int, ed_phase: float, systole: float, filling: float,
                      early_fraction: float, atrial_start: float) -> np.ndarray:
    """Contraction over one periodic heartbeat, float64 ``[T]``: 0 at end-diastole, 1 at end-systole.

    Cosine ejection over the first ``systole`` of the cycle (counted from ``ed_phase``), then rapid
    filling (``early_fraction`` of the stroke over ``filling``), diastasis, and the atrial kick from
    ``atrial_start`` to the end of the cycle.
    """
    s = (np.arange(frames) / frames - ed_phase) % 1.0

    def ramp(x):  # smooth 0 -> 1 on [0, 1], flat outside
        return 0.5 - 0.5 * np.cos(np.pi * np.clip(x, 0.0, 1.0))

    relax = (early_fraction * ramp((s - systole) / filling)
             + (1 - early_fraction) * ramp((s - atrial_start) / (1 - atrial_start)))
    return np.where(s < systole, ramp(s / systole), 1.0 - relax)


def _harmonics(rng, orders, amplitude) -> list:
    """Random angular profile: ``(k, a_k, phi_k)`` with a total RMS of about ``amplitude``."""
    scale = amplitude / np.sqrt(len(orders))
    return [(float(k), float(scale * rng.standard_normal()), float(rng.uniform(0, 2 * np.pi))) for k in orders]


def _fourier(coeffs: list, theta):
    """``sum_k a_k cos(k theta + phi_k)``."""
    return sum(a * np.cos(k * theta + phi) for k, a, phi in coeffs)


def sample_anatomy(rng: np.random.Generator, frames: int = 20) -> dict:
    """Draw one subject and heartbeat: geometry (body units), intensities, cycle, imaging settings.

    Independent of the image size. Also holds ``contraction`` ``[T]``, the LV cavity area
    ``lv_area`` ``[T]`` (body units^2, papillary muscles included, as clinical contours do; its
    min/max is about ``1 - ef`` when a frame falls at end-systole) and the LV blood-pool area
    ``blood_area`` ``[T]`` (papillary muscles excluded).
    """
    def u(lo, hi, n=None):
        return float(rng.uniform(lo, hi)) if n is None else rng.uniform(lo, hi, n)

    n_ribs = len(RIB_ANGLES)
    ribs = np.stack([RIB_ANGLES + u(-0.08, 0.08, n_ribs), u(0.025, 0.05, n_ribs)], 1)  # [ribs, (angle, length)]
    p = dict(
        body_center=(u(-0.04, 0.04), u(0.03, 0.11)), body_angle=u(-0.1, 0.1),
        body_a=u(0.85, 0.97), body_b_ant=u(0.5, 0.6), body_b_post=u(0.58, 0.7),
        body_shape=_harmonics(rng, (2, 3, 4), 0.025),
        fat=u(0.025, 0.07), muscle=u(0.03, 0.055), ribs=ribs[rng.random(n_ribs) < 0.75],
        lung_scale=u(0.85, 1.1), liver_scale=u(0.7, 1.15), stomach_scale=u(0.0, 1.2),
        spine_x=u(-0.03, 0.03), spine_depth=u(0.3, 0.36), vertebra_r=u(0.09, 0.11),
        aorta_r=u(0.05, 0.07), aorta_dx=u(0.11, 0.16),
        heart_center=(u(0.05, 0.17), u(-0.16, -0.06)), heart_angle=np.pi + u(0.1, 0.5),
        endo_r=u(0.12, 0.16), wall=u(0.04, 0.06), ef=u(*EF_RANGE),
        endo_shape=_harmonics(rng, range(2, 12), 0.03), epi_shape=_harmonics(rng, (2, 3), 0.03),
        rv_width=u(0.1, 0.17), rv_insertion=u(1.1, 1.5), rv_shift=u(0.0, 0.35), rv_ef=u(0.35, 0.6),
        pap_spread=u(0.7, 1.1), pap_r=u(0.02, 0.03), epi_fat=u(0.004, 0.012), groove_fat=u(0.02, 0.05),
        noise=u(0.012, 0.025), coil_gain=(u(0.25, 0.6), u(0.0, 0.3)), coil_angle=u(-0.6, 0.6),
        phase_coeffs=tuple(u(-2.0, 2.0, 6)),
    )
    base = dict(blood=1.0, fat=0.92, muscle=0.27, myo=0.3, liver=0.4, lung=0.05, mediastinum=0.5,
                stomach=u(0.3, 0.8), marrow=0.65, cortex=0.1, csf=0.85, cord=0.35)
    p["values"] = {name: value * u(0.85, 1.15) for name, value in base.items()}
    p["contraction"] = contraction_curve(frames, u(0, 1), u(0.3, 0.4), u(0.18, 0.28), u(0.65, 0.85),
                                         u(0.8, 0.88))
    endo2 = (p["endo_r"] * (1 + _fourier(p["endo_shape"], ANGLES))) ** 2  # [360]
    ejection = p["ef"] * (1 + SEPTAL_MOTION * np.cos(ANGLES - np.pi))  # [360]
    p["lv_area"] = np.pi * (endo2 * (1 - ejection * p["contraction"][:, None])).mean(1)  # [T]
    p["blood_area"] = p["lv_area"] - 2 * np.pi * _papillary_radius(p, p["contraction"]) ** 2  # [T]
    return p


# ----------------------------------------------------------------------------- drawing helpers
def _ellipse_sdf(x, y, a, b):
    """Approximate signed distance to the ellipse ``(x/a)^2 + (y/b)^2 = 1``: ``(r - 1) / |grad r|``."""
    gx, gy = x / (a * a), y / (b * b)
    r = np.sqrt(x * gx + y * gy)
    return (r - 1) * (r + 1e-6) / (np.sqrt(gx * gx + gy * gy) + 1e-6 / np.maximum(a, b))


def _rotate(x, y, angle):
    """Coordinates of the points ``(x, y)`` along axes rotated by ``angle``."""
    c, s = np.cos(angle), np.sin(angle)
    return x * c + y * s, y * c - x * s


def _smooth_field(rng, size: int, cycles: float) -> np.ndarray:
    """Gaussian random field, float32 ``[size, size]``, features ~``1/cycles`` of the FOV; unit variance
    when the grid resolves it, less on grids too coarse to hold its finest features."""
    k = np.fft.fftfreq(size) * size
    profile = np.exp(-k ** 2 / (2 * cycles ** 2))  # [size]: separable amplitude spectrum
    resolved = (profile ** 2).sum() / (np.sqrt(np.pi) * cycles)  # fraction of the 1D power on the grid
    shape = (size, size // 2 + 1)
    white = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    field = np.fft.irfft2(white * profile[:, None] * profile[None, : size // 2 + 1], s=(size, size))
    return (field * (min(resolved, 1.0) / field.std())).astype(np.float32)


class _Canvas:
    """Back-to-front compositing of soft masks: ``image += mask * (value - image)``."""

    def __init__(self, image: np.ndarray, sharpness: float):
        self.image, self.sharpness = image, sharpness  # sharpness: pixels per body unit / EDGE_PX

    def paint(self, distance, value, clip=None) -> np.ndarray:
        """Paint where ``distance`` (body units) < 0, optionally times the mask ``clip``; return the mask."""
        mask = expit(-self.sharpness * distance)
        if clip is not None:
            mask *= clip
        self.image += mask * (value - self.image)
        return mask


# ----------------------------------------------------------------------------- anatomy
def _tissues(p, tex_med, tex_fine) -> dict:
    """Intensity of each tissue: textured maps ``[H, W]`` or scalars."""
    v = p["values"]

    def textured(name, medium, fine):
        return v[name] * (1 + medium * tex_med + fine * tex_fine)

    return dict(
        fat=textured("fat", 0.08, 0.05), muscle=textured("muscle", 0.12, 0.08), myo=textured("myo", 0.05, 0.04),
        blood=textured("blood", 0.03, 0.02), mediastinum=textured("mediastinum", 0.15, 0.08),
        marrow=textured("marrow", 0.12, 0.15), stomach=textured("stomach", 0.2, 0.1),
        liver=textured("liver", 0.1, 0.06) + 0.5 * np.maximum(tex_med - 1.7, 0),  # + hepatic vessels
        lung=textured("lung", 0.3, 0.2) + 0.15 * np.maximum(tex_fine - 2.0, 0),  # + pulmonary vessels
        cortex=v["cortex"], csf=v["csf"], cord=v["cord"])


def _chest(p, canvas: _Canvas, x, y, tissue, tex_coarse):
    """Skin, fat, muscle, ribs, sternum and cavity; returns the (inner, cavity) masks and cavity axes."""
    a, b = p["body_a"], np.where(y < 0, np.float32(p["body_b_ant"]), np.float32(p["body_b_post"]))
    lumps = 1 + _fourier(p["body_shape"], np.arctan2(y / b, x / a))  # [H, W]
    skin = _ellipse_sdf(x, y, a * lumps, b * lumps)  # [H, W]: ~distance to the skin, negative inside
    fat = p["fat"] * (1 + 0.35 * tex_coarse)
    muscle = p["muscle"] * (1 + np.clip(y / b, 0, 1))  # back muscles are thicker
    canvas.paint(skin, tissue["fat"])
    inner = canvas.paint(skin + fat, tissue["muscle"])
    cavity = canvas.paint(skin + fat + muscle, tissue["mediastinum"])
    ca, cb = a - p["fat"] - p["muscle"], p["body_b_ant"] - p["fat"] - p["muscle"]
    for angle, length in p["ribs"]:
        u, v = _rotate(x - (ca + 0.015) * np.cos(angle), y - (cb + 0.015) * np.sin(angle),
                       np.arctan2(cb * np.cos(angle), -ca * np.sin(angle)))  # u along the chest wall
        canvas.paint(_ellipse_sdf(u, v, length, 0.02), tissue["cortex"])
        canvas.paint(_ellipse_sdf(u, v, length - 0.01, 0.01), tissue["marrow"])
    canvas.paint(_ellipse_sdf(x, y + cb + 0.02, 0.07, 0.025), tissue["cortex"])  # sternum
    canvas.paint(_ellipse_sdf(x, y + cb + 0.02, 0.055, 0.013), tissue["marrow"])
    return inner, cavity, ca, cb


def _static_anatomy(p, x, y, tissue, tex_coarse, sharpness) -> np.ndarray:
    """Everything but the heart, float32 ``[H, W]``; ``x, y`` are body coordinates ``[H, W]``."""
    canvas = _Canvas(np.zeros(x.shape, np.float32), sharpness)
    inner, cavity, ca, cb = _chest(p, canvas, x, y, tissue, tex_coarse)
    s = p["lung_scale"]
    for side, (cx, cy, la, lb) in ((-1, (0.5, 0.02, 0.5, 0.9)), (1, (0.55, 0.08, 0.45, 0.85))):
        lung = _ellipse_sdf(x - side * cx * ca, y - cy * cb, la * ca * s, lb * cb * s)
        canvas.paint(lung, tissue["lung"], clip=cavity)
    s = p["liver_scale"]
    canvas.paint(_ellipse_sdf(x + 0.45 * ca, y - cb, 0.55 * ca * s, 0.65 * cb * s), tissue["liver"], inner)
    s = p["stomach_scale"] + 1e-3  # near 0: the stomach is out of the slice
    canvas.paint(_ellipse_sdf(x - 0.5 * ca, y - 0.9 * cb, 0.3 * ca * s, 0.22 * cb * s), tissue["stomach"], inner)

    sx, sy, rv = p["spine_x"], p["body_b_post"] - p["spine_depth"], p["vertebra_r"]
    canvas.paint(_ellipse_sdf(x - sx, y - sy - 0.17, 0.28, 0.2), tissue["muscle"], inner)  # paraspinal
    canvas.paint(_ellipse_sdf(x - sx, y - sy, rv, rv * 0.9), tissue["cortex"])
    canvas.paint(_ellipse_sdf(x - sx, y - sy, rv - 0.015, rv * 0.9 - 0.015), tissue["marrow"])
    canal_y = sy + rv * 0.9 + 0.045
    canvas.paint(_ellipse_sdf(x - sx, y - canal_y - 0.01, 0.07, 0.065), tissue["cortex"])  # vertebral arch
    canvas.paint(_ellipse_sdf(x - sx, y - canal_y, 0.042, 0.038), tissue["csf"])
    canvas.paint(_ellipse_sdf(x - sx, y - canal_y, 0.022, 0.02), tissue["cord"])
    ax, ay, ra = sx + p["aorta_dx"], sy - rv * 0.9, p["aorta_r"]
    canvas.paint(_ellipse_sdf(x - ax, y - ay, ra + 0.012, ra + 0.012), tissue["muscle"])  # aortic wall
    canvas.paint(_ellipse_sdf(x - ax, y - ay, ra, ra), 0.9 * tissue["blood"])
    canvas.paint(_ellipse_sdf(x - sx + 0.03, y - sy + rv + 0.05, 0.035, 0.025), tissue["muscle"])  # oesophagus
    return canvas.image


def _papillary_radius(p, contraction):
    """Papillary muscle radius (body units) at ``contraction``: they thicken in systole."""
    return p["pap_r"] * (1 + 0.25 * contraction)


def _heart_extent(p) -> float:
    """Radius (body units) around the LV centre that holds the whole heart."""
    return p["endo_r"] + p["wall"] + p["rv_width"] + RV_WALL + p["groove_fat"] + 0.03


def _paint_heart(p, canvas: _Canvas, x, y, tissue) -> None:
    """Paint the beating heart over ``canvas.image`` ``[T, h, w]``; ``x, y`` body coordinates ``[h, w]``."""
    c = p["contraction"].astype(np.float32)[:, None, None]  # [T, 1, 1]
    u, v = _rotate(x - p["heart_center"][0], y - p["heart_center"][1], p["heart_angle"])  # u: LV -> RV
    rho, theta = np.hypot(u, v), np.arctan2(v, u)  # [h, w]; theta = 0 mid-septum
    endo2 = (p["endo_r"] * (1 + _fourier(p["endo_shape"], theta))) ** 2  # [h, w]
    epi2 = ((p["endo_r"] + p["wall"]) * (1 + _fourier(p["epi_shape"], theta))) ** 2
    endo2_t = endo2 - endo2 * p["ef"] * (1 + SEPTAL_MOTION * np.cos(theta - np.pi)) * c  # [T, h, w]
    d_endo = rho - np.sqrt(endo2_t)
    d_epi = rho - np.sqrt(endo2_t + (epi2 - endo2))  # myocardial area conserved at every angle
    epi_mean = np.sqrt(p["endo_r"] ** 2 * (1 - p["ef"] * c) + (epi2 - endo2).mean())  # [T, 1, 1]

    rv_theta = np.clip((theta - p["rv_shift"]) / p["rv_insertion"], -1, 1)  # [h, w]: +-1 at the insertions
    crescent = 1 - rv_theta ** 2  # RV cavity thickness profile
    slope = p["rv_width"] * 2 * rv_theta / p["rv_insertion"] / (rho + 1e-3)  # turns radial into normal distance
    d_rv = (rho - epi_mean - p["rv_width"] * (1 - p["rv_ef"] * c) * crescent) / np.sqrt(1 + slope ** 2)
    d_rv_wall = d_rv - RV_WALL * np.minimum(1, 4 * crescent)
    groove = np.exp(-(((theta - p["rv_shift"]) / p["rv_insertion"]) ** 2 - 1) ** 2 / 0.15)  # at the insertions
    canvas.paint(np.minimum(d_epi, d_rv_wall) - p["epi_fat"] - p["groove_fat"] * groove, tissue["fat"])
    canvas.paint(d_rv_wall, tissue["myo"])
    canvas.paint(d_rv, 0.95 * tissue["blood"])
    canvas.paint(d_epi, tissue["myo"])
    canvas.paint(d_endo, tissue["blood"])

    pap_r = _papillary_radius(p, c)  # [T, 1, 1]
    for angle in (np.pi - p["pap_spread"], np.pi + p["pap_spread"]):
        ejection = p["ef"] * (1 + SEPTAL_MOTION * np.cos(angle - np.pi))
        radius = p["endo_r"] * np.sqrt(1 - ejection * c) - pap_r  # [T, 1, 1]: touching the wall
        canvas.paint(np.hypot(u - radius * np.cos(angle), v - radius * np.sin(angle)) - pap_r, tissue["myo"])


# ----------------------------------------------------------------------------- rendering
def _body_grid(p, size: int):
    """Body coordinates ``x, y`` (float32 ``[H, W]``) of the pixel centres."""
    grid = (np.arange(size, dtype=np.float32) - (size - 1) / 2) / (size / 2)
    cx, cy = p["body_center"]
    return _rotate(grid[None, :] - np.float32(cx), grid[:, None] - np.float32(cy), np.float32(p["body_angle"]))


def heart_pixel(p, size: int) -> tuple[float, float]:
    """``(row, col)`` of the LV centre of subject ``p`` in a ``size`` x ``size`` image."""
    hx, hy = _rotate(*p["heart_center"], -p["body_angle"])
    col, row = (np.array([hx, hy]) + p["body_center"]) * size / 2 + (size - 1) / 2
    return float(row), float(col)


def _heart_window(p, size: int):
    """``(rows, cols)`` slices of the image that contain the heart in every frame."""
    row, col = heart_pixel(p, size)
    half = int(np.ceil(_heart_extent(p) * size / 2)) + 2
    return (slice(max(int(row) - half, 0), min(int(row) + half + 2, size)),
            slice(max(int(col) - half, 0), min(int(col) + half + 2, size)))


def _coil_bias(p, x, y, tex_coarse) -> np.ndarray:
    """Smooth multiplicative receive-coil shading ``[H, W]``: anterior and posterior arrays."""
    front, back = p["coil_gain"]
    ax, ay = 0.9 * np.sin(p["coil_angle"]), -0.9 * np.cos(p["coil_angle"])
    bias = (1 + front * np.exp(-((x - ax) ** 2 + (y - ay) ** 2) / 0.8)
            + back * np.exp(-(x ** 2 + (y - 0.9) ** 2) / 0.8))
    return bias * (1 + 0.05 * tex_coarse)


def render_cine(p: dict, size: int, rng: np.random.Generator, complex_phase: bool = False) -> np.ndarray:
    """Render the subject ``p`` (from :func:`sample_anatomy`) as a cine ``[T, size, size]`` with peak 1."""
    frames, sharpness = len(p["contraction"]), size / 2 / EDGE_PX
    x, y = _body_grid(p, size)  # [H, W]
    tex_coarse, tex_med, tex_fine = (_smooth_field(rng, size, cycles) for cycles in (2, 10, 30))
    tissue = _tissues(p, tex_med, tex_fine)
    static = _static_anatomy(p, x, y, tissue, tex_coarse, sharpness)  # [H, W]
    rows, cols = _heart_window(p, size)
    heart = _Canvas(np.repeat(static[None, rows, cols], frames, axis=0), sharpness)  # [T, h, w]
    _paint_heart(p, heart, x[rows, cols], y[rows, cols],
                 {name: t[rows, cols] if np.ndim(t) else t for name, t in tissue.items()})
    image = np.repeat(static[None], frames, axis=0)  # [T, H, W]
    image[:, rows, cols] = heart.image
    bias = _coil_bias(p, x, y, tex_coarse)  # [H, W]
    image *= bias
    sigma = np.float32(p["noise"] * bias.max() * size / REFERENCE_SIZE)  # noise of k-space cropped data
    real, imag = (rng.standard_normal(image.shape, dtype=np.float32) * sigma for _ in range(2))
    if complex_phase:
        a = p["phase_coeffs"]
        phase = a[0] + a[1] * x + a[2] * y + a[3] * x * y + a[4] * x * x + a[5] * y * y  # [H, W]
        image = image * np.exp(1j * phase).astype(np.complex64) + (real + 1j * imag)
        return image / np.abs(image).max()
    real += image
    image = np.sqrt(real * real + imag * imag)  # Rician magnitude
    return image / image.max()


# ----------------------------------------------------------------------------- public API
def make_phantom_cine(rng: np.random.Generator, frames: int = 20, size: int = 192,
                      complex_phase: bool = False) -> np.ndarray:
    """One random cine ``[T, H, W]``: float32 magnitude in [0, 1] with peak 1, or complex64 with
    peak magnitude 1 and a smooth background phase when ``complex_phase``."""
    return render_cine(sample_anatomy(rng, frames), size, rng, complex_phase)


def make_phantom_dataset(n: int, frames: int = 20, size: int = 192, seed: int = 0,
                         complex_phase: bool = False) -> np.ndarray:
    """``n`` cines ``[n, T, H, W]`` (float32, or complex64 with ``complex_phase``), each with peak 1.

    Cine ``i`` draws from the ``i``-th child of ``SeedSequence(seed)``: it is the same whatever ``n``
    and however many threads render the cines.
    """
    children = np.random.SeedSequence(seed).spawn(n)
    out = np.empty((n, frames, size, size), np.complex64 if complex_phase else np.float32)

    def render(i):
        out[i] = make_phantom_cine(np.random.default_rng(children[i]), frames, size, complex_phase)

    with ThreadPoolExecutor(max(1, min(n, os.cpu_count() or 1))) as pool:
        list(pool.map(render, range(n)))
    return out


# ----------------------------------------------------------------------------- figure
def _heart_location(cine: np.ndarray):
    """Row through the centre of the motion, and the mean signal there per frame ``[T]`` (max at
    end-diastole, when the bright blood pool is largest)."""
    from scipy.ndimage import center_of_mass, gaussian_filter

    motion = gaussian_filter(cine.std(0), cine.shape[-1] / 40)  # [H, W]
    moving = motion > 0.5 * motion.max()
    row = int(round(center_of_mass(moving)[0]))
    return row, cine[:, moving].mean(1)


def plot_phantom(cines, path) -> None:
    """Save end-diastole, end-systole and mid-diastole frames and an x-t profile through the heart
    for up to three cines ``[N, T, H, W]`` (magnitudes are shown)."""
    from matplotlib.figure import Figure

    cines = np.abs(np.asarray(cines))[:3]
    fig = Figure(figsize=(10, 2.6 * len(cines)), layout="constrained")
    axes = fig.subplots(len(cines), 4, squeeze=False)
    for i, cine in enumerate(cines):
        frames = len(cine)
        row, signal = _heart_location(cine)
        ed, es = int(np.argmax(signal)), int(np.argmin(signal))
        mid = (es + (ed - es) % frames // 2) % frames
        for ax, (label, t) in zip(axes[i], (("end-diastole", ed), ("end-systole", es), ("diastole", mid))):
            ax.imshow(cine[t], cmap="gray", vmin=0, vmax=1)
            ax.axhline(row, color="tab:orange", lw=0.6, alpha=0.6)
            ax.set_title(f"cine {i}, frame {t}: {label}", fontsize=9)
            ax.axis("off")
        axes[i, 3].imshow(cine[:, row, :], cmap="gray", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
        axes[i, 3].set(title=f"x-t along the orange row {row}", xlabel="x (column)", ylabel="frame t")
    fig.suptitle("Synthetic short-axis cine phantom (phantom.py)")
    fig.savefig(path, dpi=85)


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/phantom.png")
    target.parent.mkdir(parents=True, exist_ok=True)
    plot_phantom(make_phantom_dataset(3, seed=0), target)
    print(f"wrote {target}")
