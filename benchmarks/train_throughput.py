"""Training throughput: steps/s of the full loop, and the shares of a step spent outside forward+backward
and in the optimizer.

For each preset the full loop (:func:`sdegen.train.train`, TensorBoard on, the preset's log and
checkpoint intervals unless ``--ckpt-every``) runs twice from scratch, ``warmup + steps`` and
``warmup + 2 steps`` steps; the difference of their times over ``steps`` is the time of one step (the
fixed costs, start-up and the final picture, cancel). Then the parts are timed alone on the same model and
batch: forward+backward (the loss with the batch's noise generator), the optimizer (unscale, gradient
clipping, Adam step, zero_grad), building the batch (data and its noise generator,
:mod:`sdegen.train.batches`), the EMA update and a checkpoint write (divided by the checkpoint
interval); "other" is what the loop took beyond these (logging, learning rate, seeding). On CPU the clock
is the process's CPU time (``time.process_time``, with one thread), so other work on the machine barely
moves the figures; on CUDA it is wall time with synchronisation. Parts are medians of repeated calls.

With ``step = max(loop, sum of parts)``: "outside fwd+bwd" is ``1 - fwd_bwd / step``; "overhead" leaves the
optimizer out too (``1 - (fwd_bwd + optimizer) / step``: data, EMA, checkpoints, logging), goal below
10 %; "optimizer" is the optimizer's share.

Prints a table, writes ``benchmarks/results/train_throughput.json``.

    PYTHONPATH=. python benchmarks/train_throughput.py                  # digits_vp, digits_edm, toy2d_vp, toy2d_ve
    PYTHONPATH=. python benchmarks/train_throughput.py --short          # a quick check (fewer steps)
    PYTHONPATH=. python benchmarks/train_throughput.py --presets cifar10_ddpmpp_vp --device cuda  # needs data
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sdegen import checkpoint
from sdegen.losses import get_loss
from sdegen.train import EMA, load_config, train
from sdegen.train.batches import Batches
from sdegen.train.config import loss_options
from sdegen.train.runs import build

RESULTS = Path(__file__).resolve().parent / "results"
PARTS = ("fwd_bwd", "optimizer", "data", "ema", "checkpoint", "other")


def _clock(device: torch.device):
    """CPU time of this process on CPU (robust to other work on the machine), wall time on CUDA."""
    if device.type == "cuda":
        def now() -> float:
            torch.cuda.synchronize(device)
            return time.perf_counter()
        return now
    return time.process_time


def _timed(fn, reps: int, clock) -> float:
    """Median seconds of ``fn()`` over ``reps`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(reps):
        start = clock()
        fn()
        times.append(clock() - start)
    return statistics.median(times)


def loop_seconds_per_step(preset: str, overrides: list[str], warmup: int, steps: int, clock) -> float:
    """Seconds of one step of the full loop: two runs from scratch, ``warmup + steps`` and ``warmup + 2 steps``
    steps long; the difference of their times divided by ``steps``."""
    took = []
    for n in (warmup + steps, warmup + 2 * steps):
        cfg = load_config(preset, overrides + [f"training.steps={n}"])
        with tempfile.TemporaryDirectory() as tmp:
            start = clock()
            train(cfg, tmp, progress=False, verbose=False)
            took.append(clock() - start)
    return max(took[1] - took[0], 1e-9) / steps


def measure(preset: str, steps: int, warmup: int, overrides: list[str], device: str) -> dict:
    # the final picture is a fixed cost: keep it small (it cancels in the difference anyway)
    overrides = overrides + [f"training.device={device}", "training.sample_every=0", "sampling.n=4"]
    cfg = load_config(preset, overrides)
    t = cfg.training
    dev = torch.device(device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    clock = _clock(dev)
    loop = loop_seconds_per_step(preset, overrides, warmup, steps, clock)

    torch.manual_seed(0)
    model = build(cfg)
    net = model.net.to(dev).train()
    batches = Batches(cfg.data.name, seed=0, global_batch=t.batch_size, root=cfg.data.root,
                      image_size=model.shape[-1] if model.is_image else None, centered=model.centered,
                      flip=cfg.data.flip, dequantize=cfg.data.dequantize)
    loss_fn = get_loss(t.loss)
    opt = torch.optim.Adam(net.parameters(), lr=1e-12, foreach=True)
    params = [p for p in net.parameters() if p.requires_grad]
    ema = EMA(net, cfg.optim.ema_rate)
    kwargs = dict(parametrization=model.parametrization, continuous=model.continuous, reduce_mean=t.reduce_mean,
                  likelihood_weighting=t.likelihood_weighting, eps=t.eps, **loss_options(t))
    x0, gen = batches(0)
    x0 = x0.to(dev)

    def fwd_bwd():
        loss_fn(model.sde, net, x0, generator=batches(0)[1], **kwargs).backward()

    def optim():
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def optim_after_backward():   # the optimizer needs gradients: time it after a backward, minus that
        fwd_bwd()
        start = clock()
        optim()
        return clock() - start

    reps = max(5, min(40, steps // 3))
    parts = {"fwd_bwd": _timed(fwd_bwd, reps, clock)}
    optim_after_backward()
    parts["optimizer"] = statistics.median(optim_after_backward() for _ in range(reps))
    parts["data"] = _timed(lambda: batches(1)[0].to(dev), reps, clock)
    parts["ema"] = _timed(lambda: ema.update(net), reps, clock)
    with tempfile.TemporaryDirectory() as tmp:
        state = {"model": net.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict()}
        parts["checkpoint"] = _timed(lambda: checkpoint.atomic_save(state, Path(tmp) / "c.pt"), 3, clock) / t.ckpt_every
    measured = sum(parts.values())
    parts["other"] = max(loop - measured, 0.0)   # logging, lr, seeding; 0 when the loop ran faster than the parts
    step = max(loop, measured)
    return {"preset": preset, "overrides": overrides, "device": str(dev), "batch_size": t.batch_size,
            "clock": "wall" if dev.type == "cuda" else "process CPU time",
            "steps": steps, "log_every": t.log_every, "ckpt_every": t.ckpt_every,
            "loop_s_per_step": loop, "steps_per_s": 1.0 / step, "parts_s_per_step": parts,
            "outside_fwd_bwd_share": 1.0 - parts["fwd_bwd"] / step,
            "overhead_share": 1.0 - (parts["fwd_bwd"] + parts["optimizer"]) / step,
            "optimizer_share": parts["optimizer"] / step}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["digits_vp", "digits_edm", "toy2d_vp", "toy2d_ve"])
    p.add_argument("--steps", type=int, default=None, help="steps per timed run (default: 300 for 2-D "
                   "presets, 60 for images; --short: a third)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--short", action="store_true", help="a quick check: fewer steps")
    p.add_argument("--ckpt-every", type=int, default=None, help="checkpoint interval (default: the preset's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(RESULTS / "train_throughput.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    extra = [f"training.ckpt_every={args.ckpt_every}"] if args.ckpt_every else []
    rows = []
    for name in args.presets:
        image = build(load_config(name)).is_image
        steps = args.steps or ((60 if image else 300) // (3 if args.short else 1))
        rows.append(measure(name, steps, args.warmup, extra, args.device))
    print(f"{'preset':16s} {'steps/s':>8s} " + " ".join(f"{n + ' ms':>12s}" for n in PARTS)
          + f" {'outside fwd+bwd':>16s} {'optimizer':>10s} {'overhead':>9s}")
    for r in rows:
        parts = r["parts_s_per_step"]
        print(f"{r['preset']:16s} {r['steps_per_s']:8.2f} " + " ".join(f"{1000 * parts[n]:12.3f}" for n in PARTS)
              + f" {100 * r['outside_fwd_bwd_share']:15.1f}% {100 * r['optimizer_share']:9.1f}%"
              f" {100 * r['overhead_share']:8.1f}%")
    print(f"clock: {rows[0]['clock'] if rows else '-'}; overhead = outside fwd+bwd and the optimizer (goal < 10 %)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"rows": rows, "threads": args.threads, "load_average": os.getloadavg(),
                               "machine": platform.processor() or platform.machine()}, indent=1))
    os.replace(tmp, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
