"""How much time the samplers of :mod:`sdegen.sampling` spend outside the score network.

A mid-size convolutional score network (the ``small32`` DDPM++ preset: nf 32, 3x32x32, ~1.3 M parameters,
eval mode, no_grad) is driven by P and PC samplers (VP SDE, 25 steps: the VP discrete chain needs more
than beta_max = 20) and the probability-flow ODE (dopri5, rtol = atol = 1e-2) at batch 64 on CPU, with
2 torch threads. For each run:

- ``ratio`` = wall time of the run / (score evaluations x the median time of one evaluation, measured
  before the runs after a warm-up): 1.00 means no overhead. It also absorbs any drift of the machine's
  speed between the two measurements (other processes, frequency scaling).
- ``in-run med`` = the same with the median of the score calls made during the run;
- ``in-run sum`` = wall time / the time spent inside the score calls of that run: the overhead alone,
  robust to such drift.

The network's output layers are drawn at unit scale (``init_scale=1``) rather than near zero, so that the
score is O(1 / std) as for a trained network (a near-zero score would make the Langevin step explode).
Then, with the exact score of N(0, I) data (``score = -x``, which costs ~nothing), every sampler runs many
steps: its own cost per score evaluation, in milliseconds, and where it goes (cProfile, ``--profile``).

On a machine shared with other processes, two threads can be much slower than one (a parallel
region waits for a descheduled thread); ``--threads 1`` writes ``sampler_overhead_threads1.json``.

Prints tables, writes ``benchmarks/results/sampler_overhead.json``.

    PYTHONPATH=. python benchmarks/sampler_overhead.py            # ~1.5 min on 2 idle cores
    PYTHONPATH=. python benchmarks/sampler_overhead.py --quick    # batch 4
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import time
from pathlib import Path

import torch

from sdegen.nets import build_network, model_options
from sdegen.sampling import generate
from sdegen.score import score_fn_from_model
from sdegen.sde import VPSDE

RESULTS = Path(__file__).resolve().parent / "results"
PRESET = "small32"
EPS = 1e-3
GOAL = 1.05

# case name -> options of the "pc" sampler of sdegen.generate; "ODE:dopri5" -> the "ode" sampler
SAMPLERS: dict[str, dict] = {
    "P:euler_maruyama": dict(predictor="euler_maruyama", corrector=None),
    "P:reverse_diffusion": dict(predictor="reverse_diffusion", corrector=None),
    "P:ancestral": dict(predictor="ancestral", corrector=None),
    "PC:reverse_diffusion+langevin": dict(predictor="reverse_diffusion", corrector="langevin"),
    "PC:ancestral+langevin": dict(predictor="ancestral", corrector="langevin"),
    "C:annealed_langevin": dict(predictor=None, corrector="annealed_langevin", snr=0.3, n_corrector_steps=2),
    "ODE:dopri5": {},
}
NET_SAMPLERS = ("P:euler_maruyama", "P:reverse_diffusion", "PC:reverse_diffusion+langevin", "ODE:dopri5")


class TimedScore:
    """A score function that records the wall time of each of its calls (seconds, in ``times``)."""

    def __init__(self, score_fn):
        self.score_fn = score_fn
        self.times: list[float] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        out = self.score_fn(x, t)
        self.times.append(time.perf_counter() - t0)
        return out


def run_sampler(name: str, sde, score_fn, shape, steps: int, ode_tol: float, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if name == "ODE:dopri5":
        return generate(sde, score_fn, shape, sampler="ode", rtol=ode_tol, atol=ode_tol, eps=EPS, generator=gen)
    return generate(sde, score_fn, shape, sampler="pc", steps=steps, eps=EPS, generator=gen, **SAMPLERS[name])


def timed_run(name: str, sde, score_fn, shape, steps: int, ode_tol: float) -> dict:
    """Wall time, NFE and time inside the score of one sampler run."""
    score = TimedScore(score_fn)
    t0 = time.perf_counter()
    run_sampler(name, sde, score, shape, steps, ode_tol)
    wall = time.perf_counter() - t0
    inside = sum(score.times)
    return dict(wall_s=wall, nfe=len(score.times), score_s=inside, outside_s=wall - inside,
                median_call_in_run_s=statistics.median(score.times))


def median_eval(score_fn, x: torch.Tensor, t: torch.Tensor, warmup: int, reps: int) -> tuple[float, list]:
    """Median wall time (s) of ``reps`` score calls after ``warmup`` calls."""
    with torch.no_grad():
        for _ in range(warmup):
            score_fn(x, t)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            score_fn(x, t)
            times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def network_score(sde, seed: int = 0):
    torch.manual_seed(seed)   # build_network initialises with torch's default generator
    opts = {**model_options(PRESET), "init_scale": 1.0}
    net = build_network(opts).eval()
    n_params = sum(p.numel() for p in net.parameters())
    shape = (opts["num_channels"], opts["image_size"], opts["image_size"])
    return score_fn_from_model(net, sde, opts["parametrization"]), shape, n_params


def profile_run(name: str, sde, score_fn, shape, steps: int, ode_tol: float, top: int = 15) -> list[dict]:
    """cProfile of one run: the ``top`` functions by own time (``tottime``), as dicts."""
    prof = cProfile.Profile()
    prof.enable()
    run_sampler(name, sde, score_fn, shape, steps, ode_tol)
    prof.disable()
    stats = pstats.Stats(prof, stream=io.StringIO())
    rows = []
    for (file, line, func), (cc, nc, tt, ct, _) in stats.stats.items():
        where = f"{Path(file).parent.name}/{Path(file).name}:{line}" if line else file
        rows.append(dict(function=func, where=where, calls=nc, own_s=tt, cumulative_s=ct))
    return sorted(rows, key=lambda r: -r["own_s"])[:top]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="batch 4, fewer timing repeats")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 64; --quick 4)")
    p.add_argument("--steps", type=int, default=25,
                   help="steps of the P/PC/C runs (default 25; the VP discrete chain needs > 20)")
    p.add_argument("--ode-tol", type=float, default=1e-2, help="rtol = atol of the ODE run (default 1e-2)")
    p.add_argument("--reps", type=int, default=None, help="timed score calls (default 7; --quick 3)")
    p.add_argument("--cheap-steps", type=int, default=200, help="steps of the runs with the cheap exact score")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2; other values write "
                   "sampler_overhead_threads<N>.json)")
    p.add_argument("--net-samplers", nargs="*", default=list(NET_SAMPLERS), choices=list(SAMPLERS),
                   help="samplers run with the network (none: time one evaluation only)")
    p.add_argument("--profile", action="store_true", help="print cProfile tables of the cheap-score runs")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    batch = args.batch or (4 if args.quick else 64)
    reps = args.reps or (3 if args.quick else 7)
    torch.set_num_threads(args.threads)
    sde = VPSDE()
    if args.steps <= sde.beta_max:
        p.error(f"--steps must be > beta_max = {sde.beta_max} (VP discrete chain), got {args.steps}")
    load_before = os.getloadavg()

    # 0. warm-up of every sampler with a score that costs ~nothing: first-call costs (the ODE sampler
    # imports torchdiffeq, ~0.4 s) are not sampler overhead
    net_score, img, n_params = network_score(sde)
    shape = (batch, *img)
    cheap = lambda x, t: -x   # noqa: E731  exact score of N(0, I) under VP at every t (marginal stays N(0, I))
    for name in SAMPLERS:
        run_sampler(name, sde, cheap, shape, 25, args.ode_tol)

    # 1. the network: one evaluation, then each sampler
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    t_eval, eval_times = median_eval(net_score, x, torch.full((batch,), 0.5), warmup=2, reps=reps)
    print(f"{PRESET} ({n_params / 1e6:.2f} M parameters), batch {batch}, {args.threads} threads: "
          f"one score evaluation {t_eval * 1e3:.0f} ms (median of {reps}; "
          f"min {min(eval_times) * 1e3:.0f}, max {max(eval_times) * 1e3:.0f})")
    net_rows = []
    print(f"\n{'sampler':32s}{'NFE':>5s}{'wall s':>9s}{'ratio':>8s}{'in-run med':>11s}{'in-run sum':>11s}"
          f"{'outside ms/NFE':>16s}")
    for name in args.net_samplers:
        r = timed_run(name, sde, net_score, shape, args.steps, args.ode_tol)
        r.update(sampler=name, steps=None if name.startswith("ODE") else args.steps,
                 ratio=r["wall_s"] / (r["nfe"] * t_eval), ratio_in_run=r["wall_s"] / r["score_s"],
                 ratio_median_in_run=r["wall_s"] / (r["nfe"] * r["median_call_in_run_s"]),
                 outside_ms_per_nfe=1e3 * r["outside_s"] / r["nfe"])
        net_rows.append(r)
        print(f"{name:32s}{r['nfe']:5d}{r['wall_s']:9.1f}{r['ratio']:8.3f}{r['ratio_median_in_run']:11.3f}"
              f"{r['ratio_in_run']:11.4f}"
              f"{r['outside_ms_per_nfe']:16.2f}", flush=True)

    # 2. the cheap exact score of N(0, I) data: the samplers' own cost per evaluation
    t_cheap, _ = median_eval(cheap, x, torch.full((batch,), 0.5), warmup=3, reps=51)
    cheap_rows = []
    print(f"\ncheap score (-x, {t_cheap * 1e3:.3f} ms per call), {args.cheap_steps} steps, batch {batch}:")
    print(f"{'sampler':32s}{'NFE':>6s}{'wall s':>9s}{'sampler ms/NFE':>16s}{'predicted ratio':>17s}")
    for name in SAMPLERS:
        r = timed_run(name, sde, cheap, shape, args.cheap_steps, args.ode_tol)
        per_nfe = 1e3 * r["outside_s"] / r["nfe"]
        r.update(sampler=name, steps=None if name.startswith("ODE") else args.cheap_steps,
                 sampler_ms_per_nfe=per_nfe, predicted_ratio=1 + per_nfe / (1e3 * t_eval))
        cheap_rows.append(r)
        print(f"{name:32s}{r['nfe']:6d}{r['wall_s']:9.3f}{per_nfe:16.3f}{r['predicted_ratio']:17.4f}", flush=True)

    # 3. where the samplers' own time goes
    profiles = {name: profile_run(name, sde, cheap, shape, args.cheap_steps, args.ode_tol)
                for name in ("PC:reverse_diffusion+langevin", "ODE:dopri5")}
    if args.profile:
        for name, rows in profiles.items():
            print(f"\ncProfile, cheap score, {name} (own time):")
            for r in rows:
                print(f"  {r['own_s'] * 1e3:8.1f} ms {r['calls']:7d} calls  {r['function']}  ({r['where']})")

    worst = max((r["ratio"] for r in net_rows), default=None)
    worst_in_run = max((r["ratio_in_run"] for r in net_rows), default=None)
    worst_cheap = max(r["predicted_ratio"] for r in cheap_rows)
    load_after = os.getloadavg()
    if net_rows:
        print(f"\nlargest ratio {worst:.3f}, largest in-run ratio {worst_in_run:.4f} (goal < {GOAL})")
    print(f"largest predicted ratio from the cheap-score runs {worst_cheap:.4f}; load average "
          f"{load_before[0]:.1f} before, {load_after[0]:.1f} after, {os.cpu_count()} CPUs")
    args.out.mkdir(parents=True, exist_ok=True)
    meta = dict(preset=PRESET, init_scale=1.0, n_params=n_params, batch=batch, image=list(img), sde="vp",
                steps=args.steps, ode_rtol=args.ode_tol, threads=args.threads, eval_median_s=t_eval,
                eval_times_s=eval_times, cheap_eval_median_s=t_cheap, cheap_steps=args.cheap_steps,
                load_average_before=load_before, load_average_after=load_after, cpus=os.cpu_count(),
                torch=torch.__version__, goal=GOAL, quick=args.quick)
    result = dict(meta=meta, network=net_rows, cheap_score=cheap_rows, profiles=profiles,
                  largest_ratio=worst, largest_ratio_in_run=worst_in_run, largest_predicted_ratio=worst_cheap)
    name = "sampler_overhead.json" if args.threads == 2 else f"sampler_overhead_threads{args.threads}.json"
    (args.out / name).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
