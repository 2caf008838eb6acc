"""engine.py: the mixed-precision rule (CPU bf16 only where the CPU computes it natively), the one loss."""
import pytest
import torch

import engine
from cli import UserError

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
