import numpy as np
import torch

from checkpoint import CHECKPOINT_FORMAT
from helpers import run_tool, train_defaults
from models import build_model


def test_one_checkpoint_is_scored_at_several_sizes(tmp_path):
    config = train_defaults(arch="cine_unet", prior=None, levels=2, init_features=4, resnet_features=4, resnet_blocks=1,
                            cascades=1, in_channels=4, out_channels=4, image_size=32, center_lines=2)
    torch.save({"format": CHECKPOINT_FORMAT, "config": config, "model": build_model(config).state_dict()},
               tmp_path / "net.pt")
    result = run_tool("benchmarks/resolution.py", [f"--checkpoint={tmp_path / 'net.pt'}", "--sizes=32,48",
                                                   "--count=1", f"--results={tmp_path}"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    table = next(tmp_path.glob("resolution_*.md")).read_text()
    rows = [line for line in table.splitlines() if line.startswith(("| 3", "| 4"))]
    assert [row.split("|")[1].strip() for row in rows] == ["32", "48"]
    # the untrained residual network returns the view-shared cine it starts from
    assert all(float(row.split("|")[4]) == float(row.split("|")[5].split("±")[0]) for row in rows)
    clean = run_tool("benchmarks/resolution.py", [f"--checkpoint={tmp_path / 'net.pt'}", "--sizes=32", "--count=1",
                                                  "--noise=false", f"--results={tmp_path}"], tmp_path)
    assert clean.returncode == 0, clean.stderr[-2000:]
    noise_free = next(tmp_path.glob("resolution_*_noisefree.md")).read_text()
    assert "1 noise-free phantom cines per size" in noise_free and "--noise=false" in noise_free
    assert noise_free.splitlines()[-1] != rows[0], "noise-free cines score differently"
    bad = run_tool("benchmarks/resolution.py", [f"--checkpoint={tmp_path / 'net.pt'}", "--sizes=30"], tmp_path)
    assert bad.returncode == 2 and "multiples of 4" in bad.stderr


def test_phantom_command_saves_cines_with_heart_boxes(tmp_path):
    result = run_tool("phantom.py", [str(tmp_path / "cines.npz"), "--count=2", "--size=32", "--frames=4"], tmp_path)
    assert result.returncode == 0, result.stderr
    saved = np.load(tmp_path / "cines.npz")
    assert saved["dataset"].shape == (2, 4, 32, 32) and saved["dataset"].dtype == np.complex64
    assert saved["heart_box"].shape == (2, 4)
    again = run_tool("phantom.py", [str(tmp_path / "cines.npz")], tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr
