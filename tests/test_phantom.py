"""Tests for the synthetic short-axis cine phantom (phantom.py): tiny shapes, a few seconds."""
import numpy as np
import pytest

from phantom import (EF_RANGE, _heart_window, contraction_curve, heart_pixel, make_phantom_cine,
                     make_phantom_dataset, plot_phantom, render_cine, sample_anatomy)


@pytest.fixture(scope="module")
def small():
    return make_phantom_dataset(4, frames=8, size=32, seed=0)  # [4, 8, 32, 32]


def test_shape_dtype_and_range(small):
    assert small.shape == (4, 8, 32, 32) and small.dtype == np.float32
    assert small.min() >= 0
    np.testing.assert_array_equal(small.max(axis=(1, 2, 3)), 1.0)  # every cine peaks at exactly 1


@pytest.mark.parametrize("frames, size", [(12, 64), (5, 33)])
def test_other_shapes(frames, size):
    cine = make_phantom_cine(np.random.default_rng(1), frames=frames, size=size)
    assert cine.shape == (frames, size, size) and cine.dtype == np.float32
    assert cine.min() >= 0 and cine.max() == 1
    assert np.isfinite(cine).all()


def test_deterministic_by_seed(small):
    np.testing.assert_array_equal(make_phantom_dataset(4, frames=8, size=32, seed=0), small)
    np.testing.assert_array_equal(make_phantom_dataset(2, frames=8, size=32, seed=0), small[:2])  # independent of n
    other = make_phantom_dataset(4, frames=8, size=32, seed=1)
    assert np.abs(other - small).mean() > 0.02


def test_samples_vary(small):
    for i in range(len(small)):
        for j in range(i):
            assert np.abs(small[i] - small[j]).mean() > 0.02
    subjects = [sample_anatomy(np.random.default_rng(s)) for s in range(6)]
    for key in ("ef", "endo_r", "body_a", "heart_angle", "fat"):
        assert np.std([p[key] for p in subjects]) > 0, key
    assert len({int(np.argmax(p["lv_area"])) for p in subjects}) > 1  # end-diastole at different frames


def test_heart_moves_and_the_rest_stays_still():
    p = sample_anatomy(np.random.default_rng(3), frames=10)
    cine = render_cine(p, 64, np.random.default_rng(4))
    motion = cine.std(axis=0)  # [H, W]
    rows, cols = _heart_window(p, 64)
    still = np.ones_like(motion, dtype=bool)
    still[rows, cols] = False
    assert motion[rows, cols].max() > 0.1
    assert motion[still].mean() < 0.01  # breath-hold: noise only outside the heart
    assert np.ptp(cine[:, still].mean(axis=1)) < 0.002  # no global change from frame to frame


def test_contraction_is_periodic_with_short_systole():
    curve = contraction_curve(400, ed_phase=0.3, systole=0.35, filling=0.2, early_fraction=0.75, atrial_start=0.85)
    assert curve.min() == pytest.approx(0, abs=1e-3) and curve.max() == pytest.approx(1, abs=1e-3)
    assert np.abs(np.diff(curve, append=curve[0])).max() < 0.02  # smooth, the last frame flows into the first
    for seed in range(5):
        lv_area = sample_anatomy(np.random.default_rng(seed), frames=200)["lv_area"]
        ed, es = int(np.argmax(lv_area)), int(np.argmin(lv_area))
        assert (es - ed) % 200 < 100  # systole is shorter than diastole


@pytest.mark.parametrize("seed", range(4))
def test_blood_pool_area_follows_the_ejection_fraction(seed):
    frames, size = 12, 96
    p = sample_anatomy(np.random.default_rng(seed), frames)
    cine = render_cine(p, size, np.random.default_rng(seed + 100))
    assert 1 - EF_RANGE[1] - 0.05 < p["lv_area"].min() / p["lv_area"].max() < 1 - EF_RANGE[0]
    row, col = heart_pixel(p, size)
    yy, xx = np.mgrid[:size, :size]
    disk = np.hypot(yy - row, xx - col) < 1.1 * p["endo_r"] * size / 2  # the LV cavity at end-diastole
    inside = cine[:, disk]  # [T, pixels]
    bright = inside > 0.65 * np.percentile(inside, 98)  # blood, not myocardium
    area = bright.sum(1) / (size / 2) ** 2  # [T] body units^2
    assert np.corrcoef(area, p["blood_area"])[0, 1] > 0.97
    assert area.min() / area.max() == pytest.approx(p["blood_area"].min() / p["blood_area"].max(), abs=0.1)
    assert area.min() / area.max() < 0.7  # a clear contraction


def test_complex_phase():
    magnitude = make_phantom_dataset(2, frames=6, size=48, seed=5)
    cines = make_phantom_dataset(2, frames=6, size=48, seed=5, complex_phase=True)
    assert cines.dtype == np.complex64 and cines.shape == (2, 6, 48, 48)
    np.testing.assert_allclose(np.abs(cines).max(axis=(1, 2, 3)), 1.0, rtol=1e-6)
    assert np.abs(np.abs(cines) - magnitude).mean() < 0.02  # same anatomy, only the noise draw differs
    for cine in cines:
        phase = np.angle(cine[0][np.abs(cine[0]) > 0.2])
        assert np.angle(np.exp(1j * (phase - phase.mean()))).std() > 0.1  # a non-trivial phase
    frame_change = np.abs(np.diff(cines, axis=1)).mean(axis=(2, 3))
    assert (frame_change > 0).all()


def test_plot_phantom(tmp_path, small):
    path = tmp_path / "phantom.png"
    plot_phantom(small, path)
    assert path.stat().st_size > 1000
