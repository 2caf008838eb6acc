"""engine.py: the mixed-precision rule (CPU bf16 only where the CPU computes it natively), the one loss,
the training batches over several image sizes."""
import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

import data
import engine
from cli import UserError
from data import CineDataset, SizeGroups

CPU = torch.device("cpu")


def test_cpu_without_native_bf16_computes_in_float32(monkeypatch):
    monkeypatch.setattr(engine, "cpu_flags", lambda: {"avx512f", "avx512bw", "avx512_vnni", "avx2"})
    dtype, reason = engine.choose_autocast("auto", CPU)
    assert dtype is None and "no native bf16" in reason


@pytest.mark.parametrize("flag", ["avx512_bf16", "amx_bf16"])
def test_cpu_with_native_bf16_uses_it(monkeypatch, flag):
    monkeypatch.setattr(engine, "cpu_flags", lambda: {"avx512f", flag})
    dtype, reason = engine.choose_autocast("auto", CPU)
    assert dtype == torch.bfloat16 and flag in reason


def test_cpu_flags_come_from_proc_cpuinfo(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test Xeon\nflags\t\t: fpu avx512f avx512_bf16\n\n"
                       "processor\t: 1\nmodel name\t: Test Xeon\nflags\t\t: fpu avx512f avx512_bf16\n")
    monkeypatch.setattr(engine, "CPUINFO", cpuinfo)
    assert engine.cpu_model() == "Test Xeon" and engine.cpu_flags() == {"fpu", "avx512f", "avx512_bf16"}
    assert engine.native_bf16_flags() == ["avx512_bf16"]


def test_explicit_amp_and_fp16_on_a_cpu():
    assert engine.choose_autocast("none", CPU)[0] is None
    assert engine.choose_autocast("bf16", CPU)[0] == torch.bfloat16
    with pytest.raises(UserError, match="--amp=fp16 needs a CUDA device"):
        engine.choose_autocast("fp16", CPU)


def test_one_loss_for_training_and_per_cine_scores():
    recon, target = torch.randn(3, 2, 8, 8, dtype=torch.complex64), torch.randn(3, 2, 8, 8, dtype=torch.complex64)
    for kind in ("L1", "L2"):
        per_cine = engine.reconstruction_loss(recon, target, kind, per_cine=True)
        assert per_cine.shape == (3,)
        torch.testing.assert_close(per_cine.mean(), engine.reconstruction_loss(recon, target, kind))
    torch.testing.assert_close(engine.reconstruction_loss(recon, target, "L2"),
                               (torch.view_as_real(recon - target) ** 2).mean())


def test_heart_box_loss_is_the_loss_over_each_cines_box():
    recon, target = torch.randn(2, 3, 8, 10, dtype=torch.complex64), torch.randn(2, 3, 8, 10, dtype=torch.complex64)
    boxes = torch.tensor([[1, 5, 2, 9], [0, 8, 0, 10]])
    for kind in ("L1", "L2"):
        error = torch.view_as_real(recon - target).abs() ** (2 if kind == "L2" else 1)  # [B, T, H, W, 2]
        expected = torch.cat([error[0, :, 1:5, 2:9].flatten(), error[1].flatten()]).mean()
        torch.testing.assert_close(engine.reconstruction_loss(recon, target, kind, boxes=boxes), expected)
        whole = torch.tensor([[0, 8, 0, 10]] * 2)
        torch.testing.assert_close(engine.reconstruction_loss(recon, target, kind, boxes=whole),
                                   engine.reconstruction_loss(recon, target, kind))


def test_heart_weight_adds_the_box_loss_to_a_training_step_and_needs_boxes():
    from data import CineDataset

    images = torch.rand(2, 2, 16, 16).to(torch.complex64)
    dataset = CineDataset(images, np.arange(2), center_lines=2, boxes=np.array([[2, 14, 3, 13], [0, 11, 5, 16]]))
    batch = dataset.batch([1, 0])
    assert batch["box"].tolist() == [[0, 11, 5, 16], [2, 14, 3, 13]]
    model = torch.nn.Linear(1, 1)  # a stand-in network: scales the zero-filled image by its weight
    forward = lambda aliased, kspace, mask: aliased * model.weight[0, 0]  # noqa: E731
    losses = {}
    for weight in (None, 2.0):
        model.weight.data.fill_(0.5)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        config = {"loss_tpe": "L1", "grad_clip": 0, "heart_weight": weight}
        losses[weight] = float(engine.train_step(forward, optimizer, scheduler, scaler, batch, list(model.parameters()),
                                                 config, None))
    recon = batch["aliased"] * 0.5
    box_loss = engine.reconstruction_loss(recon, batch["target"], "L1", boxes=batch["box"])
    assert losses[2.0] == pytest.approx(losses[None] + 2.0 * float(box_loss), rel=1e-5)
    with pytest.raises(UserError, match="--heart_weight=1.0: needs heart boxes"):
        data.make_datasets(np.ones((7, 2, 16, 16), np.float32), {"heart_weight": 1.0, "seed": 0}, CPU, {})


@pytest.mark.parametrize("world", [1, 2])
def test_one_size_group_batches_as_distributed_sampler_does(world):
    for rank in range(world):
        sampler = DistributedSampler(range(13), num_replicas=world, rank=rank, shuffle=True, seed=7)
        sampler.set_epoch(3)
        expected = torch.tensor(list(sampler)).split(4)
        got = data.size_batches([13], 4, seed=7, epoch=3, rank=rank, world=world)
        assert [b.tolist() for b in got] == [b.tolist() for b in expected]


def test_size_batches_cover_every_row_once_and_never_mix_sizes():
    counts = [19, 8, 5]
    bounds = np.cumsum([0] + counts)
    batches = data.size_batches(counts, 4, seed=0, epoch=2)
    rows = torch.cat(batches).tolist()
    assert sorted(rows) == list(range(sum(counts)))
    groups = [set((np.searchsorted(bounds, b.numpy(), side="right") - 1).tolist()) for b in batches]
    assert all(len(group) == 1 for group in groups), "every batch holds one size"
    sequence = [group.pop() for group in groups]
    assert sequence != sorted(sequence), "the sizes are interleaved over the epoch, not in blocks"
    again = data.size_batches(counts, 4, seed=0, epoch=2)
    assert [b.tolist() for b in again] == [b.tolist() for b in batches]
    other = data.size_batches(counts, 4, seed=0, epoch=3)
    assert [b.tolist() for b in other] != [b.tolist() for b in batches]


def test_size_counts_keep_the_pixels_of_an_epoch():
    counts = data.size_counts(57, 64, [64, 96, 128])
    assert counts == [19, 8, 5]
    pixels = sum(count * size ** 2 for count, size in zip(counts, [64, 96, 128]))
    assert abs(pixels / (57 * 64 ** 2) - 1) < 0.05
    assert data.size_counts(57, 64, [64]) == [57]


def test_size_groups_batch_from_their_own_size():
    generator = torch.Generator()
    small = CineDataset(torch.rand(3, 2, 16, 16), np.arange(3), mask_mode="random", train=True, generator=generator,
                        center_lines=2)
    large = CineDataset(torch.rand(2, 2, 32, 32), np.arange(2), mask_mode="random", train=True, generator=generator,
                        center_lines=4)
    groups = SizeGroups([small, large])
    assert len(groups) == 5 and groups.generator is generator
    batch = groups.batch(torch.tensor([4, 3]))
    assert batch["target"].shape == (2, 2, 32, 32)
    torch.testing.assert_close(batch["target"], large.images[[1, 0]])
    with pytest.raises(ValueError, match="span two size groups"):
        groups.batch(torch.tensor([2, 3]))
    with pytest.raises(ValueError, match="new cines"):
        groups.fill([torch.rand(3, 2, 16, 16), torch.rand(3, 2, 32, 32)])
