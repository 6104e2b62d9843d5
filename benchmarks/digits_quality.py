"""FD-digits reached on the 8x8 digits after M minutes of CPU training, VP versus VE.

Each preset (default ``digits_vp`` and ``digits_ve``) trains in its own run folder; training pauses at
each of ``--minutes`` (wall clock of training alone, cumulative), the EMA model draws ``--n`` samples
with the preset's sampler (seed 0, per-sample seeds) and FD-digits is measured against the 1797 real
digits. The floor is FD-digits of ``--n`` real digits (the statistic's small-sample bias).

Prints a table, writes ``benchmarks/results/digits_quality.json``.

    PYTHONPATH=. python benchmarks/digits_quality.py                       # 5 and 15 minutes (~45 min)
    PYTHONPATH=. python benchmarks/digits_quality.py --minutes 2 4 --n 200 --sample-steps 200
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from sdegen.metrics import fd_digits
from sdegen.metrics.fd_digits import load_digits_split
from sdegen.train import SamplerOptions, draw, load_config, train

RESULTS = Path(__file__).resolve().parent / "results"


def evaluate(model, cfg, n: int, steps: int | None) -> tuple[float, float]:
    """FD-digits of ``n`` EMA samples and the seconds it took to draw them."""
    start = time.perf_counter()
    x = draw(model, list(range(n)), 0, SamplerOptions.from_config(cfg.sampling, steps=steps))
    seconds = time.perf_counter() - start
    return fd_digits(model.to_signed(x).clamp(-1, 1), value_range=(-1.0, 1.0)), seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["digits_vp", "digits_ve"],
                   help="presets, each optionally with overrides: NAME[:key=value,key=value]")
    p.add_argument("--minutes", nargs="+", type=float, default=[5.0, 15.0], help="evaluation times (cumulative)")
    p.add_argument("--n", type=int, default=500, help="samples per evaluation")
    p.add_argument("--sample-steps", type=int, default=None, help="sampler steps (default: the preset's)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workdir", default="runs/bench_digits_quality")
    p.add_argument("--out", default=str(RESULTS / "digits_quality.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    real = load_digits_split("all")[0]
    floor = fd_digits(real[torch.randperm(len(real), generator=torch.Generator().manual_seed(0))[:args.n]])
    rows = []
    for spec in args.presets:
        name, _, extra = spec.partition(":")
        overrides = [o for o in extra.split(",") if o]
        done = 0.0
        folder = Path(args.workdir) / spec.replace(":", "_").replace(",", "_").replace("=", "-")
        for minutes in sorted(args.minutes):
            cfg = load_config(name, overrides + [f"training.time_limit={minutes - done}", "training.device=cpu",
                                                 "training.sample_every=0"])
            run = train(cfg, folder, progress=False, verbose=False)
            done = minutes
            fd, seconds = evaluate(run.model, cfg, args.n, args.sample_steps)
            rows.append({"preset": spec, "minutes": minutes, "steps": run.step, "loss": run.stats[-1]["loss"],
                         "fd_digits": fd, "sample_seconds": seconds})
            print(f"{spec:28s} {minutes:6.1f} min  step {run.step:6d}  loss {rows[-1]['loss']:.4f}  "
                  f"FD-digits {fd:8.3f}", flush=True)
    print(f"\n{'preset':28s} {'minutes':>7s} {'steps':>7s} {'loss':>8s} {'FD-digits':>10s}")
    for r in rows:
        print(f"{r['preset']:28s} {r['minutes']:7.1f} {r['steps']:7d} {r['loss']:8.4f} {r['fd_digits']:10.3f}")
    print(f"{'real digits (floor)':28s} {'':7s} {'':7s} {'':8s} {floor:10.3f}   ({args.n} samples each)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "floor_real_digits": floor, "n": args.n,
                               "sample_steps": args.sample_steps, "threads": args.threads,
                               "machine": platform.processor() or platform.machine(),
                               "torch_threads": torch.get_num_threads()}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
