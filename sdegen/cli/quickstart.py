"""``sdegen quickstart``: train a small score model on the 8x8 digits for a few minutes on the CPU, sample
it, and draw the samples and a figure of their quality.

Writes into ``--workdir``: the run (checkpoints, ``stats.jsonl``, ...), ``samples.npz``, ``grid.png``
(a 10 x 10 grid of samples) and ``quality.png`` (loss curve, FD-digits of the samples next to that of as
many real digits, and samples beside their nearest training digits). A rerun continues the training.
The training has a time budget (``--minutes``), so the number of steps it reaches, and the quality,
depend on the machine's speed and on the other work sharing it; the summary says how many it got.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from . import MAX_DEFAULT_THREADS, env_threads, idle_cores, set_threads
from .common import UsageError, pick_device, positive_float, positive_int

DEFAULT_CONFIG = "digits_edm"   # the recipe with the best FD-digits per CPU-minute (benchmarks/digits_quality.py)
HELP = f"train {DEFAULT_CONFIG} for 3 minutes on the CPU, sample it, and save a grid and a quality figure"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default="runs/quickstart", help="run folder")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="the preset (or YAML file) to train")
    parser.add_argument("--minutes", type=positive_float, default=3.0,
                        help="training time (wall clock; a rerun in the same --workdir continues the run)")
    # --threads comes from the main parser; the default here is the cores idle at the start (training_threads)
    parser.set_defaults(threads=None)
    parser.add_argument("--n", type=positive_int, default=500,
                        help="number of samples (the grid shows the first 100; FD-digits uses all)")
    parser.add_argument("--steps", type=positive_int, default=None, help="sampler steps (default: the config's)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto")
    parser.add_argument("--no-progress", action="store_true")


def training_threads() -> int:
    """Threads for the quickstart's training when ``--threads`` is not given: ``OMP_NUM_THREADS`` when set,
    else the cores idle right now (:func:`sdegen.cli.idle_cores`, at most 4; 1 where it cannot tell).
    Batch-128 steps of digits_edm run 1.3-1.6x faster on 2 idle cores with 2 threads than with 1, but
    2-4x slower when other work holds the cores (``benchmarks/threads.py``): so only idle cores are taken."""
    return env_threads() or min(MAX_DEFAULT_THREADS, idle_cores() or 1)


def _nearest(samples, data):
    """Index of the nearest data image (Euclidean) of each sample."""
    import torch
    return torch.cdist(samples.flatten(1), data.flatten(1)).argmin(1)


def quality_figure(path: Path, stats: list[dict], samples, data, title: str) -> dict:
    """Loss curve, a distance to the data (FD-digits for 8x8 digits, sliced Wasserstein for points) next
    to the same distance for as many real samples, and (images) samples beside their nearest data
    image. ``samples`` and ``data``: tensors in [0, 1] (images) or points. Returns the numbers shown."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    n = len(samples)
    real = data[torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:n]]
    numbers = {}
    if samples.dim() == 2:
        from ..metrics import sliced_wasserstein
        g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
        numbers = {"metric": "sliced Wasserstein", "samples": sliced_wasserstein(samples, data, generator=g()),
                   "real": sliced_wasserstein(real, data, generator=g())}
    elif tuple(samples.shape[1:]) == (1, 8, 8):
        from ..metrics import fd_digits
        numbers = {"metric": "FD-digits", "samples": fd_digits(samples), "real": fd_digits(real)}
    images = samples.dim() == 4
    fig, axes = plt.subplots(1, 3 if images else 2, figsize=(13 if images else 9, 3.6))
    steps = [r["step"] for r in stats]
    axes[0].plot(steps, [r["loss"] for r in stats], lw=1)
    axes[0].set(xlabel="step", ylabel="training loss", title="loss")
    axes[0].set_yscale("log")
    if numbers:
        bars = axes[1].bar(["samples", "real data"], [numbers["samples"], numbers["real"]], color=["C0", "0.6"])
        axes[1].bar_label(bars, fmt="%.3g")
        axes[1].set(title=f"{numbers['metric']} to the data ({n} each; lower is better)")
    else:
        axes[1].axis("off")
    if images:
        k = min(8, n)
        near = data[_nearest(samples[:k], data)]
        pair = torch.cat([samples[:k], near]).clamp(0, 1)
        c, h, w = pair.shape[1:]
        grid = pair.reshape(2, k, c, h, w).permute(0, 3, 1, 4, 2).reshape(2 * h, k * w, c)
        axes[2].imshow(grid.squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1)
        axes[2].set(title="samples (top) and their nearest training images", xticks=[], yticks=[])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return numbers


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ..train import ConfigError, NonFiniteLossError, SamplerOptions, load_config, sample_to_npz, train
    from ..train.batches import Batches
    from ..train.sample_job import describe, save_picture

    pick_device(args.device)
    workdir = Path(args.workdir)
    try:
        cfg = load_config(args.config, [f"training.time_limit={args.minutes}", f"training.device={args.device}"])
    except (ConfigError, FileNotFoundError) as e:
        raise UsageError(str(e))
    chosen = ""
    if args.threads is None:
        args.threads = training_threads()
        set_threads(args.threads)
        chosen = " (the cores idle now; --threads N to choose)"
    print(f"training {args.config} for {args.minutes:g} min on {args.threads} CPU thread(s){chosen} in {workdir} ...")
    before = _steps_done(workdir)
    try:
        result = train(cfg, workdir, progress=not args.no_progress)
    except NonFiniteLossError as e:
        print(f"sdegen quickstart: error: {e}")
        return 1
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(str(e))
    model = result.model
    budget = (f"{result.step - before:,} steps in {args.minutes:g} min" if result.stopped == "time_limit"
              else f"{result.step - before:,} steps (all of training.steps)")
    print(f"trained {budget}{f', {result.step:,} in all' if before else ''} on {args.threads} thread(s); the step "
          "count, and so the quality, depends on this machine's speed and on other work sharing it")
    opts = SamplerOptions.from_config(cfg.sampling, steps=args.steps)
    out = workdir / "samples.npz"
    shutil.rmtree(workdir / "samples.npz.shards", ignore_errors=True)  # a stale job of an older model
    print(f"sampling {args.n} samples ({describe(opts, model.sde.N)}) ...")
    sample_to_npz(model, out, n=args.n, batch_size=args.n, seed=0, options=opts, source="quickstart",
                  overwrite=True, progress=not args.no_progress)   # the samples of the run's newest model
    with np.load(out) as f:
        raw = torch.from_numpy(f["samples"])
    grid = workdir / "grid.png"
    reference = None if model.is_image else Batches(cfg.data.name, seed=1, global_batch=1).reference(2000)
    save_picture(model, raw[:100] if model.is_image else raw, grid, reference=reference, nrow=10)
    if model.is_image:
        samples = raw.permute(0, 3, 1, 2).float() / 255.0
        data = torch.stack([x for x in _data_images(cfg, model)])
    else:
        samples = raw.float()
        data = Batches(cfg.data.name, seed=1, global_batch=1).reference(len(samples) * 20).float()
    figure = workdir / "quality.png"
    numbers = quality_figure(figure, result.stats, samples, data,
                             f"{args.config}: {result.step:,} training steps ({budget} on {args.threads} thread(s): "
                             f"the count depends on the machine's load), {args.n} samples")
    if numbers:
        print(f"{numbers['metric']}: samples {numbers['samples']:.4g}, real data {numbers['real']:.4g} "
              f"({args.n} of each; lower is better) after {result.step:,} training steps")
    print(f"samples: {out}\ngrid:    {grid}\nquality: {figure}\nrun:     {workdir}")
    print(f"to train longer: sdegen quickstart --minutes 15 (continues this run in {workdir}), or "
          f"sdegen train {args.config} --workdir DIR for a full run")
    return 0


def _steps_done(workdir: Path) -> int:
    """Training steps of the run already in ``workdir`` (0 if none)."""
    from ..train.runs import read_checkpoint
    try:
        return int(read_checkpoint(workdir)[0]["step"])
    except (FileNotFoundError, ValueError):
        return 0


def _data_images(cfg, model):
    """The training images in [0, 1]."""
    from ..data import get_dataset
    ds = get_dataset(cfg.data.name, cfg.data.root, image_size=model.shape[-1], centered=False)
    return [ds[i] for i in range(len(ds))]
