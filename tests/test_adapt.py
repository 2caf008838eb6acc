import torch

from adapt import adapt, center_block, crop_columns, row_mask, split_rows
from models import CineReconNet
from sampling import fft2c, undersample, variable_density_mask

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
