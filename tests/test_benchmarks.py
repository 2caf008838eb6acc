"""The benchmark scripts run end to end on a tiny configuration (their numbers are not asserted)."""
import json

from helpers import run_tool


def test_bench_train_quick_reports_ratios(tmp_path):
    result = run_tool("benchmarks/bench_train.py", ["--quick", "--cascades=1", "--steps=1", f"--results={tmp_path}"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "speed-up vs reference" in result.stdout and "| 1 | ours+ckpt |" in result.stdout
    report = json.loads(next(tmp_path.glob("bench_train_*_quick.json")).read_text())
    assert {r["variant"] for r in report["results"]} == {"reference", "ours", "ours+ckpt"}
    assert all(r["cines_per_s"] > 0 and 0 < r["mfu"] < 1 for r in report["results"])


def test_bench_infer_quick_compares_network_and_baselines(tmp_path):
    result = run_tool("benchmarks/bench_infer.py", ["--quick", "--repeats=1", f"--results={tmp_path}"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    for method in ("cascades 0", "cascades 3", "k-t sparse", "L+S"):
        assert method in result.stdout
    report = json.loads(next(tmp_path.glob("bench_infer_*_quick.json")).read_text())
    assert len(report["results"]) == 4 and all(r["seconds"] > 0 for r in report["results"])
