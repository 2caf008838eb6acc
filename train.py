"""Train, validate and test a cine reconstruction network.

    python train.py NAME [--key=value | --key value ...] [--config=output/OLD/metrics.json] [--help]

The ``train(...)`` call at the bottom of this file is the one place where a run's settings and
their defaults live, each with a comment giving its allowed values; ``python train.py --help``
lists them from there. Edit the call to change an experiment, or override any keyword on the
command line (``python train.py casc3 --cascades=3``); ``--config=output/OLD/metrics.json`` reruns
a finished run's exact configuration (options given beside it still win). Without CUDA the run
scales itself down to a CPU configuration (``settings.CPU_SCALE``) unless ``--scale=full``; values
given on the command line are never changed. Several GPUs: ``torchrun --nproc_per_node=N train.py
NAME ...`` (DistributedDataParallel).

Writes ``output/NAME/`` (output.txt, metrics.json, last.pt, best.pt) and ``images/NAME/``. The
machinery shared with compare.py, reconstruct.py and the benchmarks is in engine.py.
"""
from __future__ import annotations

import json
import math
import sys
import time
from datetime import datetime
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from checkpoint import (CHECKPOINT_FORMAT, check_resumable, finished_summary, load_checkpoint, restore, restore_rng,
                        save_checkpoint, snapshot)
from cli import Command, Positional, UserError, atomic_write, check_run_name, cli_errors
from data import FreshPhantom, accelerations, data_fingerprint, epoch_batches, load_images, make_datasets
from engine import (Report, check_batching, choose_autocast, create_run_dirs, describe_device, evaluate_all,
                    init_distributed, jsonable, lr_factor, resolve_device, seed_epoch, stop_everywhere, stop_on_signal,
                    test_summary, train_step, training_flops, unet_branches)
from metrics import format_summary
from models import build_model, describe_parameters, parameter_groups, use_channels_last
from settings import resolve_config, train_options


def train(name: str, overrides: dict, **call) -> dict | None:
    """Train, validate and test the configuration of ``call`` (every keyword of the call at the
    bottom) updated by ``overrides`` (the options given on the command line, never scaled down);
    returns the test summary on rank 0."""
    check_run_name(name)
    config, notes, scale_lines = resolve_config(call, overrides)
    rank, world, local_rank = init_distributed(config["device"])
    try:
        summary = run(name, config, notes, scale_lines, rank, world, local_rank)
        if world > 1:
            dist.barrier()  # leave together: a rank that tears gloo down while rank 0 still writes can abort
        return summary
    finally:
        if world > 1:
            dist.destroy_process_group()


def run(name: str, config: dict, notes: list[str], scale_lines: bool, rank: int, world: int, local_rank: int):
    log = print if rank == 0 else (lambda *args, **kwargs: None)

    # ---- settings: device, precision, where the run is written
    device = resolve_device(config["device"], local_rank)
    amp_dtype, amp_reason = choose_autocast(config["amp"], device)
    out_dir, img_dir = (Path(config[key]) / name for key in ("out_dir", "images_dir"))
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"

    # ---- data: every bad input is refused before a file or directory is written
    checkpoint = load_checkpoint(last_path) if config["resume"] else None
    fingerprint = data_fingerprint(config)  # the data file's header is checked here, before it is loaded
    images, source, meta = load_images(config, notes, scale_lines)
    if checkpoint is not None:
        check_resumable(checkpoint, config, last_path, fingerprint)
        finished = finished_summary(checkpoint, config, out_dir)
        if finished is not None:  # nothing to do: leave the finished run as it is
            log(f"{out_dir}: this run already finished ({config['num_epochs']} epochs, tested); nothing was changed")
            return finished
    train_set, val_set, test_set = make_datasets(images, config, device, meta, notes)
    del images
    counts = train_set.counts  # training cines per shape (size)
    if config["train_sizes"]:
        notes.append("training sizes: " + ", ".join(f"{group.images.shape[-1]} px x {len(group)} cines "
                                                    f"({group.sampling['center_lines']} centre lines)"
                                                    for group in train_set.groups))
    fresh = FreshPhantom(config, counts, device) if config["data"] is None and config["fresh_data"] else None
    check_batching(config, len(train_set), world, device)
    create_run_dirs(config, name, rank, world)

    # ---- model
    torch.manual_seed(config["seed"])
    flops = {shape: training_flops(config, shape)  # per cine, forward + backward, once per image shape
             for shape in {*val_set.shapes, *train_set.shapes}}
    epoch_flops = sum(flops[shape] * count for shape, count in zip(train_set.shapes, counts))
    model = build_model(config).to(device)
    if config["channels_last"]:
        use_channels_last(model)
    if world > 1 and config["sync_bn"]:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # statistics over the global batch
    core = model  # the unwrapped module: saved, loaded and evaluated

    # ---- optimiser, learning-rate schedule, loss scaling (fp16 only)
    optimizer = torch.optim.Adam(parameter_groups(core, config["initial_lr"], config["weight_decay"]))
    local_batch = config["batch_size"] // world
    steps_per_epoch = sum(math.ceil(math.ceil(count / world) / local_batch) for count in counts)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(config["lr_schedule"], config["num_epochs"] * steps_per_epoch, config["warmup"]))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    state = {"epoch": 0, "batch": 0, "loss_sum": 0.0, "seen": 0, "history": [], "best": None}
    if checkpoint is not None:
        state = restore(checkpoint, core, optimizer, scheduler, scaler)
        log(f"resuming {last_path} at epoch {state['epoch'] + 1}, batch {state['batch']}")
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if config["compile"]:
        model = torch.compile(model)

    # ---- the report's header
    precision = {torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast", None: "float32"}[amp_dtype]
    header = [f"cinerecon run {name}, started {datetime.now():%Y-%m-%d %H:%M}, torch {torch.__version__}, "
              f"{describe_device(device)}, {world} process(es)",
              f"precision: {precision} ({amp_reason})",
              *notes, f"data: {source}; split {len(train_set)}/{len(val_set)}/{len(test_set)} (train/val/test)",
              f"model: {describe_parameters(core)}; "
              f"{flops[val_set.shapes[0]] / 1e9:.1f} GFLOP per cine per training step",
              "config: " + json.dumps(config, sort_keys=True)]
    for line in header:
        log(line)
    report = Report(out_dir / "output.txt", header, resumed=checkpoint is not None)

    # ---- the loop: train an epoch, validate, keep the best weights, checkpoint
    def save_last():
        if rank == 0:
            save_checkpoint(snapshot(core, optimizer, scheduler, scaler, train_set, config, state, fingerprint),
                            last_path)

    def keep_if_best(epoch: int, val_psnr: float) -> None:  # best.pt: the best validation PSNR (epoch 0: untrained)
        if state["best"] is None or val_psnr > state["best"]["val_psnr"]:
            state["best"] = {"epoch": epoch, "val_psnr": val_psnr}
            if rank == 0:
                save_checkpoint({"format": CHECKPOINT_FORMAT, "config": config, "epoch": epoch, "val_psnr": val_psnr,
                                 "model": core.state_dict()}, best_path)

    validate = partial(evaluate_all, core, val_set, world, rank, accelerations(config),
                       batch_size=config["eval_batch_size"]
                       or local_batch, amp_dtype=amp_dtype, loss_type=config["loss_tpe"], with_ssim=False)

    if state["best"] is None:  # the untrained network is a candidate: training cannot end below its start
        keep_if_best(0, float(validate()["psnr"].mean()))
        report.header.append(f"untrained network (epoch 0): validation PSNR {state['best']['val_psnr']:.3f} dB")
        log(report.header[-1])

    with stop_on_signal() as stop:
        epochs = tqdm(range(state["epoch"], config["num_epochs"]), desc="epochs", unit="epoch",
                      initial=state["epoch"], total=config["num_epochs"], disable=rank != 0, dynamic_ncols=True)
        for epoch in epochs:
            started = time.perf_counter()
            if fresh is not None:  # new phantom cines, rendered during the previous epoch
                train_set.fill(fresh.cines(epoch), fresh.boxes, fresh.coils)
            seed_epoch(train_set, config["seed"], rank, epoch)
            if state["batch"]:  # resuming mid-epoch: continue the random streams where they stopped
                restore_rng(checkpoint["rng"], train_set)
            order = epoch_batches(train_set, local_batch, config["seed"], epoch, rank, world)  # this rank's batches
            mean_loss = train_epoch(model, optimizer, scheduler, scaler, train_set, order, config, amp_dtype,
                                    state, stop, epoch, rank, world)
            if mean_loss is None:  # stopped by a signal mid-epoch (single process)
                save_last()
                log(f"saved {last_path} at epoch {epoch + 1}, batch {state['batch']}; "
                    f"continue with the same command plus --resume")
                raise SystemExit(130)
            val = validate()
            seconds = time.perf_counter() - started
            row = {"epoch": epoch + 1, "train_loss": mean_loss, "val_loss": float(val["loss"].mean()),
                   "val_psnr": float(val["psnr"].mean()), "lr": optimizer.param_groups[0]["lr"],
                   "seconds": round(seconds, 2), "cines_per_s": round(len(train_set) / seconds, 2),
                   "tflops": round(epoch_flops / seconds / 1e12, 3),
                   "data_wait_s": round(fresh.waited if fresh else train_set.waited, 3),
                   "data_render_s": round(fresh.rendered, 3) if fresh else 0.0}
            state.update(epoch=epoch + 1, batch=0, loss_sum=0.0, seen=0)
            state["history"].append(row)
            epochs.set_postfix(train=f"{row['train_loss']:.3g}", val=f"{row['val_loss']:.3g}",
                               psnr=f"{row['val_psnr']:.2f}dB", rate=f"{row['cines_per_s']:.1f}cine/s")
            keep_if_best(epoch + 1, row["val_psnr"])
            if (epoch + 1) % config["checkpoint_every"] == 0 or epoch + 1 == config["num_epochs"]:
                save_last()
            if rank == 0:
                report.write(state["history"])
            if stop_everywhere(stop, world):
                save_last()
                log(f"saved {last_path} after epoch {epoch + 1}; continue with the same command plus --resume")
                raise SystemExit(130)
        epochs.close()
    if fresh is not None:
        fresh.close()

    # ---- test the best weights and report
    return test_and_report(name, core, test_set, config, state, report, amp_dtype, world, rank, best_path, img_dir,
                           local_batch)


def train_epoch(model, optimizer, scheduler, scaler, dataset, order, config, amp_dtype, state, stop,
                epoch, rank, world):
    """One pass over this rank's batches (from ``state['batch']``); the mean loss, or None if stopped.

    The loss is accumulated on the device and read back at most once a second (progress bar,
    non-finite check) and at the end of the epoch: no per-batch host synchronisation.
    """
    model.train()
    device = dataset.device
    loss_sum = torch.tensor(state["loss_sum"], device=device, dtype=torch.float64)
    seen = state["seen"]
    bad_batch = torch.tensor(-1, device=device)
    params = [p for p in model.parameters() if p.requires_grad]
    bar = tqdm(total=len(order), initial=state["batch"], desc=f"epoch {epoch + 1}", unit="batch", leave=False,
               disable=rank != 0, dynamic_ncols=True)
    last_sync = time.monotonic()
    for b, batch in enumerate(dataset.batches(order, state["batch"]), state["batch"]):  # [B, T, H, W] tensors
        try:
            loss = train_step(model, optimizer, scheduler, scaler, batch, params, config, amp_dtype)
        except torch.linalg.LinAlgError:  # an SVD of non-finite values: an earlier batch broke the weights
            check_finite(torch.where(bad_batch < 0, b, bad_batch), epoch, state, config)
        loss_sum += loss.detach() * len(order[b])
        seen += len(order[b])
        bad_batch = torch.where((bad_batch < 0) & ~torch.isfinite(loss), b, bad_batch)
        bar.update()
        if time.monotonic() - last_sync > 1.0 or b == len(order) - 1:
            last_sync = time.monotonic()
            check_finite(bad_batch, epoch, state, config)
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.4g}")
        if stop["stop"] and world == 1:  # under torchrun all ranks stop together at the epoch's end
            state.update(batch=b + 1, loss_sum=loss_sum.item(), seen=seen)
            bar.close()
            return None
    bar.close()
    if world > 1:
        stats = torch.stack([loss_sum, torch.tensor(seen, device=device, dtype=torch.float64)])
        dist.all_reduce(stats)
        return float(stats[0] / stats[1])
    return float(loss_sum / seen)


def check_finite(bad_batch: torch.Tensor, epoch: int, state: dict, config: dict) -> None:
    """Stop the run at the first non-finite loss, naming where it happened."""
    where = int(bad_batch)
    if where >= 0:
        raise UserError(f"non-finite loss at epoch {epoch + 1}, batch {where + 1}: training stopped and the last good "
                        f"checkpoint (epoch {state['epoch']}; best.pt: epoch {state['best']['epoch']}) is kept; "
                        f"try a lower --initial_lr (now {config['initial_lr']:g}) or --amp=none")


def test_and_report(name, model, test_set, config, state, report, amp_dtype, world, rank, best_path, img_dir,
                    batch_size) -> dict | None:
    """Test the best-validation weights; write output.txt, metrics.json and the figures."""
    if world > 1:
        dist.barrier()
    best = load_checkpoint(best_path, map_location=test_set.device)
    model.load_state_dict(best["model"])
    keep = {0}  # the first test cine's images, for the figures
    test = evaluate_all(model, test_set, world, rank, accelerations(config), keep=keep, protocol=test_set.raw,
                        batch_size=config["eval_batch_size"] or batch_size, amp_dtype=amp_dtype,
                        loss_type=config["loss_tpe"])
    if rank != 0:
        return None
    summary, lines = test_summary(test)
    lines = [f"test: {len(set(test['index']))} cines, weights of epoch {best['epoch']} (best validation PSNR "
             f"{best['val_psnr']:.3f} dB)", *lines,
             format_summary(f"test loss ({config['loss_tpe']})", test["loss"], 6)]
    report.write(state["history"], lines)
    metrics = {"name": name, "config": config, "best_epoch": best["epoch"], "history": state["history"],
               "summary": summary, "test": {key: jsonable(test[key]) for key in test if key != "examples"}}
    atomic_write(report.path.parent / "metrics.json", json.dumps(metrics, indent=1))
    if config["figures"]:
        write_figures(model, test_set, test, state["history"], img_dir, amp_dtype, config)
    print(f"\n{name}: test PSNR {summary['psnr']['mean']:.2f} +- {summary['psnr']['std']:.2f} dB "
          f"(zero-filled {summary['psnr_zero_filled']['mean']:.2f}), SSIM {summary['ssim']['mean']:.3f} "
          f"(zero-filled {summary['ssim_zero_filled']['mean']:.3f})\n"
          f"report {report.path}, metrics {report.path.parent / 'metrics.json'}, weights {best_path}"
          + (f", figures {img_dir}/" if config["figures"] else ""))
    return summary


def write_figures(model, test_set, test, history, img_dir: Path, amp_dtype, config: dict) -> None:
    """The run's figures under ``images/NAME/`` (see figures.py), every title with the sampling."""
    import figures

    sampling = figures.sampling_label(accelerations(config)[0], config["center_lines"])  # the first acceleration's
    first = test_set[0]
    figures.plot_mask(first["mask"], img_dir / "mask.png")
    figures.plot_aliasing(first["target"], first["aliased"], first["mask"], img_dir / "aliasing.png")
    (index, example), = test["examples"].items()
    figures.plot_reconstructions({"zero-filled": example["aliased"], "reconstruction": example["recon"]},
                                 img_dir / "reconstructions.png", example["target"], title=f"Test cine {index}",
                                 sampling=sampling, box=None if test_set.boxes is None else test_set.boxes[0])
    figures.plot_curves(history, img_dir / "curves.png", sampling=sampling)
    figures.plot_frame_psnr(test["frame_psnr_zero_filled"], test["frame_psnr"], img_dir / "frame_psnr.png",
                            sampling=sampling)
    figures.save_gif(example["target"], example["aliased"], example["recon"], img_dir / "cine.gif",
                     caption=f"test cine {index}, {sampling}")
    branches = unet_branches(model, test_set.batch([0]), amp_dtype)
    if branches is not None:
        real, imag, residual = branches
        figures.plot_branches(real, imag, img_dir / "branches.png",
                              title=f"UNet branch outputs of the last denoiser{' (residual corrections)' * residual}\n"
                                    f"test cine {int(test_set.indices[0])}, {sampling}")


def command() -> Command:
    """``python train.py``: its options are the keywords of the train(...) call below, their values
    the defaults and their comments the help (``settings.train_options``)."""
    return Command("python train.py", __doc__, train_options(),
                   [Positional("NAME", "the run's name: it writes output/NAME/ and images/NAME/")],
                   config_file=True, not_from_config=("resume",))


def parse_command_line(argv: list[str]) -> tuple[str, dict]:
    """``NAME [--key=value ...] [--config=FILE]`` -> (name, the options given); ``--help`` lists them."""
    (name,), given = command().parse(argv)
    return name, given


if __name__ == "__main__":
    with cli_errors():  # bad input: one line on stderr, exit status 2 (--debug: traceback)
        run_name, options_given = parse_command_line(sys.argv[1:])
        train(run_name, options_given,
              # data
              data=None,                 # None: the embedded phantom | a cine.npz / .npy [nsamples, nt, nx, ny] | raw k-space: a CMRxRecon tree, folders or files (.mat, MRD .h5, k-space .npz)
              num_samples=200,           # phantom only: number of cines (>= 7 for the 4:1:2 split)
              image_size=192,            # phantom only: H = W, a multiple of 16
              phantom_phase=True,        # phantom only: complex cines (smooth, tissue and flow phase) | False: magnitude
              fresh_data=True,           # phantom only: new training cines every epoch | False: the fixed training split
              coils=1,                   # phantom only: 1 (single coil) | 2 to 64 receive coils: coil k-space, maps estimated by ESPIRiT from the centre lines (docs/coils.md)
              train_sizes=None,          # phantom with fresh_data only: None (image_size) | training sizes, e.g. '64,96,128': each batch one size, each size the same pixels per epoch
              cache_dir="cache",         # raw k-space --data only: folder where coil maps (ESPIRiT) and scales are computed once and kept for every later run, compare.py and reconstruct.py
              # sampling
              acceleration=5.0,          # >= 1: round(H / acceleration) ky lines per frame | several, e.g. '4,8,10': each training batch draws one, evaluation scores each
              center_lines=11,           # >= 0 fully sampled central ky lines (scaled with H on the CPU scale-down)
              density="gaussian",        # 'gaussian' (kt-FOCUSS style) | 'polynomial'
              mask_type="variable_density",  # 'variable_density' (the density above) | 'uniform': CMRxRecon's every R-th line plus the centre lines, R an integer
              mask_mode="random",        # 'random': fresh masks per training example | 'fixed': one set (the study)
              # model
              in_channels=20,            # >= 1: frames of the phantom's cines, and the dual UNet's window: its UNets take this many frames as channels, slid cyclically over a cine of any frame count
              out_channels=20,           # must equal in_channels (one output per frame of the window)
              init_features=32,          # >= 1: UNet width f (levels f, 2f, 4f, 8f, bottleneck 16f); DC-CNN width
              arch="dual_unet",          # 'cine_unet' (space-time UNets) | 'dual_unet' (the study's network) | 'dccnn' (Schlemper et al. 2017) | 'lsnet' (learned L+S alone; cascades unused) | 'admmnet' (learned temporal TV + wavelet ADMM alone; cascades unused)
              levels=3,                  # >= 1: cine_unet pooling levels (image sizes: multiples of 2^levels)
              share_weights=False,       # one denoiser for every cascade (weights shared) | False: one per cascade
              cascades=5,                # >= 0: N x (denoiser -> data consistency) | 0: plain denoiser (the study)
              dc="hard",                 # data consistency: 'hard' (replace lines) | 'soft' (learned lambda >= 0)
              dropout=0.0,               # in [0, 1): UNet bottleneck dropout probability (the study: 0.3), 0 = off
              attention="bottleneck",    # 'none' | 'bottleneck' | 'all' (every encoder/decoder level too)
              resnet_features=16,        # >= 1: width of the 3D temporal ResNet
              resnet_blocks=2,           # >= 0: residual blocks in the 3D temporal ResNet
              output="linear",           # 'linear' (residual, complex) | 'sigmoid' (magnitude data, cascades=0)
              view_sharing=True,         # start from the k-t view-shared cine | False: from the zero-filled one (the study)
              prior="lsnet",             # 'lsnet': the cascades start from a learned L+S (the lsnet options below) | 'admmnet': from a learned ADMM (the admmnet options below) | None: as view_sharing says
              iterations=10,             # lsnet and admmnet only, >= 1: unrolled L+S or ADMM iterations, each with its own thresholds and steps
              lambda_l=0.01,             # lsnet only, > 0: initial low-rank threshold, relative to the zero-filled cine's largest singular value
              lambda_s=0.003,            # lsnet only, > 0: initial sparse threshold, relative to the zero-filled cine's largest temporal Fourier coefficient
              sparse_features=0,         # lsnet only, >= 0: width of the small CNN on each iteration's sparse part, 0 = none
              lambda_t=0.01,             # admmnet only, in [0, 1): initial temporal-TV weight, relative to the zero-filled cine's largest magnitude, 0 = off
              lambda_w=0.0003,           # admmnet only, in [0, 1): initial spatial l1-wavelet weight (details of a db2 wavelet), relative as lambda_t, 0 = off
              lambda_r=0.0,              # admmnet only, in [0, 1): initial nuclear-norm (low-rank SVT) weight, relative to the largest singular value, 0 = off
              lambda_f=0.0,              # admmnet only, in [0, 1): initial temporal-Fourier l1 weight, relative to the largest temporal Fourier coefficient, 0 = off
              # optimisation
              num_epochs=200,            # >= 1: passes over the training split (fresh phantom cines every epoch)
              batch_size=8,              # >= 1: global batch (split across processes under torchrun)
              initial_lr=3e-4,           # > 0: peak learning rate of Adam (the study: 1e-4)
              weight_decay=1e-4,         # >= 0: Adam weight decay
              lr_schedule="warmup_cosine",  # 'warmup_cosine' (linear warm-up, cosine decay) | 'constant'
              warmup=0.05,               # in [0, 1): fraction of all steps spent warming up
              loss_tpe="L1",             # 'L1' (mean absolute error) | 'L2' (mean squared error, the study), on real/imag parts
              heart_weight=None,         # None: the whole image only | > 0: the heart box's loss added with this weight (needs boxes)
              grad_clip=1.0,             # >= 0: max gradient norm, 0 = off
              seed=0,                    # 0 to 2^63 - 1: phantom, split, masks, initialisation
              # speed and memory
              device="auto",             # 'auto' (CUDA if present) | 'cpu' | 'cuda' | 'cuda:N'
              amp="auto",                # 'auto' (bf16 on GPUs and on CPUs with native bf16) | 'bf16' | 'fp16' | 'none'
              channels_last=True,        # NHWC / NDHWC weights and activations
              compile=False,             # torch.compile the model
              checkpointing=True,        # recompute each cascade's activations in backward (saves memory)
              sync_bn=False,             # SyncBatchNorm across processes under torchrun (CUDA only)
              eval_batch_size=0,         # >= 0: cines per evaluation batch, 0: the training batch
              workers=2,                 # >= 0: processes reading raw k-space ahead of the training (0: read by the training process)
              # run control
              scale="auto",              # 'auto' (CPU scale-down without CUDA) | 'cpu' | 'full' (the call as written)
              resume=False,              # continue output/NAME from its last checkpoint
              checkpoint_every=1,        # >= 1: epochs between checkpoints (last.pt)
              figures=True,              # write the figures under images/NAME
              out_dir="output",          # folder of the runs' reports and checkpoints
              images_dir="images")       # folder of the runs' figures
