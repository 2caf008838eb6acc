"""Issue 6: bad input is refused clearly and nothing is lost (interrupted runs: test_resume.py)."""
import hashlib
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import engine
import train
from checkpoint import load_checkpoint, save_checkpoint
from cli import UserError
from formats import DataError, load_cine
from helpers import TINY, run_tool, train_defaults

SHAPE = (14, 6, 32, 32)


def tree_state(cwd: Path) -> dict:
    """Every file under output/ and images/ with a hash of its bytes."""
    return {str(p.relative_to(cwd)): hashlib.sha1(p.read_bytes()).hexdigest()
            for root in ("output", "images") for p in sorted((cwd / root).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder holding a finished earlier run named 'earlier' and a set of bad data files."""
    cwd = tmp_path_factory.mktemp("reliability")
    result = run_tool("train.py", ["earlier", *TINY, "--num_epochs=2"], cwd)
    assert result.returncode == 0, result.stderr[-2000:]
    good = np.random.default_rng(0).random(SHAPE).astype(np.float32)
    np.save(cwd / "good.npy", good)
    np.save(cwd / "three_d.npy", good[0])
    nan = good.copy()
    nan[3, 2, 1, 1] = np.nan
    np.save(cwd / "nan.npy", nan)
    zero = good.copy()
    zero[5] = 0
    np.save(cwd / "zero.npy", zero)
    np.save(cwd / "bool.npy", good > 0.5)
    np.save(cwd / "strings.npy", good.astype(str))
    np.save(cwd / "objects.npy", good.astype(object), allow_pickle=True)
    np.savez(cwd / "two_arrays.npz", a=good, b=good)
    (cwd / "notes.txt").write_text("not data")
    (cwd / "garbage.npz").write_bytes(b"garbage" * 10)
    (cwd / "a_file").write_text("")
    for name, content in (("truncated", None), ("foreign", {"weights": torch.zeros(3)})):
        (cwd / "output" / name).mkdir()
        path = cwd / "output" / name / "last.pt"
        if content is None:
            path.write_bytes((cwd / "output" / "earlier" / "last.pt").read_bytes()[:2000])
        else:
            torch.save(content, path)
    return cwd


BAD_INPUTS = [
    ("missing data file", ["--data=missing.npz"], "missing.npz: no such file"),
    ("not npz/npy", ["--data=notes.txt"], "notes.txt: unsupported file type .txt"),
    ("corrupt npz", ["--data=garbage.npz"], "garbage.npz: not a .npy/.npz file"),
    ("missing key", ["--data=two_arrays.npz"], "two_arrays.npz: no array named 'dataset'"),
    ("wrong dimensions", ["--data=three_d.npy"], "three_d.npy: expected 4 dimensions"),
    ("NaN", ["--data=nan.npy"], "nan.npy: 1 NaN/Inf values \\(first in cine 3\\)"),
    ("all-zero cine", ["--data=zero.npy"], "zero.npy: cine 5 is all zeros"),
    ("bool dtype", ["--data=bool.npy"], "bool.npy: dtype bool is not numeric"),
    ("string dtype", ["--data=strings.npy"], "strings.npy: dtype <U32 is not numeric"),
    ("object dtype", ["--data=objects.npy"], "objects.npy: holds pickled Python objects"),
    ("acceleration < 1", ["--acceleration=0.5"], "--acceleration=0.5: must be a finite number >= 1"),
    ("acceleration too high", ["--acceleration=30"], "round\\(32/30\\) = 1 lines per frame, fewer than center_lines=2"),
    ("centre lines > rows", ["--center_lines=40"], "center_lines=40 is more than the 32 k-space rows"),
    ("batch > training split", ["--batch_size=9"], "--batch_size=9 is larger than the training split \\(8 cines\\)"),
    ("unknown key", ["--learning_rate=1"], "unknown option --learning_rate"),
    ("unknown key, spaced value", ["--learning_rate", "1"], "unknown option --learning_rate"),
    ("bad value", ["--num_epochs=many"], "--num_epochs=many"),
    ("bad choice", ["--loss_tpe=L3"], "--loss_tpe='L3': choose one of L1, L2"),
    ("unwritable output", ["--out_dir=a_file/output"], "a_file/output/fresh: cannot write there"),
]


@pytest.mark.parametrize("label, args, message", BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_nothing_written(workdir, label, args, message):
    before = tree_state(workdir)
    result = run_tool("train.py", ["fresh", *TINY, "--num_epochs=1", *args], workdir)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    assert re.search(message, lines[0]), lines[0]
    assert tree_state(workdir) == before
    assert not (workdir / "output" / "fresh").exists() and not (workdir / "images" / "fresh").exists()


@pytest.mark.parametrize("name, args, message", [
    ("earlier", [], "output/earlier already holds an earlier run"),
    ("../../etc", [], "run name '../../etc'"),
    ("truncated", ["--resume"], "truncated/last.pt: not a readable checkpoint"),
    ("foreign", ["--resume"], "foreign/last.pt: not a cinerecon checkpoint"),
    ("nothing", ["--resume"], "nothing/last.pt: no such checkpoint file"),
    ("earlier", ["--resume", "--init_features=8"], "cannot resume with a different configuration \\(init_features 4 -> 8\\)"),
])
def test_runs_and_checkpoints_are_protected(workdir, name, args, message):
    before = tree_state(workdir)
    result = run_tool("train.py", [name, *TINY, "--num_epochs=2", *args], workdir)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert re.search(message, result.stderr.strip()), result.stderr
    assert tree_state(workdir) == before


def test_debug_flag_shows_the_traceback(workdir):
    result = run_tool("train.py", ["fresh", *TINY, "--data=missing.npz", "--debug"], workdir)
    assert result.returncode == 2 and "Traceback" in result.stderr and "no such file" in result.stderr


def test_integer_data_is_converted_and_odd_sizes_padded(workdir, tmp_path):
    np.save(tmp_path / "ints.npy", (np.random.default_rng(1).random((14, 6, 40, 40)) * 1000).astype(np.int16))
    result = run_tool("train.py", ["ints", *TINY, "--num_epochs=1", f"--data={tmp_path / 'ints.npy'}",
                                   "--figures=false"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    report = (tmp_path / "output" / "ints" / "output.txt").read_text()
    assert "zero-padded from 40x40 to 48x48" in report and "14 magnitude cines of 6x48x48" in report


def tiny_overrides(tmp_path, **extra):
    """The tiny test configuration as train()'s command-line overrides."""
    _, overrides = train.parse_command_line(["x", *TINY])
    return {**overrides, "out_dir": str(tmp_path / "output"), "images_dir": str(tmp_path / "images"),
            "figures": False, **extra}


@pytest.mark.parametrize("frozen_clock", [False, True])
def test_non_finite_loss_stops_with_epoch_and_batch_and_keeps_last_good_checkpoint(tmp_path, monkeypatch,
                                                                                  frozen_clock):
    """With the clock frozen the loss is read back only at the epoch's end, so the next batch runs on
    the broken weights first (its SVD fails): the run still stops with the batch that broke them."""
    if frozen_clock:
        monkeypatch.setattr(train.time, "monotonic", lambda: 0.0)
    calls = {"n": 0}
    real_loss = engine.reconstruction_loss

    def loss_that_explodes(recon, target, kind, per_cine=False):
        loss = real_loss(recon, target, kind, per_cine)
        if per_cine:  # evaluation
            return loss
        calls["n"] += 1
        return loss * float("nan") if calls["n"] == 6 else loss  # 4 batches per epoch: epoch 2, batch 2

    monkeypatch.setattr(engine, "reconstruction_loss", loss_that_explodes)
    with pytest.raises(UserError, match="non-finite loss at epoch 2, batch 2.*last good checkpoint \\(epoch 1;"):
        train.train("nan", tiny_overrides(tmp_path, num_epochs=3), **train_defaults())
    checkpoint = load_checkpoint(tmp_path / "output" / "nan" / "last.pt")
    assert checkpoint["state"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point())


def test_atomic_save_keeps_the_old_checkpoint_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1}, path)
    original = path.read_bytes()

    def save_half_then_die(obj, file):
        file.write(b"PK half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", save_half_then_die)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"epoch": 2}, path)
    assert path.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"], "no temporary file is left behind"


class Exploit:
    """Unpickling this object would create the file ``marker``: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_checkpoint_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"format": "cinerecon-checkpoint-v1", "model": Exploit(marker)}, tmp_path / "evil.pt")
    with open(tmp_path / "raw.pt", "wb") as file:
        pickle.dump(Exploit(marker), file)
    for name in ("evil.pt", "raw.pt"):
        with pytest.raises(UserError, match=f"{name}: refused"):
            load_checkpoint(tmp_path / name)
    assert not marker.exists()


def test_malicious_data_file_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    np.save(tmp_path / "evil.npy", np.array([Exploit(marker)], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "evil.npz", dataset=np.array([Exploit(marker)], dtype=object))
    for name in ("evil.npy", "evil.npz"):
        with pytest.raises(DataError, match="pickled Python objects"):
            load_cine(tmp_path / name)
    result = run_tool("train.py", ["x", *TINY, f"--data={tmp_path / 'evil.npy'}"], tmp_path)
    assert result.returncode == 2 and "pickled" in result.stderr
    assert not marker.exists()
