"""Training throughput: steps/s of the full loop and the share of a step spent outside forward+backward.

For each preset the full loop (:func:`sdegen.train.train`, TensorBoard on, the preset's log and
checkpoint intervals unless ``--ckpt-every``) runs ``--steps`` steps after a warm-up; its time per
step comes from the logged it/s. Then the parts are timed alone on the same model and batch size:
forward+backward (the loss with a single generator), the optimizer step with clipping, building the
batch (data and per-sample generators, :mod:`sdegen.train.batches`), the per-sample noise draws, the
EMA update and a checkpoint write (divided by the checkpoint interval); "other" is what the loop took
beyond these (logging, syncs). Times are medians. With ``step = max(loop, sum of parts)``, "outside
fwd+bwd" is ``1 - fwd_bwd / step``; "overhead" leaves out the optimizer step too (data, noise, EMA,
logging, checkpoints); the goal is below 5 %.

Prints a table, writes ``benchmarks/results/train_throughput.json``.

    PYTHONPATH=. python benchmarks/train_throughput.py                  # digits_vp and toy2d_vp
    PYTHONPATH=. python benchmarks/train_throughput.py --presets cifar10_ddpmpp_vp --device cuda  # needs data
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sdegen import checkpoint, noise
from sdegen.losses import get_loss
from sdegen.train import EMA, load_config, train
from sdegen.train.batches import Batches
from sdegen.train.runs import build

RESULTS = Path(__file__).resolve().parent / "results"


def _timed(fn, reps: int, device: torch.device) -> float:
    """Median seconds of ``fn()`` over ``reps`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(preset: str, steps: int, warmup: int, overrides: list[str], device: str) -> dict:
    cfg = load_config(preset, overrides + [f"training.device={device}", "training.sample_every=0"])
    t = cfg.training
    with tempfile.TemporaryDirectory() as tmp:
        train(load_config(preset, overrides + [f"training.device={device}", "training.sample_every=0",
                                               f"training.steps={warmup}"]), tmp, progress=False, verbose=False)
        cfg = load_config(preset, overrides + [f"training.device={device}", "training.sample_every=0",
                                               f"training.steps={warmup + steps}"])
        run = train(cfg, tmp, progress=False, verbose=False)
    rates = [r["it_per_s"] for r in run.stats if r["step"] > warmup]
    loop = 1.0 / statistics.median(rates)

    dev = torch.device(device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    model = build(cfg)
    net = model.net.to(dev).train()
    batches = Batches(cfg.data.name, seed=0, global_batch=t.batch_size, root=cfg.data.root,
                      image_size=model.shape[-1] if model.is_image else None, centered=model.centered,
                      flip=cfg.data.flip, dequantize=cfg.data.dequantize)
    x0, gens = batches(0)
    x0 = x0.to(dev)
    loss_fn = get_loss(t.loss)
    opt = torch.optim.Adam(net.parameters(), lr=1e-12, foreach=True)
    ema = EMA(net, cfg.optim.ema_rate)
    one = torch.Generator(dev).manual_seed(0)
    kwargs = dict(parametrization=model.parametrization, continuous=model.continuous, reduce_mean=t.reduce_mean,
                  likelihood_weighting=t.likelihood_weighting, eps=t.eps)

    def fwd_bwd():
        loss_fn(model.sde, net, x0, generator=one, **kwargs).backward()

    def optim():
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()

    reps = max(3, min(20, steps // 5))
    parts = {"fwd_bwd": _timed(fwd_bwd, reps, dev), "optimizer": _timed(optim, reps, dev),
             "data": _timed(lambda: batches(1), reps, dev),
             "noise": _timed(lambda: (noise.rand((len(x0),), gens, device=dev), noise.randn_like(x0, gens)),
                             reps, dev),
             "ema": _timed(lambda: ema.update(net), reps, dev)}
    with tempfile.TemporaryDirectory() as tmp:
        state = {"model": net.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict()}
        parts["checkpoint"] = _timed(lambda: checkpoint.atomic_save(state, Path(tmp) / "c.pt"), 3, dev) / t.ckpt_every
    measured = sum(parts.values())
    parts["other"] = max(loop - measured, 0.0)   # logging, lr, syncs; 0 when the loop ran faster than the parts
    step = max(loop, measured)
    return {"preset": preset, "overrides": overrides, "device": str(dev), "batch_size": t.batch_size,
            "steps": steps, "log_every": t.log_every, "ckpt_every": t.ckpt_every,
            "loop_s_per_step": loop, "steps_per_s": 1.0 / loop, "parts_s_per_step": parts,
            "outside_fwd_bwd_share": 1.0 - parts["fwd_bwd"] / step,
            "overhead_share": 1.0 - (parts["fwd_bwd"] + parts["optimizer"]) / step}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["digits_vp", "toy2d_vp"])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--ckpt-every", type=int, default=None, help="checkpoint interval (default: the preset's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS / "train_throughput.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    extra = [f"training.ckpt_every={args.ckpt_every}"] if args.ckpt_every else []
    rows = [measure(name, args.steps, args.warmup, extra, args.device) for name in args.presets]
    names = ["fwd_bwd", "optimizer", "data", "noise", "ema", "checkpoint", "other"]
    print(f"{'preset':20s} {'steps/s':>8s} " + " ".join(f"{n + ' ms':>13s}" for n in names)
          + f" {'outside fwd+bwd':>16s} {'overhead':>9s}")
    for r in rows:
        parts = r["parts_s_per_step"]
        print(f"{r['preset']:20s} {r['steps_per_s']:8.2f} " + " ".join(f"{1000 * parts[n]:13.3f}" for n in names)
              + f" {100 * r['outside_fwd_bwd_share']:15.1f}% {100 * r['overhead_share']:8.1f}%")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "threads": args.threads,
                               "machine": platform.processor() or platform.machine()}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
