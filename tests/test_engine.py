"""engine.py: the mixed-precision rule (CPU bf16 only where it is faster), the one loss."""
import json

import pytest
import torch

import engine
from cli import UserError

CPU = torch.device("cpu")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return tmp_path / "cinerecon" / "cpu_autocast.json"


def test_cpu_without_native_bf16_computes_in_float32(monkeypatch, cache):
    monkeypatch.setattr(engine, "cpu_flags", lambda: {"avx512f", "avx512bw", "avx2"})
    monkeypatch.setattr(engine, "time_cpu_step", lambda dtype: pytest.fail("no timing without native bf16"))
    dtype, reason = engine.choose_autocast("auto", CPU)
    assert dtype is None and "no native bf16" in reason and not cache.exists()


@pytest.mark.parametrize("seconds, expected", [({None: 2.0, torch.bfloat16: 1.0}, torch.bfloat16),
                                               ({None: 1.0, torch.bfloat16: 1.5}, None)])
def test_native_bf16_is_used_only_where_a_timed_step_is_faster(monkeypatch, cache, seconds, expected):
    monkeypatch.setattr(engine, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    monkeypatch.setattr(engine, "cpu_model", lambda: "Test CPU")
    calls = []
    monkeypatch.setattr(engine, "time_cpu_step", lambda dtype: calls.append(dtype) or seconds[dtype])
    dtype, reason = engine.choose_autocast("auto", CPU)
    assert dtype == expected and "avx512_bf16" in reason and "measured" in reason
    assert json.loads(cache.read_text()) == {f"Test CPU; torch {torch.__version__}": {
        "float32": seconds[None], "bf16": seconds[torch.bfloat16]}}
    again, reason = engine.choose_autocast("auto", CPU)
    assert again == expected and "cached" in reason and len(calls) == 2, "measured once per CPU model"


def test_explicit_amp_and_fp16_on_a_cpu():
    assert engine.choose_autocast("none", CPU)[0] is None
    assert engine.choose_autocast("bf16", CPU)[0] == torch.bfloat16
    with pytest.raises(UserError, match="--amp=fp16 needs a CUDA device"):
        engine.choose_autocast("fp16", CPU)


def test_timing_step_leaves_the_random_state_alone(one_thread):
    state = torch.get_rng_state()
    assert engine.time_cpu_step(None, repeats=1) > 0
    assert torch.equal(torch.get_rng_state(), state)


def test_one_loss_for_training_and_per_cine_scores():
    recon, target = torch.randn(3, 2, 8, 8, dtype=torch.complex64), torch.randn(3, 2, 8, 8, dtype=torch.complex64)
    for kind in ("L1", "L2"):
        per_cine = engine.reconstruction_loss(recon, target, kind, per_cine=True)
        assert per_cine.shape == (3,)
        torch.testing.assert_close(per_cine.mean(), engine.reconstruction_loss(recon, target, kind))
    torch.testing.assert_close(engine.reconstruction_loss(recon, target, "L2"),
                               (torch.view_as_real(recon - target) ** 2).mean())
