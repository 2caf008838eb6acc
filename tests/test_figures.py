import numpy as np
import pytest
import torch
from PIL import Image

import figures

FRAMES, SIZE = 4, 32


def blob_cine(seed: int = 0, noise: float = 0.02) -> np.ndarray:
    """A smooth blob that moves a little per frame, plus noise: float ``[T, H, W]`` with peak 1."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:SIZE, :SIZE] / SIZE - 0.5
    cine = np.stack([np.exp(-((x - 0.05 * t) ** 2 + y ** 2) / 0.05) for t in range(FRAMES)])
    cine = cine + noise * rng.standard_normal(cine.shape)
    return cine / np.abs(cine).max()


def complex_example(index: int) -> dict:
    target = blob_cine(index) * np.exp(1j * 0.3)
    aliased = target + 0.1 * np.roll(target, SIZE // 2, axis=1)
    return {"index": index, "target": target, "aliased": aliased, "recon": target + 0.01 * blob_cine(index + 10)}


def assert_png(path, min_width: int = 300) -> Image.Image:
    assert 5_000 < path.stat().st_size < 300_000
    image = Image.open(path)
    assert image.format == "PNG" and image.width >= min_width and image.height >= 200
    return image


def test_plot_reconstructions_complex(tmp_path):
    examples = [complex_example(3), complex_example(7)]
    figures.plot_reconstructions(examples, tmp_path / "recon.png")
    one_row = tmp_path / "one_row.png"
    figures.plot_reconstructions(examples[:1], one_row, frame=0)
    taller, shorter = assert_png(tmp_path / "recon.png", 600), assert_png(one_row, 600)
    assert taller.height > 1.5 * shorter.height  # one row per example
    bottom = np.asarray(taller.convert("L"))[-taller.height // 4:]
    assert (bottom < 30).mean() > 0.05  # the second row of (dark-background) images reaches the bottom


def test_plot_reconstructions_accepts_tensors(tmp_path):
    example = {key: torch.as_tensor(value) if key != "index" else value
               for key, value in complex_example(1).items()}
    figures.plot_reconstructions([example], tmp_path / "recon.png")
    assert_png(tmp_path / "recon.png")


def test_plot_branches(tmp_path):
    figures.plot_branches(blob_cine() - 0.5, 0.01 * blob_cine(1), tmp_path / "branches.png", title="branches")
    assert_png(tmp_path / "branches.png")


def history_rows(epochs: int) -> list[dict]:
    return [{"epoch": e + 1, "train_loss": 0.1 / (e + 1), "val_loss": 0.12 / (e + 1), "val_psnr": 20 + e,
             "lr": 1e-4} for e in range(epochs)]


@pytest.mark.parametrize("epochs", [1, 12])
def test_plot_curves(tmp_path, epochs):
    figures.plot_curves(history_rows(epochs), tmp_path / "curves.png")
    assert_png(tmp_path / "curves.png")


def test_plot_frame_psnr(tmp_path):
    rng = np.random.default_rng(0)
    figures.plot_frame_psnr(24 + rng.standard_normal((5, FRAMES)), 31 + rng.standard_normal((5, FRAMES)),
                            tmp_path / "frame_psnr.png")
    assert_png(tmp_path / "frame_psnr.png")


def test_plot_method_grid(tmp_path):
    example = complex_example(0)
    figures.plot_method_grid({"zero-filled": example["aliased"], "UNet": example["recon"]}, example["target"],
                             tmp_path / "grid.png", title="cine 0")
    assert_png(tmp_path / "grid.png", 600)


def test_plot_psnr_boxes(tmp_path):
    rng = np.random.default_rng(0)
    figures.plot_psnr_boxes({"zero-filled": 24 + rng.standard_normal(9), "UNet": 30 + rng.standard_normal(9)},
                            tmp_path / "boxes.png")
    assert_png(tmp_path / "boxes.png")


def test_save_gif_frames_and_panels(tmp_path):
    example = complex_example(2)
    path = tmp_path / "cine.gif"
    figures.save_gif(example["target"], example["aliased"], example["recon"], path, fps=5)
    gif = Image.open(path)
    assert gif.format == "GIF" and gif.n_frames == FRAMES
    assert gif.height >= figures.GIF_MIN_HEIGHT
    assert gif.width >= 3 * gif.height - 3 * figures.GIF_LABEL_HEIGHT  # three square panels side by side
    assert gif.info["duration"] == 200 and gif.info["loop"] == 0


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
