"""Synthetic short-axis cardiac cine MRI: the embedded default dataset when no data are given.

A bSSFP-like short-axis cine (blood and fat bright, myocardium and muscle grey, lungs dark), complex
valued, rendered on a grid ``oversample`` times finer than the output and brought to the output size
by cropping its centred orthonormal k-space; complex Gaussian noise is added in k-space. See
docs/phantom.md for the model, the SNR definition, the options, timings and a figure.

Geometry lives in body coordinates (1 body unit = ``MM_PER_UNIT`` mm, x to the image right, y down =
posterior, origin at the body centre); ``fov`` (body units) is half the field of view along the rows,
pixels are square, so a (192, 256) image sees a wider field than a 192 x 192 one. Tissues are painted
back to front with masks that ramp linearly across the tissue's (approximate) boundary, over 1.5-4 mm
(through-plane partial volume) or one fine pixel if that is wider:

- static, rendered once per cine: torso outline with subcutaneous fat, chest-wall muscle, ribs and
  sternum, sometimes the arms; lungs, liver, stomach, spine with the spinal canal, oesophagus;
- per frame, in one window: the heart (LV ring whose area is conserved angle by angle, RV crescent,
  trabeculation, papillary muscles, epicardial fat), the atria, aortic root, pulmonary artery and
  superior vena cava at basal slices, the descending aorta and, at mid/apical slices, the inferior vena
  cava; the background around the heart is pulled in with the contraction.

The slice position (0 base .. 1 apex) sets the LV and RV size, papillary muscles, trabeculation,
which vessels and atria are cut, and how much lung, liver and stomach is seen.

Multi-coil (:func:`make_coil_dataset`): the cine seen through N receive loops around the torso, with
birdcage-style sensitivities and correlated receiver noise (docs/phantom.md, "Receive coils").
"""
from __future__ import annotations

import math
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from scipy import fft as sfft
from scipy.ndimage import map_coordinates

from sampling import coil_combine, coil_images, fft2c, ifft2c

MM_PER_UNIT = 200.0  # body units to mm
OVERSAMPLE = 2  # rendering grid / output grid
SNR_RANGE = (20.0, 50.0)  # blood-pool SNR at a 192 x 192 matrix, drawn per cine
REFERENCE_PIXELS = 192 * 192  # the matrix at which ``snr`` is stated (same field of view)
EF_RANGE = (0.45, 0.7)  # LV fractional area change (2D ejection fraction) at mid-ventricle
RV_WALL = 0.018  # RV free-wall thickness, body units
SEPTAL_MOTION = 0.25  # the free wall ejects 1 + this, the septum 1 - this, of the mean
RIB_ANGLES = np.array([-2.65, -2.25, -1.95, -1.2, -0.9, -0.5, -0.1, 0.35, 2.8, 3.25])  # on the cavity
TABLE = 1024  # angular samples of the heart's shape profiles (a power of 2)
ANGLES = np.linspace(-np.pi, np.pi, TABLE, endpoint=False, dtype=np.float32)  # [TABLE]
BOX_MARGIN = 0.04  # heart box margin, fraction of the image height
COIL_STANDOFF = 0.1  # receive loops: distance outside the torso ellipse, body units (20 mm)
COIL_RADIUS = 0.2  # receive loops: the near-field softening of their 1 / distance fall-off, body units
COIL_CORRELATION = (0.1, 0.3)  # receiver noise correlation of opposite .. neighbouring loops
PHANTOM_RENDER = 24  # peak memory of rendering one cine, in rendered cines (about 21 measured at 64 and 128)
COIL_RENDER = 3  # memory of rendering one cine's coils, in coil cines (coil images, their k-space, its copy)


# ----------------------------------------------------------------------------- parameters
def _ramp(x):
    """Smooth 0 -> 1 on [0, 1], flat outside."""
    return 0.5 - 0.5 * np.cos(np.pi * np.clip(x, 0.0, 1.0))


def contraction_curve(frames: int, ed_phase: float, systole: float, filling: float,
                      early_fraction: float, atrial_start: float) -> np.ndarray:
    """Contraction over one periodic heartbeat, float64 ``[T]``: 0 at end-diastole, 1 at end-systole.

    Cosine ejection over the first ``systole`` of the cycle (counted from ``ed_phase``), then rapid
    filling (``early_fraction`` of the stroke over ``filling``), diastasis, and the atrial kick from
    ``atrial_start`` to the end of the cycle.
    """
    s = (np.arange(frames) / frames - ed_phase) % 1.0
    relax = (early_fraction * _ramp((s - systole) / filling)
             + (1 - early_fraction) * _ramp((s - atrial_start) / (1 - atrial_start)))
    return np.where(s < systole, _ramp(s / systole), 1.0 - relax)


def vessel_curves(frames: int, ed_phase: float, systole: float):
    """Arterial distension, arterial through-plane flow and venous flow, float64 ``[T]`` each.

    Distension rises over the first 40% of systole and decays exponentially to 0 by end-diastole;
    arterial flow is a sine over systole, 0 in diastole; venous flow has systolic and diastolic waves.
    """
    s = (np.arange(frames) / frames - ed_phase) % 1.0
    peak, tau = 0.4 * systole, 0.3
    tail = np.exp(-(1 - peak) / tau)
    decay = (np.exp(-(s - peak) / tau) - tail) / (1 - tail)
    distension = np.where(s < peak, _ramp(s / peak), decay)
    flow = np.where(s < systole, np.sin(np.pi * s / systole), 0.0)
    venous = 0.7 + 0.3 * np.cos(4 * np.pi * (s - 0.3))
    return distension, flow, venous


def _harmonics(rng, orders, amplitude) -> list:
    """Random angular profile: ``(k, a_k, phi_k)`` with a total RMS of about ``amplitude``."""
    orders = np.asarray(orders, float)
    amplitudes = amplitude / np.sqrt(len(orders)) * rng.standard_normal(len(orders))
    return list(zip(orders.tolist(), amplitudes.tolist(), rng.uniform(0, 2 * np.pi, len(orders)).tolist()))


def _fourier(coeffs: list, theta):
    """``sum_k a_k cos(k theta + phi_k)``."""
    return sum(a * np.cos(k * theta + phi) for k, a, phi in coeffs)


def _fourier_table(coeffs: list) -> np.ndarray:
    """:func:`_fourier` over ``ANGLES``, float32 ``[TABLE]``."""
    k, a, phi = np.array(coeffs, np.float32).T[:, :, None]  # [K, 1] each
    return (a * np.cos(k * ANGLES + phi)).sum(0)


class _Uniform:
    """``u(lo, hi)``: a uniform draw from ``rng`` (scalars served from blocks of 64, to save numpy
    calls); ``u(lo, hi, n)``: ``n`` of them as an array."""

    def __init__(self, rng: np.random.Generator):
        self.rng, self.block = rng, []

    def __call__(self, lo: float, hi: float, n: int | None = None):
        if n is not None:
            return self.rng.uniform(lo, hi, n)
        if not self.block:
            self.block = self.rng.random(64).tolist()[::-1]
        return lo + (hi - lo) * self.block.pop()


def _pick(drawn: float, option) -> float:
    """``option`` if it is a number, else the uniform draw ``drawn`` (in [0, 1]) mapped into its range."""
    if np.ndim(option) == 0:
        return float(option)
    lo, hi = option
    return float(lo + (hi - lo) * drawn)


def _tissue_values(u) -> dict:
    """bSSFP signal (blood ~ 1) and phase offset (rad) of every tissue: ``name -> (value, phase)``.

    Water tissues get small phase offsets, fat (and fatty marrow) one shared chemical-shift phase.
    """
    fat_phase = u(-np.pi, np.pi)
    ranges = dict(blood=(0.9, 1.1), myo=(0.2, 0.42), fat=(0.75, 1.05), muscle=(0.2, 0.32), liver=(0.3, 0.45),
                  lung=(0.02, 0.07), mediastinum=(0.35, 0.6), stomach=(0.2, 0.9), marrow=(0.5, 0.8),
                  cortex=(0.05, 0.1), csf=(0.9, 1.3), cord=(0.3, 0.4))
    values = {}
    for name, (lo, hi) in ranges.items():
        value, phase = u(lo, hi), u(-0.15, 0.15)
        values[name] = (value, fat_phase + phase if name in ("fat", "marrow") else phase)
    return values


def _sample_body(u, rng, s: float) -> dict:
    """Torso, arms, organs and spine; the field of view (the heart planned near its centre)."""
    n_ribs = len(RIB_ANGLES)
    ribs = np.stack([RIB_ANGLES + u(-0.08, 0.08, n_ribs), u(0.025, 0.05, n_ribs)], 1)  # [ribs, (angle, length)]
    size = u(0.9, 1.1)
    p = dict(heart_center=(u(0.04, 0.14), u(-0.14, -0.04)), body_angle=u(-0.1, 0.1),
             body_a=u(0.8, 0.9) * size, body_b_ant=u(0.45, 0.55) * size, body_b_post=u(0.55, 0.63) * size,
             body_shape=_harmonics(rng, (2, 3, 4), 0.025), fat=u(0.015, 0.06) * size ** 2,
             muscle=u(0.03, 0.055), ribs=ribs[rng.random(n_ribs) < 0.75],
             arms=u(0, 1) < 0.6, arm_r=u(0.2, 0.27), arm_gap=u(0.0, 0.05), arm_y=u(0.0, 0.15),
             lung_scale=u(0.85, 1.1) * (1 - 0.2 * s), liver_scale=u(0.5, 0.85) + 0.35 * s,
             stomach_scale=u(0.0, 1.2) * (0.3 + 0.7 * s),
             spine_x=u(-0.03, 0.03), spine_depth=u(0.3, 0.36), vertebra_r=u(0.09, 0.11),
             aorta_r=u(0.045, 0.065), aorta_dx=u(0.11, 0.16), distension=u(0.04, 0.1),
             edge=u(1.5, 4.0) / MM_PER_UNIT)  # soft tissue boundaries (through-plane partial volume)
    heart_x, heart_y = _rotate(*p["heart_center"], -p["body_angle"])
    p["body_center"] = (u(-0.06, 0.06) - heart_x, u(-0.06, 0.04) - heart_y)
    p["fov"] = max(u(0.75, 1.0), p["body_center"][1] + p["body_b_post"] + 0.02,
                   p["body_b_ant"] - p["body_center"][1] + 0.02)  # the body never wraps along y
    return p


def _sample_heart(u, rng, s: float) -> dict:
    """Ventricles (u from the LV to the RV, v anterior), trabeculae, papillary muscles, and the
    heart-frame discs ``(u, v, radius)`` of the atria and basal vessels (radius 0 where not cut)."""
    basal = float(np.clip((0.25 - s) / 0.2, 0, 1))  # atria, aortic root, pulmonary artery, SVC
    mid = float(np.clip(np.sin(np.pi * (s - 0.15) / 0.65), 0, 1)) if 0.15 < s < 0.8 else 0.0  # papillary
    endo = u(0.125, 0.16) * (1 - 0.55 * s * s)
    p = dict(heart_angle=np.pi + u(0.1, 0.5), endo_r=endo, wall=u(0.045, 0.06) * (1 - 0.2 * s), ef=u(*EF_RANGE),
             endo_shape=_harmonics(rng, range(2, 12), 0.03), epi_shape=_harmonics(rng, (2, 3), 0.03),
             rv_width=u(0.07, 0.12) * (1 + 0.4 * basal) * float(np.clip((0.88 - s) / 0.3, 0, 1)),
             rv_insertion=u(0.9, 1.3) * (1 - 0.4 * s), rv_shift=u(0.0, 0.35), rv_ef=u(0.35, 0.6),
             pap_spread=u(0.7, 1.1), pap_r=u(0.02, 0.03) * mid, epi_fat=u(0.004, 0.012), groove_fat=u(0.02, 0.05),
             trabecular_depth=u(0.08, 0.2) * (0.4 + 0.6 * s))
    angle = u(-np.pi, np.pi, 16)  # trabecular spokes: angle, width, height (more on the free wall)
    p["trabeculae"] = np.stack([angle, u(0.015, 0.045, 16), u(0.3, 1.0, 16) * (0.3 + 0.35 * (1 - np.cos(angle)))], 1)
    epi = endo + p["wall"]
    la_r, ra_r = u(0.07, 0.11) * basal, u(0.06, 0.1) * basal
    root_r, pa_r, svc_r = u(0.055, 0.075) * basal, u(0.055, 0.075) * basal, u(0.035, 0.05) * basal
    p.update(la=(u(-0.05, 0.05) - 0.2 * endo, -(epi + 0.8 * la_r), la_r),
             ra=(epi + 0.6 * p["rv_width"] + u(-0.02, 0.02), -(0.5 * epi + 0.8 * ra_r), ra_r),
             aortic_root=(0.35 * endo + u(-0.02, 0.02), 0.75 * endo + u(-0.01, 0.02), root_r),
             pa=(-0.3 * endo + u(-0.03, 0.03), epi + 0.9 * pa_r, pa_r),
             svc=(epi + p["rv_width"] + RV_WALL + 0.5 * svc_r, 0.3 * endo + u(-0.03, 0.03), svc_r),
             atrial_motion=u(0.08, 0.15),
             ivc=(u(-0.2, -0.14), u(0.02, 0.08), u(0.04, 0.055) * float(np.clip((s - 0.35) / 0.2, 0, 1))))
    return p


def _sample_cycle(u, frames: int) -> dict:
    """The heartbeat: contraction, arterial distension and flow, venous and ventricular flow ``[T]``,
    and the through-plane flow phase gains (rad at peak flow)."""
    ed_phase, systole = u(0, 1), u(0.3, 0.4)
    p = dict(contraction=contraction_curve(frames, ed_phase, systole, u(0.18, 0.28), u(0.65, 0.85), u(0.8, 0.88)))
    p["distension_curve"], p["arterial_flow"], p["venous_flow"] = vessel_curves(frames, ed_phase, systole)
    slope = np.roll(p["contraction"], -1) - np.roll(p["contraction"], 1)  # [T]: ejection > 0, filling < 0
    p["ventricular_flow"] = slope / max(np.abs(slope).max(), 1e-6)
    sign = 1.0 if u(0, 1) < 0.5 else -1.0  # the slice normal points to the head or to the feet
    p.update(flow_phase=sign * u(0.5, 1.5), ventricular_phase=sign * u(0.1, 0.4))
    return p


def _sample_motion(u, frames: int, s: float, breathing: float) -> dict:
    """Cardiac translation and twist, the breathing drift ``[T, 2]`` (body units) and the pulsation of
    the tissue around the heart."""
    angle = u(-np.pi, np.pi)
    cycles, start, tilt = u(0.15, 0.4), u(0, 2 * np.pi), u(-0.5, 0.5)
    drift = 0.5 - 0.5 * np.cos(2 * np.pi * cycles * np.arange(frames) / frames + start)  # [T] in [0, 1]
    return dict(heart_shift=u(0.004, 0.012) * np.array([np.cos(angle), np.sin(angle)]),
                twist=u(0.03, 0.08) * (s - 0.4) / 0.6,  # base and apex turn opposite ways
                breathing=(breathing / MM_PER_UNIT) * drift[:, None] * np.array([np.sin(tilt), np.cos(tilt)]),
                pulsation=(u(0.006, 0.014), u(0.06, 0.12)))  # displacement at end-systole, decay length


def _sample_imaging(u, snr) -> dict:
    """Receive coils, smooth phase, B0 (bSSFP banding) and the SNR."""
    p = dict(coil_gain=(u(0.6, 1.5), u(0.0, 0.45)), coil_angle=u(-0.6, 0.6), phase_coeffs=u(-2.0, 2.0, 6).tolist(),
             band_radius=u(0.45, 1.4), band_aspect=u(0.6, 1.6), b0_gradient=u(-1.5, 1.5, 2).tolist(),
             band_depth=u(0.6, 0.95), band_width=u(0.15, 0.35))
    drawn = u(0, 1)
    p["snr"] = None if snr is None else _pick(drawn, snr)
    return p


def sample_anatomy(rng: np.random.Generator, frames: int = 20, slice_position=(0.0, 1.0), snr=SNR_RANGE,
                   breathing: float = 0.0) -> dict:
    """Draw one subject and heartbeat: geometry (body units), tissues, cycle, motion, imaging settings.

    Independent of the image size. ``slice_position`` (0 base .. 1 apex) and ``snr`` (see
    :func:`render_cine`; None: no noise) are numbers, or ranges to draw from uniformly;
    ``breathing`` is the peak drift of the heart in mm (0: breath-hold). The same draws are made
    whatever the options, so an option changes only its own property. Also holds ``contraction``
    ``[T]``, the LV cavity area ``lv_area`` ``[T]`` (body units^2, papillary muscles and trabeculae
    included, as clinical contours do) and the LV blood-pool area ``blood_area`` ``[T]`` (without them).
    """
    u = _Uniform(rng)
    s = _pick(u(0, 1), slice_position)
    p = dict(slice_position=s, **_sample_body(u, rng, s), **_sample_heart(u, rng, s), values=_tissue_values(u),
             **_sample_cycle(u, frames), **_sample_motion(u, frames, s, breathing), **_sample_imaging(u, snr))
    p["tables"] = _heart_tables(p)
    p.update(_lv_areas(p))
    return p


# ----------------------------------------------------------------------------- heart shape
def _heart_tables(p) -> dict:
    """Angular profiles of the heart, float32 ``[TABLE]`` each over ``ANGLES`` (0 = mid-septum):
    squared ED endocardial ``endo2`` and epicardial ``epi2`` radii and the squared radius lost at
    end-systole ``shrink2`` (the myocardial area is conserved at every angle, so both borders lose
    it); the RV cavity profile ``crescent`` (1 mid-RV, 0 beyond the insertions) and free-wall
    thickness ``rv_wall``; the epicardial ``fat`` (thicker in the RV grooves); the trabecular
    ``spokes`` (0 .. 1); ``endo``, the ED endocardial radius."""
    theta = ANGLES
    relative = (theta - p["rv_shift"]) / p["rv_insertion"]  # +-1 at the RV insertions
    angle, width, height = p["trabeculae"].astype(np.float32).T[:, :, None]  # [n, 1] each
    endo = p["endo_r"] * (1 + _fourier_table(p["endo_shape"]))
    epi = (p["endo_r"] + p["wall"]) * (1 + _fourier_table(p["epi_shape"]))
    crescent = 1 - np.clip(relative, -1, 1) ** 2
    tables = dict(endo=endo, endo2=endo ** 2, epi2=epi ** 2,
                  shrink2=endo ** 2 * p["ef"] * (1 + SEPTAL_MOTION * np.cos(theta - np.pi)),
                  crescent=crescent, rv_wall=RV_WALL * np.minimum(1, 4 * crescent),
                  fat=p["epi_fat"] + p["groove_fat"] * np.exp(-(relative ** 2 - 1) ** 2 / 0.15),
                  spokes=np.minimum((height * np.exp((np.cos(theta - angle) - 1) * (2 / width ** 2))).sum(0), 1))
    return {name: table.astype(np.float32) for name, table in tables.items()}


def _papillary_radius(p, contraction):
    """Papillary muscle radius (body units) at ``contraction``: they thicken in systole."""
    return p["pap_r"] * (1 + 0.25 * contraction)


def _trabecular_depth(p, contraction):
    """Depth of the trabecular layer, fraction of the endocardial radius: compressed in systole."""
    return p["trabecular_depth"] * (1 - 0.6 * contraction)


def _lv_areas(p) -> dict:
    """LV cavity area ``lv_area`` and blood-pool area ``blood_area``, float64 ``[T]`` (body units^2)."""
    tables = p["tables"]
    c = p["contraction"][:, None]  # [T, 1]
    endo2 = tables["endo2"].astype(np.float64) - tables["shrink2"] * c  # [T, TABLE]
    pool2 = endo2 * (1 - _trabecular_depth(p, c) * tables["spokes"]) ** 2
    lv_area = np.pi * endo2.mean(1)
    blood_area = np.pi * pool2.mean(1) - 2 * np.pi * _papillary_radius(p, p["contraction"]) ** 2
    return dict(lv_area=lv_area, blood_area=blood_area)


def _heart_motion(p):
    """Per-frame LV centre ``[T, 2]`` (body units) and heart angle ``[T]``: translation and twist with
    the contraction, plus the breathing drift."""
    c = p["contraction"][:, None]  # [T, 1]
    centre = np.asarray(p["heart_center"]) + c * p["heart_shift"] + p["breathing"]
    return centre, p["heart_angle"] + p["twist"] * p["contraction"]


def _heart_discs(p) -> list:
    """Heart-frame discs ``(u, v, radius)`` that cover every heart-frame structure in every phase:
    the LV with its fat, the RV crescent (discs along it) and the basal atria and vessels."""
    epi, fat = p["endo_r"] + p["wall"], p["epi_fat"] + p["groove_fat"]
    discs = [(0.0, 0.0, epi + fat)]
    for theta in p["rv_shift"] + p["rv_insertion"] * np.linspace(-1, 1, 9):
        thickness = p["rv_width"] * (1 - ((theta - p["rv_shift"]) / p["rv_insertion"]) ** 2)
        discs.append((epi * np.cos(theta), epi * np.sin(theta), thickness + RV_WALL + fat))
    for name in ("la", "ra", "aortic_root", "pa", "svc"):
        cu, cv, radius = p[name]
        if radius >= 0.005:
            discs.append((cu, cv, radius * (1 + max(p["distension"], 0.6 * p["atrial_motion"])) + 0.01))
    return discs


# ----------------------------------------------------------------------------- drawing helpers
def _ellipse_sdf(x, y, a, b):
    """Approximate signed distance to the ellipse ``(x/a)^2 + (y/b)^2 = 1``: ``(r - 1) / |grad r|``."""
    gx, gy = x / (a * a), y / (b * b)
    r = np.sqrt(x * gx + y * gy)
    return (r - 1) * (r + 1e-6) / (np.sqrt(gx * gx + gy * gy) + np.float32(1e-6) / np.float32(np.maximum(a, b)))


def _rotate(x, y, angle):
    """Coordinates of the points ``(x, y)`` along axes rotated by ``angle`` (a number keeps float32 float32)."""
    c, s = (math.cos(angle), math.sin(angle)) if np.ndim(angle) == 0 else (np.cos(angle), np.sin(angle))
    return x * c + y * s, y * c - x * s


def _length(x, y):
    """``sqrt(x^2 + y^2)`` elementwise (much faster than ``np.hypot`` on float32)."""
    return np.sqrt(x * x + y * y)


def _angle_index(theta):
    """Nearest ``ANGLES`` index, int32, of angles ``theta`` in [-pi, pi]."""
    return (((theta + np.float32(np.pi)) * np.float32(TABLE / (2 * np.pi)) + np.float32(0.5)).astype(np.int32)
            & (TABLE - 1))


class _Grid:
    """A pixel grid over the subject: ``shape`` pixels of ``spacing`` body units, pixel
    ``(H // 2, W // 2)`` at the image centre (the FFT origin); body coordinates are the image
    coordinates shifted to the body centre and rotated by the body angle."""

    def __init__(self, p, shape, spacing: float):
        self.shape, self.spacing = tuple(shape), float(spacing)
        self.center, self.angle = p["body_center"], p["body_angle"]

    def coords(self, rows=slice(None), cols=slice(None)):
        """Body coordinates ``x, y``, float32 ``[h, w]``, of the pixel centres in ``rows, cols``."""
        r = np.arange(self.shape[0], dtype=np.float32)[rows] - self.shape[0] // 2
        c = np.arange(self.shape[1], dtype=np.float32)[cols] - self.shape[1] // 2
        d = np.float32(self.spacing)
        return _rotate(c[None, :] * d - np.float32(self.center[0]), r[:, None] * d - np.float32(self.center[1]),
                       np.float32(self.angle))

    def pixel(self, x: float, y: float):
        """``(row, col)`` (float) of the body point ``(x, y)``."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        ix, iy = x * c - y * s, y * c + x * s  # rotated back to the image axes
        return ((iy + self.center[1]) / self.spacing + self.shape[0] // 2,
                (ix + self.center[0]) / self.spacing + self.shape[1] // 2)

    def region(self, x, y, radius):
        """``(rows, cols)`` slices of the pixels within ``radius`` (body units) of the body point(s)
        ``(x, y)`` (numbers, or arrays for the union of several discs), clipped to the grid."""
        half = radius / self.spacing + 2
        regions = []
        for centre, n in zip(self.pixel(x, y), self.shape):
            if np.ndim(centre):  # several discs
                lo, hi = np.min(centre - half), np.max(centre + half)
            else:
                lo, hi = centre - half, centre + half
            regions.append(slice(min(max(int(lo), 0), n), min(max(int(hi) + 2, 0), n)))
        return tuple(regions)


ALL = (slice(None), slice(None))


class _Canvas:
    """Back-to-front compositing on a complex window ``image`` ``[..., h, w]`` of a ``_Grid`` at
    ``rows, cols``: ``image += mask * (value - image)``, the mask ramping linearly across
    ``distance = 0`` (body units, negative inside) over ``edge`` body units, or one pixel if wider.
    ``tissues`` are full-grid maps ``[H, W]`` or complex scalars."""

    def __init__(self, image, grid: _Grid, rows: slice, cols: slice, tissues: dict, edge: float):
        self.image, self.grid, self.tissues = image, grid, tissues
        self.x, self.y = grid.coords(rows, cols)  # [h, w]
        self.offset = (rows.start or 0, cols.start or 0)
        self.window = (slice(self.offset[0], self.offset[0] + self.x.shape[0]),
                       slice(self.offset[1], self.offset[1] + self.x.shape[1]))  # in the grid
        self.px = np.float32(1 / grid.spacing)  # pixels per body unit
        self.sharpness = np.float32(1 / max(edge, grid.spacing))  # the masks' ramp: 1 / its width

    def sub(self, region) -> "_Canvas":
        """A canvas on ``region`` of this one, sharing its memory."""
        sub = object.__new__(_Canvas)
        sub.image, sub.grid, sub.tissues = self.image[(Ellipsis, *region)], self.grid, self.tissues
        sub.x, sub.y = self.x[region], self.y[region]
        sub.offset = (self.offset[0] + (region[0].start or 0), self.offset[1] + (region[1].start or 0))
        sub.window = (slice(sub.offset[0], sub.offset[0] + sub.x.shape[0]),
                      slice(sub.offset[1], sub.offset[1] + sub.x.shape[1]))
        sub.px, sub.sharpness = self.px, self.sharpness
        return sub

    def region(self, x, y, radius):
        """Slices of this canvas within ``radius`` (body units) of the body point(s) ``(x, y)``."""
        h, w = self.x.shape
        rows, cols = self.grid.region(x, y, radius)
        return (slice(min(max(rows.start - self.offset[0], 0), h), min(max(rows.stop - self.offset[0], 0), h)),
                slice(min(max(cols.start - self.offset[1], 0), w), min(max(cols.stop - self.offset[1], 0), w)))

    def paint(self, distance, tissue: str, region=ALL, factor=None, clip=None):
        """Paint ``tissue`` (times ``factor``, e.g. a per-frame phase ``[T, 1, 1]``) where ``distance``
        (on ``region``) < 0, optionally times the mask ``clip``; return the mask."""
        mask = distance * -self.sharpness
        mask += np.float32(0.5)
        np.clip(mask, 0, 1, out=mask)
        if clip is not None:
            mask *= clip
        value = self.tissues[tissue]
        if isinstance(value, np.ndarray):
            value = value[self.window][region]
        if factor is not None:
            value = value * factor
        target = self.image[(Ellipsis, *region)]
        change = value - target
        change *= mask
        target += change
        return mask


# ----------------------------------------------------------------------------- static anatomy
def _smooth_field(rng, shape, spacing: float, cycles: float) -> np.ndarray:
    """Gaussian random field, float32 ``[H, W]``, with a Gaussian spectrum of width ``cycles`` per
    body unit and unit variance. The frequencies within 3 widths are drawn on the frequency grid of the
    field of view, so a subject has the same texture at every size of the same field of view (a grid
    too coarse for the finest features leaves them out)."""
    h, w = shape
    fov_h, fov_w = h * spacing, w * spacing  # body units
    half_h, half_w = int(np.ceil(3 * cycles * fov_h)), int(np.ceil(3 * cycles * fov_w))
    white = _complex_noise(rng, (2 * half_h + 1, half_w + 1))  # drawn whatever the grid
    gy = np.exp(-(np.arange(-half_h, half_h + 1) / fov_h) ** 2 / (2 * cycles ** 2))  # [2 half_h + 1]
    gx = np.exp(-(np.arange(half_w + 1) / fov_w) ** 2 / (2 * cycles ** 2))  # [half_w + 1]
    variance = (gy ** 2).sum() * (gx[0] ** 2 + 4 * (gx[1:] ** 2).sum())  # a column kx > 0 stands for +-kx
    ny, nx = min(half_h, (h - 1) // 2), min(half_w, (w - 1) // 2)  # below the grid's Nyquist frequency
    rows = slice(half_h - ny, half_h + ny + 1)
    amplitude = (gy[rows, None] * gx[None, : nx + 1] / np.sqrt(variance)).astype(np.float32)
    spectrum = np.zeros((h, w // 2 + 1), np.complex64)
    spectrum[np.arange(-ny, ny + 1) % h, : nx + 1] = white[rows, : nx + 1] * amplitude
    return sfft.irfft2(spectrum, s=(h, w), norm="forward").astype(np.float32, copy=False)


def _complex_noise(rng, shape) -> np.ndarray:
    """Complex Gaussian noise, complex64 ``shape``, unit variance in the real and imaginary parts
    (Box-Muller from float32 uniforms, in place)."""
    size = int(np.prod(shape))
    uniform = rng.random(2 * size, dtype=np.float32)
    radius, angle = uniform[:size], uniform[size:]
    np.log1p(-radius, out=radius)
    radius *= np.float32(-2)
    np.sqrt(radius, out=radius)  # Rayleigh
    angle *= np.float32(2 * np.pi)
    noise = np.empty(size, np.complex64)
    np.cos(angle, out=noise.real)
    np.sin(angle, out=noise.imag)
    noise.real *= radius
    noise.imag *= radius
    return noise.reshape(shape)


def _tissue_maps(p, tex_med, tex_fine) -> dict:
    """Object signal of every tissue: textured complex64 maps ``[H, W]`` or complex scalars."""
    maps = {}
    for name, medium, fine in (("fat", 0.08, 0.05), ("muscle", 0.12, 0.08), ("myo", 0.05, 0.04), ("blood", 0.03, 0.02),
                               ("mediastinum", 0.15, 0.08), ("marrow", 0.12, 0.15), ("stomach", 0.2, 0.1),
                               ("liver", 0.1, 0.06), ("lung", 0.3, 0.2)):
        value, phase = p["values"][name]
        texture = value * (1 + medium * tex_med + fine * tex_fine)
        if name == "liver":
            texture += 0.5 * np.maximum(tex_med - 1.7, 0)  # hepatic vessels
        if name == "lung":
            texture += 0.15 * np.maximum(tex_fine - 2.0, 0)  # pulmonary vessels
        maps[name] = texture * np.complex64(np.exp(1j * phase))
    for name in ("cortex", "csf", "cord"):
        value, phase = p["values"][name]
        maps[name] = np.complex64(value * np.exp(1j * phase))
    return maps


def _disc(canvas: _Canvas, cx, cy, a, b, tissue, clip=None, inner=()):
    """Paint the ellipse of semi-axes ``a, b`` at ``(cx, cy)`` (body units) in its own region, then the
    ``inner`` layers ``(depth, tissue)``: the same ellipse shrunk by ``depth``."""
    region = canvas.region(cx, cy, max(a, b))
    if region[0].start == region[0].stop or region[1].start == region[1].stop:
        return  # outside the field of view
    distance = _ellipse_sdf(canvas.x[region] - cx, canvas.y[region] - cy, a, b)
    canvas.paint(distance, tissue, region, clip=None if clip is None else clip[region])
    for depth, layer in inner:
        canvas.paint(distance + depth, layer, region)


def _arms(p, canvas: _Canvas) -> None:
    """The upper arms beside the torso (when present): fat, muscle and the humerus."""
    if not p["arms"]:
        return
    r = p["arm_r"]
    for side in (-1, 1):
        cx = side * (p["body_a"] + p["arm_gap"] + r)
        _disc(canvas, cx, p["arm_y"], r, 1.1 * r, "fat", inner=[(0.03, "muscle")])
        _disc(canvas, cx, p["arm_y"], 0.06, 0.06, "cortex", inner=[(0.015, "marrow")])  # the humerus


def _chest(p, canvas: _Canvas, tex_coarse):
    """Skin, fat, muscle, ribs, sternum and cavity; returns the (inner, cavity) masks and cavity axes."""
    x, y = canvas.x, canvas.y
    a, b = p["body_a"], np.where(y < 0, np.float32(p["body_b_ant"]), np.float32(p["body_b_post"]))
    lumps = 1 + _fourier(p["body_shape"], np.arctan2(y / b, x / a))  # [H, W]
    skin = _ellipse_sdf(x, y, a * lumps, b * lumps)  # [H, W]: ~distance to the skin, negative inside
    fat = p["fat"] * (1 + 0.35 * tex_coarse)
    muscle = p["muscle"] * (1 + np.clip(y / b, 0, 1))  # back muscles are thicker
    canvas.paint(skin, "fat")
    inner = canvas.paint(skin + fat, "muscle")
    cavity = canvas.paint(skin + fat + muscle, "mediastinum")
    ca, cb = a - p["fat"] - p["muscle"], p["body_b_ant"] - p["fat"] - p["muscle"]
    for angle, length in p["ribs"].tolist():
        cx, cy = (ca + 0.015) * math.cos(angle), (cb + 0.015) * math.sin(angle)
        region = canvas.region(cx, cy, length)
        u, v = _rotate(canvas.x[region] - cx, canvas.y[region] - cy,
                       math.atan2(cb * math.cos(angle), -ca * math.sin(angle)))  # u along the chest wall
        distance = _ellipse_sdf(u, v, length, 0.02)
        canvas.paint(distance, "cortex", region)
        canvas.paint(distance + 0.008, "marrow", region)
    _disc(canvas, 0.0, -cb - 0.02, 0.07, 0.025, "cortex", inner=[(0.01, "marrow")])  # sternum
    return inner, cavity, ca, cb


def _static_anatomy(p, canvas: _Canvas, tex_coarse) -> None:
    """Paint everything that does not move with the heart onto ``canvas`` (the whole grid)."""
    _arms(p, canvas)
    inner, cavity, ca, cb = _chest(p, canvas, tex_coarse)
    s = p["lung_scale"]
    for side, (cx, cy, la, lb) in ((-1, (0.5, 0.02, 0.5, 0.9)), (1, (0.55, 0.08, 0.45, 0.85))):
        _disc(canvas, side * cx * ca, cy * cb, la * ca * s, lb * cb * s, "lung", cavity)
    s = p["liver_scale"]
    _disc(canvas, -0.45 * ca, cb, 0.55 * ca * s, 0.65 * cb * s, "liver", inner)
    s = p["stomach_scale"] + 1e-3  # near 0: the stomach is out of the slice
    _disc(canvas, 0.5 * ca, 0.9 * cb, 0.3 * ca * s, 0.22 * cb * s, "stomach", inner)

    sx, sy, rv = p["spine_x"], p["body_b_post"] - p["spine_depth"], p["vertebra_r"]
    _disc(canvas, sx, sy + 0.17, 0.28, 0.2, "muscle", inner)  # paraspinal muscles
    _disc(canvas, sx, sy, rv, rv * 0.9, "cortex", inner=[(0.015, "marrow")])  # vertebral body
    canal_y = sy + rv * 0.9 + 0.045
    _disc(canvas, sx, canal_y + 0.01, 0.07, 0.065, "cortex")  # vertebral arch
    _disc(canvas, sx, canal_y, 0.042, 0.038, "csf", inner=[(0.02, "cord")])
    _disc(canvas, sx - 0.03, sy - rv - 0.05, 0.035, 0.025, "muscle")  # oesophagus


def _aorta_center(p):
    """Body coordinates of the descending aorta, beside the vertebral body."""
    return p["spine_x"] + p["aorta_dx"], p["body_b_post"] - p["spine_depth"] - 0.9 * p["vertebra_r"]


# ----------------------------------------------------------------------------- moving anatomy
def _phasor(phase) -> np.ndarray:
    """``exp(i phase)``, complex64 ``[T, 1, 1]``, of a per-frame phase ``[T]`` (rad)."""
    return np.exp(1j * np.asarray(phase, np.float64))[:, None, None].astype(np.complex64)


def _per_frame(values) -> np.ndarray:
    """float32 ``[T, 1, 1]`` of a per-frame curve ``[T]``."""
    return np.asarray(values, np.float32)[:, None, None]


def _pulse_background(p, canvas: _Canvas) -> None:
    """Pull the background of ``canvas`` ``[T, h, w]`` (all frames equal on entry) towards the LV
    centre with the contraction: tissue next to the heart follows it (``pulsation``: displacement at
    end-systole and its decay length beyond the epicardium, body units). Warps a few contraction
    levels, at most one pixel apart, and interpolates the frames between them."""
    c = p["contraction"]
    if np.ptp(c) < 1e-6:
        return
    amplitude, decay = (value * canvas.px for value in p["pulsation"])  # pixels
    levels = int(np.clip(np.ceil(amplitude * np.ptp(c)) + 1, 2, len(c)))
    row, col = canvas.grid.pixel(*p["heart_center"])
    row, col = np.float32(row - canvas.offset[0]), np.float32(col - canvas.offset[1])  # the LV centre
    h, w = canvas.x.shape
    dr, dc = np.arange(h, dtype=np.float32)[:, None] - row, np.arange(w, dtype=np.float32)[None, :] - col
    r = _length(dr, dc)  # [h, w] pixels from the LV centre
    epicardium = (p["endo_r"] + p["wall"]) * canvas.px
    pull = amplitude * np.exp(-np.maximum(r - epicardium, 0) / decay) / np.maximum(r, 1)  # [h, w]
    background = canvas.image[0].copy()  # [h, w]
    warped = np.stack([map_coordinates(background, [row + (1 + step * pull) * dr, col + (1 + step * pull) * dc],
                                       order=1, mode="nearest")  # sampled farther out: tissue moves in
                       for step in np.linspace(c.min(), c.max(), levels, dtype=np.float32)])  # [levels, h, w]
    position = (c - c.min()) / np.ptp(c) * (levels - 1)  # [T]
    lower = np.minimum(position.astype(int), levels - 2)
    weight = _per_frame(position - lower)
    canvas.image[...] = warped[lower] * (1 - weight) + warped[lower + 1] * weight


def _heart_coordinates(p, canvas: _Canvas):
    """Heart-frame coordinates ``u`` (LV -> RV), ``v`` (anterior) of the canvas pixels in every frame,
    float32 ``[T, h, w]``."""
    centre, angle = _heart_motion(p)  # [T, 2], [T]
    dx, dy = canvas.x - _per_frame(centre[:, 0]), canvas.y - _per_frame(centre[:, 1])
    return _rotate(dx, dy, _per_frame(angle))


def _heart_region(p, canvas, discs):
    """Region of ``canvas`` (a ``_Canvas``, or a ``_Grid``) that holds the heart-frame ``discs``
    ``(u, v, radius)`` in every frame."""
    centre, _ = _heart_motion(p)
    drift = _length(*(centre - p["heart_center"]).T).max()
    cu, cv, radius = np.array(discs, np.float64).T  # [discs] each
    x, y = _rotate(cu, cv, -p["heart_angle"])
    return canvas.region(p["heart_center"][0] + x, p["heart_center"][1] + y,
                         radius + drift + abs(p["twist"]) * _length(cu, cv) + 0.005)


def _union(regions):
    """The bounding ``(rows, cols)`` slices of several regions."""
    return (slice(min(r[0].start for r in regions), max(r[0].stop for r in regions)),
            slice(min(r[1].start for r in regions), max(r[1].stop for r in regions)))


def _paint_vessel(canvas: _Canvas, u, v, region, centre, radius, wall: float, factor) -> None:
    """A vessel or chamber of per-frame ``radius`` ``[T, 1, 1]`` at the heart-frame ``centre``: a
    myocardial/muscular wall of thickness ``wall`` around blood times ``factor`` ``[T, 1, 1]``."""
    distance = _length(u[(Ellipsis, *region)] - centre[0], v[(Ellipsis, *region)] - centre[1]) - radius
    if wall > 0:
        canvas.paint(distance - wall, "myo", region)
    canvas.paint(distance, "blood", region, factor=factor)


def _paint_basal_vessels(p, canvas: _Canvas, u, v, c, behind: bool) -> None:
    """The atria (``behind`` the ventricles) or the aortic root, pulmonary artery and superior vena
    cava (in front), as far as the slice cuts them; they pulsate and carry through-plane flow phase."""
    atrial = _phasor(-0.5 * p["ventricular_phase"] * p["ventricular_flow"])
    arterial = _per_frame(1 + p["distension"] * p["distension_curve"])
    venous = _per_frame(1 + 0.1 * (p["venous_flow"] - 0.7))
    vessels = (dict(la=(1 + p["atrial_motion"] * (c - 0.5), 0.006, atrial),
                    ra=(1 + p["atrial_motion"] * (c - 0.5), 0.006, atrial)) if behind else
               dict(aortic_root=(arterial, 0.008, _phasor(p["flow_phase"] * p["arterial_flow"])),
                    pa=(arterial, 0.006, _phasor(0.8 * p["flow_phase"] * p["arterial_flow"])),
                    svc=(venous, 0.004, _phasor(-0.3 * p["flow_phase"] * p["venous_flow"]))))
    for name, (scale, wall, factor) in vessels.items():
        cu, cv, radius = p[name]
        if radius < 0.005:
            continue
        region = _heart_region(p, canvas, [(cu, cv, radius * float(scale.max()) + wall)])
        _paint_vessel(canvas, u, v, region, (cu, cv), radius * scale, wall, factor)


def _paint_heart(p, canvas: _Canvas):
    """Paint the beating heart with its basal vessels on the heart ``canvas`` ``[T, h, w]``.

    Returns the ventricles with their myocardium in any frame (bool ``[h, w]``) and the central LV
    blood pool (within half the endocardial radius, bool ``[T, h, w]``).
    """
    tables = p["tables"]
    c = _per_frame(p["contraction"])  # [T, 1, 1]
    u, v = _heart_coordinates(p, canvas)  # [T, h, w]
    rho = _length(u, v)
    idx = _angle_index(np.arctan2(v, u))
    shrink = np.take(tables["shrink2"], idx) * c
    d_epi = rho - np.sqrt(np.take(tables["epi2"], idx) - shrink)
    rv_scale = _per_frame(p["rv_width"] * (1 - p["rv_ef"] * p["contraction"]))  # RV cavity thickness, mid-RV
    d_rv = d_epi - np.take(tables["crescent"], idx) * rv_scale
    d_rv_wall = d_rv - np.take(tables["rv_wall"], idx)
    d_heart = np.minimum(d_epi, d_rv_wall)
    ventricular = _phasor(p["ventricular_phase"] * p["ventricular_flow"])

    _paint_basal_vessels(p, canvas, u, v, c, behind=True)
    canvas.paint(d_heart - np.take(tables["fat"], idx), "fat")
    canvas.paint(d_rv_wall, "myo")
    canvas.paint(np.maximum(d_rv, -d_epi), "blood", factor=0.95 * ventricular,
                 clip=np.minimum(d_epi - d_rv, 1 / canvas.sharpness) * canvas.sharpness)  # fades with the cavity
    canvas.paint(d_epi, "myo")
    outer = (d_heart < 0).any(0)

    cavity = _heart_region(p, canvas, [(0.0, 0.0, p["endo_r"])])
    cu, cv, rho, shrink, idx = (a[(Ellipsis, *cavity)] for a in (u, v, rho, shrink, idx))
    r_endo = np.sqrt(np.take(tables["endo2"], idx) - shrink)
    d_endo = rho - r_endo
    canvas.paint(d_endo, "blood", cavity, factor=ventricular)
    trabecular = r_endo * (1 - _trabecular_depth(p, c) * np.take(tables["spokes"], idx))
    canvas.paint(np.maximum(trabecular - rho, d_endo - 1 / canvas.sharpness), "myo", cavity)
    pap_r = _papillary_radius(p, c)  # [T, 1, 1]
    for angle in (np.pi - p["pap_spread"], np.pi + p["pap_spread"]) if p["pap_r"] > 0 else ():
        at = _angle_index(np.float32(angle))
        radius = np.sqrt(tables["endo2"][at] - tables["shrink2"][at] * c) - pap_r  # touching the wall
        canvas.paint(_length(cu - radius * math.cos(angle), cv - radius * math.sin(angle)) - pap_r, "myo", cavity)
    pool = np.zeros(canvas.image.shape, bool)
    pool[(Ellipsis, *cavity)] = rho < np.maximum(0.5 * r_endo, 1 / canvas.px)  # at least one pixel
    _paint_basal_vessels(p, canvas, u, v, c, behind=False)
    return outer, pool


def _paint_body_vessels(p, canvas: _Canvas) -> None:
    """The descending aorta (beside the spine) and, at mid to apical slices, the inferior vena cava."""
    ax, ay = _aorta_center(p)
    radius = p["aorta_r"] * _per_frame(1 + p["distension"] * p["distension_curve"])  # [T, 1, 1]
    wall = 0.012
    region = canvas.region(ax, ay, p["aorta_r"] * (1 + p["distension"]) + wall)
    distance = _length(canvas.x[region] - ax, canvas.y[region] - ay) - radius
    canvas.paint(distance - wall, "muscle", region)
    canvas.paint(distance, "blood", region, factor=0.9 * _phasor(-p["flow_phase"] * p["arterial_flow"]))
    dx, dy, r = p["ivc"]
    if r > 0.005:
        ix, iy = p["spine_x"] + dx, p["body_b_post"] - p["spine_depth"] + dy
        region = canvas.region(ix, iy, 1.05 * r)
        radius = r * _per_frame(1 + 0.1 * (p["venous_flow"] - 0.7))  # [T, 1, 1]
        distance = _length(canvas.x[region] - ix, canvas.y[region] - iy) - radius
        canvas.paint(distance, "blood", region, factor=_phasor(0.3 * p["flow_phase"] * p["venous_flow"]))


def _moving_window(p, grid: _Grid):
    """``(rows, cols)`` of the grid that hold everything that moves: heart, basal vessels, aorta, IVC."""
    boxes = [_heart_region(p, grid, _heart_discs(p)),
             grid.region(*_aorta_center(p), p["aorta_r"] * (1 + p["distension"]) + 0.02)]
    dx, dy, r = p["ivc"]
    if r > 0.005:
        boxes.append(grid.region(p["spine_x"] + dx, p["body_b_post"] - p["spine_depth"] + dy, 1.1 * r))
    return _union(boxes)


# ----------------------------------------------------------------------------- imaging
def _receive_field(p, x, y, tex_coarse) -> np.ndarray:
    """What the scanner multiplies the object by, complex64 ``[H, W]``: receive-coil shading (anterior
    and posterior arrays), bSSFP off-resonance (shimmed at the heart, dark bands where the precession
    per TR reaches +-pi, and half of it as phase) and a smooth coil phase."""
    front, back = p["coil_gain"]
    ax, ay = 0.9 * math.sin(p["coil_angle"]), -0.9 * math.cos(p["coil_angle"])
    bias = (1 + front * np.exp(-((x - ax) ** 2 + (y - ay) ** 2) / 0.4)
            + back * np.exp(-(x ** 2 + (y - 0.9) ** 2) / 0.4)) * (1 + 0.05 * tex_coarse)
    hx, hy = p["heart_center"]
    gx, gy = p["b0_gradient"]
    precession = (np.pi * ((x - hx) ** 2 + p["band_aspect"] * (y - hy) ** 2) / p["band_radius"] ** 2
                  + gx * (x - hx) + gy * (y - hy))  # [H, W] rad per TR
    wrapped = precession - np.float32(2 * np.pi) * np.rint(precession * np.float32(0.5 / np.pi))  # [-pi, pi]
    bias *= 1 - p["band_depth"] * np.exp(-((np.abs(wrapped) - np.pi) / p["band_width"]) ** 2)
    a = p["phase_coeffs"]
    phase = (a[0] + a[1] * x + a[2] * y + a[3] * x * y + a[4] * x * x + a[5] * y * y + wrapped / 2).astype(np.float32)
    field = np.empty(x.shape, np.complex64)
    field.real, field.imag = bias * np.cos(phase), bias * np.sin(phase)
    return field


def _crop_spectrum(x, axis: int, n: int):
    """Orthonormal FFT of ``x`` along ``axis`` (``N`` pixels, the origin at ``N // 2``) cropped to the
    ``n`` central frequencies and ordered as the FFT of an ``n``-pixel image whose origin is pixel
    ``n // 2``: the output's k-space along ``axis``, unshifted and not yet scaled by ``sqrt(n / N)``."""
    fine = x.shape[axis]
    freq = np.fft.fftfreq(n, 1 / n).astype(int)  # [n] integer frequencies in FFT order
    spectrum = np.take(sfft.fft(x, axis=axis, norm="ortho"), freq % fine, axis=axis)
    if fine % 2 == 0 and n % 2 == 0 or fine == n:
        return spectrum  # the origins coincide: no phase ramp
    shift = np.exp(2j * np.pi * freq * ((fine // 2) / fine - (n // 2) / n))  # [n]: align the origins
    return spectrum * shift.astype(np.complex64).reshape((-1,) + (1,) * (-axis - 1))


def _kspace(still, window, rows, cols, shape) -> np.ndarray:
    """k-space ``[T, H, W]`` (FFT order) of the output-size cine whose fine frames equal ``still``
    ``[Hf, Wf]`` except for ``window`` ``[T, h, w]`` at ``rows, cols``: the fine k-space cropped to the
    central frequencies. Rows outside the window are transformed along x once."""
    height, width = shape
    lines = np.repeat(_crop_spectrum(still, -1, width)[None], len(window), 0)  # [T, Hf, W]
    band = np.repeat(still[None, rows], len(window), 0)  # [T, h, Wf]
    band[:, :, cols] = window
    lines[:, rows] = _crop_spectrum(band, -1, width)
    kspace = _crop_spectrum(lines, -2, height)
    kspace *= np.float32(np.sqrt(height * width / still.size))  # keeps the intensities
    return kspace


def _heart_box(outer, offset, fine_shape, shape, oversample: int) -> np.ndarray:
    """``(row0, row1, col0, col1)`` (half-open, output pixels) around the fine-grid mask ``outer``
    ``[h, w]`` at ``offset``, with a margin of ``BOX_MARGIN`` of the height."""
    margin = max(2, int(round(BOX_MARGIN * shape[0])))
    box = []
    for axis in (0, 1):
        hits = np.flatnonzero(outer.any(1 - axis)) + offset[axis]  # fine indices
        out = (hits - fine_shape[axis] // 2) / oversample + shape[axis] // 2  # output pixel coordinates
        box += [max(int(np.floor(out.min())) - margin, 0), min(int(np.ceil(out.max())) + 1 + margin, shape[axis])]
    return np.array(box, dtype=np.int64)


def _shape(size) -> tuple[int, int]:
    """``(H, W)`` of an int or a pair."""
    height, width = (size, size) if np.ndim(size) == 0 else size
    return int(height), int(width)


def _render_kspace(p: dict, shape, rng: np.random.Generator, oversample: int):
    """The noise-free k-space ``[T, H, W]`` (FFT order) of subject ``p`` at ``shape`` ``(H, W)``, the
    mean magnitude of its central LV blood pool and its heart box: :func:`render_cine` before the noise."""
    (height, width), frames = shape, len(p["contraction"])
    grid = _Grid(p, (oversample * height, oversample * width), 2 * p["fov"] / height / oversample)
    tex_coarse, tex_med, tex_fine = (_smooth_field(rng, grid.shape, grid.spacing, cycles) for cycles in (1, 5, 15))
    tissues = _tissue_maps(p, tex_med, tex_fine)
    static = _Canvas(np.zeros(grid.shape, np.complex64), grid, slice(0, grid.shape[0]), slice(0, grid.shape[1]),
                     tissues, p["edge"])
    _static_anatomy(p, static, tex_coarse)  # [Hf, Wf]
    rows, cols = _moving_window(p, grid)
    moving = _Canvas(np.repeat(static.image[None, rows, cols], frames, 0), grid, rows, cols, tissues,
                     p["edge"])  # [T, h, w]
    heart = moving.sub(_heart_region(p, moving, _heart_discs(p)))
    _pulse_background(p, heart)
    outer, pool = _paint_heart(p, heart)
    _paint_body_vessels(p, moving)

    receive = _receive_field(p, static.x, static.y, tex_coarse)  # [Hf, Wf]
    static.image *= receive
    moving.image *= receive[rows, cols]  # [T, h, w]
    kspace = _kspace(static.image, moving.image, rows, cols, (height, width))  # [T, H, W]
    blood = np.abs(heart.image[pool]).mean()
    return kspace, blood, _heart_box(outer, heart.offset, grid.shape, (height, width), oversample)


def _noise_sigma(p: dict, blood, shape) -> np.float32:
    """Noise standard deviation per real/imaginary part at ``shape`` ``(H, W)`` for the blood signal
    ``blood`` and the SNR ``p["snr"]`` (stated at ``REFERENCE_PIXELS``)."""
    height, width = shape
    return np.float32(blood / (p["snr"] * np.sqrt(REFERENCE_PIXELS / (height * width))))


def render_cine(p: dict, size, rng: np.random.Generator, complex_phase: bool = True,
                oversample: int = OVERSAMPLE):
    """Render the subject ``p`` (from :func:`sample_anatomy`) as a cine ``[T, H, W]`` (``size``: int or
    ``(H, W)``) with peak magnitude 1, and the heart box ``(row0, row1, col0, col1)`` (int ``[4]``).

    Rendered on a grid ``oversample`` times finer, cropped in k-space; complex Gaussian noise is added
    in k-space with standard deviation ``sigma`` per real/imaginary part (the same in the image):
    ``p["snr"] * sqrt(REFERENCE_PIXELS / (H W)) = mean |central LV blood pool| / sigma`` (SNR grows
    with the pixel size at a fixed field of view); ``p["snr"] = None``: no noise. complex64, or the
    float32 magnitude (Rician) without ``complex_phase``.
    """
    shape = _shape(size)
    kspace, blood, box = _render_kspace(p, shape, rng, oversample)  # [T, H, W] FFT order
    if p["snr"] is not None:
        noise = _complex_noise(rng, kspace.shape)
        noise *= _noise_sigma(p, blood, shape)
        kspace += noise
    cine = sfft.ifft2(kspace, norm="ortho", overwrite_x=True)
    magnitude = np.abs(cine)
    if complex_phase:
        cine /= magnitude.max()
        return cine, box
    return magnitude / magnitude.max(), box


# ----------------------------------------------------------------------------- receive coils
def coil_sensitivities(p: dict, size, coils: int, rotation: float = 0.0) -> np.ndarray:
    """Smooth birdcage-style receive sensitivities of ``coils`` loops around subject ``p``'s torso,
    complex64 ``[C, H, W]`` with ``sum_c |S_c|^2 = 1`` at every pixel.

    Loop ``c`` sits at the body angle ``rotation + 2 pi c / C``, ``COIL_STANDOFF`` outside the torso
    ellipse (body coordinates, so a subject sees the same coils at every size). Its raw map falls off
    as ``1 / sqrt(d^2 + COIL_RADIUS^2)`` with the distance ``d`` to the loop, and its phase turns with
    the direction from the loop plus the loop's own offset ``-2 pi c / C``, as in the birdcage maps
    of sigpy and BART; the maps are then divided by their root sum of squares.
    """
    height, width = _shape(size)
    x, y = _Grid(p, (height, width), 2 * p["fov"] / height).coords()  # [H, W] body units
    half_b = 0.5 * (p["body_b_ant"] + p["body_b_post"])
    angles = rotation + 2 * np.pi * np.arange(coils) / coils  # [C]
    cx = ((p["body_a"] + COIL_STANDOFF) * np.cos(angles))[:, None, None]  # [C, 1, 1]
    cy = ((half_b + COIL_STANDOFF) * np.sin(angles))[:, None, None]
    dx, dy = x - cx, y - cy  # [C, H, W]
    phase = np.arctan2(dx, -dy) - 2 * np.pi * np.arange(coils)[:, None, None] / coils
    maps = np.exp(1j * phase) / np.sqrt(dx ** 2 + dy ** 2 + COIL_RADIUS ** 2)  # [C, H, W]
    return (maps / np.sqrt((np.abs(maps) ** 2).sum(0))).astype(np.complex64)


def noise_covariance(coils: int, rng: np.random.Generator) -> np.ndarray:
    """Receiver noise covariance of ``coils`` loops in a ring, float64 ``[C, C]``, symmetric
    positive definite.

    Correlation ``lo + (hi - lo) (1 + cos(angle between the loops)) / 2`` between two loops
    (``COIL_CORRELATION = (lo, hi)``: neighbours near ``hi``, opposite loops ``lo``), 1 on the
    diagonal: ``(1 - hi) I`` plus positive semi-definite terms (a constant and the cosine kernel),
    so every eigenvalue is at least ``1 - hi``. Each loop's noise level is drawn in [0.8, 1.2] and
    scales its row and column.
    """
    lo, hi = COIL_CORRELATION
    angles = 2 * np.pi * np.arange(coils) / coils  # [C]
    near = (1 + np.cos(angles[:, None] - angles[None, :])) / 2  # [C, C], 1 on the diagonal
    correlation = (1 - hi) * np.eye(coils) + lo + (hi - lo) * near
    levels = rng.uniform(0.8, 1.2, coils)  # [C]
    return levels[:, None] * correlation * levels[None, :]


def correlated_noise(rng: np.random.Generator, covariance: np.ndarray, shape) -> np.ndarray:
    """Complex Gaussian noise ``[C, *shape]`` (complex64) whose coils have the covariance
    ``covariance`` ``[C, C]`` per real/imaginary part: white noise times its Cholesky factor."""
    factor = np.linalg.cholesky(covariance).astype(np.float32)  # [C, C], lower
    white = _complex_noise(rng, (len(covariance), int(np.prod(shape))))  # [C, N]
    return (factor @ white).reshape(len(covariance), *shape)


def render_coil_cine(p: dict, size, rng: np.random.Generator, coils: int = 1, oversample: int = OVERSAMPLE) -> dict:
    """Subject ``p`` seen through ``coils`` receive coils: fully sampled coil k-space and what made it.

    ``coils = 1``: one coil of sensitivity 1 on exactly the cine of :func:`render_cine` (bit for bit).
    ``coils > 1``: the noise-free cine ``x`` through :func:`coil_sensitivities` (turned by a random
    angle), ``y_c = F (S_c x) + n_c`` with :func:`correlated_noise` of :func:`noise_covariance` times
    the single-coil ``sigma`` (``sum |S_c|^2 = 1`` keeps the coil-combined SNR at ``p["snr"]`` for
    uncorrelated noise), and the reference is the coil-combined ``sum_c conj(S_c) F^-1 y_c``.

    Returns, scaled so the reference has peak magnitude 1, complex64 unless noted:
    ``reference`` ``[T, H, W]``, ``kspace`` ``[C, T, H, W]`` (centred, ``sampling.fft2c``),
    ``sensitivities`` ``[C, H, W]``, ``noise_covariance`` float64 ``[C, C]`` (of the noise per
    real/imaginary part, in units of ``sigma^2``) and ``heart_box`` int ``[4]``.
    """
    shape = _shape(size)
    if coils == 1:
        reference, box = render_cine(p, shape, rng, True, oversample)
        return dict(reference=reference, kspace=fft2c(reference)[None],
                    sensitivities=np.ones((1, *shape), np.complex64), noise_covariance=np.ones((1, 1)), heart_box=box)
    kspace, blood, box = _render_kspace(p, shape, rng, oversample)  # [T, H, W] FFT order
    sensitivities = coil_sensitivities(p, shape, coils, rotation=rng.uniform(0, 2 * np.pi / coils))  # [C, H, W]
    covariance = noise_covariance(coils, rng)  # [C, C]
    coil_kspace = fft2c(coil_images(sfft.ifft2(kspace, norm="ortho"), sensitivities)).astype(np.complex64)
    if p["snr"] is not None:
        coil_kspace += _noise_sigma(p, blood, shape) * correlated_noise(rng, covariance, kspace.shape)
    reference = coil_combine(ifft2c(coil_kspace), sensitivities)  # [T, H, W]
    scale = np.float32(1 / np.abs(reference).max())
    return dict(reference=(reference * scale).astype(np.complex64), kspace=coil_kspace * scale,
                sensitivities=sensitivities, noise_covariance=covariance, heart_box=box)


def heart_pixel(p, size) -> tuple[float, float]:
    """``(row, col)`` of the end-diastolic LV centre of subject ``p`` in an image of ``size``."""
    height, width = _shape(size)
    return _Grid(p, (height, width), 2 * p["fov"] / height).pixel(*p["heart_center"])


# ----------------------------------------------------------------------------- public API
def _cine_rng(seed: int, i: int) -> np.random.Generator:
    """The generator of cine ``i`` of a data set: the ``i``-th child of ``SeedSequence(seed)``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(i,)))


def make_phantom_cine(rng: np.random.Generator, frames: int = 20, size=192, complex_phase: bool = True,
                      oversample: int = OVERSAMPLE, **anatomy) -> np.ndarray:
    """One random cine ``[T, H, W]``: complex64 with peak magnitude 1, or its float32 magnitude without
    ``complex_phase``. ``anatomy``: options of :func:`sample_anatomy`."""
    return render_cine(sample_anatomy(rng, frames, **anatomy), size, rng, complex_phase, oversample)[0]


def make_phantom_dataset(n: int, frames: int = 20, size=192, seed: int = 0, complex_phase: bool = True,
                         return_boxes: bool = False, **options):
    """``n`` cines ``[n, T, H, W]`` (complex64, or float32 magnitudes without ``complex_phase``), each
    with peak magnitude 1; ``size`` is an int or ``(H, W)``. With ``return_boxes`` also the heart
    boxes, int ``[n, 4]`` = ``(row0, row1, col0, col1)``, half-open, in output pixels: both ventricles
    and their myocardium in every frame, with a margin.

    ``options``: ``oversample`` (:func:`render_cine`), ``slice_position``, ``snr``, ``breathing``
    (:func:`sample_anatomy`). Cine ``i`` draws from the ``i``-th child of ``SeedSequence(seed)``: it
    is the same whatever ``n`` and however many threads render the cines.
    """
    oversample = options.pop("oversample", OVERSAMPLE)
    height, width = _shape(size)
    cines = np.empty((n, frames, height, width), np.complex64 if complex_phase else np.float32)
    boxes = np.empty((n, 4), np.int64)

    def render(i):
        rng = _cine_rng(seed, i)
        cines[i], boxes[i] = render_cine(sample_anatomy(rng, frames, **options), (height, width), rng,
                                         complex_phase, oversample)

    _render_each(n, render)
    return (cines, boxes) if return_boxes else cines


def make_coil_dataset(n: int, frames: int = 20, size=192, seed: int = 0, coils: int = 1, **options) -> dict:
    """``n`` cines seen through ``coils`` receive coils (:func:`render_coil_cine`), stacked:
    ``reference`` ``[n, T, H, W]``, ``kspace`` ``[n, C, T, H, W]``, ``sensitivities`` ``[n, C, H, W]``
    (complex64), ``noise_covariance`` float64 ``[n, C, C]`` and ``heart_box`` int ``[n, 4]``.

    Cine ``i`` is subject ``i`` of :func:`make_phantom_dataset` with the same ``seed`` and
    ``options``; ``coils=1``: its ``reference`` is that function's complex cines, bit for bit, with
    one coil of sensitivity 1.
    """
    if not (isinstance(coils, (int, np.integer)) and coils >= 1):
        raise ValueError(f"coils={coils!r}: must be an integer >= 1")
    oversample = options.pop("oversample", OVERSAMPLE)
    height, width = _shape(size)
    stacked = dict(reference=np.empty((n, frames, height, width), np.complex64),
                   kspace=np.empty((n, coils, frames, height, width), np.complex64),
                   sensitivities=np.empty((n, coils, height, width), np.complex64),
                   noise_covariance=np.empty((n, coils, coils)), heart_box=np.empty((n, 4), np.int64))

    def render(i):
        rng = _cine_rng(seed, i)
        cine = render_coil_cine(sample_anatomy(rng, frames, **options), (height, width), rng, coils, oversample)
        for key, value in cine.items():
            stacked[key][i] = value

    _render_each(n, render)
    return stacked


def _render_each(n: int, render) -> None:
    """``render(i)`` for ``i < n``, one thread per core."""
    with ThreadPoolExecutor(max(1, min(n, os.cpu_count() or 1))) as pool:
        list(pool.map(render, range(n)))


# ----------------------------------------------------------------------------- a CMRxRecon-style tree
CMRXRECON_CINES = Path("MultiCoil") / "Cine" / "TrainingSet"  # where CMRxRecon 2023 keeps its cine folders
TREE_SLICE_POSITIONS = (0.3, 0.7)  # the span of slice positions (0 base, 1 apex) of a subject's slices


def subject_cines(subject: int, slices: int, *, frames: int, size, coils: int, seed: int) -> dict:
    """The ``slices`` cines of one phantom subject through ``coils`` coils, stacked as
    :func:`make_coil_dataset` stacks them (``kspace`` ``[slices, C, T, H, W]``, ...). One slice is cine
    ``subject`` of :func:`make_coil_dataset` with the same ``seed``, bit for bit; several are the same
    subject (its anatomy and heartbeat) at slice positions spread over ``TREE_SLICE_POSITIONS``, each
    with its own noise."""
    positions = np.linspace(*TREE_SLICE_POSITIONS, slices)
    cines = []
    for j in range(slices):
        rng = _cine_rng(seed, subject)
        anatomy = sample_anatomy(rng, frames, **({} if slices == 1 else {"slice_position": positions[j]}))
        noise = rng if j == 0 else np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(subject, j)))
        cines.append(render_coil_cine(anatomy, size, noise, coils))
    return {key: np.stack([cine[key] for cine in cines]) for key in cines[0]}


def write_cmrxrecon_tree(folder: Path, *, subjects: int, slices: int, frames: int, sizes: list, coils: int,
                         accelerations: list[int], center_lines: int, seed: int, log=print) -> None:
    """Phantom subjects written as CMRxRecon 2023 ships its cine data (docs/formats.md), so the raw-data
    path (``train.py --data=FOLDER``) can be tried without a download: under
    ``FOLDER/MultiCoil/Cine/TrainingSet/``, ``FullSample/Pnnn/cine_sax.mat`` holds ``kspace_full``
    (MATLAB ``(kx, ky, coils, slices, frames)``, complex single, v7.3) of :func:`subject_cines` (subject
    ``n - 1``, matrix ``sizes[(n - 1) % len(sizes)]`` as (ky rows, kx columns)), and for each ``R`` of
    ``accelerations`` ``AccFactorRR/Pnnn/cine_sax.mat`` holds ``kspace_subRR`` (the same k-space times
    the mask) and ``cine_sax_mask.mat`` ``maskRR`` (MATLAB ``(kx, ky)``: CMRxRecon's equispaced mask,
    every R-th line and ``center_lines`` central lines, ``sampling.uniform_mask``). The tree is written
    in a temporary folder beside ``folder`` and renamed to it when complete."""
    from cli import make_folder, remove_stale_temporaries, temporary_name
    from formats import write_mat73
    from sampling import uniform_mask

    work = temporary_name(folder)
    remove_stale_temporaries(folder)  # trees of commands killed while writing
    try:
        for subject in range(subjects):
            size = sizes[subject % len(sizes)]
            name = f"P{subject + 1:03d}"
            kspace = subject_cines(subject, slices, frames=frames, size=size, coils=coils, seed=seed)["kspace"]
            matlab = kspace.transpose(4, 3, 1, 0, 2)  # [N, C, T, ky, kx] -> (kx, ky, coils, slices, frames)
            write_mat73(make_folder(work / CMRXRECON_CINES / "FullSample" / name) / "cine_sax.mat",
                        {"kspace_full": matlab})
            for factor in accelerations:
                mask = uniform_mask((frames, *size), factor, center_lines)[0].T  # (kx, ky)
                acc = make_folder(work / CMRXRECON_CINES / f"AccFactor{factor:02d}" / name)
                write_mat73(acc / "cine_sax.mat", {f"kspace_sub{factor:02d}": matlab * mask[:, :, None, None, None]})
                write_mat73(acc / "cine_sax_mask.mat", {f"mask{factor:02d}": mask.astype(np.uint8)})
            log(f"{name}: {slices} slice(s), {coils} coils, {frames} frames of {size[0]} ky x {size[1]} kx")
        work.rename(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ----------------------------------------------------------------------------- figure
FIGURE_SIZES = (64, 128, 192, (192, 256))


def _cardiac_phases(cine, box):
    """End-diastolic and end-systolic frames of a cine ``[T, H, W]``: most and least signal in the box
    (the bright blood pool is largest at end-diastole)."""
    row0, row1, col0, col1 = box
    signal = np.abs(cine[:, row0:row1, col0:col1]).mean((1, 2))  # [T]
    return int(np.argmax(signal)), int(np.argmin(signal))


def plot_phantom(path, sizes=FIGURE_SIZES, frames: int = 20, seed: int = 0, variety: int = 6,
                 slices=(0.45, 0.3)) -> None:
    """Save the phantom figure: one subject (at slice position ``slices[0]``) at each of ``sizes``, but
    the last size shows the next subject (at ``slices[1]``), as end-diastolic and end-systolic
    magnitude, end-diastolic phase, and x-t and y-t profiles through the LV centre; then ``variety``
    more subjects at random slice positions at the third size."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    fig = Figure(figsize=(13, 2.6 * len(sizes) + 2.4), layout="constrained")
    rows = fig.subfigures(2, 1, height_ratios=(2.6 * len(sizes), 2.4))
    axes = rows[0].subplots(len(sizes), 5, squeeze=False, width_ratios=(1, 1, 1, 1.2, 1.2))
    phase_map = colormaps["twilight"].with_extremes(bad="black")
    for row, size in enumerate(sizes):
        index = 0 if row < len(sizes) - 1 else 1
        cines, boxes = make_phantom_dataset(index + 1, frames, size, seed, return_boxes=True,
                                            slice_position=slices[index])
        cine, box = cines[index], boxes[index]
        p = sample_anatomy(_cine_rng(seed, index), frames, slice_position=slices[index])
        centre_row, centre_col = (int(round(value)) for value in heart_pixel(p, size))
        ed, es = _cardiac_phases(cine, box)
        magnitude = np.abs(cine)
        label = "x".join(map(str, _shape(size)))
        for ax, t, name in ((axes[row, 0], ed, "end-diastole"), (axes[row, 1], es, "end-systole")):
            ax.imshow(magnitude[t], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(f"{label}, {name} (frame {t})", fontsize=8)
        axes[row, 0].add_patch(Rectangle((box[2] - 0.5, box[0] - 0.5), box[3] - box[2], box[1] - box[0],
                                         fill=False, color="gold", lw=0.6))
        phase = np.where(magnitude[ed] > 0.06, np.angle(cine[ed]), np.nan)
        axes[row, 2].imshow(phase, cmap=phase_map, vmin=-np.pi, vmax=np.pi, interpolation="nearest")
        axes[row, 2].set_title("phase (rad, -pi..pi)", fontsize=8)
        for ax in axes[row, :3]:
            ax.axhline(centre_row, color="tab:orange", lw=0.5, alpha=0.5)
            ax.axvline(centre_col, color="tab:cyan", lw=0.5, alpha=0.5)
            ax.axis("off")
        axes[row, 3].imshow(magnitude[:, centre_row, :], cmap="gray", vmin=0, vmax=1, aspect="auto",
                            interpolation="nearest")
        axes[row, 3].set_title(f"x-t along the orange row {centre_row}", fontsize=8)
        axes[row, 3].set(xlabel="x (column)", ylabel="frame")
        axes[row, 4].imshow(magnitude[:, :, centre_col].T, cmap="gray", vmin=0, vmax=1, aspect="auto",
                            interpolation="nearest")
        axes[row, 4].set_title(f"y-t along the cyan column {centre_col}", fontsize=8)
        axes[row, 4].set(xlabel="frame", ylabel="y (row)")
    others = rows[1].subplots(1, variety, squeeze=False)[0]
    cines, boxes = make_phantom_dataset(variety, frames, sizes[min(2, len(sizes) - 1)], seed + 1, return_boxes=True)
    for i, ax in enumerate(others):
        ed, _ = _cardiac_phases(cines[i], boxes[i])
        position = sample_anatomy(_cine_rng(seed + 1, i), frames)["slice_position"]
        ax.imshow(np.abs(cines[i, ed]), cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"seed {seed + 1} cine {i}: slice {position:.2f}", fontsize=8)
        ax.axis("off")
    rows[1].suptitle("more subjects at end-diastole (slice position: 0 base, 1 apex)", fontsize=9)
    fig.suptitle(f"Synthetic bSSFP short-axis cine phantom (phantom.py): complex, k-space cropped from a 2x grid, "
                 f"noise in k-space\nrows 1-{len(sizes) - 1}: seed {seed} cine 0 at slice position {slices[0]}; "
                 f"row {len(sizes)}: cine 1 at slice position {slices[1]}", fontsize=10)
    from figures import save_figure

    save_figure(fig, path, dpi=80)


def phantom_bytes(count: int, frames: int, size: int, kept: int, copies: int) -> int:
    """Memory of ``copies`` of ``count`` phantom cines of ``frames`` x ``size`` x ``size`` (complex64),
    each with ``kept`` coil cines beside it (its coil k-space), plus the rendering of one cine per
    thread (:func:`_render_each`): the product of every size, to check before anything is rendered."""
    cine = frames * size * size * 8  # complex64
    threads = max(1, min(count, os.cpu_count() or 1))
    return (copies * count * (1 + kept) + threads * (PHANTOM_RENDER + COIL_RENDER * kept)) * cine


def check_figure_options(path: Path, frames: int, count: int, size: int, coils: int) -> None:
    """Refuse :func:`phantom_figure`'s options before anything is rendered or written: each in its
    range, an existing .npz, and the product of the sizes (cines, frames, pixels, coils) against the
    memory available (:func:`phantom_bytes`, ``formats.check_memory``), not each size alone."""
    from cli import UserError, check_name_length
    from formats import check_memory

    check_name_length(path)
    if path.suffix.lower() != ".npz":
        if not 1 <= frames <= 200:
            raise UserError(f"--frames={frames}: must be from 1 to 200")
        return
    if path.exists():
        raise UserError(f"{path}: already exists; choose another file")
    if not (1 <= count <= 1000 and 16 <= size <= 512 and 1 <= frames <= 200 and 0 <= coils <= 64):
        raise UserError("--count must be 1..1000, --size 16..512, --frames 1..200, --coils 0..64")
    check_memory(f"--count={count} --size={size} --frames={frames} --coils={coils}",
                 phantom_bytes(count, frames, size, coils, copies=1),
                 f"the data set of {count} cine(s) of {frames}x{size}x{size}" + f" through {coils} coils" * bool(coils))


def phantom_figure(path: str = "docs/phantom.png",  # the PNG to write, an .npz to save cines in, or a tree's folder
                   *, seed: int = 0,  # data-set seed of the cines
                   frames: int | None = None,  # frames per cine; None: 20 (12 with --layout=cmrxrecon, as CMRxRecon)
                   count: int = 1,  # .npz only: number of cines
                   size: int = 192,  # .npz only: image size H = W
                   complex_phase: bool = True,  # .npz only: complex cines | False: magnitude
                   coils: int = 0,  # .npz: 0 = images | 1..64: fully sampled coil k-space; tree: 1..64 (0: 4)
                   layout: str = "auto",  # 'auto': by PATH (.png figure, .npz) | 'cmrxrecon': PATH is a new folder
                   subjects: int = 8,  # cmrxrecon only: subjects (patient folders P001, ...), 1..1000
                   slices: int = 2,  # cmrxrecon only: slices per file (of one subject), 1..32
                   sizes: str = "64x80,80x96,96x112",  # cmrxrecon only: matrices HxW (ky x kx), subject n the (n-1)-th
                   accelerations: str = "4,8,10",  # cmrxrecon only: AccFactor folders (equispaced masks); '' = none
                   center_lines: int = 10) -> None:  # cmrxrecon only: fully sampled central ky lines of their masks
    """Draw the phantom figure to PATH (.png): one subject at 64, 128, 192 and 192x256 px (magnitude at
    end-diastole and end-systole, phase, x-t and y-t profiles through the heart) and six more subjects;
    or, for an .npz PATH, save COUNT cines of SIZE px as 'dataset' [COUNT, FRAMES, SIZE, SIZE] with
    their heart boxes as 'heart_box' [COUNT, 4] (a fully sampled input for reconstruct.py --input);
    with --coils=C, as a scanner would record them instead: the fully sampled, noisy coil k-space
    'kspace' [COUNT, C, FRAMES, SIZE, SIZE] (make_coil_dataset), 'mask' (all ones) and 'heart_box', the
    layout of formats.read_kspace (an input for reconstruct.py --kspace ... --acceleration=R; no maps).
    With --layout=cmrxrecon, PATH is a new folder that receives a CMRxRecon-style tree of SUBJECTS
    subjects (write_cmrxrecon_tree): fully sampled coil k-space, several matrix sizes, AccFactor
    folders with their masks; train.py --data=PATH trains on it."""
    from cli import UserError, atomic_write, make_folder

    if not 0 <= seed < 2 ** 63:
        raise UserError(f"--seed={seed}: must be an integer from 0 to 2^63 - 1")
    if layout not in ("auto", "cmrxrecon"):
        raise UserError(f"--layout={layout}: choose auto or cmrxrecon")
    if layout == "cmrxrecon":
        tree = tree_options(Path(path), frames=frames or 12, subjects=subjects, slices=slices, sizes=sizes,
                            coils=coils or 4, accelerations=accelerations, center_lines=center_lines)
        write_cmrxrecon_tree(Path(path), **tree, seed=seed)
        print(f"wrote {path}: {subjects} subjects of a CMRxRecon-style tree ({CMRXRECON_CINES})")
        return
    frames = frames or 20
    check_figure_options(Path(path), frames, count, size, coils)
    make_folder(Path(path).parent)
    if Path(path).suffix.lower() == ".npz":
        if coils:
            coil = make_coil_dataset(count, frames=frames, size=size, seed=seed, coils=coils)
            arrays = dict(kspace=coil["kspace"], mask=np.ones((frames, size, size), np.float32),
                          heart_box=coil["heart_box"])
        else:
            cines, boxes = make_phantom_dataset(count, frames=frames, size=size, seed=seed,
                                                complex_phase=complex_phase, return_boxes=True)
            arrays = dict(dataset=cines, heart_box=boxes)
        atomic_write(Path(path), lambda file: np.savez(file, **arrays), new=True)
    else:
        plot_phantom(path, frames=frames, seed=seed)
    print(f"wrote {path}")


def tree_options(folder: Path, *, frames: int, subjects: int, slices: int, sizes: str, coils: int,
                 accelerations: str, center_lines: int) -> dict:
    """The keywords of :func:`write_cmrxrecon_tree` from the command's options, each checked (one
    ``UserError`` naming the option), and the tree's memory and disk checked before anything is rendered."""
    from cli import UserError, check_name_length
    from formats import check_memory, format_bytes
    from sampling import check_sampling

    check_name_length(folder)
    if folder.exists():
        raise UserError(f"{folder}: already exists; choose a new folder for the tree")
    if not folder.parent.is_dir():
        raise UserError(f"{folder.parent}: no such folder")
    for name, value, low, high in (("frames", frames, 1, 200), ("subjects", subjects, 1, 1000),
                                   ("slices", slices, 1, 32), ("coils", coils, 1, 64)):
        if not low <= value <= high:
            raise UserError(f"--{name}={value}: must be {low}..{high}")
    try:
        shapes = [tuple(int(side) for side in part.lower().split("x")) for part in sizes.split(",")]
        factors = [int(part) for part in accelerations.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--sizes={sizes} --accelerations={accelerations}: expected sizes HxW,HxW,... and "
                        f"integer accelerations R,R,...") from None
    if not shapes or any(len(shape) != 2 or not 16 <= min(shape) <= max(shape) <= 512 for shape in shapes):
        raise UserError(f"--sizes={sizes}: expected matrices HxW (ky x kx) of 16..512, comma-separated")
    if any(not 1 <= factor <= 99 for factor in factors):
        raise UserError(f"--accelerations={accelerations}: integers 1..99 (equispaced masks, AccFactorRR folders)")
    for height, _ in shapes:
        try:
            check_sampling(height, 1.0, center_lines)
        except ValueError as error:
            raise UserError(f"--center_lines={center_lines} at {height} rows: {error}") from None
    largest = max(math.prod(shape) for shape in shapes)
    per_subject = slices * coils * frames * largest * 8  # complex64 coil k-space of one subject's file
    check_memory(f"--slices={slices} --coils={coils} --frames={frames} --sizes={sizes}",
                 (COIL_RENDER_COPIES + 2 * len(factors)) * per_subject, "rendering and writing one subject")
    total = subjects * per_subject * (1 + len(factors))
    free = shutil.disk_usage(folder.parent).free
    if total > free:
        raise UserError(f"{folder}: the tree would take about {format_bytes(total)} on disk, more than the "
                        f"{format_bytes(free)} free")
    return dict(frames=frames, subjects=subjects, slices=slices, sizes=shapes, coils=coils, accelerations=factors,
                center_lines=center_lines)


COIL_RENDER_COPIES = 8  # memory of rendering one coil cine, in coil cines (oversampled grid, coil images, k-space)


def main(argv=None) -> None:
    """``python phantom.py [PATH] [--seed N] [--frames T]``: :func:`phantom_figure`."""
    from cli import cli_errors, run_command

    with cli_errors(argv):
        run_command(phantom_figure, argv, prog="python phantom.py")


if __name__ == "__main__":
    main()
