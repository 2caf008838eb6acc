"""Tests for the synthetic short-axis cine phantom (phantom.py): tiny shapes, a few seconds."""
import numpy as np
import pytest

import phantom
from phantom import (EF_RANGE, REFERENCE_PIXELS, _crop_spectrum, contraction_curve, heart_pixel, main,
                     make_phantom_cine, make_phantom_dataset, plot_phantom, render_cine, sample_anatomy)
from sampling import fft2c, ifft2c


@pytest.fixture(scope="module")
def small():
    return make_phantom_dataset(4, frames=8, size=32, seed=0, return_boxes=True)  # [4, 8, 32, 32], [4, 4]


def mirror_asymmetry(cines) -> float:
    """Mean ``| |K(k)| - |K(-k)| |`` over mean ``|K|`` of centred k-spaces ``[..., H, W]`` (H, W even)."""
    kspace = np.abs(fft2c(cines))[..., 1:, 1:]  # frequencies -N/2+1 .. N/2-1: k and -k both present
    return float(np.abs(kspace - kspace[..., ::-1, ::-1]).mean() / kspace.mean())


def test_complex_by_default_with_peak_one(small):
    cines, boxes = small
    assert cines.shape == (4, 8, 32, 32) and cines.dtype == np.complex64
    np.testing.assert_allclose(np.abs(cines).max(axis=(1, 2, 3)), 1.0, rtol=1e-6)
    assert boxes.shape == (4, 4) and boxes.dtype.kind == "i"


def test_kspace_is_not_conjugate_symmetric(small):
    assert mirror_asymmetry(small[0]) > 0.1  # |K(k)| != |K(-k)|: no free mirror lines to exploit
    magnitude = make_phantom_dataset(4, frames=8, size=32, seed=0, complex_phase=False)
    assert mirror_asymmetry(magnitude) < 1e-4  # a real image's k-space is conjugate symmetric


def test_magnitude_mode_is_the_rician_magnitude_of_the_same_cines(small):
    magnitude = make_phantom_dataset(4, frames=8, size=32, seed=0, complex_phase=False)
    assert magnitude.dtype == np.float32 and magnitude.min() >= 0
    np.testing.assert_allclose(magnitude, np.abs(small[0]), atol=1e-6)


def test_phase_is_smooth_per_tissue_and_follows_the_flow():
    p = sample_anatomy(np.random.default_rng(5), frames=10, slice_position=0.5, snr=None)
    cine, _ = render_cine(p, 64, np.random.default_rng(6))
    phase = np.angle(cine[0][np.abs(cine[0]) > 0.2])
    assert np.angle(np.exp(1j * (phase - phase.mean()))).std() > 0.1  # a non-trivial phase
    row, col = (int(round(v)) for v in heart_pixel(p, 64))
    blood_phase = np.unwrap(np.angle(cine[:, row, col]))  # [T]: ventricular through-plane flow
    assert np.ptp(blood_phase) > 0.05


def test_kspace_crop_matches_the_centred_fft():
    rng = np.random.default_rng(0)
    for height, width, factor in ((8, 10, 2), (7, 9, 2), (5, 7, 3), (6, 6, 1)):
        fine = rng.standard_normal((2, factor * height, factor * width)) + 1j * rng.standard_normal(
            (2, factor * height, factor * width))
        kspace = fft2c(fine)
        top, left = factor * height // 2 - height // 2, factor * width // 2 - width // 2
        expected = ifft2c(kspace[:, top:top + height, left:left + width]) / factor  # intensities kept
        cropped = _crop_spectrum(_crop_spectrum(fine.astype(np.complex64), -1, width), -2, height) / factor
        np.testing.assert_allclose(np.fft.ifft2(cropped, norm="ortho"), expected, atol=1e-5)


def test_rendered_finer_and_cropped_in_kspace_not_on_the_grid():
    p = sample_anatomy(np.random.default_rng(2), frames=4, snr=None)
    one, two, four = (render_cine(p, 32, np.random.default_rng(3), oversample=factor)[0] for factor in (1, 2, 4))
    assert np.abs(two - one).mean() > 0.01  # not the inverse crime
    assert np.abs(four - two).mean() < 0.5 * np.abs(two - one).mean()  # converging with the oversampling
    assert np.abs(np.abs(two) - np.abs(one)).mean() < 0.05  # the same subject


def test_deterministic_by_seed_independent_of_n_and_threads(small, monkeypatch):
    cines, boxes = make_phantom_dataset(2, frames=8, size=32, seed=0, return_boxes=True)
    np.testing.assert_array_equal(cines, small[0][:2])
    np.testing.assert_array_equal(boxes, small[1][:2])
    monkeypatch.setattr(phantom.os, "cpu_count", lambda: 1)
    np.testing.assert_array_equal(make_phantom_dataset(4, frames=8, size=32, seed=0), small[0])
    other = make_phantom_dataset(2, frames=8, size=32, seed=1)
    assert np.abs(np.abs(other) - np.abs(cines)).mean() > 0.02


def test_samples_vary(small):
    cines = np.abs(small[0])
    for i in range(len(cines)):
        for j in range(i):
            assert np.abs(cines[i] - cines[j]).mean() > 0.02
    subjects = [sample_anatomy(np.random.default_rng(s)) for s in range(6)]
    for key in ("ef", "endo_r", "body_a", "heart_angle", "fat", "slice_position", "fov", "snr"):
        assert np.std([p[key] for p in subjects]) > 0, key
    assert len({int(np.argmax(p["lv_area"])) for p in subjects}) > 1  # end-diastole at different frames


def test_slice_position_sets_the_anatomy():
    base, mid, apex = (sample_anatomy(np.random.default_rng(1), slice_position=s) for s in (0.05, 0.5, 0.95))
    assert base["la"][2] > 0 and base["aortic_root"][2] > 0 and base["pap_r"] == 0  # atria and outflow
    assert mid["la"][2] == 0 and mid["pap_r"] > 0 and mid["rv_width"] > 0
    assert apex["rv_width"] == 0 and apex["endo_r"] < 0.7 * base["endo_r"]
    assert apex["trabecular_depth"] > mid["trabecular_depth"]
    ranged = [sample_anatomy(np.random.default_rng(s), slice_position=(0.2, 0.3))["slice_position"] for s in range(5)]
    assert min(ranged) >= 0.2 and max(ranged) <= 0.3


@pytest.mark.parametrize("frames, size", [(12, 64), (5, 33), (1, 16), (3, (24, 40))])
def test_other_shapes(frames, size):
    cine = make_phantom_cine(np.random.default_rng(1), frames=frames, size=size)
    height, width = (size, size) if np.ndim(size) == 0 else size
    assert cine.shape == (frames, height, width) and cine.dtype == np.complex64
    assert np.isfinite(cine).all() and np.abs(cine).max() == pytest.approx(1, abs=1e-6)


def test_tiny_images_are_finite():
    cines = make_phantom_dataset(20, frames=3, size=8, seed=3)  # the blood pool can be smaller than a pixel
    assert np.isfinite(cines).all()


def test_rectangular_field_of_view_is_wider():
    p = sample_anatomy(np.random.default_rng(4), frames=2, snr=None)
    square, _ = render_cine(p, 48, np.random.default_rng(5))
    wide, _ = render_cine(p, (48, 64), np.random.default_rng(5))
    centre = np.abs(wide[:, :, 8:56])  # the square's field of view: same pixel size, same subject
    assert np.abs(centre / centre.max() - np.abs(square) / np.abs(square).max()).mean() < 0.03


def test_box_holds_the_moving_heart():
    cines, boxes = make_phantom_dataset(3, frames=10, size=64, seed=4, return_boxes=True, snr=None)
    for i, (cine, (row0, row1, col0, col1)) in enumerate(zip(cines, boxes)):
        assert 0 <= row0 < row1 <= 64 and 0 <= col0 < col1 <= 64
        assert (row1 - row0) * (col1 - col0) < 0.25 * 64 * 64
        motion = np.abs(cine).std(axis=0)  # [H, W]
        assert motion[row0:row1, col0:col1].sum() > 0.6 * motion.sum()  # the rest: aorta, vessels, neighbours
        p = sample_anatomy(phantom._cine_rng(4, i), 10)
        row, col = heart_pixel(p, 64)
        assert row0 < row < row1 and col0 < col < col1


def test_the_body_stays_still():
    p = sample_anatomy(np.random.default_rng(3), frames=10, snr=None)
    cine, (row0, row1, col0, col1) = render_cine(p, 64, np.random.default_rng(4))
    motion = np.abs(cine).std(axis=0)  # [H, W]
    border = np.ones_like(motion, bool)
    border[8:-8, 8:-8] = False  # chest wall, fat, arms: far from anything that moves
    assert motion[row0:row1, col0:col1].max() > 0.1
    assert np.percentile(motion[border], 90) < 0.015 * motion.max()  # only Gibbs ringing of the heart's edges


def test_breathing_moves_the_heart():
    still = make_phantom_dataset(1, frames=6, size=48, seed=2, snr=None)[0]
    breathing = make_phantom_dataset(1, frames=6, size=48, seed=2, snr=None, breathing=8.0)[0]
    assert np.abs(still - breathing).max() > 0.1
    assert np.abs(breathing[:, :6] - still[:, :6]).mean() < 0.003  # far from the heart: Gibbs ringing only


def test_contraction_is_periodic_with_short_systole():
    curve = contraction_curve(400, ed_phase=0.3, systole=0.35, filling=0.2, early_fraction=0.75, atrial_start=0.85)
    assert curve.min() == pytest.approx(0, abs=1e-3) and curve.max() == pytest.approx(1, abs=1e-3)
    assert np.abs(np.diff(curve, append=curve[0])).max() < 0.02  # smooth, the last frame flows into the first
    for seed in range(5):
        lv_area = sample_anatomy(np.random.default_rng(seed), frames=200)["lv_area"]
        ed, es = int(np.argmax(lv_area)), int(np.argmin(lv_area))
        assert (es - ed) % 200 < 100  # systole is shorter than diastole


@pytest.mark.parametrize("seed", range(3))
def test_blood_pool_area_follows_the_ejection_fraction(seed):
    frames, size = 12, 96
    p = sample_anatomy(np.random.default_rng(seed), frames, slice_position=0.45, snr=None)
    cine = np.abs(render_cine(p, size, np.random.default_rng(seed + 100))[0])
    assert 1 - EF_RANGE[1] * 1.1 < p["lv_area"].min() / p["lv_area"].max() < 1 - EF_RANGE[0] * 0.9
    pixel = 2 * p["fov"] / size  # body units per pixel
    row, col = heart_pixel(p, size)
    yy, xx = np.mgrid[:size, :size]
    disk = np.hypot(yy - row, xx - col) < 1.15 * p["endo_r"] / pixel  # the LV cavity at end-diastole
    inside = cine[:, disk]  # [T, pixels]
    bright = inside > 0.65 * np.percentile(inside, 98)  # blood, not myocardium
    area = bright.sum(1) * pixel ** 2  # [T] body units^2
    assert np.corrcoef(area, p["blood_area"])[0, 1] > 0.95
    assert area.min() / area.max() == pytest.approx(p["blood_area"].min() / p["blood_area"].max(), abs=0.1)
    assert area.min() / area.max() < 0.7  # a clear contraction


def test_noise_level_matches_the_snr():
    frames, size, snr = 4, 128, 30.0
    p = sample_anatomy(np.random.default_rng(7), frames, slice_position=0.45, snr=snr)
    noisy = render_cine(p, size, np.random.default_rng(8))[0]
    clean = render_cine(dict(p, snr=None), size, np.random.default_rng(8))[0]
    scale = np.vdot(clean, noisy).real / np.vdot(clean, clean).real  # the peaks differ
    noise = noisy - scale * clean  # [T, H, W]
    assert noise.real.std() == pytest.approx(noise.imag.std(), rel=0.05)  # complex Gaussian
    row, col = heart_pixel(p, size)
    yy, xx = np.mgrid[:size, :size]
    pool = np.hypot(yy - row, xx - col) < 0.15 * p["endo_r"] * size / (2 * p["fov"])  # central LV blood
    blood = np.abs(scale * clean[:, pool]).mean()
    expected = snr * np.sqrt(REFERENCE_PIXELS / size ** 2)
    assert blood / noise.real.std() == pytest.approx(expected, rel=0.2)


def test_plot_phantom(tmp_path):
    path = tmp_path / "phantom.png"
    plot_phantom(path, sizes=(24, (24, 32)), frames=4, variety=2)
    assert path.stat().st_size > 1000


def test_cli_help_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0 and "usage" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())
