"""Reconstruction networks for undersampled cine MRI.

- :class:`UNet2D`: encoder-decoder with 4 pooling levels (``init_features`` .. 16x wide), frames
  stacked as channels, channel + spatial attention (CBAM-style) at the bottleneck or at every
  level, dropout at the bottleneck, LeakyReLU(0.1).
- :class:`TemporalResNet3D`: residual 3D convolutions over (t, y, x) with real/imaginary parts as
  channels; its 3x3x3 kernels mix neighbouring frames.
- :class:`DualUNetDenoiser`: one UNet for the real part and one for the imaginary part of a cine,
  then the temporal ResNet: the study's network. The UNets see a window of ``frames`` frames as
  channels; a cine of another frame count is cut into cyclic windows (:func:`cyclic_windows`).
- :class:`DCCNNDenoiser`: the 5-layer 3D CNN of DC-CNN (Schlemper et al. 2017), a learned anchor.
- :class:`DataConsistency`: keeps the measured k-space lines (hard replacement or soft weight); with
  coil sensitivities, the SENSE data consistency by conjugate gradients.
- :class:`CineReconNet`: ``cascades=0`` is the plain denoiser; ``cascades=N`` unrolls N times
  (denoiser -> data consistency), each cascade with its own weights, optionally with
  activation checkpointing per cascade.

Complex cines are ``[B, T, H, W]`` complex64 tensors throughout; FFTs run in float32 even
under autocast.

Coils (SENSE, ``sampling.sense_forward``): every network takes ``sensitivities=`` ``[B, C, H, W]``,
and then ``kspace`` is coil k-space ``[B, C, T, H, W]`` (the mask ``[B, T, H, W]`` is the same for
every coil) and ``aliased`` the coil-combined zero-filled cine ``A^H y`` (``sampling.sense_adjoint``).
The denoisers see coil-combined cines ``[B, T, H, W]``; the coils live in the data consistency. One
code path: ``sensitivities=None`` is the single-coil network, unchanged bit for bit, and one coil of
sensitivity 1 gives the same output to float precision.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from baselines import CG_STEPS, RHO, WEIGHTS, admm_iteration, admm_rhos, from_shifted, image_update, initial_cine, \
    lplus_s_parts, penalties, penalty_scales, penalty_thresholds, relative_scales, to_shifted, to_shifted_image
from sampling import data_consistency, fft2c, gradient_dc, ifft2c, sense_adjoint, sense_data_consistency
from sampling import view_sharing as view_shared_image

ATTENTION = ("none", "bottleneck", "all")
ARCHS = ("dual_unet", "cine_unet", "dccnn", "lsnet", "admmnet")
DC_MODES = ("hard", "soft")
PRIORS = (None, "lsnet", "admmnet")  # what starts the cascades: view_sharing decides | a learned L+S | a learned ADMM
PENALTIES = ("tv_t", "wavelet", "nuclear", "fourier_t")  # the penalties an ADMMNet can learn (baselines.penalties)
ADMM_WEIGHTS = {key: name for key, name in WEIGHTS.items() if name in PENALTIES}  # config keys -> penalties
OUTPUTS = ("linear", "sigmoid")
UNET_LEVELS = 4  # pooling levels: image sizes must be multiples of 2**4 = 16
SENSE_DC_ITERATIONS = 5  # conjugate-gradient steps of a SENSE data consistency (sampling.sense_data_consistency)


def leaky_relu() -> nn.Module:
    return nn.LeakyReLU(0.1, inplace=True)


class ChannelAttention(nn.Module):
    """Channel attention: a shared MLP on average- and max-pooled features gates every channel."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), leaky_relu(), nn.Conv2d(hidden, channels, 1))

    def forward(self, x):  # [B, C, H, W]
        avg = self.mlp(x.mean((2, 3), keepdim=True))  # [B, C, 1, 1]
        peak = self.mlp(x.amax((2, 3), keepdim=True))  # [B, C, 1, 1]
        return x * torch.sigmoid(avg + peak)


class SpatialAttention(nn.Module):
    """Spatial attention: a 7x7 convolution of channel mean and max gates every pixel."""

    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x):  # [B, C, H, W]
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)  # [B, 2, H, W]
        return x * torch.sigmoid(self.conv(pooled))


def conv_block(in_channels: int, out_channels: int, attention: bool = False) -> nn.Sequential:
    """(3x3 conv -> BatchNorm -> LeakyReLU(0.1)) x 2, then channel + spatial attention if asked."""
    layers = [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
              leaky_relu(), nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
              nn.BatchNorm2d(out_channels), leaky_relu()]
    if attention:
        layers += [ChannelAttention(out_channels), SpatialAttention()]
    return nn.Sequential(*layers)


class UNet2D(nn.Module):
    """2D UNet over frames-as-channels: ``[B, in_channels, H, W]`` -> ``[B, out_channels, H, W]``.

    Widths f, 2f, 4f, 8f on the encoder levels and 16f at the bottleneck (f = init_features);
    attention: ``"bottleneck"`` (channel + spatial attention there), ``"all"`` (also at every
    encoder and decoder level) or ``"none"``; dropout (``nn.Dropout2d``) after the bottleneck.
    H and W must be multiples of 16. The output is linear (no activation).
    """

    def __init__(self, in_channels: int = 20, out_channels: int = 20, init_features: int = 64,
                 dropout: float = 0.3, attention: str = "bottleneck"):
        super().__init__()
        build_unet(self, in_channels, out_channels, init_features, UNET_LEVELS, attention, block=conv_block,
                   upsample=lambda width: nn.ConvTranspose2d(2 * width, width, 2, stride=2),
                   dropout=nn.Dropout2d(dropout), head=nn.Conv2d)

    def forward(self, x):  # [B, C_in, H, W]
        return unet_forward(self, x, lambda h: F.max_pool2d(h, 2))  # [B, C_out, H, W]


def build_unet(unet: nn.Module, in_channels: int, out_channels: int, features: int, levels: int, attention: str,
               *, block, upsample, dropout: nn.Module, head) -> None:
    """Give ``unet`` the layers of a UNet: ``levels`` encoder blocks of widths f, 2f, 4f, ...
    (f = ``features``), a bottleneck block twice as wide followed by ``dropout``, per level an
    ``upsample(width)`` and a decoder block over the upsampled map and its skip, and a 1x1 ``head``.
    ``block(in, out, attention)`` makes a level; attention is at the bottleneck (``"bottleneck"``),
    also at every level (``"all"``) or nowhere (``"none"``)."""
    if attention not in ATTENTION:
        raise ValueError(f"attention must be one of {ATTENTION}, got {attention!r}")
    widths = [features * 2 ** level for level in range(levels)]  # [f, 2f, 4f, ...]
    every_level = attention == "all"
    unet.encoders = nn.ModuleList()
    channels = in_channels
    for width in widths:
        unet.encoders.append(block(channels, width, every_level))
        channels = width
    unet.bottleneck = block(channels, 2 * channels, attention != "none")
    unet.dropout = dropout
    unet.upsamples = nn.ModuleList(upsample(width) for width in reversed(widths))
    unet.decoders = nn.ModuleList(block(2 * width, width, every_level) for width in reversed(widths))
    unet.head = head(features, out_channels, 1)


def unet_forward(unet: nn.Module, x: torch.Tensor, pool) -> torch.Tensor:
    """The UNet pass of the layers :func:`build_unet` made: ``pool`` halves H and W between levels;
    ``x`` is ``[B, C_in, H, W]`` or ``[B, C_in, T, H, W]``, the result has ``C_out`` channels."""
    skips = []
    for encoder in unet.encoders:
        x = encoder(x)  # [B, f 2^l, ..., H / 2^l, W / 2^l]
        skips.append(x)
        x = pool(x)
    x = unet.dropout(unet.bottleneck(x))  # [B, f 2^(L+1), ..., H / 2^L, W / 2^L]
    for upsample, decoder, skip in zip(unet.upsamples, unet.decoders, reversed(skips)):
        x = decoder(torch.cat([upsample(x), skip], 1))  # [B, f 2^l, ..., H / 2^l, W / 2^l]
    return unet.head(x)


class TemporalResNet3D(nn.Module):
    """Residual 3D CNN over (t, y, x): ``[B, 2, T, H, W]`` -> ``[B, 2, T, H, W]``.

    A 3x3x3 convolution to ``features`` channels, ``blocks`` residual blocks of two 3x3x3
    convolutions (each spans 3 frames, with circular padding in time because a cine is one
    periodic heartbeat), and a final 1x1x1 convolution back to real/imaginary.
    """

    def __init__(self, features: int = 16, blocks: int = 2, channels: int = 2):
        super().__init__()
        self.stem = self._conv(channels, features)
        self.blocks = nn.ModuleList(
            nn.Sequential(self._conv(features, features), leaky_relu(), self._conv(features, features))
            for _ in range(blocks))
        self.head = nn.Conv3d(features, channels, 1)

    @staticmethod
    def _conv(in_channels: int, out_channels: int) -> nn.Conv3d:
        return nn.Conv3d(in_channels, out_channels, 3, padding=1, padding_mode="circular")

    def forward(self, x):  # [B, 2, T, H, W]
        h = F.leaky_relu(self.stem(x), 0.1)  # [B, features, T, H, W]
        for block in self.blocks:
            h = F.leaky_relu(h + block(h), 0.1)
        return self.head(h)  # [B, 2, T, H, W]


def complex_to_channels(image: torch.Tensor) -> torch.Tensor:
    """``[B, T, H, W]`` complex -> ``[B, 2, T, H, W]`` real (real, imaginary)."""
    return torch.stack([image.real, image.imag], 1)


def channels_to_complex(x: torch.Tensor) -> torch.Tensor:
    """``[B, 2, T, H, W]`` real (any float dtype) -> ``[B, T, H, W]`` complex64."""
    x = x.float()
    return torch.complex(x[:, 0], x[:, 1])


def window_stride(frames: int, window: int) -> int:
    """The stride of the cyclic windows of ``window`` frames over a cine of ``frames`` frames: the
    largest divisor of ``frames`` that is at most ``window``. A cine no longer than the window gets one
    window (stride ``frames``: the cine repeated cyclically inside it; at ``frames == window`` exactly
    the cine). A longer one gets ``frames / stride`` windows, the fewest that cover every frame while
    the stride divides the frame count, so the set of windows is the same after a roll by the stride
    (the output rolls with the input). It is ``ceil(frames / window)`` windows when a divisor lies
    near the window (30 frames, window 20: stride 15, 2 windows) and ``frames`` windows when
    ``frames`` is a prime above the window (23 frames: stride 1)."""
    return max(d for d in range(1, min(frames, window) + 1) if frames % d == 0)


def cyclic_windows(frames: int, window: int) -> torch.Tensor:
    """The frames each cyclic window holds, ``[n, window]`` int64: window ``k`` holds frames
    ``(k s + j) mod frames`` for ``j = 0 .. window - 1``, ``s`` the :func:`window_stride`. A cine is
    one periodic heartbeat, so a window that runs past the last frame continues at the first."""
    starts = torch.arange(0, frames, window_stride(frames, window))  # [n]
    return (starts[:, None] + torch.arange(window)) % frames  # [n, window]


def windowed(unet: nn.Module, x: torch.Tensor, window: int) -> torch.Tensor:
    """A frames-as-channels ``unet`` (``[B, window, H, W]`` -> same) applied to a cine ``x``
    ``[B, T, H, W]`` of any T: the cine's :func:`cyclic_windows` go through the UNet as one batch
    ``[B n, window, H, W]`` (one UNet pass per window), and each output frame is the mean of what the
    windows give at every place that holds it. ``T == window`` is the plain ``unet(x)``."""
    frames = x.shape[1]
    if frames == window:
        return unet(x)
    index = cyclic_windows(frames, window).to(x.device)  # [n, window]
    out = unet(x[:, index].flatten(0, 1))  # [B n, window, H, W]
    out = out.unflatten(0, (len(x), len(index))).flatten(1, 2)  # [B, n window, H, W]
    places = index.flatten()  # [n window]: the frame at each place
    counts = out.new_zeros(frames).index_add(0, places, out.new_ones(len(places)))  # [T] places per frame
    total = out.new_zeros((len(x), frames, *out.shape[2:])).index_add(1, places, out)  # [B, T, H, W]
    return total / counts[:, None, None]


class DualUNetDenoiser(nn.Module):
    """The study's network: real and imaginary UNets, then the 3D temporal ResNet.

    ``[B, T, H, W]`` complex -> ``[B, T, H, W]`` complex, any T: the UNets take ``frames`` frames as
    channels, a cine of another frame count through its cyclic windows (:func:`windowed`); the
    temporal ResNet (circular in time) then sees the whole cine. With ``output="linear"`` every stage is
    residual (it predicts a correction to its input) and the output convolutions start at zero,
    so the untrained denoiser is the identity (a cascade starts at the zero-filled image); with ``output="sigmoid"`` (magnitude
    targets in [0, 1] only, the study's choice) the stages are plain and the real part of the
    result passes through a sigmoid.
    """

    def __init__(self, frames: int = 20, init_features: int = 64, dropout: float = 0.3,
                 attention: str = "bottleneck", resnet_features: int = 16, resnet_blocks: int = 2,
                 output: str = "linear"):
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        self.residual = output == "linear"
        self.window = frames  # the frames the UNets take as channels
        self.unet_real = UNet2D(frames, frames, init_features, dropout, attention)
        self.unet_imag = UNet2D(frames, frames, init_features, dropout, attention)
        self.temporal = TemporalResNet3D(resnet_features, resnet_blocks)
        if self.residual:
            for head in (self.unet_real.head, self.unet_imag.head, self.temporal.head):
                nn.init.zeros_(head.weight)
                nn.init.zeros_(head.bias)

    def forward(self, image):  # [B, T, H, W] complex
        x = complex_to_channels(image)  # [B, 2, T, H, W]
        real = windowed(self.unet_real, x[:, 0], self.window)  # [B, T, H, W]
        imag = windowed(self.unet_imag, x[:, 1], self.window)  # [B, T, H, W]
        y = torch.stack([real, imag], 1)  # [B, 2, T, H, W]
        if self.residual:
            y = y + x
            y = y + self.temporal(y)
            return channels_to_complex(y)  # [B, T, H, W] complex
        y = self.temporal(y).float()
        return torch.complex(torch.sigmoid(y[:, 0]), y[:, 1])


def frame_conv(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Conv3d:
    """A 2D convolution applied to every frame of ``[B, C, T, H, W]`` (a ``1 x k x k`` 3D kernel)."""
    return nn.Conv3d(in_channels, out_channels, (1, kernel_size, kernel_size), padding=(0, kernel_size // 2,
                                                                                        kernel_size // 2))


def time_conv(in_channels: int, out_channels: int) -> nn.Conv3d:
    """A convolution along time over 3 frames of ``[B, C, T, H, W]`` (a ``3 x 1 x 1`` kernel), with
    circular padding because a cine is one periodic heartbeat: defined for any number of frames."""
    return nn.Conv3d(in_channels, out_channels, (3, 1, 1), padding=(1, 0, 0), padding_mode="circular")


class FrameAttention(nn.Module):
    """Channel then spatial attention (CBAM) on every frame: ``[B, C, T, H, W]`` -> same shape."""

    def __init__(self, channels: int):
        super().__init__()
        self.channel = ChannelAttention(channels)
        self.spatial = SpatialAttention()

    def forward(self, x):  # [B, C, T, H, W]
        frames = x.transpose(1, 2).flatten(0, 1)  # [B*T, C, H, W]
        frames = self.spatial(self.channel(frames))
        return frames.unflatten(0, (x.shape[0], -1)).transpose(1, 2)  # [B, C, T, H, W]


class SpaceTimeBlock(nn.Module):
    """(2+1)D block: a 3x3 convolution per frame, BatchNorm, LeakyReLU(0.1), a 3-frame convolution
    along time, BatchNorm, LeakyReLU(0.1); ``[B, C_in, T, H, W]`` -> ``[B, C_out, T, H, W]``; with
    ``attention``, channel + spatial attention per frame at the end. BatchNorm statistics pool
    frames and pixels, so they do not depend on the frame count."""

    def __init__(self, in_channels: int, out_channels: int, attention: bool = False):
        super().__init__()
        self.spatial = frame_conv(in_channels, out_channels)
        self.norm_spatial = nn.BatchNorm3d(out_channels)
        self.temporal = time_conv(out_channels, out_channels)
        self.norm_temporal = nn.BatchNorm3d(out_channels)
        self.attention = FrameAttention(out_channels) if attention else None

    def forward(self, x):  # [B, C_in, T, H, W]
        h = F.leaky_relu(self.norm_spatial(self.spatial(x)), 0.1)
        h = F.leaky_relu(self.norm_temporal(self.temporal(h)), 0.1)
        return self.attention(h) if self.attention is not None else h


class CineUNet(nn.Module):
    """A UNet over the frames of a cine with a convolution along time at every level:
    ``[B, C_in, T, H, W]`` -> ``[B, C_out, T, H, W]`` for any number of frames T.

    ``levels`` pooling levels (2x2, in space only) of widths f, 2f, ... (f = ``features``) and a
    bottleneck of width ``2^levels f`` with channel + spatial attention (``attention="bottleneck"``,
    or at every level with ``"all"``) and dropout; every level is a :class:`SpaceTimeBlock`, so the
    receptive field grows in space and time together. H and W must be multiples of ``2^levels``.
    Linear output.
    """

    def __init__(self, in_channels: int, out_channels: int, features: int = 16, levels: int = 3,
                 dropout: float = 0.0, attention: str = "bottleneck"):
        super().__init__()
        build_unet(self, in_channels, out_channels, features, levels, attention, block=SpaceTimeBlock,
                   upsample=lambda width: nn.ConvTranspose3d(2 * width, width, (1, 2, 2), stride=(1, 2, 2)),
                   dropout=nn.Dropout3d(dropout), head=nn.Conv3d)

    def forward(self, x):  # [B, C_in, T, H, W]
        return unet_forward(self, x, lambda h: F.avg_pool3d(h, (1, 2, 2)))  # [B, C_out, T, H, W]


class SpaceTimeResNet(nn.Module):
    """Residual (2+1)D CNN at full resolution that fuses time: ``[B, 2, T, H, W]`` -> ``[B, 2, T, H, W]``.

    A 3x3 stem to ``features`` channels, ``blocks`` residual :class:`SpaceTimeBlock` s, and a 1x1
    head back to real/imaginary.
    """

    def __init__(self, features: int = 16, blocks: int = 2, channels: int = 2):
        super().__init__()
        self.stem = frame_conv(channels, features)
        self.blocks = nn.ModuleList(SpaceTimeBlock(features, features) for _ in range(blocks))
        self.head = nn.Conv3d(features, channels, 1)

    def forward(self, x):  # [B, 2, T, H, W]
        h = F.leaky_relu(self.stem(x), 0.1)
        for block in self.blocks:
            h = h + block(h)
        return self.head(h)


class DualCineDenoiser(nn.Module):
    """The frame-count-agnostic form of the study's network: a real-part and an imaginary-part
    :class:`CineUNet`, then a :class:`SpaceTimeResNet` that fuses time, all residual.

    ``[B, T, H, W]`` complex -> ``[B, T, H, W]`` complex for any T. Each UNet sees both parts of
    every frame (undersampling mixes them once the image has phase) and corrects its own part;
    the output convolutions start at zero, so the untrained denoiser is the identity.
    """

    residual = True

    def __init__(self, init_features: int = 16, levels: int = 3, dropout: float = 0.0,
                 attention: str = "bottleneck", resnet_features: int = 16, resnet_blocks: int = 2):
        super().__init__()
        self.unet_real = CineUNet(2, 1, init_features, levels, dropout, attention)
        self.unet_imag = CineUNet(2, 1, init_features, levels, dropout, attention)
        self.temporal = SpaceTimeResNet(resnet_features, resnet_blocks)
        for head in (self.unet_real.head, self.unet_imag.head, self.temporal.head):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def forward(self, image):  # [B, T, H, W] complex
        x = complex_to_channels(image)  # [B, 2, T, H, W]
        y = x + torch.cat([self.unet_real(x), self.unet_imag(x)], 1)
        return channels_to_complex(y + self.temporal(y))  # [B, T, H, W] complex


class DCCNNDenoiser(nn.Module):
    """DC-CNN's denoiser (Schlemper et al. 2017, 3D variant): 5 3x3x3 convolutions with ReLU,
    ``features`` wide, predicting a residual correction. ``[B, T, H, W]`` complex in and out."""

    def __init__(self, features: int = 64, layers: int = 5):
        super().__init__()
        widths = [2] + [features] * (layers - 1) + [2]
        convs = []
        for i, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:])):
            convs.append(nn.Conv3d(w_in, w_out, 3, padding=1, padding_mode="circular"))
            if i < layers - 1:
                convs.append(nn.ReLU(inplace=True))
        self.net = nn.Sequential(*convs)

    def forward(self, image):  # [B, T, H, W] complex
        x = complex_to_channels(image)  # [B, 2, T, H, W]
        return channels_to_complex(x + self.net(x))


class DataConsistency(nn.Module):
    """Keeps the measured k-space: ``k = (1 - m) F x + m k_dc`` and returns ``F^-1 k``.

    - ``"hard"``: ``k_dc = y`` (the measurements replace the predicted lines exactly);
    - ``"soft"``: ``k_dc = (F x + lambda y) / (1 + lambda)`` with a learnable ``lambda >= 0``
      (softplus of a free parameter; large lambda tends to hard DC), for noisy measurements.
    image ``[B, T, H, W]`` complex; kspace ``y = U F m`` ``[B, T, H, W]`` complex (zero off the
    mask); mask ``[B, T, H, W]`` 0/1. Computed in float32.

    With ``sensitivities`` ``[B, C, H, W]`` (kspace ``y = U F S m`` ``[B, C, T, H, W]``): the same
    two minimisers for ``A = U F S``, by ``SENSE_DC_ITERATIONS`` conjugate-gradient steps from ``x``
    (``sampling.sense_data_consistency``): ``"hard"`` solves ``A^H A k = A^H y`` (``lam = 0``: the
    least-squares fit, moving ``x`` only within the range of ``A^H``), ``"soft"``
    ``min ||A k - y||^2 + (1 / lambda) ||k - x||^2``, which is the blend above for one unit coil.
    """

    def __init__(self, mode: str = "hard", initial_lambda: float = 10.0):
        super().__init__()
        if mode not in DC_MODES:
            raise ValueError(f"dc must be one of {DC_MODES}, got {mode!r}")
        self.mode = mode
        if mode == "soft":
            raw = torch.log(torch.expm1(torch.tensor(float(initial_lambda))))
            self.raw_lambda = nn.Parameter(raw)

    @property
    def weight(self) -> torch.Tensor:
        """The soft-DC weight lambda (>= 0)."""
        return F.softplus(self.raw_lambda)

    def forward(self, image, kspace, mask, sensitivities=None):  # [B, T, H, W] each ([B, C, T, H, W] coil k-space)
        if sensitivities is not None:
            lam = 0.0 if self.mode == "hard" else 1 / self.weight
            return sense_data_consistency(image, kspace, sensitivities, mask, lam=lam, iterations=SENSE_DC_ITERATIONS)
        predicted = fft2c(image)  # [B, T, H, W] complex64
        if self.mode == "hard":
            measured = kspace
        else:
            measured = (predicted + self.weight * kspace) / (1 + self.weight)
        return ifft2c(predicted * (1 - mask) + measured * mask)


class SparseCorrection(nn.Module):
    """A small (2+1)D CNN that corrects the sparse part of an L+S iteration: ``S + c N([S, R] / c)``
    with ``R = M - L_prev`` (what the soft-threshold acted on), complex as two channels each, and
    ``c`` ``[B]`` a per-cine scale, so the correction scales with the data as the thresholds do.

    A 3x3 convolution per frame, a 3-frame convolution along time (circular: one heartbeat), a 3x3
    convolution, LeakyReLU(0.1) between them and a 1x1 head that starts at zero: the untrained
    correction is the identity. Any frame count and image size; no normalisation layers.
    """

    def __init__(self, features: int = 8):
        super().__init__()
        self.net = nn.Sequential(frame_conv(4, features), leaky_relu(), time_conv(features, features), leaky_relu(),
                                 frame_conv(features, features), leaky_relu(), nn.Conv3d(features, 2, 1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, sparse, residual, scale):  # [B, T, H, W] complex, complex, [B] real
        scale = scale[:, None, None, None]  # [B, 1, 1, 1]
        x = torch.cat([complex_to_channels(sparse / scale), complex_to_channels(residual / scale)], 1)  # [B,4,T,H,W]
        return sparse + channels_to_complex(self.net(x)) * scale  # [B, T, H, W] complex


class LSNet(nn.Module):
    """Learned L+S: the iteration of ``baselines.low_rank_plus_sparse`` unrolled ``iterations`` times,
    each iteration ``k`` with its own learned relative thresholds, gradient step and (optionally) a
    :class:`SparseCorrection`::

        L = SVT(M - S, lambda_L[k] sigma_max(x0))
        S = F_t^-1 soft(F_t (M - L_prev), lambda_S[k] max|F_t x0|)      then S <- N_k(S, M - L_prev)
        M = (L + S) - step[k] F^-1 U (F (L + S) - y)                     (sampling.gradient_dc)

    from ``M = S + L_prev`` = the view-shared cine (or the zero-filled ``x0``), and a final hard data
    consistency, so that the output keeps every measured sample exactly whatever the learned steps.
    With ``sensitivities`` (``A = U F S``, see the module docstring) ``x0 = A^H y``, the start is the
    coil-combined view-shared cine, the data step is ``M - step[k] A^H (A M - y)`` and the final
    step is that data step with step 1 (for one coil of sensitivity 1 it is the hard data consistency
    above): untrained, the network is ``iterations`` iterations of ``low_rank_plus_sparse(...,
    sensitivities=)`` and one more SENSE gradient step. An exact SENSE fit (CG on ``A^H A x = A^H y``)
    is not used there: with noisy coils and maps from a few centre lines it amplifies noise by the
    g-factor (measured: 4 dB lost at 8 coils, 8x; docs/coils.md).
    The thresholds are learned as logarithms (always positive) and stay relative to the zero-filled
    cine's scale, so the network is scale-equivariant: ``c y`` gives ``c M``. At initialisation (``step = 1``, where
    the gradient step is exact data consistency; zero heads; thresholds ``lambda_l`` and
    ``lambda_s``) it computes exactly ``iterations`` iterations of ``low_rank_plus_sparse`` from the
    same start: a network that starts as tuned CS. Any frame count and image size; float32 inside
    (autocast is off: thresholds and eigendecompositions need the precision).

    ``(aliased, kspace, mask[, sensitivities])`` -> complex cine ``[B, T, H, W]``, like :class:`CineReconNet`.
    """

    def __init__(self, iterations: int = 10, lambda_l: float = 0.01, lambda_s: float = 0.003, features: int = 0,
                 view_sharing: bool = True):
        super().__init__()
        if iterations < 1 or lambda_l <= 0 or lambda_s <= 0 or features < 0:
            raise ValueError("LSNet needs iterations >= 1, lambda_l > 0, lambda_s > 0 and features >= 0")
        self.iterations, self.view_sharing = iterations, view_sharing
        self.log_lambda_l = nn.Parameter(torch.full((iterations,), math.log(lambda_l)))
        self.log_lambda_s = nn.Parameter(torch.full((iterations,), math.log(lambda_s)))
        self.raw_step = nn.Parameter(torch.zeros(iterations))  # step = 2 sigmoid(raw_step), 1 at the start
        self.corrections = nn.ModuleList(SparseCorrection(features) for _ in range(iterations if features else 0))

    def physics_parameters(self) -> list[nn.Parameter]:
        """The CS numbers (per-iteration log-thresholds and steps), as opposed to the CNNs' weights."""
        return [self.log_lambda_l, self.log_lambda_s, self.raw_step]

    def steps(self) -> torch.Tensor:
        """The per-iteration gradient steps ``[iterations]``, in (0, 2) where a step never raises the
        data error."""
        return 2 * torch.sigmoid(self.raw_step)

    def thresholds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The relative thresholds ``lambda_L`` and ``lambda_S`` ``[iterations]`` each, at most 1 (a
        threshold at the largest singular value or coefficient already removes everything)."""
        return self.log_lambda_l.clamp(max=0).exp(), self.log_lambda_s.clamp(max=0).exp()

    def forward(self, aliased, kspace, mask, sensitivities=None):  # [B, T, H, W] complex, complex, float
        with torch.autocast("cuda" if kspace.is_cuda else "cpu", enabled=False):
            kspace, sampled, maps, x0 = solver_inputs(kspace, mask, sensitivities)
            sigma_max, peak = relative_scales(x0)  # [B] each
            m = initial_cine(kspace, sampled, "view_sharing" if self.view_sharing else "zero_filled", maps)
            s, l_prev = torch.zeros_like(m), m
            (lambda_l, lambda_s), steps = self.thresholds(), self.steps()  # [K] each
            for k in range(self.iterations):
                tau_s = (lambda_s[k] * peak)[:, None, None, None]  # [B, 1, 1, 1]
                low, s = lplus_s_parts(m, s, l_prev, lambda_l[k] * sigma_max, tau_s)
                if len(self.corrections):  # the CNN sees centred images
                    s = to_shifted_image(self.corrections[k](from_shifted(s), from_shifted(m - l_prev), peak))
                m, l_prev = gradient_dc(low + s, kspace, sampled, steps[k], sensitivities=maps, centered=False), low
            m = final_data_step(m, kspace, sampled, maps)
        return from_shifted(m)  # [B, T, H, W] complex64


def solver_inputs(kspace: torch.Tensor, mask: torch.Tensor, sensitivities=None):
    """The unrolled solvers' inputs in the classical solvers' ``ifftshift``-ed domain, where plain FFTs
    replace centred ones (``baselines.to_shifted``): ``(kspace, sampled, maps, x0)``, k-space
    ``[B, T, H, W]`` (coil k-space ``[B, C, T, H, W]``) zeroed off the mask (unmeasured k-space is never
    read), ``sampled`` ``[B, T, H, W]`` bool, the maps ``[B, C, H, W]`` (None for one coil) and the
    zero-filled cine ``x0 = A^H y`` ``[B, T, H, W]``."""
    if sensitivities is None:
        kspace, sampled = to_shifted(kspace.to(torch.complex64), mask.bool())
        return kspace, sampled, None, torch.fft.ifft2(kspace, norm="ortho")
    kspace, sampled = to_shifted(kspace.to(torch.complex64), mask.bool()[:, None])  # [B, C, T, H, W]
    sampled, maps = sampled[:, 0], to_shifted_image(sensitivities.to(torch.complex64))  # [B, T, H, W], [B, C, H, W]
    return kspace, sampled, maps, sense_adjoint(kspace, maps, sampled, centered=False)


def final_data_step(m: torch.Tensor, kspace: torch.Tensor, sampled: torch.Tensor, maps) -> torch.Tensor:
    """The unrolled solvers' last step, that of the classical ones (shifted domain): hard data
    consistency for one coil (every measured sample, exactly); with coils a full SENSE gradient step
    (never an exact fit: it would amplify the coil noise by the g-factor)."""
    if maps is None:
        return data_consistency(m, kspace, sampled, centered=False)
    return gradient_dc(m, kspace, sampled, 1.0, sensitivities=maps, centered=False)


class ADMMNet(nn.Module):
    """Learned temporal TV + wavelet CS: the ADMM iteration of ``baselines.tv_wavelet`` unrolled
    ``iterations`` times (an ADMM-Net, Yang et al. 2016, with the classical transforms kept), each
    iteration ``k`` with its own learned relative weights ``w_i[k]`` and penalty parameters
    ``rho_i[k]`` (its steps) for the chosen penalties (``baselines.penalties``): temporal
    finite-difference shrinkage (``tv_t``), spatial wavelet shrinkage (``wavelet``), low-rank SVT of
    the Casorati matrix (``nuclear``) and temporal-Fourier shrinkage (``fourier_t``)::

        x   = (A^H A + sum_i rho_i[k] K_i^H K_i)^-1 (A^H y + sum_i K_i^H (rho_i[k] v_i - lambda_i))
        v_i = shrink_i(K_i x + lambda_i / rho_i[k], w_i[k] scale_i(x0) / rho_i[k])
        lambda_i += rho_i[k] (K_i x - v_i)                                    (baselines.admm_iteration)

    from the view-shared cine (or the zero-filled ``x0`` with ``view_sharing=False``), ``v_i = K_i x``
    and ``lambda_i = 0``, then the classical solvers' last data step (``final_data_step``). The image
    update is exact for one coil and ``cg_steps`` preconditioned CG steps with coils (SENSE,
    ``sensitivities``). Weights and rhos are learned as logarithms, starting at ``weights`` ``{name:
    w}`` (tuned on validation cines) and ``rho_i = baselines.RHO w_i`` (``baselines.admm_rhos``): the
    untrained network is exactly ``iterations`` iterations of ``tv_wavelet(..., start=...)``, one coil
    or coils. The weights multiply each cine's own scales (``baselines.penalty_scales``) and the
    rhos are scale-free, so ``c y`` gives ``c x``; any frame count and image size; float32 inside.
    :func:`add_corrections` can put a :class:`SparseCorrection` after each image update
    (:func:`corrected_update`; heads at zero: the same output), as scan-specific adaptation does.

    ``(aliased, kspace, mask[, sensitivities])`` -> complex cine ``[B, T, H, W]``, like :class:`CineReconNet`.
    """

    def __init__(self, iterations: int = 10, weights: dict | None = None, view_sharing: bool = True,
                 circular: bool = True, cg_steps: int = CG_STEPS):
        super().__init__()
        weights = {"tv_t": 0.01, "wavelet": 0.0003} if weights is None else weights
        chosen = {name: float(w) for name, w in weights.items() if w}
        unknown = set(chosen) - set(PENALTIES)
        if iterations < 1 or not chosen or unknown or min(chosen.values()) < 0:
            raise ValueError(f"ADMMNet needs iterations >= 1 and weights >= 0 of penalties among {PENALTIES}, "
                             f"one of them > 0; got {iterations}, {weights}")
        self.iterations, self.view_sharing, self.circular, self.cg_steps = iterations, view_sharing, circular, cg_steps
        self.names = tuple(name for name in PENALTIES if name in chosen)
        self.log_weights = nn.ParameterDict({name: nn.Parameter(torch.full((iterations,), math.log(chosen[name])))
                                             for name in self.names})
        self.log_rhos = nn.ParameterDict(
            {name: nn.Parameter(torch.full((iterations,), math.log(rho))) for name, rho in
             admm_rhos({name: chosen[name] for name in self.names}, RHO).items()})
        self.corrections = nn.ModuleList()  # none; add_corrections gives one SparseCorrection per iteration

    def physics_parameters(self) -> list[nn.Parameter]:
        """The CS numbers (per-iteration log-weights and log-rhos)."""
        return [*self.log_weights.values(), *self.log_rhos.values()]

    def forward(self, aliased, kspace, mask, sensitivities=None):  # [B, T, H, W] complex, complex, float
        with torch.autocast("cuda" if kspace.is_cuda else "cpu", enabled=False):
            kspace, sampled, maps, x0 = solver_inputs(kspace, mask, sensitivities)
            terms = {name: term for name, term in penalties(x0.shape[-2:], self.circular).items() if name in self.names}
            scales = penalty_scales(x0, terms)  # {name: [B]}
            x = initial_cine(kspace, sampled, "view_sharing" if self.view_sharing else "zero_filled", maps)
            splits = {name: term.forward(x) for name, term in terms.items()}
            duals = {name: torch.zeros_like(split) for name, split in splits.items()}
            peak = x0.abs().flatten(1).amax(1) if len(self.corrections) else None  # [B]: the CNNs' scale
            for k in range(self.iterations):
                weights = {name: self.log_weights[name][k].exp() for name in terms}
                rhos = {name: self.log_rhos[name][k].exp() for name in terms}
                update = image_update(kspace, sampled, maps, terms, rhos, self.cg_steps, like=x0)
                if len(self.corrections):
                    update = corrected_update(update, self.corrections[k], peak)
                x, splits, duals = admm_iteration(x, splits, duals, update, terms,
                                                  penalty_thresholds(scales, weights), rhos)
            x = final_data_step(x, kspace, sampled, maps)
        return from_shifted(x)  # [B, T, H, W] complex64


def corrected_update(update, correction: SparseCorrection, scale: torch.Tensor):
    """An :class:`ADMMNet` image update ``(pull, x_previous) -> x`` (``baselines.image_update``, shifted
    domain) followed by ``correction`` of ``x`` given ``x_previous`` (centred images: the CNN's
    neighbourhoods must be the image's), ``scale`` ``[B]`` the cine's scale: ``x + c N([x, x_previous] / c)``."""
    def apply(pull: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:  # [B, T, H, W] complex each
        x = update(pull, previous)
        return to_shifted_image(correction(from_shifted(x), from_shifted(previous), scale))
    return apply


def without_corrections(model: nn.Module) -> list[LSNet | ADMMNet]:
    """The :class:`LSNet` and :class:`ADMMNet` modules of ``model`` with no CNN inside their iterations
    (those :func:`add_corrections` gives one)."""
    return [module for module in model.modules()
            if isinstance(module, (LSNet, ADMMNet)) and not len(module.corrections)]


def add_corrections(model: nn.Module, features: int) -> list[nn.Parameter]:
    """Give every :class:`LSNet` and :class:`ADMMNet` in ``model`` that has no CNN inside its
    iterations a :class:`SparseCorrection` of ``features`` channels per iteration (scan-specific
    adaptation's capacity, docs/adapt.md). Their heads start at zero, so the network's output is
    unchanged, bit for bit. Returns the new parameters (none for ``features=0`` or no such network)."""
    unrolled = without_corrections(model) if features else []
    for module in unrolled:
        device = module.physics_parameters()[0].device
        module.corrections = nn.ModuleList(SparseCorrection(features) for _ in range(module.iterations)).to(device)
    return [parameter for module in unrolled for parameter in module.corrections.parameters()]


class CineReconNet(nn.Module):
    """The reconstruction network: ``(aliased, kspace, mask)`` -> complex cine, all ``[B, T, H, W]``;
    with ``sensitivities`` ``[B, C, H, W]``, ``kspace`` is coil k-space ``[B, C, T, H, W]`` and
    ``aliased`` the coil-combined ``A^H y`` (see the module docstring).

    ``cascades=0``: one denoiser applied to the aliased cine (the study's configuration);
    ``cascades=N``: N unrolled stages ``x <- DC(denoiser_i(x))``, each with its own weights.
    ``prior`` (a module with the same inputs, e.g. :class:`LSNet`) computes the start, else
    ``view_sharing=True`` starts from the k-t view-shared cine (each frame's unsampled k-space
    filled with the temporal mean of the measured lines, ``baselines.view_sharing``; with coils the
    coil-combined view-shared coils) instead of the zero-filled one.
    ``checkpointing=True`` recomputes each cascade's activations in the backward pass (memory
    grows far less than linearly with N).
    """

    def __init__(self, frames: int = 20, init_features: int = 64, cascades: int = 0, dc: str = "hard",
                 dropout: float = 0.3, attention: str = "bottleneck", resnet_features: int = 16,
                 resnet_blocks: int = 2, output: str = "linear", arch: str = "dual_unet",
                 checkpointing: bool = False, view_sharing: bool = False, levels: int = 3,
                 share_weights: bool = False, prior: nn.Module | None = None):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
        if arch == "dccnn" and cascades < 1:
            raise ValueError("arch='dccnn' is a cascade of CNNs with data consistency: use cascades >= 1")
        if output == "sigmoid" and cascades > 0:
            raise ValueError("output='sigmoid' is only for the plain denoiser (cascades=0): "
                             "data consistency makes the output complex")
        self.cascades = cascades
        self.checkpointing = checkpointing
        self.view_sharing = view_sharing
        self.prior = prior
        if arch == "cine_unet" and output != "linear":
            raise ValueError("arch='cine_unet' is residual: output must be 'linear'")
        self.stages = max(cascades, 1)

        def denoiser():
            if arch == "dual_unet":
                return DualUNetDenoiser(frames, init_features, dropout, attention, resnet_features, resnet_blocks,
                                        output)
            if arch == "cine_unet":
                return DualCineDenoiser(init_features, levels, dropout, attention, resnet_features, resnet_blocks)
            return DCCNNDenoiser(init_features)

        self.denoisers = nn.ModuleList(denoiser() for _ in range(1 if share_weights else self.stages))
        self.dcs = nn.ModuleList(DataConsistency(dc) for _ in range(cascades))

    def _stage(self, i: int, image, kspace, mask, sensitivities=None):
        image = self.denoisers[min(i, len(self.denoisers) - 1)](image)
        return self.dcs[i](image, kspace, mask, sensitivities) if self.cascades else image

    def forward(self, aliased, kspace, mask, sensitivities=None):  # [B, T, H, W] complex, complex, float
        if self.prior is not None:
            image = self.prior(aliased, kspace, mask, sensitivities)  # [B, T, H, W] complex
        else:  # [B, T, H, W] complex
            image = view_shared_image(kspace, mask, sensitivities) if self.view_sharing else aliased
        for i in range(self.stages):
            if self.checkpointing and self.training:
                image = checkpoint(self._stage, i, image, kspace, mask, sensitivities, use_reentrant=False)
            else:
                image = self._stage(i, image, kspace, mask, sensitivities)
        return image  # [B, T, H, W] complex64


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def describe_parameters(model: CineReconNet | LSNet | ADMMNet) -> str:
    """One line per component with its parameter count."""
    if isinstance(model, ADMMNet):
        return (f"total {count_parameters(model)} parameters: learned ADMM ({', '.join(model.names)}), "
                f"{model.iterations} iterations, each with a relative weight and a rho per penalty")
    if isinstance(model, LSNet):
        cnn = (f", a sparse-part CNN of {count_parameters(model.corrections[0])} parameters per iteration"
               if len(model.corrections) else ", no CNN")
        return (f"total {count_parameters(model)} parameters: learned L+S, {model.iterations} iterations, "
                f"each with 2 relative thresholds and a step{cnn}")
    first = model.denoisers[0]
    parts = [f"total {count_parameters(model) / 1e6:.3f} M parameters in {len(model.denoisers)} denoiser(s) "
             f"for {model.stages} stage(s)"]
    if model.prior is not None:
        parts.append(f"started by {describe_parameters(model.prior)}")
    if isinstance(first, DualUNetDenoiser):
        parts.append(f"per denoiser: 2 x UNet2D {count_parameters(first.unet_real) / 1e6:.3f} M + "
                     f"TemporalResNet3D {count_parameters(first.temporal) / 1e6:.3f} M")
    elif isinstance(first, DualCineDenoiser):
        parts.append(f"per denoiser: 2 x CineUNet {count_parameters(first.unet_real) / 1e6:.3f} M + "
                     f"SpaceTimeResNet {count_parameters(first.temporal) / 1e6:.3f} M")
    else:
        parts.append(f"per denoiser: DC-CNN 3D {count_parameters(first) / 1e6:.3f} M")
    return "; ".join(parts)


def build_model(config: dict) -> CineReconNet | LSNet | ADMMNet:
    """The network a run's config describes (``in_channels``: the dual UNet's window of frames; every
    network takes cines of any frame count): ``arch='lsnet'``
    is the learned L+S alone, ``arch='admmnet'`` the learned ADMM alone; the other archs are cascades,
    started by one of them when ``prior`` names it."""
    unrolled = {"lsnet": learned_lplus_s, "admmnet": learned_admm}
    if config["arch"] in unrolled:
        return unrolled[config["arch"]](config)
    prior = unrolled[config["prior"]](config) if config.get("prior") in unrolled else None
    return cascade_network(config, config["arch"], prior)


def learned_lplus_s(config: dict) -> LSNet:
    """The :class:`LSNet` of ``config`` (``iterations``, ``lambda_l``, ``lambda_s``, ``sparse_features``)."""
    return LSNet(config["iterations"], config["lambda_l"], config["lambda_s"], config["sparse_features"],
                 config["view_sharing"])


def learned_admm(config: dict) -> ADMMNet:
    """The :class:`ADMMNet` of ``config`` (``iterations``, ``view_sharing`` and the initial weights
    ``lambda_t``, ``lambda_w``, ``lambda_r``, ``lambda_f``: 0 leaves a penalty out)."""
    return ADMMNet(config["iterations"], {name: config[key] for key, name in ADMM_WEIGHTS.items()},
                   config["view_sharing"])


def cascade_network(config: dict, arch: str, prior: nn.Module | None = None) -> CineReconNet:
    """The :class:`CineReconNet` of ``config`` with denoisers ``arch``, started by ``prior`` if given."""
    return CineReconNet(frames=config["in_channels"], init_features=config["init_features"],
                        cascades=config["cascades"], dc=config["dc"], dropout=config["dropout"],
                        attention=config["attention"], resnet_features=config["resnet_features"],
                        resnet_blocks=config["resnet_blocks"], output=config["output"],
                        arch=arch, checkpointing=config.get("checkpointing", False),
                        view_sharing=config.get("view_sharing", False), levels=config.get("levels", 3),
                        share_weights=config.get("share_weights", False), prior=prior)


def size_multiple(config: dict) -> int:
    """Image heights and widths the network of ``config`` takes must be multiples of this."""
    if config["arch"] == "dual_unet":
        return 2 ** UNET_LEVELS
    if config["arch"] == "cine_unet":
        return 2 ** config.get("levels", 3)
    return 1


def smallest_side(config: dict) -> int:
    """The smallest image height and width the network of ``config`` takes: its pooling multiple, and
    twice that for the dual UNet, whose bottleneck BatchNorm needs more than one value per channel."""
    multiple = size_multiple(config)
    return 2 * multiple if config["arch"] == "dual_unet" else multiple


def acts_locally(model: nn.Module) -> bool:
    """Whether every output pixel depends only on nearby pixels of the input (CNNs, data consistency
    along the phase-encoding direction), so a band of columns is a problem of its own; an
    :class:`LSNet`'s singular-value thresholding couples every pixel, and so do an :class:`ADMMNet`'s
    wavelet and its image update."""
    return not any(isinstance(module, (LSNet, ADMMNet)) for module in model.modules())


PHYSICS_LR = 100.0  # the CS numbers of an LSNet or ADMMNet learn at this multiple of the learning rate, no weight decay


def parameter_groups(model: nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """Adam's parameter groups: the CNN weights at ``lr`` with ``weight_decay``, and an LSNet's or
    ADMMNet's per-iteration log-thresholds and steps (``physics_parameters``) at ``PHYSICS_LR * lr``
    without weight decay (which would pull every threshold towards 1 and every step towards 0)."""
    physics = [p for module in model.modules() if isinstance(module, (LSNet, ADMMNet))
               for p in module.physics_parameters()]
    chosen = {id(p) for p in physics}
    weights = [p for p in model.parameters() if id(p) not in chosen]
    groups = [{"params": weights, "lr": lr, "weight_decay": weight_decay}]
    return groups + ([{"params": physics, "lr": PHYSICS_LR * lr, "weight_decay": 0.0}] if physics else [])


def use_channels_last(model: nn.Module) -> nn.Module:
    """Store 2D convolution weights as NHWC and 3D ones as NDHWC (faster on cuDNN and oneDNN)."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            module.to(memory_format=torch.channels_last)
        elif isinstance(module, nn.Conv3d):
            module.to(memory_format=torch.channels_last_3d)
    return model


if __name__ == "__main__":
    from cli import not_a_command

    not_a_command("models.py")
