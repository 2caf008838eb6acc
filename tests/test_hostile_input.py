"""Issues 15 and 22: no race, no silent rewrite, no traceback, no memory blow-up from a small file,
no file that reads another, nothing half-written that survives.

One test per failing case of the issue (docs/reliability.md lists them), on tiny shapes and in
process wherever the entry point can be called directly.
"""
import ast
import errno
import hashlib
import importlib
import io
import json
import math
import os
import re
import signal
import struct
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
import torch

import compare
import data
import engine
import formats
import reconstruct
import settings
import train
from checkpoint import CHECKPOINT_FORMAT, check_resumable, load_checkpoint, load_trained_model, save_checkpoint
from cli import UserError, check_run_name, cli_errors, make_run_dirs, run_command
from formats import DataError, load_cine
from helpers import ROOT, TINY, read_metrics, train_defaults, write_mat73
from models import build_model
from phantom import make_phantom_dataset

SHAPE = (14, 6, 32, 32)  # the tiny runs' cines: 8/2/4 split, 6 frames of 32x32


def cines(seed=0, shape=SHAPE):
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def overrides(tmp_path, **values):
    """train()'s command-line overrides for a tiny dual-UNet run writing under ``tmp_path``."""
    _, given = train.parse_command_line(["x", *TINY])
    return {**given, "arch": "dual_unet", "out_dir": str(tmp_path / "output"), "images_dir": str(tmp_path / "images"),
            "figures": False, **values}


def tiny_config(**values):
    return settings.resolve_config(train_defaults(), overrides(ROOT, **values))[0]


def files(root):
    """Every file under ``root`` with a hash of its bytes and its modification time."""
    return {str(p.relative_to(root)): (hashlib.sha1(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def forbidden(*args, **kwargs):
    raise AssertionError("the data were read: the header should have been refused first")


# ----------------------------------------------------------------------------- run names
HOLD = ("import sys; from cli import make_run_dirs; make_run_dirs(sys.argv[1:], 'x'); print('claimed', flush=True); "
        "sys.stdin.read()")


@pytest.fixture
def holder(tmp_path):
    """Another process that claimed the run name 'x' under tmp_path; it holds it until killed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "output"), str(tmp_path / "images")],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert process.stdout.readline().strip() == "claimed"
    yield process
    process.kill()
    process.wait(10)


def test_a_second_run_with_the_same_name_is_refused_at_once(tmp_path, holder):
    roots = [tmp_path / "output", tmp_path / "images"]
    in_use = rf"output/x is in use by a run in progress \(process {holder.pid}\)"
    for written in (False, True):  # before and after the first run wrote anything
        if written:
            (tmp_path / "output" / "x" / "output.txt").write_text("epoch 1")
        for resume in (False, True):
            with pytest.raises(UserError, match=in_use):
                make_run_dirs(roots, "x", resume=resume)
    with pytest.raises(UserError, match=in_use):
        train.train("x", overrides(tmp_path, num_epochs=1), **train_defaults())
    assert [p.name for p in (tmp_path / "output" / "x").iterdir()] == ["output.txt"]
    holder.kill()  # even SIGKILL releases the claim
    holder.wait(10)
    with pytest.raises(UserError, match="output/x already holds an earlier run"):
        make_run_dirs(roots, "x")
    assert make_run_dirs(roots, "x", resume=True) == [root / "x" for root in roots]


def test_stale_temporary_files_are_removed_when_the_run_starts_again(tmp_path):
    roots = [tmp_path / "output", tmp_path / "images"]
    run = tmp_path / "output" / "x"
    run.mkdir(parents=True)
    (run / ".last.pt.tmp4242").write_bytes(b"half a checkpoint")  # left by a SIGKILL mid-write
    make_run_dirs(roots, "x")  # nothing but a stale temporary file: a fresh start
    assert not (run / ".last.pt.tmp4242").exists()
    (run / "last.pt").write_bytes(b"checkpoint")
    (run / ".best.pt.tmp77").write_bytes(b"half")
    make_run_dirs(roots, "x", resume=True)
    assert [p.name for p in run.iterdir()] == ["last.pt"]


def test_a_file_where_the_run_folder_should_be_is_one_line(tmp_path):
    (tmp_path / "output").mkdir()
    (tmp_path / "output" / "x").write_text("")
    with pytest.raises(UserError, match="output/x exists and is a file, not a folder: move or remove it"):
        make_run_dirs([tmp_path / "output", tmp_path / "images"], "x")


def test_the_run_name_rule_is_stated_as_it_is_checked():
    for name in ("-x", ".x"):
        with pytest.raises(UserError, match="starting with a letter, a digit or '_', without '..'"):
            check_run_name(name)


def test_disk_full_while_saving_a_checkpoint_says_what_to_do(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1}, path)
    before = path.read_bytes()

    def disk_full(obj, file):
        file.write(b"PK part of a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(UserError, match=r"last.pt: not written, the disk is full \(No space left on device\); its "
                                        r"previous version.* unchanged: free some space, then continue the run with "
                                        r"the same command plus --resume"):
        save_checkpoint({"epoch": 2}, path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["last.pt"]


# ----------------------------------------------------------------------------- resuming
@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 1-epoch run 'd' on the data file cines.npy."""
    cwd = tmp_path_factory.mktemp("finished")
    np.save(cwd / "cines.npy", cines())
    train.train("d", overrides(cwd, num_epochs=1, data=str(cwd / "cines.npy")), **train_defaults())
    return cwd


def test_resume_refuses_other_data_and_leaves_a_finished_run_as_it_is(finished, capsys):
    before = files(finished / "output")
    original = (finished / "cines.npy").read_bytes()
    resume = overrides(finished, num_epochs=1, data=str(finished / "cines.npy"), resume=True)
    np.save(finished / "cines.npy", cines(seed=1))  # the same name, shape and dtype; other cines
    try:
        with pytest.raises(UserError, match=r"d/last.pt: cannot resume on different data \(.*cines.npy sha256 "
                                            r"[0-9a-f]{12}\.\.\. -> [0-9a-f]{12}\.\.\.\)"):
            train.train("d", resume, **train_defaults())
    finally:
        (finished / "cines.npy").write_bytes(original)
    capsys.readouterr()
    summary = train.train("d", resume, **train_defaults())
    assert "this run already finished (1 epochs, tested); nothing was changed" in capsys.readouterr().out
    assert summary == read_metrics(finished / "output" / "d")["summary"]
    assert files(finished / "output") == before


def test_resume_refuses_a_phantom_of_other_code(tmp_path):
    config = tiny_config()
    checkpoint = {"format": CHECKPOINT_FORMAT, "config": config, "model": build_model(config).state_dict(),
                  "optimizer": {}, "scheduler": {}, "scaler": {}, "rng": {}, "data": {"phantom": "0123456789abcdef"},
                  "state": {"epoch": 0, "batch": 0, "loss_sum": 0.0, "seen": 0, "history": [], "best": None}}
    fingerprint = data.data_fingerprint(config)
    with pytest.raises(UserError, match=r"cannot resume on different data \(phantom '0123456789abcdef' -> "
                                        r"'[0-9a-f]{16}'\)"):
        check_resumable(checkpoint, config, tmp_path / "last.pt", fingerprint)
    with pytest.raises(UserError, match="damaged checkpoint: its training state must hold epoch, batch"):
        check_resumable({**checkpoint, "state": {"epoch": 1}}, config, tmp_path / "last.pt", fingerprint)


def test_the_phantom_version_follows_its_code_not_its_comments(tmp_path, monkeypatch):
    source = tmp_path / "phantom.py"
    monkeypatch.setattr(data, "PHANTOM_SOURCE", source)
    source.write_text('"""The phantom."""\ndef draw(x):\n    """One cine."""\n    return x + 1  # shift\n')
    first = data.phantom_version()
    source.write_text('"""Reworded."""\n\n\ndef draw(x):\n    return x + 1  # another comment\n')
    assert data.phantom_version() == first
    source.write_text("def draw(x):\n    return x + 2\n")
    assert data.phantom_version() != first


def test_a_resumed_report_keeps_the_original_header(tmp_path):
    path = tmp_path / "output.txt"
    engine.Report(path, ["cinerecon run x, started 10:00", "data: a", "config: {}"]).write([])
    engine.Report(path, ["cinerecon run x, started 11:00", "data: a", "config: {\"resume\": true}"],
                  resumed=True).write([])
    assert path.read_text().splitlines()[:6] == ["cinerecon run x, started 10:00", "data: a", "config: {}",
                                                 "resumed: cinerecon run x, started 11:00",
                                                 "resumed: config: {\"resume\": true}", ""]


# ----------------------------------------------------------------------------- headers before data
def npy_header(shape, descr="<f4") -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def small_npz_claiming(path, shape):
    """An .npz of a few KiB whose 'dataset' holds a float32 ``shape`` header and 4 KiB of zeros, its
    zip directory claiming the whole array: a small file that promises a huge one."""
    header = npy_header(shape)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("dataset.npy", header + bytes(4096))
    raw = bytearray(path.read_bytes())
    struct.pack_into("<I", raw, raw.rindex(b"PK\x01\x02") + 24, len(header) + math.prod(shape) * 4)  # size
    path.write_bytes(raw)


def test_a_small_npy_claiming_36_tib_is_refused_from_its_header(tmp_path):
    path = tmp_path / "huge.npy"
    path.write_bytes(npy_header((1000, 20, 1024, 480000)))
    with pytest.raises(DataError, match=r"huge.npy: truncated or damaged: its header describes an array "
                                        r"\(1000, 20, 1024, 480000\) of float32 \(35.8 TiB\) but it holds 0 bytes"):
        load_cine(path)
    with pytest.raises(DataError, match=r"huge.npy: truncated or damaged: .*35.8 TiB"):
        formats.convert(str(path), out=str(tmp_path / "out.npz"), log=lambda line: None)


def test_an_npz_of_25x20x1024x8_is_refused_by_its_image_size_before_decompressing(tmp_path, monkeypatch):
    small_npz_claiming(tmp_path / "big.npz", (25, 20, 1024, 8))
    assert (tmp_path / "big.npz").stat().st_size < 10_000
    monkeypatch.setattr(formats, "available_memory", lambda: 2 ** 40)  # the image size decides, on any machine
    monkeypatch.setattr(formats, "READ_ALLOWANCE", 2 ** 40)  # and not the read budget
    monkeypatch.setattr(np, "load", forbidden)
    with pytest.raises(UserError, match=r"big.npz: images of 1024x8 \(padded to 1024x16\) are too small"):
        train.train("x", overrides(tmp_path, data=str(tmp_path / "big.npz")), **train_defaults())
    assert not (tmp_path / "output").exists() and not (tmp_path / "images").exists()


def test_an_array_larger_than_the_memory_available_is_refused_before_it_is_read(tmp_path, monkeypatch):
    np.save(tmp_path / "cines.npy", np.ones((7, 2, 32, 32), np.float32))
    np.savez(tmp_path / "cines.npz", dataset=np.ones((7, 2, 32, 32), np.float32))
    monkeypatch.setattr(formats, "available_memory", lambda: 100 * 1024)
    monkeypatch.setattr(np, "load", forbidden)
    for name in ("cines.npy", "cines.npz"):
        with pytest.raises(DataError, match=rf"{name}(: array 'dataset')?: loading the array \(7, 2, 32, 32\) of "
                                            r"float32 would need about 168.0 KiB of memory, more than the 100.0 KiB"):
            load_cine(tmp_path / name)


@pytest.mark.parametrize("values, message", [
    (dict(image_size=100000), r"--num_samples=14 --image_size=100000: the phantom's 14 cines of 6x100000x100000 "
                              r"would need about [\d.]+ TiB of memory, more than the"),
    (dict(num_samples=10 ** 9), r"--num_samples=1000000000 --image_size=32: the phantom's .* TiB of memory"),
    (dict(image_size=16), r"--image_size=16: too small for the dual_unet network, which needs at least 32"),
    (dict(seed=-1), r"--seed=-1: must be an integer from 0 to 2\^63 - 1"),
    (dict(device="tpu"), r"--device=tpu: use auto, cpu, cuda or cuda:N"),
    (dict(device="cuda:abc"), r"--device=cuda:abc: use auto, cpu, cuda or cuda:N"),
    (dict(data=123), r"--data=123: expected the path of a .npz or .npy file"),
], ids=["image_size=100000", "num_samples=1e9", "image_size=16", "seed=-1", "tpu", "cuda:abc", "data=123"])
def test_impossible_settings_are_refused_before_anything_is_computed(values, message):
    with pytest.raises(UserError, match=message):
        tiny_config(**values)


def test_convert_refuses_a_size_that_cannot_fit_in_memory(tmp_path):
    np.save(tmp_path / "cines.npy", cines(shape=(2, 6, 8, 8)))
    with pytest.raises(DataError, match=r"cines.npy: 2 cine\(s\) of 6 frames of 100000x100000 would need about "
                                        r"[\d.]+ TiB of memory"):
        formats.convert(str(tmp_path / "cines.npy"), out=str(tmp_path / "out.npz"), size=(100000, 100000),
                        log=lambda line: None)
    assert not (tmp_path / "out.npz").exists()


def test_images_too_small_for_the_network_are_refused_before_run_folders_exist(tmp_path):
    np.save(tmp_path / "small.npy", cines(shape=(14, 6, 4, 4)))
    with pytest.raises(UserError, match=r"small.npy: images of 4x4 \(padded to 16x16\) are too small for the "
                                        r"dual_unet network, which needs at least 32x32"):
        train.train("x", overrides(tmp_path, data=str(tmp_path / "small.npy")), **train_defaults())
    assert not (tmp_path / "output").exists() and not (tmp_path / "images").exists()


@pytest.mark.parametrize("header", [b"{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2, 3, 4), '''}",
                                    b"{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2"])
def test_a_malformed_npy_header_is_one_line(tmp_path, header):
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    path = tmp_path / "bad.npy"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header)
    for read in (load_cine, formats.read_cines):
        with pytest.raises(DataError, match=r"bad.npy: not a readable .npy/.npz file \(malformed .npy header: "):
            read(path)


# ----------------------------------------------------------------------------- checkpoints
def broken_checkpoints(tmp_path) -> dict:
    """name -> path of checkpoints with the right marker but contents that cannot be used."""
    config = tiny_config()
    weights = build_model(config).state_dict()
    wider = build_model({**config, "init_features": 8}).state_dict()
    contents = {
        "other weights": {"config": config, "model": wider},
        "no weights": {"config": config},
        "unknown arch": {"config": {**config, "arch": "transformer"}, "model": weights},
        "config lacks a key": {"config": {k: v for k, v in config.items() if k != "init_features"}, "model": weights},
        "weights not tensors": {"config": config, "model": {"w": 1}},
    }
    paths = {}
    for name, content in contents.items():
        paths[name] = tmp_path / f"{name.replace(' ', '_')}.pt"
        torch.save({"format": CHECKPOINT_FORMAT, **content}, paths[name])
    return paths


CONTENT_ERRORS = {
    "other weights": r"the weights do not fit the dual_unet network its config describes \(\d+ of another shape, "
                     r"e\.g\. \S+ \(8, 6, 3, 3\) instead of \(4, 6, 3, 3\)\)",
    "no weights": r"incomplete checkpoint, it lacks model",
    "unknown arch": r"unknown arch 'transformer' \(known: .*dual_unet",
    "config lacks a key": r"its config lacks the setting 'init_features'",
    "weights not tensors": r"damaged checkpoint: 'config' must be a dict of settings and 'model' one of tensors",
}


def test_checkpoint_contents_that_cannot_be_used_are_one_line(tmp_path):
    for name, path in broken_checkpoints(tmp_path).items():
        with pytest.raises(UserError, match=rf"{path.name}: {CONTENT_ERRORS[name]}"):
            load_trained_model(path)


def test_reconstruct_compare_and_bench_infer_validate_checkpoint_contents(tmp_path):
    from benchmarks import bench_infer

    path = broken_checkpoints(tmp_path)["other weights"]
    message = rf"{path.name}: {CONTENT_ERRORS['other weights']}"
    with pytest.raises(UserError, match=message):
        reconstruct.main([f"--checkpoint={path}", "--input=x.npy", f"--out={tmp_path / 'r.npz'}", "--device=cpu"])
    with pytest.raises(UserError, match=message):
        compare.load_networks({"net": path}, torch.device("cpu"))
    with pytest.raises(UserError, match=message):
        bench_infer.networks(tiny_config(), str(path), torch.device("cpu"))


def test_random_bytes_are_not_a_torch_file(tmp_path):
    path = tmp_path / "output" / "x" / "last.pt"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x17" + np.random.default_rng(0).bytes(4095))
    for load in (load_checkpoint, load_trained_model):
        with pytest.raises(UserError, match="last.pt: not a torch file"):
            load(path)
    with pytest.raises(UserError, match="x/last.pt: not a torch file"):
        train.train("x", overrides(tmp_path, resume=True), **train_defaults())


# ----------------------------------------------------------------------------- files that are not files
READERS = {
    "load_cine": load_cine,
    "convert's read_cines": formats.read_cines,
    "data_fingerprint": lambda path: data.data_fingerprint({"data": str(path)}),
    "load_checkpoint": lambda path: load_checkpoint(path),
    "--config": lambda path: train.parse_command_line(["x", f"--config={path}"]),
}


@pytest.fixture
def alarm():
    """Fail rather than hang: a SIGALRM after 20 seconds."""
    def hung(signum, frame):
        raise TimeoutError("the read waited for a writer")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("reader", READERS)
def test_a_named_pipe_is_refused_without_waiting(tmp_path, alarm, reader):
    os.mkfifo(tmp_path / "pipe.npy")
    with pytest.raises(UserError, match="pipe.npy: is a named pipe, not a regular file"):
        READERS[reader](tmp_path / "pipe.npy")


@pytest.mark.parametrize("reader", READERS)
def test_a_symlink_loop_is_reported_as_such(tmp_path, reader):
    (tmp_path / "a.npy").symlink_to(tmp_path / "b.npy")
    (tmp_path / "b.npy").symlink_to(tmp_path / "a.npy")
    with pytest.raises(UserError, match=r"a.npy: a loop of symbolic links \(it never reaches a file\)"):
        READERS[reader](tmp_path / "a.npy")


def test_an_all_zero_mask_is_refused(tmp_path):
    np.save(tmp_path / "mask.npy", np.zeros((6, 32, 32), np.float32))
    with pytest.raises(DataError, match="--mask mask.npy: the mask is all zeros: it samples no k-space"):
        reconstruct.read_mask(tmp_path / "mask.npy", (2, 6, 32, 32), "--mask mask.npy")
    masks = np.ones((2, 6, 32, 32), np.float32)
    masks[1] = 0
    np.save(tmp_path / "masks.npy", masks)
    with pytest.raises(DataError, match="the mask of cine 1 is all zeros"):
        reconstruct.read_mask(tmp_path / "masks.npy", (2, 6, 32, 32), "--mask masks.npy")


# ----------------------------------------------------------------------------- benchmarks
@pytest.mark.parametrize("script, argv, message", [
    ("bench_train", ["--cascades=a"], r"--cascades=a: expected cascade counts >= 0, comma-separated"),
    ("bench_train", ["--cascades=-1"], r"--cascades=-1: expected cascade counts >= 0"),
    ("bench_train", ["--steps=-1"], r"--steps=-1: expected an integer >= 0"),
    ("bench_train", ["--device=tpu"], r"--device=tpu: use auto, cpu, cuda or cuda:N"),
    ("bench_train", ["--results=/dev/null/x"], r"/dev/null/x: cannot create this folder"),
    ("bench_infer", ["--repeats=-1"], r"--repeats=-1: expected an integer >= 0"),
    ("bench_infer", ["--device=cuda:abc"], r"--device=cuda:abc: use auto"),
    ("bench_infer", ["--results=/dev/null/x"], r"/dev/null/x: cannot create this folder"),
    ("study", ["--only=casc_1"], r"--only: unknown experiment 'casc_1'"),
    ("study", ["--prefix=../../.."], r"--prefix='../../..' names the runs \(PREFIX_NAME\) and the table: run name"),
    ("study", ["--extra='--num_epochs=1"], r"--extra='--num_epochs=1: No closing quotation"),
])
def test_benchmark_argument_errors_are_one_line_and_exit_2(script, argv, message, capsys):
    module = importlib.import_module(f"benchmarks.{script}")
    with pytest.raises(SystemExit) as stop:
        with cli_errors([]):
            module.main(argv) if hasattr(module, "main") else run_command(module.study, argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(lines) == 1 and re.search(message, lines[0]), lines


def test_the_study_never_shrinks_its_table(tmp_path, monkeypatch):
    from benchmarks import study

    monkeypatch.setattr(study, "ROOT", tmp_path)
    table = tmp_path / "benchmarks" / "results" / "t.md"
    table.parent.mkdir(parents=True)
    table.write_text("Study on `t`\n\n| configuration | run |\n|---|---|\n| L1 loss | `t_l1` |\n"
                     "| an experiment since retired | `t_retired` |\n| the default | `t_default` |\n")
    run = tmp_path / "output" / "t_default"  # finished: study() tabulates it without training
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({
        "summary": {key: {"mean": 30.0, "std": 1.0} for key in ("psnr", "ssim", "psnr_zero_filled")},
        "history": [{"seconds": 2.0, "val_psnr": 29.0}]}))
    (run / "output.txt").write_text("model: total 0.123 M parameters\n")
    study.study(prefix="t", only="default")
    rows = [line for line in table.read_text().splitlines() if line.endswith("` |")]
    assert [row.rsplit("`", 2)[1] for row in rows] == ["t_default", "t_l1", "t_retired"]
    assert "30.00 ± 1.00" in rows[0] and "0.123 M" in rows[0]


# ----------------------------------------------------------------------------- CI
@pytest.mark.parametrize("module", ["nibabel", "pydicom", "h5py", "ismrmrd"])
def test_every_format_reader_is_installed(module):
    importlib.import_module(module)  # requirements.txt installs them, so the reader tests never skip


# ----------------------------------------------------------------------------- v7.3 files that read other files
def mat73_reaching(path, secret, how):
    """A small MATLAB v7.3 file whose 'cine' reaches the HDF5 file ``secret`` ``how``."""
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w", userblock_size=512) as file:
        if how == "external storage":
            file.create_dataset("cine", shape=(4, 5, 5), dtype="<f8", external=[(str(secret), 0, 800)])
        elif how == "external link":
            file["cine"] = h5py.ExternalLink(str(secret), "/data")
        elif how == "soft link to an external link":
            file.create_group("group")["elsewhere"] = h5py.ExternalLink(str(secret), "/data")
            file["cine"] = h5py.SoftLink("/group/elsewhere")
        else:
            layout = h5py.VirtualLayout(shape=(4, 5, 5), dtype="<f8")
            layout[:] = h5py.VirtualSource(str(secret), "data", shape=(4, 5, 5))
            file.create_virtual_dataset("cine", layout)


@pytest.mark.parametrize("how, message", [
    ("external storage", r"variable 'cine' keeps its data in another file \(.*secret\); HDF5 external storage is "
                         r"refused"),
    ("external link", r"variable 'cine' is a link to another file \(.*secret\); links out of the file are refused"),
    ("soft link to an external link", r"variable 'cine' is a link to another file"),
    ("virtual dataset", r"variable 'cine' is an HDF5 virtual dataset \(made of other files' data\)"),
])
def test_a_mat73_file_never_reads_another_file(tmp_path, how, message):
    h5py = pytest.importorskip("h5py")
    secret = tmp_path / "secret"
    with h5py.File(secret, "w") as file:  # an HDF5 file, so that links and virtual sources could resolve
        file["data"] = np.ones((4, 5, 5))
    mat73_reaching(tmp_path / "x.mat", secret, how)
    with pytest.raises(DataError, match=rf"x.mat: {message}"):
        formats.read_cines(tmp_path / "x.mat")
    with pytest.raises(DataError, match=rf"x.mat: {message}"):
        formats.convert(str(tmp_path / "x.mat"), out=str(tmp_path / "out.npz"), log=lambda line: None)
    assert not (tmp_path / "out.npz").exists()


def test_a_mat73_complex_whose_imaginary_part_is_text_is_not_an_array(tmp_path):
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "x.mat", "w", userblock_size=512) as file:
        stored = np.zeros((4, 5, 5), [("real", "<f8"), ("imag", "S4")])
        file.create_dataset("cine", data=stored)
    with pytest.raises(DataError, match=r"x.mat: 0 arrays of 3 or more dimensions \(found: none\)"):
        formats.read_cines(tmp_path / "x.mat")


# ----------------------------------------------------------------------------- the read budget
ZEROS = (2, 6, 256, 256)  # 3 MiB of float32 zeros: a few KiB compressed, beyond a 1 MiB read allowance


def deflated_dicom_folder(folder):
    """A one-frame deflated DICOM whose private element holds 3 MiB of zeros (a few KiB on disk)."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DeflatedExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    dataset.Rows = dataset.Columns = 4
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 16, 15, 0
    dataset.PixelData = np.ones((4, 4), np.uint16).tobytes()
    dataset.add_new(0x00291010, "OB", bytes(math.prod(ZEROS) * 4))
    dataset.save_as(folder / "IM0001.dcm", enforce_file_format=True)
    assert (folder / "IM0001.dcm").stat().st_size < 100_000
    return pydicom


def small_files_declaring_much(tmp_path, kind):
    """The path of a file of ``kind`` of a few KiB that declares 3 MiB of data or more."""
    zeros = np.zeros(ZEROS, np.float32)
    if kind == "npz":
        np.savez_compressed(tmp_path / "zeros.npz", dataset=zeros)
        return tmp_path / "zeros.npz"
    if kind in ("nii.gz", "416-byte nii"):
        nibabel = pytest.importorskip("nibabel")
        volume = zeros.transpose(2, 3, 0, 1) if kind == "nii.gz" else np.zeros((2, 2, 2, 1))
        path = tmp_path / ("zeros.nii.gz" if kind == "nii.gz" else "claims.nii")
        nibabel.save(nibabel.Nifti1Image(volume, np.eye(4)), path)
        if kind == "416-byte nii":  # the header claims 1024x1024x10x30 float64, the file holds 4 voxels
            raw = bytearray(path.read_bytes())
            struct.pack_into("<5h", raw, 40, 4, 1024, 1024, 10, 30)
            path.write_bytes(bytes(raw[:416]))
        return path
    if kind == "unwritten HDF5":
        h5py = pytest.importorskip("h5py")
        with h5py.File(tmp_path / "unwritten.mat", "w", userblock_size=512) as file:
            file.create_dataset("cine", shape=(30, 2000, 2000), dtype="<f8")  # nothing written
        return tmp_path / "unwritten.mat"
    if kind == "zlib v5 mat":
        from scipy.io import savemat

        savemat(tmp_path / "zeros.mat", {"cine": zeros[0].transpose(1, 2, 0).astype(np.float64)},
                do_compression=True)
        return tmp_path / "zeros.mat"
    deflated_dicom_folder(tmp_path / "dicom")
    return tmp_path / "dicom"


@pytest.mark.parametrize("kind, declared", [
    ("npz", r"array 'dataset': the array \(2, 6, 256, 256\) of float32 declares 3.0 MiB"),
    ("nii.gz", r"the header's volume \(256, 256, 2, 6\) of float32 declares 3.0 MiB"),
    ("416-byte nii", r"the header's volume \(1024, 1024, 10, 30\) of float64 declares 2.3 GiB of data in a file of "
                     r"416 bytes"),
    ("unwritten HDF5", r"variable 'cine' \(2000, 2000, 30\) of float64 declares 915.5 MiB"),
    ("zlib v5 mat", r"variable 'cine' \(256, 256, 6\) of double declares 3.0 MiB"),
    ("deflated DICOM", r"IM0001.dcm: its deflated data set declares [\d.]+ MiB"),
])
def test_a_small_file_declaring_much_data_is_refused_by_the_read_budget(tmp_path, monkeypatch, kind, declared):
    path = small_files_declaring_much(tmp_path, kind)
    monkeypatch.setattr(formats, "READ_ALLOWANCE", 2 ** 20)
    monkeypatch.setattr(np, "load", forbidden)
    budget = r"more than the read budget of [\d.]+ (KiB|MiB) \(64 times the file's size plus 1.0 MiB\)"
    with pytest.raises(DataError, match=rf"{declared}.*{budget}"):
        formats.read_cines(path)
    with pytest.raises(DataError, match=declared):
        formats.convert(str(path), out=str(tmp_path / "out.npz"), log=lambda line: None)
    assert not (tmp_path / "out.npz").exists()


def test_a_small_npz_of_zeros_is_refused_by_train_and_compare_before_it_is_read(tmp_path, monkeypatch):
    path = small_files_declaring_much(tmp_path, "npz")
    monkeypatch.setattr(formats, "READ_ALLOWANCE", 2 ** 20)
    monkeypatch.setattr(np, "load", forbidden)
    message = r"zeros.npz: array 'dataset': the array \(2, 6, 256, 256\) of float32 declares 3.0 MiB"
    with pytest.raises(DataError, match=message):
        train.train("x", overrides(tmp_path, data=str(path)), **train_defaults())
    with pytest.raises(DataError, match=message):
        load_cine(path)  # compare's reader
    assert not (tmp_path / "output").exists()


def test_a_config_file_larger_than_a_configuration_is_not_read(tmp_path, monkeypatch):
    import cli

    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"config": {"seed": 1}, "history": [{"loss": 0.5}] * 100}))
    monkeypatch.setattr(cli, "CONFIG_BYTES", 1000)
    monkeypatch.setattr(json, "loads", forbidden)
    with pytest.raises(UserError, match=r"--config=.*metrics.json: 1536 bytes, more than the 1000 bytes a "
                                        r"configuration may take"):
        train.parse_command_line(["x", f"--config={path}"])


@pytest.mark.parametrize("dims, message", [
    ((4, 4, -5, 2, 3), r"expected a 4-D \(x, y, slice, time\) cine volume, got shape \(4, -5, 2, 3\)"),
    ((9, 4, 5, 2, 3), r"not a readable NIfTI file \("),
], ids=["negative dim", "dim[0]=9"])
def test_a_nifti_header_with_impossible_dimensions_is_one_line(tmp_path, dims, message):
    nibabel = pytest.importorskip("nibabel")
    path = tmp_path / "bad.nii"
    nibabel.save(nibabel.Nifti1Image(np.ones((4, 5, 2, 3), np.float32), np.eye(4)), path)
    raw = bytearray(path.read_bytes())
    struct.pack_into("<5h", raw, 40, *dims)
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=rf"bad.nii: {message}"):
        formats.read_cines(path)


def test_a_dicom_frame_with_an_empty_trigger_time_is_one_line(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from test_formats import write_dicom_frame

    folder = tmp_path / "dicom"
    folder.mkdir()
    for t in range(2):
        write_dicom_frame(folder / f"IM{t}.dcm", np.ones((4, 4)), trigger_time=10.0 * t, instance=t + 1)
    frame = pydicom.dcmread(folder / "IM1.dcm")
    frame.TriggerTime = ""
    frame.save_as(folder / "IM1.dcm")
    with pytest.raises(DataError, match=r"IM1.dcm: TriggerTime is empty, not a number, so the frames cannot be ordered"):
        formats.read_cines(folder)


# ----------------------------------------------------------------------------- --config values
@pytest.mark.parametrize("values, message", [
    ({"dropout": "abc"}, r"option --dropout=abc: could not convert string to float"),
    ({"initial_lr": None}, r"option --initial_lr=none: could not convert string to float"),
    ({"warmup": [1, 2]}, r"option --warmup=1,2: could not convert string to float"),  # a list: its text 1,2
    ({"warmup": [1, "a"]}, r"option --warmup=\[1, \"a\"\]: expected a number, true/false, text or null"),
    ({"device": None}, r"--device='none': choose one of|--device=none: use auto"),
    ({"num_epochs": 1.5}, r"option --num_epochs=1.5: invalid literal for int"),
    ({"figures": "maybe"}, r"option --figures=maybe: expected true or false"),
])
def test_config_file_values_are_read_as_command_line_values(tmp_path, values, message):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"config": values}))
    with pytest.raises(UserError, match=rf"--config={re.escape(str(path))}: {message}"):
        settings.resolve_config(train_defaults(), train.parse_command_line(["x", f"--config={path}"])[1])


def test_config_file_words_mean_what_they_mean_on_the_command_line(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"config": {"figures": "no", "out_dir": 5, "heart_weight": None, "seed": 3}}))
    _, given = train.parse_command_line(["x", f"--config={path}"])
    assert given == {"figures": False, "out_dir": "5", "heart_weight": None, "seed": 3}


# ----------------------------------------------------------------------------- sizes refused before anything is built
@pytest.fixture
def memory_16_gib(monkeypatch):
    """16 GiB of memory available, whatever the machine has."""
    for module in (formats, engine):
        monkeypatch.setattr(module, "available_memory", lambda: 16 * 2 ** 30)


@pytest.mark.parametrize("values, message", [
    (dict(cascades=100000), r"--cascades=100000 .*: the dual_unet network's [\d.e+]+ parameters \(4 copies of "
                            r"float32\) would need about 369.5 GiB of memory, more than the 16.0 GiB available"),
    (dict(resnet_blocks=10 ** 7), r"--resnet_blocks=10000000: the dual_unet network's .* 130.0 GiB of memory"),
    (dict(init_features=100000), r"--init_features=100000 .* TiB of memory"),
    (dict(arch="cine_unet", levels=10 ** 6), r"--levels=1000000: the images would need at least 2\^1000000 pixels a "
                                             r"side"),
    (dict(train_sizes="100000"), r"--train_sizes=100000: rendering one phantom cine of 6x100000x100000 would need"),
], ids=["cascades", "resnet_blocks", "init_features", "levels", "train_sizes"])
def test_a_network_or_phantom_too_large_for_memory_is_refused_before_it_is_built(alarm, memory_16_gib, values,
                                                                                 message):
    with pytest.raises(UserError, match=message):
        tiny_config(**values)


@pytest.mark.parametrize("values, message", [
    (dict(seed=-1), r"--seed=-1: must be an integer from 0 to 2\^63 - 1"),
    (dict(in_channels=0), r"--in_channels=0: must be a positive integer"),
    (dict(image_size=8), r"--image_size=8: must be a multiple of 16 \(the dual_unet network pools 4 times\)"),
    (dict(image_size=100000), r"--image_size=100000: the phantom's .* TiB of memory"),
    (dict(num_samples=10 ** 9), r"--num_samples=1000000000 .* TiB of memory"),
])
def test_compare_checks_its_data_options_as_train_does_before_writing(tmp_path, memory_16_gib, values, message):
    dirs = dict(out_dir=str(tmp_path / "output"), images_dir=str(tmp_path / "images"))
    with pytest.raises(UserError, match=message):
        compare.compare("x", baselines="none", device="cpu", **dirs, **values)
    assert not (tmp_path / "output").exists() and not (tmp_path / "images").exists()


def checkpoint_with(path, config):
    torch.save({"format": CHECKPOINT_FORMAT, "config": config, "model": {}}, path)
    return path


@pytest.mark.parametrize("change, message", [
    (dict(cascades=10 ** 7), r"its config: --init_features=4 .*--cascades=10000000 .* TiB of memory"),
    (dict(arch="cine_unet", levels=10 ** 6), r"its config: --levels=1000000: the images would need"),
    (dict(amp="bogus"), r"its config: --amp='bogus': choose one of"),
    (dict(density="nope"), r"its config: --density='nope': choose one of"),
    (dict(seed=-5), r"its config: --seed=-5: must be an integer from 0"),
    (dict(acceleration="fast"), r"its config: --acceleration='fast': must be a finite number >= 1"),
    ("amp", r"its config lacks the setting 'amp'"),
    ("acceleration", r"its config lacks the setting 'acceleration'"),
    ("seed", r"its config lacks the setting 'seed'"),
    ("mask_mode", r"its config lacks the setting 'mask_mode'"),
], ids=["cascades", "levels", "amp", "density", "seed", "acceleration", "no amp", "no acceleration", "no seed",
        "no mask_mode"])
def test_a_checkpoint_config_is_checked_before_its_network_is_built(tmp_path, alarm, memory_16_gib, change, message):
    config = tiny_config()
    config = {k: v for k, v in config.items() if k != change} if isinstance(change, str) else {**config, **change}
    path = checkpoint_with(tmp_path / "net.pt", config)
    with pytest.raises(UserError, match=rf"net.pt: {message}"):
        load_trained_model(path)
    with pytest.raises(UserError, match=rf"net.pt: {message}"):
        reconstruct.main([f"--checkpoint={path}", "--input=x.npy", f"--out={tmp_path / 'r.npz'}", "--device=cpu"])


def test_bench_train_refuses_a_cascade_count_that_cannot_fit_in_memory_before_its_folder(tmp_path, memory_16_gib):
    from benchmarks import bench_train

    with pytest.raises(UserError, match=r"--cascades=100000 .*: the dual_unet network's .* of memory, more than the "
                                        r"16.0 GiB available"):
        bench_train.main(["--cascades=0,100000", "--device=cpu", f"--results={tmp_path / 'results'}"])
    assert not (tmp_path / "results").exists()


def test_resolution_refuses_sizes_and_counts_that_cannot_fit_in_memory(tmp_path, memory_16_gib):
    from benchmarks import resolution

    config = tiny_config()
    path = tmp_path / "net.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "config": config, "model": build_model(config).state_dict()}, path)
    for option, message in (("--sizes=100000", r"--num_samples=8 --image_size=100000: .* TiB of memory"),
                            ("--count=1000000000", r"--num_samples=1000000000 --image_size=192: .* of memory")):
        with pytest.raises(UserError, match=message):
            run_command(resolution.resolution, [f"--checkpoint={path}", option, "--device=cpu",
                                                f"--results={tmp_path}"])


# ----------------------------------------------------------------------------- outputs: never overwritten, never half-written
def test_a_file_that_appears_at_the_output_meanwhile_is_never_replaced(tmp_path):
    np.save(tmp_path / "cines.npy", cines(shape=(2, 6, 8, 8)))
    out = tmp_path / "out.npz"

    def another_command_writes(line):  # called once the input is read, before the output is written
        out.write_bytes(b"the other command's result")

    with pytest.raises(UserError, match=r"out.npz: appeared while this command ran; it is left as it is"):
        formats.convert(str(tmp_path / "cines.npy"), out=str(out), log=another_command_writes)
    assert out.read_bytes() == b"the other command's result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cines.npy", "out.npz"]


def test_stale_temporary_outputs_of_killed_commands_are_removed_by_the_next(tmp_path):
    np.save(tmp_path / "cines.npy", cines(shape=(2, 6, 8, 8)))
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale, live = tmp_path / f".out.npz.tmp{int(ended.stdout)}", tmp_path / f".out.npz.tmp{os.getppid()}"
    stale.write_bytes(b"half an output, its writer killed")
    live.write_bytes(b"a write in progress")
    formats.convert(str(tmp_path / "cines.npy"), out=str(tmp_path / "out.npz"), log=lambda line: None)
    assert not stale.exists() and live.exists() and (tmp_path / "out.npz").is_file()


def test_reconstruct_checks_the_figures_folder_before_anything_is_written(tmp_path):
    (tmp_path / "figures.png").write_text("")
    (tmp_path / "earlier").mkdir()
    (tmp_path / "earlier" / "cine_000.png").write_bytes(b"an earlier figure")
    for folder, message in (("figures.png", r"--figures=.*figures.png: a file, not a folder"),
                            ("earlier", r"--figures=.*earlier: already holds the figures of an earlier reconstruction "
                                        r"\(cine_000.png\); choose another folder")):
        with pytest.raises(UserError, match=message):
            reconstruct.main(["--checkpoint=missing.pt", "--input=x.npy", f"--out={tmp_path / 'r.npz'}",
                              f"--figures={tmp_path / folder}", "--device=cpu"])
    assert not (tmp_path / "r.npz").exists()
    assert (tmp_path / "earlier" / "cine_000.png").read_bytes() == b"an earlier figure"


@pytest.mark.parametrize("failure, message", [
    (RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file data/0: "
                  "file write failed (No space left on device)"), r"last.pt: not written, the disk is full"),
    (RuntimeError("PytorchStreamWriter failed writing file"), r"last.pt: cannot be written \(PytorchStreamWriter"),
], ids=["disk full", "other"])
def test_a_torch_save_runtime_error_is_one_line(tmp_path, monkeypatch, failure, message):
    def failing(obj, file):
        raise failure

    monkeypatch.setattr(torch, "save", failing)
    with pytest.raises(UserError, match=message):
        save_checkpoint({"epoch": 2}, tmp_path / "last.pt")
    assert os.listdir(tmp_path) == []


def test_names_too_long_for_the_file_system_are_one_line(tmp_path):
    long = "a" * 300
    with pytest.raises(UserError, match=r"a{40}\.\.\.: a name of 304 bytes, too long for the file system"):
        formats.convert("x.npy", out=str(tmp_path / f"{long}.npz"), log=lambda line: None)
    with pytest.raises(UserError, match=r"a{40}\.\.\.: a name of 300 bytes, too long for the file system \(at most "
                                        r"255\)"):
        make_run_dirs([tmp_path / long, tmp_path / "images"], "x")


# ----------------------------------------------------------------------------- accepted silently or blamed on another option
@pytest.mark.parametrize("key", ["heart_weight", "weight_decay", "initial_lr", "grad_clip", "dropout", "warmup",
                                 "acceleration"])
@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_infinite_or_nan_numbers_are_refused_naming_their_option_before_any_folder(tmp_path, key, value):
    with pytest.raises(UserError, match=rf"^--{key}={value!r}: must be "):
        train.train("x", overrides(tmp_path, **{key: value}), **train_defaults())
    assert not (tmp_path / "output").exists() and not (tmp_path / "images").exists()


def test_adapt_refuses_a_mask_that_samples_every_line():
    masks = np.zeros((2, 6, 32, 32), np.float32)
    masks[:, :, ::2] = 1
    reconstruct.check_whole_lines(masks, "--mask m.npy")  # half the lines: some are left to hold out
    masks[1] = 1
    with pytest.raises(UserError, match=r"--mask m.npy: the mask of cine 1 samples every ky line: the cine is fully "
                                        r"sampled, so --adapt has no line to hold out"):
        reconstruct.check_whole_lines(masks, "--mask m.npy")


@pytest.mark.parametrize("files", ["a.npy,a.npy,a.npy", "a.npy,b.npy,a.npy", "a.npy,b.npy,copy_of_a.npy"])
def test_the_same_cines_in_two_splits_are_refused_before_any_folder(tmp_path, files):
    np.save(tmp_path / "a.npy", cines(1, shape=(8, 6, 32, 32)))
    np.save(tmp_path / "b.npy", cines(2, shape=(4, 6, 32, 32)))
    np.save(tmp_path / "copy_of_a.npy", cines(1, shape=(8, 6, 32, 32))[2:6])
    data_files = ",".join(str(tmp_path / name) for name in files.split(","))
    with pytest.raises(DataError, match=r"cine \d+ of the (validation|test) split is identical to cine \d+ of the "
                                        r"(train|validation) split: .* would be scored on cines it saw"):
        train.train("x", overrides(tmp_path, data=data_files), **train_defaults())
    assert not (tmp_path / "output").exists() and not (tmp_path / "images").exists()


def test_compare_refuses_a_run_that_is_still_training(tmp_path, holder):
    (tmp_path / "output" / "x" / "best.pt").write_bytes(b"the best checkpoint so far")
    with pytest.raises(UserError, match=rf"output/x/best.pt: its run is still training \(process {holder.pid}\)"):
        compare.load_networks({"x": tmp_path / "output" / "x" / "best.pt"}, torch.device("cpu"))


@pytest.mark.parametrize("shape", [(14, 2), (14, 1)])
def test_a_subject_array_of_another_shape_is_one_line(tmp_path, shape):
    np.savez(tmp_path / "cines.npz", dataset=cines(), subject=np.zeros(shape, np.int64))
    message = rf"cines.npz: array 'subject' of shape \[14, {shape[1]}\]: expected one name per cine \[N\]"
    with pytest.raises(DataError, match=message):
        train.train("x", overrides(tmp_path, data=str(tmp_path / "cines.npz")), **train_defaults())
    with pytest.raises(DataError, match=message):
        compare.compare("x", baselines="none", device="cpu", data=str(tmp_path / "cines.npz"),
                        out_dir=str(tmp_path / "output"), images_dir=str(tmp_path / "images"))
    assert not (tmp_path / "output").exists()


def test_compare_and_train_refuse_an_out_dir_name_too_long(tmp_path):
    long = str(tmp_path / ("a" * 300))
    with pytest.raises(UserError, match=r"a name of 300 bytes, too long for the file system"):
        compare.compare("x", baselines="none", device="cpu", out_dir=long, images_dir=str(tmp_path / "images"))
    with pytest.raises(UserError, match=r"a name of 300 bytes, too long for the file system"):
        train.train("x", overrides(tmp_path, out_dir=long), **train_defaults())


def test_a_file_system_without_hard_links_still_gets_new_outputs_that_never_replace(tmp_path, monkeypatch):
    import cli

    def no_hard_links(source, target):
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(os, "link", no_hard_links)
    cli.atomic_write(tmp_path / "out.npz", b"result", new=True)
    assert (tmp_path / "out.npz").read_bytes() == b"result"
    with pytest.raises(UserError, match=r"out.npz: appeared while this command ran"):
        cli.atomic_write(tmp_path / "out.npz", b"another result", new=True)
    assert (tmp_path / "out.npz").read_bytes() == b"result" and os.listdir(tmp_path) == ["out.npz"]


# ----------------------------------------------------------------------------- issue 26: raw data and every option
PROGRESS = re.compile(r"[\w ]+: +\d+%\|")  # a progress bar's line (tqdm), not an error


def refused(capsys, main, argv, message, outputs=()):
    """``main(argv)`` as its command runs it (``cli_errors``): exit status 2 within seconds, one line
    ``error: ...`` matching ``message``, nothing at ``outputs``. Returns that line."""
    start = time.monotonic()
    with pytest.raises(SystemExit) as stop, cli_errors([]):
        main(argv)
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if not PROGRESS.match(line)]
    assert stop.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert re.search(message, lines[0]), lines[0]
    assert time.monotonic() - start < 10
    assert not [str(path) for path in outputs if os.path.lexists(path)]
    return lines[0]


def convert_kspace(path, *extra):
    return lambda argv: formats.main(["convert", str(path), "--kspace", *extra, *argv])


def mrd_file(path, **header):
    """A 4 x 4 single-coil MRD file, every line measured, its header ``test_rawdata.MRD_HEADER`` with
    ``header`` replacing some of the values."""
    ismrmrd = pytest.importorskip("ismrmrd")
    from test_rawdata import MRD_HEADER

    values = dict(x=4, y=4, fov_x=8.0, fov_y=8.0, recon_x=4, recon_fov_x=8.0, last=3, center=2)
    with ismrmrd.Dataset(str(path), "dataset", create_if_needed=True) as dataset:
        dataset.write_xml_header(MRD_HEADER.format(**{**values, **header}))
        for row in range(4):
            readout = ismrmrd.Acquisition.from_array(np.full((1, 4), row + 1, np.complex64), center_sample=2)
            readout.idx.kspace_encode_step_1 = row
            dataset.append_acquisition(readout)
    return path


MRD_HEADERS = {  # header values -> the field the one line names
    "fov 0": (dict(fov_x=0), r"encodedSpace.fieldOfView_mm.x is 0.0: expected a number from 0.0001 to 10000"),
    "fov NaN": (dict(fov_x="nan"), r"encodedSpace.fieldOfView_mm.x is nan"),
    "fov inf": (dict(fov_y="inf"), r"encodedSpace.fieldOfView_mm.y is inf"),
    "fov negative": (dict(fov_y=-8), r"encodedSpace.fieldOfView_mm.y is -8.0"),
    "recon fov 0": (dict(recon_fov_x=0), r"reconSpace.fieldOfView_mm.x is 0.0"),
    "recon fov NaN": (dict(recon_fov_x="NaN"), r"reconSpace.fieldOfView_mm.x is nan"),
    "recon fov inf": (dict(recon_fov_x="INF"), r"reconSpace.fieldOfView_mm.x is inf"),
    "recon fov negative": (dict(recon_fov_x=-1), r"reconSpace.fieldOfView_mm.x is -1.0"),
    "recon fov keeps no column": (dict(recon_fov_x=0.5), r"reconstructed field of view, 0.5 mm, keeps no column"),
    "matrix negative": (dict(x=-4), r"encodedSpace.matrixSize.x is -4: expected an integer from 1 to 65535"),
    "matrix 0": (dict(y=0), r"encodedSpace.matrixSize.y is 0"),
    "centre negative": (dict(center=-5), r"encodingLimits.kspace_encoding_step_1.center is -5"),
    "matrix beyond the read budget": (dict(x=20000, y=20000), r"the encoded k-space \(1, 1, 1, 20000, 20000\) .* "
                                                             r"declares 3.0 GiB of data in a file of [\d.]+ KiB"),
}


@pytest.mark.parametrize("header", MRD_HEADERS)
def test_mrd_header_numbers_are_checked_where_they_are_parsed(tmp_path, capsys, header):
    values, message = MRD_HEADERS[header]
    path = mrd_file(tmp_path / "scan.h5", **values)
    refused(capsys, convert_kspace(path), [f"--out={tmp_path / 'k.npz'}"],
            rf"^error: {path}: (the header's )?{message}", [tmp_path / "k.npz"])


def test_a_pixel_size_of_0_leaves_no_output_of_reconstruct(tmp_path, capsys):
    path = mrd_file(tmp_path / "scan.h5", fov_y=0)
    outputs = [tmp_path / "r.npz", tmp_path / "r.nii.gz", tmp_path / "figures"]
    refused(capsys, reconstruct.main, [f"--kspace={path}", f"--out={outputs[0]}", f"--nifti={outputs[1]}",
                                       f"--figures={outputs[2]}", "--device=cpu"],
            r"scan.h5: the header's encodedSpace.fieldOfView_mm.y is 0.0", outputs)
    np.savez(tmp_path / "k.npz", kspace=np.ones((1, 4, 4), np.complex64), mask=np.ones((1, 4, 4), np.float32),
             pixel_size=np.array([np.inf, 1.0]))
    refused(capsys, reconstruct.main, ["--kspace", str(tmp_path / "k.npz"), f"--out={outputs[0]}",
                                       f"--nifti={outputs[1]}", "--device=cpu"],
            r"k.npz: 'pixel_size': a spacing \(mm\) is inf", outputs)


def test_a_failed_write_of_any_reconstruct_output_leaves_none(tmp_path, capsys, monkeypatch):
    from PIL import Image

    np.save(tmp_path / "cine.npy", make_phantom_dataset(1, frames=4, size=32, seed=2))
    outputs = [tmp_path / "r.npz", tmp_path / "r.nii", tmp_path / "figures"]

    def disk_full(image, file, format=None, **options):
        file.write(b"GIF89a")  # the start of a GIF, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    real_save = Image.Image.save
    monkeypatch.setattr(Image.Image, "save", lambda image, file, format=None, **options: (
        disk_full if format == "GIF" else real_save)(image, file, format=format, **options))
    refused(capsys, reconstruct.main, [f"--input={tmp_path / 'cine.npy'}", f"--out={outputs[0]}",
                                       f"--nifti={outputs[1]}", f"--figures={outputs[2]}", "--device=cpu"],
            r"figures/cine_000.gif: not written, the disk is full", outputs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cine.npy"]  # no temporary either
    assert reconstruct.check_figures(outputs[2]) == outputs[2]  # so a rerun is not refused


def test_the_temporary_files_of_a_killed_comparison_never_count_as_an_earlier_one(tmp_path):
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    roots = [tmp_path / "output", tmp_path / "images"]
    stale = [roots[0] / "compare_x" / f".results.json.tmp{int(ended.stdout)}",
             roots[1] / "compare_x" / f".methods.png.tmp{int(ended.stdout)}"]
    for path in stale:
        path.parent.mkdir(parents=True)
        path.write_bytes(b"half a result, its writer killed")
    compare.refuse_earlier_comparison(roots, "compare_x")
    assert not any(path.exists() for path in stale)
    (roots[0] / "compare_x" / "results.json").write_text("{}")
    with pytest.raises(UserError, match="compare_x already holds an earlier comparison"):
        compare.refuse_earlier_comparison(roots, "compare_x")


def test_figures_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    import figures

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    cine = np.random.default_rng(0).random((4, 16, 16))
    for draw, name in ((lambda path: figures.save_gif(cine, cine, cine, path), "a.gif"),
                       (lambda path: figures.plot_branches(cine, cine, path), "b.png"),
                       (lambda path: figures.plot_mask(cine > 0.5, path), "c.png")):
        monkeypatch.setattr(os, "replace", disk_full)
        with pytest.raises(UserError, match=rf"{name}: not written, the disk is full"):
            draw(tmp_path / name)
        monkeypatch.undo()
        assert os.listdir(tmp_path) == []
    figures.save_gif(cine, cine, cine, tmp_path / "a.gif")
    assert (tmp_path / "a.gif").read_bytes().startswith(b"GIF89a") and os.listdir(tmp_path) == ["a.gif"]


def mat_with_class(path, value):
    write_mat73(path, {"kspace_full": np.ones((4, 4, 1, 1, 2), np.complex64)}, "<f4")
    with h5py_module().File(path, "r+") as file:
        file["kspace_full"].attrs["MATLAB_class"] = value
    return path


def h5py_module():
    return pytest.importorskip("h5py")


@pytest.mark.parametrize("value, shown", [(np.array([b"double", b"char"]), r"an array \|S6 \(2,\)"),
                                          (np.int64(3), "int64"), (np.arange(3), r"an array int64 \(3,\)")],
                         ids=["array of names", "integer", "array of integers"])
def test_a_matlab_class_attribute_that_is_not_one_name_is_one_line(tmp_path, capsys, value, shown):
    path = mat_with_class(tmp_path / "cine_sax.mat", value)
    refused(capsys, convert_kspace(path), [f"--out={tmp_path / 'k.npz'}"],
            rf"cine_sax.mat: variable 'kspace_full': its MATLAB_class attribute is {shown}, not a class name",
            [tmp_path / "k.npz"])


def test_a_mask_file_of_another_frame_count_is_refused_by_the_mask_check(tmp_path, capsys):
    write_mat73(tmp_path / "cine_sax.mat", {"kspace_sub04": np.ones((4, 4, 1, 1, 3), np.complex64)}, "<f4")
    write_mat73(tmp_path / "cine_sax_mask.mat", {"mask04": np.ones((4, 4, 5))})
    refused(capsys, convert_kspace(tmp_path / "cine_sax.mat", f"--mask={tmp_path / 'cine_sax_mask.mat'}"),
            [f"--out={tmp_path / 'k.npz'}"],
            r"--mask .*cine_sax_mask.mat \(MATLAB v7.3 variable 'mask04' 4x4x5\): mask of shape \(5, 4, 4\); "
            r"expected \[T, H, W\] = \(3, 4, 4\)", [tmp_path / "k.npz"])


def test_a_2d_cmrxrecon_kspace_is_one_frame_of_one_coil(tmp_path):
    kspace = (np.arange(24).reshape(4, 6) + 1j).astype(np.complex64)  # [ky, kx]
    write_mat73(tmp_path / "demo.mat", {"kspace_full": kspace.T}, "<f4")  # MATLAB (kx, ky)
    data = formats.read_kspace(tmp_path / "demo.mat")
    assert data.kspace.shape == (1, 1, 1, 4, 6) and data.mask.shape == (1, 1, 4, 6) and data.mask.all()
    np.testing.assert_array_equal(data.kspace[0, 0, 0], kspace)


def soft_links_fanning_out(path, fanout=10, depth=7):
    """A v7.3 file of about 10 kB whose 'cine' is a soft link through ``depth`` levels of soft links,
    each of whose targets runs through ``fanout`` soft links of the next level: following it takes
    ``fanout ** depth`` look-ups, though no chain is deeper than ``depth``."""
    h5py = h5py_module()
    with h5py.File(path, "w", userblock_size=512) as file:
        groups = [file.create_group(f"H{level}") for level in range(depth + 1)]
        for level in range(depth):
            groups[level + 1][f"back{level}"] = groups[level]  # a hard link back up
            groups[level]["c"] = h5py.SoftLink(f"/H{level + 1}" + "/c" * fanout + f"/back{level}")
        groups[depth]["c"] = groups[depth]
        file["cine"] = h5py.SoftLink("/H0/c")
    return path


def test_soft_links_that_fan_out_are_refused_within_a_budget_of_lookups(tmp_path, capsys):
    path = soft_links_fanning_out(tmp_path / "x.mat")  # 10^7 look-ups: minutes without the budget
    assert path.stat().st_size < 20_000
    refused(capsys, lambda argv: formats.main(["convert", str(path), *argv]), [f"--out={tmp_path / 'c.npz'}"],
            r"x.mat: reaching variable 'cine' takes more than 4096 name look-ups in all", [tmp_path / "c.npz"])


def test_phantom_checks_the_product_of_its_sizes_against_memory(tmp_path, capsys, monkeypatch):
    import phantom

    out = tmp_path / "big.npz"
    monkeypatch.setattr(phantom, "make_coil_dataset", forbidden)
    refused(capsys, phantom.main, [str(out), "--coils=64", "--size=512", "--count=1000", "--frames=200"],
            r"--count=1000 --size=512 --frames=200 --coils=64: the data set of 1000 cine\(s\) of 200x512x512 through "
            r"64 coils would need about 25.0 TiB of memory", [out])
    refused(capsys, phantom.main, [str(out), "--seed=-1"], r"--seed=-1: must be an integer from 0 to 2\^63 - 1", [out])
    refused(capsys, phantom.main, [str(tmp_path / "f.png"), "--frames=100000"], r"--frames=100000: must be from 1",
            [tmp_path / "f.png"])


def test_an_rgb24_nifti_is_refused_in_one_line(tmp_path, capsys):
    nibabel = pytest.importorskip("nibabel")
    voxels = np.zeros((4, 4, 2, 3), [("R", "u1"), ("G", "u1"), ("B", "u1")])
    nibabel.save(nibabel.Nifti1Image(voxels, np.eye(4)), tmp_path / "colour.nii")
    refused(capsys, formats.main, ["convert", str(tmp_path / "colour.nii"), f"--out={tmp_path / 'c.npz'}"],
            r"colour.nii: voxels of type RGB: a colour \(or non-numeric\) image, not MR signal intensities",
            [tmp_path / "c.npz"])


def test_a_config_nested_too_deeply_is_one_line(tmp_path, capsys):
    path = tmp_path / "deep.json"
    path.write_text('{"config": ' + "[" * 100_000 + "]" * 100_000 + "}")
    refused(capsys, train.parse_command_line, ["x", f"--config={path}"],
            rf"--config={re.escape(str(path))}: JSON nested too deeply to be a configuration")


def test_paths_longer_than_the_file_system_allows_are_one_line(tmp_path, capsys):
    deep = "/".join(["b" * 250] * 20)  # every name fits, the path (5 kB) does not
    for option in ("--input", "--kspace"):
        for path in (tmp_path / ("a" * 300 + ".npz"), tmp_path / deep / "x.npz"):
            refused(capsys, reconstruct.main, [f"{option}={path}", f"--out={tmp_path / 'r.npz'}", "--device=cpu"],
                    r"\.\.\.: a path of \d+ bytes, or a name in it, too long for the file system",
                    [tmp_path / "r.npz"])
    refused(capsys, reconstruct.main, [f"--input={tmp_path / 'x.npy'}", f"--out={tmp_path / deep / 'r.npz'}"],
            r"\.\.\.: a path of \d+ bytes, too long for the file system \(less than 4096\)")
    refused(capsys, lambda argv: train.train("x", overrides(tmp_path, data=str(tmp_path / deep)), **train_defaults()),
            [], r"\.\.\.: a path of \d+ bytes, or a name in it, too long", [tmp_path / "output"])


def test_reconstruct_refuses_a_checkpoint_that_compare_refuses(tmp_path, capsys, memory_16_gib):
    config = {**tiny_config(), "coils": 10 ** 9}
    path = tmp_path / "net.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "config": config, "model": build_model(config).state_dict()}, path)
    message = r"net.pt: its config: --coils=1000000000: must be an integer from 1 to 64"
    refused(capsys, reconstruct.main, [f"--checkpoint={path}", "--input=x.npy", f"--out={tmp_path / 'r.npz'}",
                                       "--device=cpu"], message, [tmp_path / "r.npz"])
    with pytest.raises(UserError, match=message):
        compare.load_networks({"net": path}, torch.device("cpu"))


def test_a_raw_pickle_is_refused_without_warnings_first(tmp_path, capsys):
    import pickle
    import warnings

    path = tmp_path / "net.pt"
    path.write_bytes(pickle.dumps({"format": CHECKPOINT_FORMAT, "run": os.system}, protocol=4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        refused(capsys, reconstruct.main, [f"--checkpoint={path}", "--input=x.npy", f"--out={tmp_path / 'r.npz'}"],
                r"net.pt: refused: not a file that loads without running code .*\(Unsupported operand 149\)")
    assert [str(warning.message) for warning in caught] == []


def test_every_module_run_as_a_script_does_its_job_or_says_what_to_run(capsys, monkeypatch):
    import runpy

    from helpers import project_sources

    modules = [path for path in project_sources() if "tests" not in path.relative_to(ROOT).parts]
    silent = [path.name for path in modules if not any(
        isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) for node in ast.parse(path.read_text()).body)]
    assert silent == [], "modules that would exit 0 doing nothing when run as a script"
    monkeypatch.setattr(sys, "argv", ["data.py", "convert", "x.npy", "--out=y.npz"])
    refused(capsys, lambda argv: runpy.run_path(str(ROOT / "data.py"), run_name="__main__"), [],
            r"data.py is a module, not a command: convert data files with python formats.py convert")


def test_header_numbers_of_dicom_and_nifti_files_are_checked(tmp_path, capsys):
    pytest.importorskip("pydicom")
    nibabel = pytest.importorskip("nibabel")
    from test_formats import write_dicom_frame

    folder = tmp_path / "dicom"
    folder.mkdir()
    for t in range(2):
        write_dicom_frame(folder / f"IM{t}.dcm", np.ones((4, 4)), trigger_time=10.0 * t, instance=t + 1, slope=2.0)
    raw = (folder / "IM1.dcm").read_bytes()
    (folder / "IM1.dcm").write_bytes(raw.replace(b"DS\x04\x002.0 ", b"DS\x04\x00abc "))  # the RescaleSlope element
    refused(capsys, formats.main, ["convert", str(folder), f"--out={tmp_path / 'c.npz'}"],
            r"IM1.dcm: RescaleSlope is 'abc': expected a number", [tmp_path / "c.npz"])
    nibabel.save(nibabel.Nifti1Image(np.ones((4, 4, 2, 3), np.float32), np.eye(4)), tmp_path / "scaled.nii")
    raw = bytearray((tmp_path / "scaled.nii").read_bytes())
    struct.pack_into("<f", raw, 112, 1e35)  # scl_slope (inf or NaN would mean unscaled to nibabel)
    (tmp_path / "scaled.nii").write_bytes(bytes(raw))
    refused(capsys, formats.main, ["convert", str(tmp_path / "scaled.nii"), f"--out={tmp_path / 'c.npz'}"],
            r"scaled.nii: the header's scl_slope is 1.00\d*e\+35: expected a number from -1e\+30", [tmp_path / "c.npz"])


def test_a_probe_left_by_a_kill_never_counts_as_an_earlier_run(tmp_path):
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    run = tmp_path / "output" / "x"
    run.mkdir(parents=True)
    (run / f".write-test.tmp{int(ended.stdout)}").write_text("")  # killed between the write test's write and unlink
    assert make_run_dirs([tmp_path / "output", tmp_path / "images"], "x")[0] == run


def test_outputs_written_together_get_their_names_all_or_none(tmp_path):
    from cli import atomic_write, make_folder, written_together

    with written_together():
        atomic_write(tmp_path / "a.npz", b"a", new=True)
        atomic_write(tmp_path / "b.txt", "b")
        assert all(name.startswith(".") for name in os.listdir(tmp_path))  # temporaries only, until the end
    assert sorted(os.listdir(tmp_path)) == ["a.npz", "b.txt"]
    (tmp_path / "d.txt").write_text("another command's")
    with pytest.raises(UserError, match=r"d.txt: appeared while this command ran"):
        with written_together():
            atomic_write(tmp_path / "c.npz", b"c", new=True)
            atomic_write(make_folder(tmp_path / "f" / "g") / "x.png", b"x")
            atomic_write(tmp_path / "d.txt", b"d", new=True)
    assert sorted(os.listdir(tmp_path)) == ["a.npz", "b.txt", "d.txt"]  # c.npz, f/g/x.png and f/g/ taken back
    assert (tmp_path / "d.txt").read_text() == "another command's"


@pytest.mark.parametrize("value", ["nan", "inf", "0.5"])
def test_reconstruct_names_an_impossible_acceleration_itself(tmp_path, capsys, value):
    refused(capsys, reconstruct.main, ["--kspace=k.npz", f"--acceleration={value}", f"--out={tmp_path / 'r.npz'}"],
            rf"^error: --acceleration={value}: must be a finite number >= 1$", [tmp_path / "r.npz"])


def test_kspace_npz_sensitivities_that_are_not_finite_are_one_line(tmp_path, capsys):
    maps = np.ones((1, 2, 4, 4), np.complex64)
    maps[0, 1, 2, 3] = np.nan
    np.savez(tmp_path / "k.npz", kspace=np.ones((1, 2, 1, 4, 4), np.complex64), mask=np.ones((1, 4, 4), np.float32),
             sensitivities=maps)
    refused(capsys, convert_kspace(tmp_path / "k.npz"), [f"--out={tmp_path / 'c.npz'}"],
            r"k.npz: 'sensitivities' hold 1 NaN/Inf values", [tmp_path / "c.npz"])
