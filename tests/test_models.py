import pytest
import torch

from models import (CineReconNet, DataConsistency, TemporalResNet3D, UNet2D, count_parameters,
                    use_channels_last)
from sampling import fft2c, undersample, variable_density_mask

T, H, W = 4, 32, 32


def example(batch=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    target = torch.rand((batch, T, H, W), generator=generator)
    mask = torch.from_numpy(variable_density_mask((T, H, W), acceleration=4, center_lines=2, seed=seed))
    mask = mask.expand(batch, -1, -1, -1)
    aliased, kspace = undersample(target, mask)
    return aliased.to(torch.complex64), kspace.to(torch.complex64), mask, target


def small_net(**kwargs):
    torch.manual_seed(0)
    return CineReconNet(frames=T, init_features=4, resnet_features=4, resnet_blocks=1, **kwargs)


def randomise_heads(model):
    """Give zero-initialised output layers random weights, as after some training."""
    torch.manual_seed(1)
    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Conv3d)):
            torch.nn.init.normal_(module.weight, std=0.1)
    return model


@pytest.mark.parametrize("cascades", [0, 1, 3])
def test_forward_shapes(cascades):
    aliased, kspace, mask, _ = example()
    out = small_net(cascades=cascades)(aliased, kspace, mask)
    assert out.shape == (2, T, H, W) and out.dtype == torch.complex64


def test_each_cascade_has_its_own_weights():
    assert count_parameters(small_net(cascades=3)) == pytest.approx(3 * count_parameters(small_net(cascades=1)), rel=1e-3)


def test_untrained_residual_network_is_the_identity():
    aliased, kspace, mask, _ = example()
    for cascades in (0, 2):
        torch.testing.assert_close(small_net(cascades=cascades)(aliased, kspace, mask), aliased)


def test_view_sharing_start_is_the_view_shared_cine():
    from baselines import view_sharing
    aliased, kspace, mask, _ = example()
    out = small_net(cascades=1, view_sharing=True)(aliased, kspace, mask)
    torch.testing.assert_close(out, view_sharing(kspace, mask), atol=1e-5, rtol=0)


def test_hard_dc_keeps_sampled_kspace_exactly():
    aliased, kspace, mask, _ = example()
    out = randomise_heads(small_net(cascades=2, dc="hard"))(aliased, kspace, mask)
    assert not torch.allclose(out, aliased, atol=1e-3), "the network must change the image"
    sampled = fft2c(out) * mask
    torch.testing.assert_close(sampled, kspace, atol=1e-5, rtol=0)


def test_soft_dc_lambda_stays_non_negative_and_blends():
    dc = DataConsistency("soft", initial_lambda=0.5)
    image = torch.randn(1, T, H, W, dtype=torch.complex64)
    _, kspace, mask, _ = example(batch=1)
    out = dc(image, kspace, mask)
    blend = (fft2c(image) + dc.weight * kspace) / (1 + dc.weight)
    torch.testing.assert_close(fft2c(out) * mask, (blend * mask).detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(fft2c(out) * (1 - mask), fft2c(image) * (1 - mask), atol=1e-5, rtol=0)
    optimizer = torch.optim.SGD(dc.parameters(), lr=100.0)
    for _ in range(5):  # push lambda hard towards negative values
        optimizer.zero_grad()
        dc.weight.backward()
        optimizer.step()
    assert dc.weight.item() >= 0


def test_temporal_resnet_mixes_neighbouring_frames():
    torch.manual_seed(0)
    net = TemporalResNet3D(features=4, blocks=1).eval()
    x = torch.randn(1, 2, 8, 16, 16)
    y = x.clone()
    y[:, :, 4] += 1.0  # perturb frame 4 only
    change = (net(y) - net(x)).abs().amax(dim=(0, 1, 3, 4))  # [T]
    assert change[3] > 1e-4 and change[5] > 1e-4, "neighbouring frames must respond"
    assert change[0] == 0, "three 3-frame convolutions reach +-3 frames, frame 0 is 4 away"


def test_unet_attention_options_and_dropout():
    sizes = {a: count_parameters(UNet2D(T, T, 4, attention=a)) for a in ("none", "bottleneck", "all")}
    assert sizes["none"] < sizes["bottleneck"] < sizes["all"]
    x = torch.randn(2, T, H, W)
    with pytest.raises(ValueError, match="attention"):
        UNet2D(T, T, 4, attention="everywhere")
    torch.manual_seed(0)
    noisy = UNet2D(T, T, 4, dropout=0.3).train()
    assert not torch.equal(noisy(x), noisy(x))
    plain = UNet2D(T, T, 4, dropout=0.0).train()
    torch.manual_seed(0)
    first = plain(x)
    torch.manual_seed(1)
    assert torch.allclose(first, plain(x))


def test_unet_uses_leaky_relu_0_1():
    slopes = {m.negative_slope for m in UNet2D(T, T, 4).modules() if isinstance(m, torch.nn.LeakyReLU)}
    assert slopes == {0.1}


def test_sigmoid_output_is_a_magnitude_and_only_without_cascades():
    aliased, kspace, mask, _ = example()
    out = small_net(output="sigmoid")(aliased, kspace, mask)
    assert (out.real >= 0).all() and (out.real <= 1).all()
    with pytest.raises(ValueError, match="cascades=0"):
        small_net(cascades=1, output="sigmoid")


def test_dccnn_cascade():
    aliased, kspace, mask, _ = example()
    net = CineReconNet(frames=T, init_features=8, cascades=2, arch="dccnn")
    out = net(aliased, kspace, mask)
    torch.testing.assert_close(fft2c(out) * mask, kspace, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="cascades >= 1"):
        CineReconNet(frames=T, arch="dccnn", cascades=0)


def loss_and_grads(model, batch, autocast_dtype=None):
    aliased, kspace, mask, target = batch
    model.zero_grad()
    with torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
        out = model(aliased, kspace, mask)
    loss = torch.view_as_real(out - target).pow(2).mean()
    loss.backward()
    return loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])


def test_activation_checkpointing_gives_the_same_gradients():
    batch = example()
    plain = randomise_heads(small_net(cascades=3, dropout=0.3)).train()
    checkpointed = randomise_heads(small_net(cascades=3, dropout=0.3, checkpointing=True)).train()
    checkpointed.load_state_dict(plain.state_dict())
    torch.manual_seed(5)
    loss_a, grad_a = loss_and_grads(plain, batch)
    torch.manual_seed(5)
    loss_b, grad_b = loss_and_grads(checkpointed, batch)
    torch.testing.assert_close(loss_a, loss_b)
    torch.testing.assert_close(grad_a, grad_b, atol=1e-6, rtol=1e-4)


def test_channels_last_matches_and_bf16_autocast_is_close():
    batch = example()
    reference = randomise_heads(small_net(cascades=1, dropout=0.0)).train()
    fast = use_channels_last(randomise_heads(small_net(cascades=1, dropout=0.0)).train())
    fast.load_state_dict(reference.state_dict())
    loss_a, grad_a = loss_and_grads(reference, batch)
    loss_b, grad_b = loss_and_grads(fast, batch)
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=0)
    torch.testing.assert_close(grad_b, grad_a, rtol=1e-3, atol=1e-6)
    loss_c, grad_c = loss_and_grads(fast, batch, torch.bfloat16)
    assert abs(loss_c - loss_a) / loss_a < 2e-2
    assert torch.nn.functional.cosine_similarity(grad_c, grad_a, dim=0) > 0.99


def cine_net(frames=T, **kwargs):
    torch.manual_seed(0)
    return CineReconNet(frames=frames, arch="cine_unet", init_features=4, resnet_features=4, resnet_blocks=1,
                        levels=2, **kwargs)


def cine_example(frames, batch=1):
    generator = torch.Generator().manual_seed(frames)
    target = torch.randn((batch, frames, H, W), generator=generator, dtype=torch.complex64)
    mask = torch.from_numpy(variable_density_mask((frames, H, W), acceleration=4, center_lines=2, seed=frames))
    aliased, kspace = undersample(target, mask.expand(batch, -1, -1, -1))
    return aliased, kspace, mask.expand(batch, -1, -1, -1)


def test_cine_unet_reconstructs_any_frame_count_with_one_set_of_weights():
    net = randomise_heads(cine_net(frames=8, cascades=2))
    for frames in (8, 12, 20):
        aliased, kspace, mask = cine_example(frames)
        out = net(aliased, kspace, mask)
        assert out.shape == (1, frames, H, W) and out.dtype == torch.complex64
        torch.testing.assert_close(fft2c(out) * mask, kspace, atol=1e-5, rtol=0)


def test_cine_unet_is_the_identity_untrained_and_mixes_time():
    aliased, kspace, mask = cine_example(8)
    torch.testing.assert_close(cine_net(cascades=0)(aliased, kspace, mask), aliased)
    denoiser = randomise_heads(cine_net(cascades=0)).denoisers[0].eval()
    x = torch.randn(1, 8, H, W, dtype=torch.complex64)
    y = x.clone()
    y[:, 4] += 1.0  # perturb frame 4 only
    change = (denoiser(y) - denoiser(x)).abs().amax(dim=(0, 2, 3))  # [T]
    assert change[3] > 1e-4 and change[5] > 1e-4, "neighbouring frames respond"
    assert (change > 0).all(), "the deepest path reaches every frame of the cine"


def test_cine_unet_is_equivariant_to_a_circular_shift_in_time():
    net = randomise_heads(cine_net(cascades=0)).eval()
    x = torch.randn(1, 8, H, W, dtype=torch.complex64)
    shifted = net(x.roll(3, 1), None, None)
    torch.testing.assert_close(shifted, net(x, None, None).roll(3, 1), atol=1e-5, rtol=1e-4)


def test_shared_weights_reuse_one_denoiser_for_every_cascade():
    shared, separate = cine_net(cascades=4, share_weights=True), cine_net(cascades=4)
    assert len(shared.denoisers) == 1 and len(separate.denoisers) == 4
    assert count_parameters(separate) == 4 * count_parameters(shared)
    aliased, kspace, mask = cine_example(T)
    assert shared(aliased, kspace, mask).shape == (1, T, H, W)
