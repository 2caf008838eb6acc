"""The dual UNet at any frame count: cyclic windows of its ``in_channels`` frames (models.windowed)."""
import numpy as np
import pytest
import torch

import train
from helpers import TINY, read_metrics, train_defaults
from models import CineReconNet, DualUNetDenoiser, channels_to_complex, complex_to_channels, windowed
from phantom import make_phantom_dataset
from sampling import fft2c, undersample, variable_density_mask

WINDOW, H, W = 4, 32, 32
# The windows the stride rule gives (largest divisor of T that is at most the window), written out:
# window k holds frames (k * stride + j) mod T.
WINDOWS = {3: [[0, 1, 2, 0]], 4: [[0, 1, 2, 3]], 6: [[0, 1, 2, 3], [3, 4, 5, 0]],
           9: [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 0]]}


def denoiser(seed=0):
    """A tiny dual-UNet denoiser with every weight random (as after training), in eval mode."""
    torch.manual_seed(seed)
    net = DualUNetDenoiser(WINDOW, init_features=2, dropout=0.0, resnet_features=4, resnet_blocks=1)
    for module in net.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.ConvTranspose2d)):
            torch.nn.init.normal_(module.weight, std=0.2)
    return net.eval()


def cine(frames, batch=2, seed=0):
    return torch.randn((batch, frames, H, W), generator=torch.Generator().manual_seed(seed), dtype=torch.complex64)


def plain_forward(net, image):
    """The dual UNet as it was before windows: both UNets on the whole cine as channels."""
    x = complex_to_channels(image)
    y = torch.stack([net.unet_real(x[:, 0]), net.unet_imag(x[:, 1])], 1) + x
    return channels_to_complex(y + net.temporal(y))


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_a_cine_of_window_length_is_the_plain_network_bit_for_bit(mode):
    net = denoiser()
    net.train(mode == "train")  # training mode: BatchNorm on the batch's statistics
    x = cine(WINDOW)
    assert torch.equal(net(x), plain_forward(net, x))


@pytest.mark.parametrize("frames", [3, 6, 9])
def test_each_frame_is_the_mean_of_the_windows_that_hold_it(frames):
    unet = denoiser().unet_real
    x = cine(frames).real  # [B, T, H, W]
    outputs = [(window, unet(x[:, window])) for window in WINDOWS[frames]]  # the plain UNet on each window
    expected = torch.stack([torch.stack([out[:, j] for window, out in outputs for j, held in enumerate(window)
                                         if held == t]).mean(0) for t in range(frames)], 1)
    torch.testing.assert_close(windowed(unet, x, WINDOW), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("frames, stride", [(6, 3), (9, 3), (3, 3)])
def test_rolling_the_cine_by_the_stride_rolls_the_output(frames, stride):
    net, x = denoiser(), cine(frames)
    torch.testing.assert_close(net(x.roll(stride, 1)), net(x).roll(stride, 1), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(net(x.roll(1, 1)), net(x).roll(1, 1), atol=1e-3), "a roll by one frame is not"


def example(frames, batch=2):
    target = cine(frames, batch, seed=frames)
    mask = torch.from_numpy(variable_density_mask((frames, H, W), acceleration=4, center_lines=2, seed=frames))
    aliased, kspace = undersample(target, mask.expand(batch, -1, -1, -1))
    return aliased.to(torch.complex64), kspace.to(torch.complex64), mask.expand(batch, -1, -1, -1), target


@pytest.mark.parametrize("frames", [3, 6, 9])
def test_the_untrained_residual_network_is_the_identity_at_any_frame_count(frames):
    torch.manual_seed(0)
    aliased, kspace, mask, _ = example(frames)
    for cascades in (0, 2):
        net = CineReconNet(frames=WINDOW, init_features=2, resnet_features=4, resnet_blocks=1, cascades=cascades)
        torch.testing.assert_close(net(aliased, kspace, mask), aliased)


def test_one_network_trains_on_batches_of_different_frame_counts():
    torch.manual_seed(0)
    net = CineReconNet(frames=WINDOW, init_features=2, resnet_features=4, resnet_blocks=1, cascades=1)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    head = net.denoisers[0].unet_real.head.weight
    for frames in (3, 6, 9, 4):
        aliased, kspace, mask, target = example(frames)
        before = head.detach().clone()
        out = net(aliased, kspace, mask)
        assert out.shape == (2, frames, H, W)
        torch.testing.assert_close(fft2c(out) * mask, kspace, atol=1e-5, rtol=0)  # hard DC on the whole cine
        loss = (out - target).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        assert head.grad.abs().sum() > 0, f"{frames} frames: the UNets learn through their windows"
        optimizer.step()
        assert not torch.equal(head, before)


def test_train_py_trains_the_dual_unet_on_cines_of_another_frame_count(tmp_path):
    np.save(tmp_path / "nine.npy", make_phantom_dataset(14, frames=9, size=32, seed=3))
    _, overrides = train.parse_command_line(["x", *TINY, "--in_channels=4", "--out_channels=4", "--num_epochs=1",
                                             "--cascades=1", "--prior=none", "--init_features=2"])
    overrides.update(data=str(tmp_path / "nine.npy"), out_dir=str(tmp_path / "output"),
                     images_dir=str(tmp_path / "images"), figures=False)
    train.train("nine", overrides, **train_defaults())
    report = (tmp_path / "output" / "nine" / "output.txt").read_text()
    assert "14 complex cines of 9x32x32" in report
    metrics = read_metrics(tmp_path / "output" / "nine")
    assert metrics["config"]["in_channels"] == 4 and len(metrics["test"]["psnr"]) == 4
    assert np.isfinite(metrics["test"]["psnr"]).all() and np.isfinite(metrics["history"][0]["val_psnr"])


def test_the_frame_count_benchmark_tables_windows_scores_and_times(tmp_path):
    from benchmarks.frame_counts import frame_counts
    from checkpoint import CHECKPOINT_FORMAT, save_checkpoint
    from models import build_model

    config = train_defaults(prior=None, in_channels=WINDOW, out_channels=WINDOW, init_features=2, resnet_features=4,
                            resnet_blocks=1, cascades=1, image_size=32, center_lines=2, amp="none")
    (tmp_path / "run").mkdir()
    save_checkpoint({"format": CHECKPOINT_FORMAT, "config": config, "model": build_model(config).state_dict()},
                    tmp_path / "run" / "best.pt")
    table = frame_counts(checkpoint=str(tmp_path / "run" / "best.pt"), frames="3,4,6", count=1, repeats=1,
                         device="cpu", results=str(tmp_path))
    rows = [line.split(" | ") for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [(row[0], row[1]) for row in rows] == [("| 3", "1 of 4, stride 3"), ("| 4", "1 of 4, stride 4"),
                                                  ("| 6", "2 of 4, stride 3")]
    assert [row[3] == row[4].split(" ")[0] for row in rows] == [True] * 3, "untrained: the view-shared start"
    assert rows[1][-1] == "1.00x |" and (tmp_path / "frame_counts_run.md").read_text() == table
