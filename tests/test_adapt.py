import pytest
import torch

from adapt import adapt, center_block, crop_columns, row_mask, split_rows
from cli import UserError
from models import ADMMNet, CineReconNet, LSNet, add_corrections
from phantom import make_coil_dataset
from reconstruct import check_adaptation
from reconstruct import main as reconstruct_main
from sampling import fft2c, ifft2c, sense_adjoint, undersample, variable_density_mask

T, H, W = 6, 32, 48


def scan(seed=0):
    generator = torch.Generator().manual_seed(seed)
    target = torch.randn((1, T, H, W), generator=generator, dtype=torch.complex64)
    mask = torch.from_numpy(variable_density_mask((T, H, W), acceleration=4, center_lines=4, seed=seed))[None]
    _, kspace = undersample(target, mask)
    return kspace, mask


def tiny_model():
    torch.manual_seed(0)
    model = CineReconNet(frames=T, arch="cine_unet", init_features=4, resnet_features=4, resnet_blocks=1, levels=2,
                         cascades=2, view_sharing=True)
    for module in model.modules():  # as after training: the heads are no longer zero
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.normal_(module.weight, std=0.05)
    return model


def run(kspace, mask, seed=0, steps=4):
    return adapt(tiny_model(), kspace, mask, steps=steps, lr=1e-3, crop=16, check_every=2, seed=seed,
                 log=lambda *a: None)


def test_column_crop_is_the_exact_kspace_of_the_cropped_cine():
    generator = torch.Generator().manual_seed(1)
    image = torch.randn((2, T, H, W), generator=generator, dtype=torch.complex64)
    mask = torch.from_numpy(variable_density_mask((T, H, W), acceleration=3, center_lines=2, seed=1))
    cropped = crop_columns(fft2c(image) * mask, 20, 16)
    torch.testing.assert_close(cropped, fft2c(image[..., 20:36]) * mask[..., :16], atol=1e-5, rtol=0)


def test_splits_are_subsets_outside_the_centre_block():
    _, mask = scan()
    rows = row_mask(mask)
    center = center_block(rows)
    assert center.stop - center.start == 4
    picked = split_rows(rows, 0.4, center, torch.Generator().manual_seed(0))
    assert not (picked & ~rows).any() and not picked[..., center].any()
    outside = rows.clone()
    outside[..., center] = False
    torch.testing.assert_close(picked.sum(-1).float(), (0.4 * outside.sum(-1)).round())


def test_adaptation_is_reproducible_by_seed():
    kspace, mask = scan()
    first, info = run(kspace, mask, seed=3)
    again, _ = run(kspace, mask, seed=3)
    other, _ = run(kspace, mask, seed=4)
    weights = [torch.cat([p.flatten() for p in m.parameters()]) for m in (first, again, other)]
    assert info["steps"] == 4 and info["columns"] == 16
    torch.testing.assert_close(weights[0], weights[1], atol=0, rtol=0)
    assert not torch.equal(weights[0], weights[2])
    assert not torch.equal(weights[0], torch.cat([p.flatten() for p in tiny_model().parameters()]))


def test_adaptation_never_reads_unmeasured_kspace():
    kspace, mask = scan()
    garbage = torch.randn(kspace.shape, dtype=torch.complex64) * (1 - mask)
    clean, _ = run(kspace, mask)
    polluted, _ = run(kspace + garbage, mask)
    for a, b in zip(clean.parameters(), polluted.parameters()):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_adapted_reconstruction_keeps_every_measured_sample():
    kspace, mask = scan()
    model, _ = run(kspace, mask)
    with torch.no_grad():
        out = model(torch.fft.ifft2(kspace), kspace, mask)
    torch.testing.assert_close(fft2c(out) * mask, kspace, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- CNN capacity (--adapt_features)
def unrolled(kind):
    """A tiny learned L+S or ADMM with its numbers moved off their initial values, as after training."""
    net = LSNet(iterations=2) if kind == "lsnet" else ADMMNet(iterations=2)
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return net


def coil_scan(coils):
    """``(kspace, mask, maps)``: a 32 px cine of 6 frames at 4x, one coil (maps None) or ``coils`` coils
    (coil k-space ``[1, C, T, H, W]``, maps ``[1, C, H, W]``)."""
    data = make_coil_dataset(1, frames=6, size=32, seed=3, coils=max(coils, 1))
    mask = torch.from_numpy(variable_density_mask((6, 32, 32), acceleration=4, center_lines=2, seed=2))[None]
    kspace, maps = torch.from_numpy(data["kspace"]) * mask[:, None], torch.from_numpy(data["sensitivities"])
    return (kspace, mask, maps) if coils else (fft2c(torch.from_numpy(data["reference"])) * mask, mask, None)


def cnn_parameters(features):
    """The weights and biases of one SparseCorrection: 3x3 convolution 4 -> F, 3-frame convolution F -> F,
    3x3 convolution F -> F, 1x1 head F -> 2."""
    f = features
    return (9 * 4 * f + f) + (3 * f * f + f) + (9 * f * f + f) + (2 * f + 2)


def reconstruct_with(net, kspace, mask, maps):
    aliased = ifft2c(kspace) if maps is None else sense_adjoint(kspace, maps, mask)
    with torch.no_grad():
        return net(aliased, kspace, mask, sensitivities=maps)


@pytest.mark.parametrize("kind", ["lsnet", "admmnet"])
@pytest.mark.parametrize("coils", [0, 2])
def test_added_cnns_start_as_the_checkpoint_bit_for_bit(kind, coils):
    net, scan_data = unrolled(kind), coil_scan(coils)
    before = reconstruct_with(net, *scan_data)
    added = add_corrections(net, 4)
    assert len(net.corrections) == 2 and sum(p.numel() for p in added) == 2 * cnn_parameters(4)
    numbers = net.iterations * (3 if kind == "lsnet" else 4)  # thresholds and step; 2 weights and 2 rhos
    assert sum(p.numel() for p in net.parameters()) == numbers + 2 * cnn_parameters(4)
    assert torch.equal(reconstruct_with(net, *scan_data), before)
    assert add_corrections(net, 4) == []  # a network with CNNs inside keeps them


@pytest.mark.parametrize("kind", ["lsnet", "admmnet"])
def test_added_cnns_get_gradients(kind):
    net, (kspace, mask, _) = unrolled(kind), coil_scan(0)
    added = add_corrections(net, 4)
    optimizer = torch.optim.Adam(added, lr=1e-2)
    for _ in range(2):  # the zero head passes no gradient back at first; after one step every layer learns
        optimizer.zero_grad()
        out = net(ifft2c(kspace), kspace, mask)
        (out - 1).abs().sum().backward()
        optimizer.step()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in added)
    # every layer of the last CNN learns (an LSNet's first sparse part and residual are 0: there only the biases)
    assert all(p.grad.abs().sum() > 0 for p in net.corrections[-1].parameters())
    assert all(p.grad.abs().sum() > 0 for correction in net.corrections for p in correction.net[-1].parameters())


@pytest.mark.parametrize("kind,coils,lr", [("lsnet", 0, 1e-5), ("admmnet", 2, 1e-5), ("lsnet", 2, 10.0)])
def test_adaptation_with_cnns_never_raises_the_held_out_error(kind, coils, lr):
    net, (kspace, mask, maps) = unrolled(kind), coil_scan(coils)
    adapted, info = adapt(net, kspace, mask, steps=4, lr=lr, check_every=2, features=4, sensitivities=maps,
                          log=lambda *a: None)
    assert info["added_parameters"] == 2 * cnn_parameters(4) and len(net.corrections) == 0  # only the copy has them
    assert info["held_out_error_after"] <= info["held_out_error_before"]
    assert (info["kept_step"] > 0) == (lr < 1)  # a small step helps these scans; a huge one diverges
    if info["kept_step"]:
        assert info["held_out_error_after"] < info["held_out_error_before"] and len(adapted.corrections) == 2
        assert any(p.abs().sum() > 0 for p in adapted.corrections[0].net[-1].parameters())  # the CNN learned
    else:  # nothing helped: the checkpoint itself, without the CNNs
        assert len(adapted.corrections) == 0
        assert torch.equal(reconstruct_with(adapted, kspace, mask, maps), reconstruct_with(net, kspace, mask, maps))
    out = reconstruct_with(adapted, kspace, mask, maps)
    if maps is None:  # every measured sample kept
        torch.testing.assert_close(fft2c(out) * mask, kspace, atol=1e-5 * kspace.abs().max(), rtol=0)


def test_cnns_need_an_unrolled_network_without_them_and_a_count_of_channels():
    check_adaptation(10, 1e-5, 0, 1, 32, 8, unrolled("admmnet"))  # accepted
    with pytest.raises(UserError, match="--adapt_features=-1: must be >= 0"):
        check_adaptation(10, 1e-5, 0, 1, 32, -1, unrolled("lsnet"))
    with pytest.raises(UserError, match="--adapt_features=8: the network has no learned L.S or ADMM without CNNs"):
        check_adaptation(10, 1e-5, 16, 4, 32, 8, tiny_model())
    with_cnns = LSNet(iterations=2, features=4)
    with pytest.raises(UserError, match="--adapt_features=8: the network has no learned L.S or ADMM without CNNs"):
        check_adaptation(10, 1e-5, 0, 1, 32, 8, with_cnns)
    for text in ("-1", "abc", "2.5"):  # refused while the command line is read, before any file is opened
        with pytest.raises(UserError, match=f"--adapt_features={text}: expected an integer >= 0"):
            reconstruct_main(["--checkpoint=none.pt", "--input=none.npz", "--out=none.npz", "--adapt=5",
                              f"--adapt_features={text}"])
