"""The benchmark scripts run end to end on a tiny configuration (their numbers are not asserted)."""
import importlib.util
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import ROOT, run_tool


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_train_quick_reports_ratios_and_the_cpu(tmp_path):
    result = run_tool("benchmarks/bench_train.py", ["--quick", "--cascades=1", "--steps", "1", f"--results={tmp_path}"],
                      tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "speed-up vs reference" in result.stdout and "| 1 | ours+ckpt |" in result.stdout
    report = json.loads(next(tmp_path.glob("bench_train_*_quick.json")).read_text())
    assert {r["variant"] for r in report["results"]} == {"reference", "ours", "ours+ckpt"}
    assert all(r["status"] == "ok" and r["cines_per_s"] > 0 and 0 < r["mfu"] < 1 for r in report["results"])
    assert report["cpu"]["model"] and set(report["cpu"]["flags"]) >= {"avx512_bf16", "amx_bf16"}
    assert report["autocast"]["dtype"] in ("bfloat16", "float32") and report["autocast"]["reason"]


def test_out_of_memory_is_recorded_and_tabulated(monkeypatch):
    bench = load_script("bench_train")

    def out_of_memory(*args):
        raise torch.OutOfMemoryError("CUDA out of memory")
        yield

    monkeypatch.setattr(bench, "reference_steps", out_of_memory)
    spec = dict(device="cpu", config=bench.configuration("quick"), cascades=0, variant="reference", steps=1,
                warmup=1, compile=False)
    assert bench.worker(spec) == {"status": "OOM"}
    ours = {"cascades": 5, "variant": "ours", "status": "ok", "cines_per_s": 2.0, "epoch_s": 57.0, "peak_mb": 900.0,
            "mfu": 0.3}
    table = bench.summary_table([{"cascades": 5, "variant": "reference", "status": "OOM"}, ours])
    assert "| 5 | reference | OOM |" in table and "| 5 | ours | 2.00 | 57.0 | 900 | 30.0% | reference OOM |" in table


def test_bench_infer_quick_compares_network_and_baselines_in_a_temporary_folder(tmp_path):
    result = run_tool("benchmarks/bench_infer.py", ["--quick", "--repeats=1"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    for method in ("cascades 0", "cascades 3", "k-t sparse", "L+S"):
        assert method in result.stdout
    path = Path(result.stdout.strip().splitlines()[-1].removeprefix("results "))
    assert path.name.startswith("bench_infer_") and path.is_relative_to(tempfile.gettempdir())
    report = json.loads(path.read_text())
    assert len(report["results"]) == 4 and all(r["seconds"] > 0 for r in report["results"])


def test_bench_lsnet_times_every_network_against_the_reference(tmp_path):
    result = run_tool("benchmarks/bench_lsnet.py", ["--sizes=16", "--steps=1", "--threads=1"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "| 16 |" in line]
    assert len(rows) == 4 and rows[0].startswith("| cascades from view sharing (reference) |") and rows[0].endswith("| 1.00 |")
    assert all(float(row.split(" | ")[2]) > 0 for row in rows) and result.stdout.startswith("CPU: ")


def test_cfl_files_round_trip_in_bart_order(tmp_path):
    bart_crosscheck = load_script("bart_crosscheck")
    generator = np.random.default_rng(0)
    array = (generator.standard_normal((3, 1, 4, 2)) + 1j * generator.standard_normal((3, 1, 4, 2))).astype(np.complex64)
    bart_crosscheck.write_cfl(tmp_path / "x", array)
    assert (tmp_path / "x.hdr").read_text() == "# Dimensions\n3 1 4 2\n"
    flat = np.fromfile(tmp_path / "x.cfl", np.complex64)
    assert flat[1] == array[1, 0, 0, 0], "column-major: the first axis varies fastest"
    np.testing.assert_array_equal(bart_crosscheck.read_cfl(tmp_path / "x"), array)
    kspace = array.reshape(1, 3, 4, 2)  # [C, T, H, W]
    bart_order = bart_crosscheck.to_bart(kspace)  # [W, H, 1, C, ..., T]
    assert bart_order.shape == (2, 4, 1, 1, 1, 1, 1, 1, 1, 1, 3) and bart_order[1, 2, 0, 0, ..., 0] == kspace[0, 0, 2, 1]
    np.testing.assert_array_equal(bart_crosscheck.from_bart(bart_order), kspace[0])


@pytest.mark.skipif(shutil.which("bart") is None, reason="BART is not installed (apt-get install bart)")
def test_bart_crosscheck_runs_tiny(tmp_path):
    from models import build_model
    from checkpoint import CHECKPOINT_FORMAT
    from settings import train_defaults
    config = {**train_defaults(), "arch": "cine_unet", "cascades": 1, "in_channels": 4, "out_channels": 4,
              "init_features": 4, "resnet_features": 4, "resnet_blocks": 1}
    torch.save({"format": CHECKPOINT_FORMAT, "config": config, "model": build_model(config).state_dict()},
               tmp_path / "tiny.pt")
    result = run_tool("benchmarks/bart_crosscheck.py", ["--cines=1", "--frames=4", "--size=32", "--coils=4",
                                                       "--acceleration=4", "--weights=0.01", "--threads=1",
                                                       "--tv_weights=0.01", "--bart_iterations=10",
                                                       f"--checkpoint={tmp_path / 'tiny.pt'}"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    methods = [line.split(" | ")[1] for line in result.stdout.splitlines() if line.startswith("| variable")]
    assert methods == ["our ESPIRiT maps", "zero-filled", "view sharing", "k-t sparse", "L+S", "network tiny.pt",
                       "bart pics l1-wavelet", "bart pics temporal TV", "bart pics locally low rank",
                       "temporal TV + wavelet (ours)", "bart pics temporal TV + wavelet, 10 iterations",
                       "ours minus BART (temporal TV + wavelet)"]
    assert sum(line.startswith("| uniform") for line in result.stdout.splitlines()) == len(methods)


def test_bart_crosscheck_says_when_bart_is_missing(tmp_path):
    result = run_tool("benchmarks/bart_crosscheck.py", ["--cines=1"], tmp_path, env_extra={"PATH": "/nonexistent"})
    assert result.returncode == 2 and "bart is not on PATH" in result.stderr


def test_pincat_oracle_tunes_every_cs_method_on_the_cine_itself(tmp_path):
    from phantom import make_phantom_dataset
    import numpy as np
    np.savez(tmp_path / "one.npz", dataset=make_phantom_dataset(1, frames=4, size=64, seed=3, complex_phase=False))
    result = run_tool("benchmarks/pincat_oracle.py", [str(tmp_path / "one.npz"),
                                                      "--methods=kt_sparse,lplus_s,lplus_s_unrolled"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    for method in ("kt_sparse", "lplus_s", "lplus_s_unrolled"):
        assert f"{method} tuned on the cine itself" in result.stdout
    np.savez(tmp_path / "small.npz", dataset=make_phantom_dataset(1, frames=4, size=32, seed=3, complex_phase=False))
    small = run_tool("benchmarks/pincat_oracle.py", [str(tmp_path / "small.npz")], tmp_path)
    assert small.returncode == 2 and small.stderr.startswith("error: ") and len(small.stderr.splitlines()) == 1


def test_bench_sense_times_both_paths_of_the_sense_operators():
    bench = load_script("bench_sense")
    rows = bench.operator_rows(2, bench.QUICK_GRID, repeats=1)
    assert {r["operation"] for r in rows} == {"gradient step", "CG data consistency, 5 steps",
                                              "learned L+S (untrained), forward"}
    assert all(r["general_s"] > 0 and r["rows_s"] > 0 and r["relative_difference"] < 1e-5 for r in rows)
    assert {r["auto"] for r in rows} == {"general"}  # tiny cines: the default keeps the general path


def test_weight_transfer_maps_weights_between_scales_and_interpolates_in_log():
    study = load_script("weight_transfer")
    firsts, seconds = study.GRIDS["tv_wavelet"].values()
    rng = np.random.default_rng(0)
    surfaces = rng.normal(30, 2, (2, len(firsts), len(seconds)))  # [cines, lambda_t, lambda_w] PSNRs
    peak = [1.0, 4.0]
    record = {"method": "tv_wavelet", "psnr": surfaces.tolist(),
              "scales": {"peak": peak, "half": [p / 2 for p in peak], "rms": [0.3, 0.5]}}
    t, w = firsts[3], seconds[2]
    assert study.mean_psnr(record, ("peak", "peak"), t, w) == pytest.approx(surfaces[:, 3, 2].mean())
    # weights relative to a scale half the peak are twice the weights relative to the peak
    assert study.mean_psnr(record, ("half", "half"), 2 * t, 2 * w) == pytest.approx(surfaces[:, 3, 2].mean())
    # halfway in log between two grid values: the mean of the two (bilinear in the logarithms)
    between = study.mean_psnr(record, ("peak", "peak"), (firsts[3] * firsts[4]) ** 0.5, w)
    assert between == pytest.approx((surfaces[:, 3, 2] + surfaces[:, 4, 2]).mean() / 2)
    assert np.isnan(study.mean_psnr(record, ("peak", "peak"), firsts[-1] * 2, w))  # off the grid
    best_t, best_w, best = study.best_weights(record, ("peak", "peak"))
    assert best >= surfaces.mean(0).max() - 1e-9  # the grid points are among the fine log grid's
