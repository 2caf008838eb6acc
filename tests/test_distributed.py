"""Issue 8: DistributedDataParallel through torchrun (gloo on CPU) matches a single process."""
import numpy as np
import pytest
import torch

from checkpoint import load_trained_model
from data import CineDataset
from engine import seed_epoch
from helpers import TINY, read_metrics, run_tool
from models import build_model

# DC-CNN has no batch norm: per-process batch statistics cannot make the runs differ, so the
# comparison isolates the distributed machinery (sampler, all-reduce, clipping, checkpoints).
ARGS = [*TINY, "--batch_size=4", "--arch=dccnn", "--cascades=1", "--mask_mode=fixed", "--num_epochs=3",
        "--figures=false"]
TORCHRUN = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def torchrun(args, cwd):
    import os
    import subprocess
    import sys

    from helpers import ROOT
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *TORCHRUN, str(ROOT / "train.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("ddp")
    two = torchrun(["two", *ARGS], cwd)
    assert two.returncode == 0, two.stderr[-3000:]
    one = run_tool("train.py", ["one", *ARGS], cwd)
    assert one.returncode == 0, one.stderr[-3000:]
    return cwd, two


def test_two_processes_write_one_set_of_outputs(runs):
    cwd, two = runs
    assert sorted(p.name for p in (cwd / "output").iterdir()) == ["one", "two"]
    assert sorted(p.name for p in (cwd / "output" / "two").iterdir()) == ["best.pt", "last.pt", "metrics.json",
                                                                          "output.txt"]
    assert two.stdout.count("test PSNR") == 1 and two.stdout.count("data: embedded phantom") == 1
    assert "2 process(es)" in (cwd / "output" / "two" / "output.txt").read_text()


def test_distributed_weights_equal_single_process_weights(runs):
    cwd, _ = runs
    one = torch.load(cwd / "output" / "one" / "last.pt", weights_only=True)["model"]
    two = torch.load(cwd / "output" / "two" / "last.pt", weights_only=True)["model"]
    assert one.keys() == two.keys()
    for key in one:  # the all-reduce sums gradients in another order: Adam turns that into ~1e-4 after 3 epochs
        torch.testing.assert_close(two[key], one[key], atol=5e-4, rtol=1e-3)
    torch.manual_seed(0)
    initial = build_model(load_trained_model(cwd / "output" / "one" / "best.pt")[1]).state_dict()
    assert not torch.allclose(one["denoisers.0.net.0.weight"], initial["denoisers.0.net.0.weight"]), \
        "the weights must have trained"
    m_one, m_two = read_metrics(cwd / "output" / "one"), read_metrics(cwd / "output" / "two")
    np.testing.assert_allclose(m_two["test"]["psnr"], m_one["test"]["psnr"], rtol=1e-4)
    assert m_two["test"]["index"] == m_one["test"]["index"], "gathered test metrics keep the dataset order"


def test_checkpoints_move_between_distributed_and_single_runs(runs):
    cwd, _ = runs
    model, config = load_trained_model(cwd / "output" / "two" / "best.pt")  # written by 2 processes, loaded by 1
    assert config["arch"] == "dccnn" and not any(k.startswith("module.") for k in model.state_dict())
    (cwd / "output" / "one" / "metrics.json").unlink()  # unfinished again: a finished run is not resumed
    resumed = torchrun(["one", *ARGS, "--resume"], cwd)  # written by 1 process, resumed by 2
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout and "test PSNR" in resumed.stdout


def test_dual_unet_trains_under_torchrun(tmp_path):
    result = torchrun(["dual", *TINY, "--batch_size=4", "--num_epochs=1", "--figures=false"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "output" / "dual" / "best.pt").exists()


def test_sync_bn_on_cpu_is_refused(tmp_path):
    result = torchrun(["sync", *TINY, "--batch_size=4", "--sync_bn=true"], tmp_path)
    assert result.returncode != 0 and "--sync_bn needs CUDA" in result.stderr


def test_each_rank_draws_its_own_training_masks():
    images = torch.rand(4, 3, 32, 8)
    masks = []
    for rank in (0, 1, 0):
        dataset = CineDataset(images, np.arange(4), mask_mode="random", train=True, center_lines=2,
                              generator=torch.Generator())
        seed_epoch(dataset, seed=0, rank=rank, epoch=5)
        masks.append(dataset.batch([0])["mask"])
    assert not torch.equal(masks[0], masks[1]) and torch.equal(masks[0], masks[2])
