"""How far each sampler of :mod:`sdegen.sampling` is from the exact distribution, as a function of steps.

With the exact score of a Gaussian mixture (:mod:`sdegen.toy`) the only error left is the sampler's own
(discretisation, Langevin bias, ODE tolerance), plus the sampling noise of ``n`` samples. For ``gauss3``
(2-D, 3 anisotropic components) and ``grid25`` (2-D, 25 narrow modes), under the VE, VP and sub-VP SDEs:

- P: each predictor of :data:`sdegen.sampling.PREDICTORS` alone;
- PC: each predictor followed by the Langevin corrector (its default snr, one step);
- C: annealed Langevin dynamics alone (snr 0.3, two steps per noise level);

at 50 ... 2000 steps (runs above a per-data-set NFE budget are skipped), and the probability-flow ODE
(:func:`sdegen.sampling.sample_ode`, dopri5) at several tolerances. Ancestral sampling is not defined for
sub-VP. Distortion: the mixture's moment errors (``GaussianMixture.moment_report``: largest error of the
component weights, means and covariances) and the sliced 2-Wasserstein distance to ``n`` true samples.
The noise floor is the same figures for other sets of ``n`` true samples (the first, and the mean and 95th
percentile over 20 sets); a run is "at the floor" when all four figures are at most the floor's p95.

Prints tables, writes ``benchmarks/results/sampler_accuracy.json`` and ``sampler_accuracy.png``.

    PYTHONPATH=. python benchmarks/sampler_accuracy.py            # full run, n = 2000 (~10 min on 2 busy cores)
    PYTHONPATH=. python benchmarks/sampler_accuracy.py --quick    # small smoke run (~1 min)
"""
from __future__ import annotations

import argparse
import json
import math
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch

from sdegen import toy
from sdegen.metrics.lowdim import mode_stats, sliced_wasserstein
from sdegen.sampling import PREDICTORS, generate
from sdegen.score import CountingScore
from sdegen.sde import SubVPSDE, VESDE, VPSDE

RESULTS = Path(__file__).resolve().parent / "results"
STEPS = (50, 100, 200, 500, 1000, 2000)
QUICK_STEPS = (50, 200)
ODE_TOLS = (1e-2, 1e-3, 1e-4, 1e-5)
QUICK_ODE_TOLS = (1e-3,)
SDES = {"ve": VESDE, "vp": VPSDE, "subvp": SubVPSDE}
DATASETS = ("gauss3", "grid25")
# Largest NFE of one run, per data set: the exact score of 25 components costs ~6x that of 3.
MAX_NFE = {"gauss3": 4000, "grid25": 1000, "ring8": 2000, "gmm16d": 1000}
COST = {"gauss3": 1.0, "grid25": 6.0, "ring8": 2.0, "gmm16d": 6.0}   # relative cost of one score call
EPS = 1e-3
FLOOR_SETS = 20
METRICS = ("sw", "covs_err", "means_err", "weights_err")
TITLES = {"sw": "sliced W2 to true samples", "covs_err": "largest relative covariance error",
          "means_err": "largest mean error", "weights_err": "largest weight error"}

# case name -> options of the "pc" sampler of sdegen.generate (other options: the sampler's defaults)
SAMPLERS: dict[str, dict] = {
    **{f"P:{p}": dict(predictor=p, corrector=None) for p in PREDICTORS},
    **{f"PC:{p}+langevin": dict(predictor=p, corrector="langevin", n_corrector_steps=1)
       for p in PREDICTORS},
    "C:annealed_langevin": dict(predictor=None, corrector="annealed_langevin", snr=0.3, n_corrector_steps=2),
}
ODE = "ODE:dopri5"


def _nfe(opts: dict, steps: int) -> int:
    """Score evaluations of one :func:`sample` run (predictor first: no corrector after the last step)."""
    m = opts["n_corrector_steps"] if opts["corrector"] else 0
    return steps * m if opts["predictor"] is None else steps + (steps - 1) * m


def _isotropic_stds(mix: toy.GaussianMixture):
    """Per-component stds ``[K]`` if every covariance is ``s^2 I`` (mode statistics apply), else None."""
    d = mix.covs.diagonal(dim1=-2, dim2=-1)
    iso = torch.allclose(mix.covs, torch.diag_embed(d)) and torch.allclose(d, d[:, :1].expand_as(d))
    return d[:, 0].sqrt() if iso else None


def distortion(mix: toy.GaussianMixture, x: torch.Tensor, ref: torch.Tensor) -> dict:
    """Moment errors and z-scores, sliced W2 to ``ref`` (fixed projections), and mode statistics where
    the components are isotropic. Non-finite values (a component with too few samples) become None."""
    rep = mix.moment_report(x)
    out = {k: (v if math.isfinite(v) else None) for k, v in rep.items()}
    out["sw"] = sliced_wasserstein(x, ref, 256, torch.Generator().manual_seed(0))
    stds = _isotropic_stds(mix)
    if stds is not None:
        ms = mode_stats(x, mix.means, stds, threshold=4.0)
        out.update(modes=ms["modes_recovered"], hq_share=ms["high_quality_share"])
    return out


def _reference(mix, n: int, seed: int) -> torch.Tensor:
    return mix.sample(n, torch.Generator().manual_seed(10_000 + seed))


def noise_floor(data: str, n: int, seed: int) -> dict:
    """Distortion of ``FLOOR_SETS`` independent sets of ``n`` true samples: the first set's figures, and
    the mean and 95th percentile of each figure over the sets."""
    torch.set_num_threads(1)
    mix = toy.get_toy(data)
    ref = _reference(mix, n, seed)
    reps = [distortion(mix, mix.sample(n, torch.Generator().manual_seed(20_000 + seed + j)), ref)
            for j in range(FLOOR_SETS)]
    out = {"first": reps[0], "mean": {}, "p95": {}}
    for k in reps[0]:
        v = torch.tensor([r[k] for r in reps if r[k] is not None], dtype=torch.float64)
        out["mean"][k] = v.mean().item()
        out["p95"][k] = v.quantile(0.95).item()
    out["pass_rate"] = sum(_at_floor(r, out["p95"]) for r in reps) / len(reps)   # of the test below
    return out


def run_job(data: str, sde_name: str, sampler: str, n: int, steps_list, tols, max_nfe: int,
            threads: int, seed: int = 0) -> list[dict]:
    """All runs of one sampler on one (data set, SDE): one row per step count (or ODE tolerance)."""
    torch.set_num_threads(threads)
    mix, sde = toy.get_toy(data), SDES[sde_name]()
    ref = _reference(mix, n, seed)
    rows = []
    settings = [("rtol", tol) for tol in tols] if sampler == ODE else [("steps", s) for s in steps_list]
    for key, value in settings:
        row = dict(data=data, sde=sde_name, sampler=sampler, **{key: value})
        if sampler != ODE and _nfe(SAMPLERS[sampler], value) > max_nfe:
            rows.append({**row, "skipped": f"NFE {_nfe(SAMPLERS[sampler], value)} > budget {max_nfe}"})
            continue
        score = CountingScore(mix.score_fn(sde))
        gen = torch.Generator().manual_seed(seed)   # common random numbers across samplers
        t0 = time.perf_counter()
        try:
            if sampler == ODE:
                x = generate(sde, score, (n, mix.dim), sampler="ode", rtol=value, atol=value, eps=EPS, generator=gen)
            else:
                x = generate(sde, score, (n, mix.dim), sampler="pc", steps=value, eps=EPS, generator=gen,
                             **SAMPLERS[sampler])
        except FloatingPointError as e:
            rows.append({**row, "nfe": score.nfe, "error": str(e)})
            continue
        wall = time.perf_counter() - t0
        rows.append({**row, "nfe": score.nfe, "wall_s": round(wall, 3), **distortion(mix, x, ref)})
    return rows


def _supported(sde_name: str, sampler: str) -> bool:
    return not (sampler.startswith("P") and "ancestral" in sampler and not SDES[sde_name]().supports_ancestral)


# --- report -----------------------------------------------------------------------------------------

def _fmt(v) -> str:
    return "      -" if v is None else f"{v:7.4f}" if v < 10 else f"{v:7.1f}"


def _at_floor(row: dict, p95: dict) -> bool:
    return all(row.get(m) is not None and row[m] <= p95[m] for m in METRICS)


def summarize(rows: list[dict], floors: dict, steps_list, datasets) -> dict:
    """Print, per data set and figure, a sampler x steps table; then the fewest steps at the floor."""
    summary = {}
    samplers = list(SAMPLERS) + [ODE]
    for data in datasets:
        fl = floors[data]
        for metric in METRICS:
            print(f"\n== {data}: {TITLES[metric]} (lower is better; n true vs n true: first "
                  f"{_fmt(fl['first'][metric]).strip()}, mean {_fmt(fl['mean'][metric]).strip()}, "
                  f"p95 {_fmt(fl['p95'][metric]).strip()}) ==")
            print(f"{'sde   sampler':37s}" + "".join(f"{s:>8d}" for s in steps_list))
            for sde_name in SDES:
                for sampler in SAMPLERS:
                    by = {r["steps"]: r for r in rows if r["data"] == data and r["sde"] == sde_name
                          and r["sampler"] == sampler}
                    if not by:
                        continue
                    cells = []
                    for s in steps_list:
                        r = by.get(s, {})
                        cells.append("   skip" if "skipped" in r else "    nan" if "error" in r
                                     else _fmt(r.get(metric)))
                    print(f"{sde_name:6s}{sampler:31s}" + " ".join(cells))
                ode = [r for r in rows if r["data"] == data and r["sde"] == sde_name and r["sampler"] == ODE]
                if ode:
                    print(f"{sde_name:6s}{ODE:31s}" + "; ".join(
                        f"rtol {r['rtol']:g}: {_fmt(r.get(metric)).strip()} (NFE {r.get('nfe')})" for r in ode))
        print(f"\n== {data}: fewest steps (ODE: largest rtol) with all four figures <= the floor's p95 ==")
        print(f"{'sampler':31s}" + "".join(f"{s:>14s}" for s in SDES))
        summary[data] = {}
        for sampler in samplers:
            cells, out = [], {}
            for sde_name in SDES:
                runs = [r for r in rows if r["data"] == data and r["sde"] == sde_name and r["sampler"] == sampler]
                if not runs:
                    cells.append("n/a")
                    out[sde_name] = None
                    continue
                key = "rtol" if sampler == ODE else "steps"
                ok = [r for r in runs if _at_floor(r, fl["p95"])]
                best = (max if sampler == ODE else min)(ok, key=lambda r: r[key]) if ok else None
                out[sde_name] = best and {key: best[key], "nfe": best["nfe"]}
                cells.append(f"{best[key]:g} ({best['nfe']})" if best else "not reached")
            summary[data][sampler] = out
            print(f"{sampler:31s}" + "".join(f"{c:>14s}" for c in cells))
        print("(cells: steps or rtol, and NFE in brackets; 'not reached' within the steps / NFE budget run. "
              f"The {FLOOR_SETS} true sample sets pass this test {100 * fl['pass_rate']:.0f}% of the time: "
              "one run is one draw, so a single pass or miss near the floor is weak evidence)")
    return summary


def plot(rows: list[dict], floors: dict, datasets, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(d, m) for d in datasets for m in ("sw", "covs_err")]
    fig, axes = plt.subplots(len(panels), len(SDES), figsize=(15, 4.2 * len(panels)), squeeze=False)
    for i, (data, metric) in enumerate(panels):
        for j, sde_name in enumerate(SDES):
            ax = axes[i][j]
            for c, sampler in enumerate(list(SAMPLERS) + [ODE]):
                pts = sorted((r["nfe"], r[metric]) for r in rows if r["data"] == data and r["sde"] == sde_name
                             and r["sampler"] == sampler and r.get(metric) is not None)
                if pts:
                    style = "^:" if sampler == ODE else "--s" if sampler.startswith("C") else \
                        "-o" if sampler.startswith("PC") else "-."
                    color = "k" if sampler == ODE else f"C{c}"   # one colour per sampler in every panel
                    ax.plot(*zip(*pts), style, ms=3, lw=1.1, label=sampler, color=color)
            fl = floors[data]
            ax.axhline(fl["mean"][metric], c="gray", lw=0.8, label="true vs true (mean)")
            ax.axhline(fl["p95"][metric], c="gray", lw=0.8, ls="--", label="true vs true (p95)")
            ax.set(xscale="log", yscale="log", xlabel="score evaluations (P: = steps; PC, C: 2 x steps)",
                   ylabel=metric, title=f"{data} / {sde_name}: {TITLES[metric]}")
            ax.grid(alpha=0.3, which="both")
    axes[0][0].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small run: steps 50 and 200, one ODE tolerance, n=400")
    p.add_argument("--n", type=int, default=None, help="samples per run (default 2000; --quick 400)")
    p.add_argument("--data", nargs="+", default=list(DATASETS), choices=sorted(MAX_NFE),
                   help=f"mixtures with an exact score (default {' '.join(DATASETS)})")
    p.add_argument("--max-nfe", type=int, default=None,
                   help=f"skip runs above this NFE (default per data set: {MAX_NFE})")
    p.add_argument("--workers", type=int, default=2, help="processes, one thread each (1: in process, 2 threads)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    steps_list, tols = (QUICK_STEPS, QUICK_ODE_TOLS) if args.quick else (STEPS, ODE_TOLS)
    n = args.n or (400 if args.quick else 2000)
    if n < 100:
        p.error(f"--n must be >= 100, got {n}")
    threads = 2 if args.workers == 1 else 1
    jobs = [(d, s, smp) for d in args.data for s in SDES for smp in list(SAMPLERS) + [ODE] if _supported(s, smp)]

    def cost(job):  # longest first, so that the workers finish together
        d, _, smp = job
        budget = args.max_nfe or MAX_NFE[d]
        nfes = [200 * len(tols)] if smp == ODE else [f for s in steps_list if (f := _nfe(SAMPLERS[smp], s)) <= budget]
        return COST[d] * sum(nfes)

    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, args.workers)) as pool:
        floor_f = {d: pool.submit(noise_floor, d, n, 0) for d in args.data}
        futures = {pool.submit(run_job, d, s, smp, n, steps_list, tols, args.max_nfe or MAX_NFE[d], threads): job
                   for job in sorted(jobs, key=cost, reverse=True) for d, s, smp in [job]}
        results = {}
        for k, f in enumerate(as_completed(futures), 1):
            results[futures[f]] = f.result()
            print(f"[{time.perf_counter() - t0:6.0f} s] {k}/{len(jobs)} done: {' '.join(futures[f])}", flush=True)
        rows = [r for job in jobs for r in results[job]]
        floors = {d: f.result() for d, f in floor_f.items()}
    wall = time.perf_counter() - t0
    summary = summarize(rows, floors, steps_list, args.data)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = dict(n_samples=n, steps=list(steps_list), ode_rtols=list(tols), eps=EPS, floor_sets=FLOOR_SETS,
                max_nfe={d: args.max_nfe or MAX_NFE[d] for d in args.data},
                samplers={k: v for k, v in SAMPLERS.items()}, workers=args.workers, wall_s=round(wall, 1),
                torch=torch.__version__, quick=args.quick)
    (args.out / "sampler_accuracy.json").write_text(
        json.dumps(dict(meta=meta, floors=floors, summary=summary, rows=rows), indent=1))
    plot(rows, floors, args.data, args.out / "sampler_accuracy.png")
    print(f"\nwrote {args.out / 'sampler_accuracy.json'} and sampler_accuracy.png in {wall:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
