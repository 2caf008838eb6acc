import numpy as np
import pytest
import torch
from PIL import Image

import figures
from sampling import variable_density_mask

FRAMES, SIZE = 4, 32


def blob_cine(seed: int = 0, noise: float = 0.02) -> np.ndarray:
    """A smooth blob that moves a little per frame, plus noise: float ``[T, H, W]`` with peak 1."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:SIZE, :SIZE] / SIZE - 0.5
    cine = np.stack([np.exp(-((x - 0.05 * t) ** 2 + y ** 2) / 0.05) for t in range(FRAMES)])
    cine = cine + noise * rng.standard_normal(cine.shape)
    return cine / np.abs(cine).max()


def beating_cine(center=(10, 22), frames: int = 8) -> np.ndarray:
    """A static bright disc in the middle and a smaller disc at ``center`` whose radius beats."""
    y, x = np.mgrid[:SIZE, :SIZE]
    static = ((y - SIZE / 2) ** 2 + (x - SIZE / 2) ** 2 < 8 ** 2).astype(float)
    radius = 3 + 2 * np.sin(2 * np.pi * np.arange(frames) / frames)
    beating = ((y - center[0]) ** 2 + (x - center[1]) ** 2)[None] < radius[:, None, None] ** 2
    rng = np.random.default_rng(0)
    return np.clip(0.6 * static + beating + 0.01 * rng.standard_normal((frames, SIZE, SIZE)), 0, None)


def complex_example(index: int) -> dict:
    target = blob_cine(index) * np.exp(1j * 0.3)
    aliased = target + 0.1 * np.roll(target, SIZE // 2, axis=1)
    return {"index": index, "target": target, "aliased": aliased, "recon": target + 0.01 * blob_cine(index + 10)}


def assert_png(path, min_width: int = 300) -> Image.Image:
    assert 5_000 < path.stat().st_size < 400_000
    image = Image.open(path)
    assert image.format == "PNG" and image.width >= min_width and image.height >= 200
    return image


# ----------------------------------------------------------------------------- labels and the heart
def test_sampling_labels():
    assert figures.sampling_label(5.0, 4) == "R = 5, 4 centre lines"
    assert figures.sampling_label(2.5, 1) == "R = 2.5, 1 centre line"
    mask = variable_density_mask((6, 32, 32), acceleration=4, center_lines=3, seed=0)
    assert figures.mask_center_lines(mask) == 3
    assert figures.mask_label(mask) == "R = 4, 3 centre lines"  # 8 of 32 lines in every frame
    assert figures.mask_center_lines(np.zeros((2, 8, 8))) == 0


def test_heart_center_finds_the_moving_part():
    cine = beating_cine(center=(10, 22))
    row, col = figures.heart_center(cine)
    assert abs(row - 10) <= 1 and abs(col - 22) <= 1
    assert figures.heart_center(torch.as_tensor(cine * np.exp(1j))) == (row, col)  # complex tensors too
    assert figures.heart_center(np.ones((3, 16, 20))) == (8, 10)  # static: the image centre


@pytest.mark.parametrize("center", [(10, 22), (0, 0), (31, 31)])
def test_heart_box_is_square_and_inside(center):
    row0, row1, col0, col1 = figures.heart_box(center, (SIZE, SIZE))
    assert row1 - row0 == col1 - col0 == round(figures.HEART_BOX * SIZE)
    assert 0 <= row0 < row1 <= SIZE and 0 <= col0 < col1 <= SIZE
    assert row0 <= center[0] < row1 and col0 <= center[1] < col1


# ----------------------------------------------------------------------------- image panels
def test_plot_reconstructions_with_a_reference(tmp_path):
    example = complex_example(3)
    path = tmp_path / "recon.png"
    figures.plot_reconstructions({"zero-filled": example["aliased"], "reconstruction": example["recon"]}, path,
                                 example["target"], title="Test cine 3", sampling="R = 5, 2 centre lines")
    three = assert_png(path, 500)
    many = tmp_path / "methods.png"
    figures.plot_reconstructions({name: example["recon"] for name in ("a", "b", "c", "d", "e")}, many,
                                 example["target"], frame=0, box=(4, 20, 6, 26))
    assert assert_png(many, 900).width > 1.6 * three.width  # one column per method
    assert three.height > 2.2 * three.width / 3  # frame, error, zoom and profile rows


def test_plot_reconstructions_without_a_reference_and_from_tensors(tmp_path):
    example = {key: torch.as_tensor(value) for key, value in complex_example(1).items() if key != "index"}
    figures.plot_reconstructions({"zero-filled": example["aliased"], "reconstruction": example["recon"]},
                                 tmp_path / "noref.png")
    figures.plot_reconstructions({"reconstruction": example["recon"]}, tmp_path / "ref.png", example["target"])
    assert_png(tmp_path / "noref.png")
    assert_png(tmp_path / "ref.png")


def test_plot_branches(tmp_path):
    figures.plot_branches(blob_cine() - 0.5, 0.01 * blob_cine(1), tmp_path / "branches.png", title="branches")
    assert_png(tmp_path / "branches.png")


# ----------------------------------------------------------------------------- curves
def history_rows(epochs: int, spike_at: int | None = None) -> list[dict]:
    rows = [{"epoch": e + 1, "train_loss": 0.1 / (e + 1), "val_loss": 0.12 / (e + 1), "val_psnr": 20 + e,
             "lr": 1e-4 * min(1.0, (e + 1) / 3)} for e in range(epochs)]
    if spike_at is not None:
        rows[spike_at]["val_loss"] *= 6000
    return rows


def test_a_one_epoch_spike_does_not_set_the_axis_limits():
    rows = history_rows(40, spike_at=20)
    val_loss = [row["val_loss"] for row in rows]
    assert np.flatnonzero(figures.spikes(val_loss, log=True, floor=0.5)).tolist() == [20]
    low, high = figures.robust_limits([val_loss], log=True, floor=0.5)
    assert high < 3 * max(v for i, v in enumerate(val_loss) if i != 20) and low < min(val_loss)
    # a steady fall, including a steep first epoch, is a trend, not a spike
    assert not figures.spikes([1.0, 0.1, 0.09, 0.08, 0.07, 0.065], log=True, floor=0.5).any()
    assert figures.robust_limits([[30.0]], log=False, floor=2.0) == pytest.approx((29.5, 30.5))


@pytest.mark.parametrize("epochs, spike_at", [(1, None), (12, None), (40, 20)])
def test_plot_curves(tmp_path, epochs, spike_at):
    figures.plot_curves(history_rows(epochs, spike_at), tmp_path / "curves.png", sampling="R = 5, 4 centre lines")
    assert_png(tmp_path / "curves.png", 1000)


def test_plot_frame_psnr(tmp_path):
    rng = np.random.default_rng(0)
    figures.plot_frame_psnr(24 + rng.standard_normal((5, FRAMES)), 31 + rng.standard_normal((5, FRAMES)),
                            tmp_path / "frame_psnr.png", sampling="R = 5, 4 centre lines")
    assert_png(tmp_path / "frame_psnr.png")


def test_plot_psnr_boxes(tmp_path):
    rng = np.random.default_rng(0)
    figures.plot_psnr_boxes({"zero-filled": 24 + rng.standard_normal(9), "UNet": 30 + rng.standard_normal(9)},
                            tmp_path / "boxes.png")
    assert_png(tmp_path / "boxes.png")


def test_plot_paired_differences(tmp_path):
    rng = np.random.default_rng(0)
    cs = 40 + rng.standard_normal(9)
    figures.plot_paired_differences({"L+S": cs, "net": cs + 0.5, "other": cs - 1}, "L+S", tmp_path / "paired.png",
                                    sampling="R = 5, 4 centre lines")
    assert_png(tmp_path / "paired.png", 700)


# ----------------------------------------------------------------------------- animation
def test_save_gif_frames_and_panels(tmp_path):
    example = complex_example(2)
    path = tmp_path / "cine.gif"
    figures.save_gif(example["target"], example["aliased"], example["recon"], path, fps=5)
    gif = Image.open(path)
    assert gif.format == "GIF" and gif.n_frames == FRAMES
    assert gif.height >= figures.GIF_MIN_HEIGHT
    assert gif.width >= 3 * gif.height - 3 * figures.GIF_LABEL_HEIGHT  # three square panels side by side
    assert gif.info["duration"] == 200 and gif.info["loop"] == 0
    captioned = tmp_path / "captioned.gif"
    figures.save_gif(example["target"], example["aliased"], example["recon"], captioned, caption="R = 5")
    assert Image.open(captioned).height == gif.height + figures.GIF_LABEL_HEIGHT  # a caption strip below
    small = tmp_path / "small.gif"
    figures.save_gif(example["target"], example["aliased"], example["recon"], small, min_height=64, grey_levels=16)
    assert Image.open(small).height == 2 * SIZE + figures.GIF_LABEL_HEIGHT  # upscaled x2 only
    assert small.stat().st_size < path.stat().st_size


def test_titles_wrap_but_keep_the_sampling_together():
    text = "Cine 0 from measured k-space (no reference), R = 4, 4 centre lines, frame 10, |error| ×5"
    wrapped = figures._wrap(text, 20)
    assert any("R = 4," in line for line in wrapped.splitlines())
    assert all(len(line) <= 20 for line in wrapped.splitlines()) and "|error| ×5" in wrapped


def test_save_gif_shows_magnitudes_on_the_reference_grey_scale(tmp_path):
    """Complex inputs: the reference's peak magnitude is white; the zero-filled panel (half as bright)
    stays mid-grey; the reconstruction panel shows the dark background and the bright blob."""
    target = blob_cine(noise=0) * np.exp(1j * np.linspace(0, 6, SIZE))  # phase varies across columns
    path = tmp_path / "cine.gif"
    figures.save_gif(target, 0.5 * target, target, path)
    frame = np.asarray(Image.open(path).convert("L"), dtype=float)[figures.GIF_LABEL_HEIGHT:]
    step = (frame.shape[1] + figures.GIF_GAP) // 3
    reference, zero_filled, recon = (frame[:, i * step:i * step + step - figures.GIF_GAP] for i in range(3))
    scale = reference.shape[0] // SIZE
    np.testing.assert_allclose(reference[::scale, ::scale], 255 * np.abs(target[0]), atol=2.1)
    assert reference.max() == 255
    assert zero_filled.max() == pytest.approx(128, abs=3)
    assert recon.max() == 255 and recon.min() < 10
