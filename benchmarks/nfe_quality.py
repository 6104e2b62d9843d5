"""Sample quality versus score evaluations (NFE) on Gaussian mixtures with exact scores.

For ``grid25`` (2-D, narrow modes) and ``gmm16d`` (16-D, anisotropic), under the VP and VE SDEs, every
sampler of :mod:`sdegen.solvers` runs at NFE in {5, 10, 20, 35, 50, 100, 1000} with the exact score;
the seed's P1000 / PC1000 (:func:`sdegen.sampling.sample`, reverse diffusion without / with Langevin)
are the reference line; the same score is also driven through diffusers' schedulers (if diffusers is
installed), each fed the exact noise level its update uses. All runs of one (data, SDE) start from
the same seed, so the deterministic samplers share their prior draws.

Distortion, two figures: the sliced Wasserstein-2 distance to an independent set of true samples, and
the largest moment z-score of ``GaussianMixture.moment_report`` (weights, means, covariances; error
over its standard error). Both carry sampling noise at this sample size: ``N_TRUE`` fresh true sample
sets measure it (mean +- sd), and the goals are checked strictly and "within 2 sd".

Prints a table, writes ``benchmarks/results/nfe_quality.json`` and ``nfe_quality.png``.

    PYTHONPATH=. python benchmarks/nfe_quality.py            # full run (~10 min on 2 cores)
    PYTHONPATH=. python benchmarks/nfe_quality.py --quick    # small smoke run
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from sdegen import toy
from sdegen.metrics.lowdim import sliced_wasserstein
from sdegen.sampling import generate, sampler_defaults
from sdegen.score import CountingScore
from sdegen.sde import VESDE, VPSDE
from sdegen.solvers import sigma_of_t, t_of_sigma

RESULTS = Path(__file__).resolve().parent / "results"
NFES = (5, 10, 20, 35, 50, 100, 1000)
QUICK_NFES = (5, 20, 100)
SDES = {"vp": VPSDE, "ve": VESDE}
DATASETS = ("grid25", "gmm16d")
EPS = 1e-3
N_TRUE = 8  # independent true sample sets that measure the noise of each figure

# our samplers (all at an exact NFE budget)
OURS = {   # name -> sampler of sdegen.generate and its options
    "heun": dict(sampler="heun"),
    "heun_churn": dict(sampler="heun", s_churn=10.0, s_tmin=0.05, s_tmax=50.0),
    "euler(ddim)": dict(sampler="ddim"),
    "ddim_eta1": dict(sampler="ddim", eta=1.0),
    "dpm_solver_3s": dict(sampler="dpm_solver", order=3),
    "dpm_solver_3m": dict(sampler="dpm_solver_multistep", order=3),
    "dpm_solver_pp_2m": dict(sampler="dpm_solver_pp_2m"),
    "dpm_solver_pp_2m_logsnr": dict(sampler="dpm_solver_pp_2m", schedule="logsnr"),  # Lu et al.'s grid
}
ADAPTIVE_RTOLS = (0.1, 0.05, 0.02, 0.01)
QUICK_RTOLS = (0.05,)
PEERS = ("diffusers_dpmpp_2m_karras", "diffusers_euler_karras", "diffusers_heun_karras", "diffusers_sde_ve_pc")


# --- diffusers peers, driven by the same exact score -------------------------------------------------

def _alphas_cumprod_betas(sde, n_train: int = 1000) -> list[float]:
    """Betas whose cumulative product ``abar_i = 1 / (1 + sigma(t_i)^2)``, ``t_i = (i + 1) / n_train``,
    reproduces the SDE's sigma(t) (VP: ``abar = a^2``; VE and sub-VP through the sigma equivalence)."""
    t = torch.arange(1, n_train + 1, dtype=torch.float64) / n_train * sde.T
    abar = 1.0 / (1.0 + sigma_of_t(sde, t) ** 2)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    return (1.0 - abar / prev).tolist()


def _eps_of_scaled(sde, score, x_in: torch.Tensor, sigma: float) -> torch.Tensor:
    """Noise prediction for the VP-scaled input ``x_in = x_hat / sqrt(1 + sigma^2)`` at noise level sigma."""
    t = t_of_sigma(sde, sigma).item()
    a, s = (v.item() for v in sde.marginal_coeffs(torch.tensor([t], dtype=torch.float64)))
    x_hat = x_in * math.sqrt(1.0 + sigma ** 2)
    return -s * score(a * x_hat, torch.full((x_in.shape[0],), t, dtype=x_in.dtype))


def run_peer(name: str, sde, score, n: int, dim: int, nfe: int, seed: int):
    """Samples and the NFE spent by a diffusers scheduler; ``None`` where the scheduler does not apply."""
    import diffusers

    gen = torch.Generator().manual_seed(seed)
    if name == "diffusers_sde_ve_pc":
        if not isinstance(sde, VESDE) or nfe < 2:
            return None
        sched = diffusers.ScoreSdeVeScheduler(sigma_min=sde.sigma_min, sigma_max=sde.sigma_max,
                                              sampling_eps=EPS, snr=sampler_defaults("pc")["snr"],
                                              correct_steps=1)
        sched.set_timesteps(nfe // 2, sampling_eps=EPS)
        sched.set_sigmas(nfe // 2, sampling_eps=EPS)
        x = sched.init_noise_sigma * torch.randn(n, dim, generator=gen)
        mean = x
        for i, t in enumerate(sched.timesteps):  # the pipeline's loop: correct, then predict
            tv = torch.full((n,), float(t))
            x = sched.step_correct(score(x, tv), x, generator=gen).prev_sample
            x, mean = sched.step_pred(score(x, tv), t, x, generator=gen, return_dict=False)
        return mean
    kind, steps = {
        "diffusers_dpmpp_2m_karras": (diffusers.DPMSolverMultistepScheduler, nfe),
        "diffusers_euler_karras": (diffusers.EulerDiscreteScheduler, nfe),
        "diffusers_heun_karras": (diffusers.HeunDiscreteScheduler, (nfe + 1) // 2),  # 2 steps - 1 NFE
    }[name]
    if steps < 1:
        return None
    sched = kind(trained_betas=_alphas_cumprod_betas(sde), use_karras_sigmas=True)
    sched.set_timesteps(steps)
    x = sched.init_noise_sigma * torch.randn(n, dim, generator=gen)
    for t in sched.timesteps:
        x_in = sched.scale_model_input(x, t)
        i = sched.step_index if sched.step_index is not None else 0
        eps = _eps_of_scaled(sde, score, x_in, float(sched.sigmas[i]))  # the sigma the update uses
        x = sched.step(eps, t, x, return_dict=False)[0]
    return x


# --- one (data set, SDE) job ------------------------------------------------------------------------

def _distortion(mix, x: torch.Tensor, ref: torch.Tensor, proj_seed: int) -> dict:
    if not torch.isfinite(x).all():
        return {"sw": None}
    rep = mix.moment_report(x)
    out = {"sw": sliced_wasserstein(x, ref, 256, torch.Generator().manual_seed(proj_seed))}
    out.update({k: (v if math.isfinite(v) else None) for k, v in rep.items()})
    zs = [rep[k] for k in ("weights_z", "means_z", "covs_z")]
    out["max_z"] = max(zs) if all(math.isfinite(z) for z in zs) else None
    return out


def run_job(data: str, sde_name: str, n: int, nfes, rtols, peers: bool, seed: int = 0
            ) -> tuple[list[dict], float]:
    """All runs on one (data set, SDE): rows of results, and the CPU seconds spent."""
    torch.set_num_threads(1)
    cpu0 = time.process_time()
    mix, sde = toy.get_toy(data), SDES[sde_name]()
    ref = mix.sample(n, torch.Generator().manual_seed(10_000 + seed))
    rows = []

    def record(method, family, x, nfe, wall, **extra):
        row = dict(data=data, sde=sde_name, method=method, family=family, nfe=nfe, wall_s=round(wall, 3),
                   **extra, **_distortion(mix, x, ref, seed))
        rows.append(row)

    for k in range(N_TRUE):  # the spread of each figure at this sample size, from fresh true samples
        record(f"true_samples_{k}", "floor", mix.sample(n, torch.Generator().manual_seed(20_000 + k)), 0, 0.0)
    for method, opts in OURS.items():
        for nfe in nfes:
            score = CountingScore(mix.score_fn(sde))
            t0 = time.perf_counter()
            x = generate(sde, score, (n, mix.dim), nfe=nfe, eps=EPS, generator=torch.Generator().manual_seed(seed),
                         **opts)
            record(method, "ours", x, score.nfe, time.perf_counter() - t0)
    for rtol in rtols:
        score, info = CountingScore(mix.score_fn(sde)), {}
        t0 = time.perf_counter()
        x = generate(sde, score, (n, mix.dim), sampler="adaptive_sde", rtol=rtol, eps=EPS, info=info,
                     generator=torch.Generator().manual_seed(seed))
        record(f"adaptive_sde(rtol={rtol})", "ours_adaptive", x, round(score.n_scored / n, 1),
               time.perf_counter() - t0, batched_calls=score.nfe)
    for method, corrector in (("P1000", None), ("PC1000", "langevin")):
        score = CountingScore(mix.score_fn(sde))
        t0 = time.perf_counter()
        x = generate(sde, score, (n, mix.dim), sampler="pc", predictor="reverse_diffusion", corrector=corrector,
                     steps=1000, eps=EPS, generator=torch.Generator().manual_seed(seed))
        record(method, "reference", x, score.nfe, time.perf_counter() - t0)
    if peers:
        for method in PEERS:
            for nfe in nfes:
                score = CountingScore(mix.score_fn(sde))
                t0 = time.perf_counter()
                x = run_peer(method, sde, score, n, mix.dim, nfe, seed)
                if x is not None:
                    record(method, "peer", x, score.nfe, time.perf_counter() - t0)
    return rows, time.process_time() - cpu0


# --- report -----------------------------------------------------------------------------------------

TIE = 1.001  # ours counts as at least as good as a peer within 0.1% (same algorithm, float32 round-off)
METRICS = {"sw": "sliced W2 to true samples", "max_z": "largest moment z-score (true samples: ~1-4)"}


def _fmt(v):
    return "    -   " if v is None else f"{v:8.4f}" if v < 10 else f"{v:8.2f}"


def _best(sub, family, n, metric):
    """Lowest ``metric`` among ``family`` rows that spent ``n`` (or, for peers that cannot, ``n - 1``) NFE."""
    c = [r for r in sub if r["family"] == family and r[metric] is not None and n - 1 <= r["nfe"] <= n]
    return min(c, key=lambda r: r[metric]) if c else None


def summarize(rows: list[dict], nfes) -> dict:
    """Print one table per (data, SDE, metric) and check the two goals for each metric."""
    goals = {}
    for data in DATASETS:
        for sde_name in SDES:
            sub = [r for r in rows if r["data"] == data and r["sde"] == sde_name]
            if not sub:
                continue
            refs = {r["method"]: r for r in sub if r["family"] == "reference"}
            floors = [r for r in sub if r["family"] == "floor"]
            fixed = [r for r in sub if r["family"] in ("ours", "peer")]
            key = f"{data}/{sde_name}"
            goals[key] = {}
            for metric, title in METRICS.items():
                print(f"\n== {data} / {sde_name.upper()}: {title} (lower is better) ==")
                fv = [r[metric] for r in floors if r[metric] is not None]
                f_mean, f_sd = statistics.mean(fv), statistics.stdev(fv) if len(fv) > 1 else 0.0
                print(f"true vs true {f_mean:.4f} +- {f_sd:.4f} (sd over {len(fv)} sets); " + "; ".join(
                    f"{m} {_fmt(r[metric])} (NFE {r['nfe']})" for m, r in refs.items()))
                print(f"{'NFE':26s}" + "".join(f"{n:>9d}" for n in nfes))
                for method in dict.fromkeys(r["method"] for r in fixed):
                    by = {r["nfe"]: r for r in fixed if r["method"] == method}
                    cells = [by.get(n) or by.get(n - 1) for n in nfes]  # peers that cannot spend n: n - 1
                    print(f"{method:26s}" + " ".join(_fmt(r[metric]) if r else "    -   " for r in cells))
                for r in sub:
                    if r["family"] == "ours_adaptive":
                        print(f"{r['method']:26s} NFE/sample {r['nfe']:7.1f}: {_fmt(r[metric])}")
                pc, b20 = refs["PC1000"][metric], _best(sub, "ours", 20, metric)
                per_nfe = {}
                for n in nfes:
                    o, p = _best(sub, "ours", n, metric), _best(sub, "peer", n, metric)
                    per_nfe[n] = dict(ours=o and [o["method"], o[metric]], peer=p and [p["method"], p[metric]],
                                      ours_at_least_as_good=p is None or (o is not None and o[metric] <= p[metric] * TIE),
                                      within_noise=p is None or (o is not None and o[metric] <= p[metric] + 2 * f_sd))
                g = goals[key][metric] = dict(
                    true_vs_true_mean=f_mean, true_vs_true_sd=f_sd, pc1000=pc, p1000=refs["P1000"][metric],
                    best_ours_at_20=b20 and [b20["method"], b20[metric]],
                    reaches_pc1000_at_20=bool(b20 and pc is not None and b20[metric] <= pc),
                    within_noise_of_pc1000_at_20=bool(b20 and pc is not None and b20[metric] <= pc + 2 * f_sd),
                    ours_best_everywhere=all(v["ours_at_least_as_good"] for v in per_nfe.values()),
                    ours_best_everywhere_within_noise=all(v["within_noise"] for v in per_nfe.values()),
                    per_nfe=per_nfe)
                lost = [n for n, v in per_nfe.items() if not v["ours_at_least_as_good"]]
                print(f"goal 1 (best of ours at 20 NFE <= PC1000): {g['reaches_pc1000_at_20']}; within 2 sd: "
                      f"{g['within_noise_of_pc1000_at_20']} ({b20 and b20['method']} {_fmt(b20 and b20[metric])} "
                      f"vs {_fmt(pc)})")
                print(f"goal 2 (best of ours <= best peer at every NFE): {g['ours_best_everywhere']}"
                      + (f" (not at NFE {lost})" if lost else "")
                      + f"; within 2 sd: {g['ours_best_everywhere_within_noise']}")
    return goals


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(d, m) for d in DATASETS for m in METRICS]
    fig, axes = plt.subplots(len(panels), len(SDES), figsize=(13, 5 * len(panels)), squeeze=False)
    for i, (data, metric) in enumerate(panels):
        for j, sde_name in enumerate(SDES):
            ax = axes[i][j]
            ax.set_prop_cycle(color=plt.cm.tab20.colors)
            sub = [r for r in rows if r["data"] == data and r["sde"] == sde_name and r[metric] is not None]
            family = {r["method"]: r["family"] for r in sub}
            for method in [m for m, f in family.items() if f in ("ours", "peer")]:
                pts = sorted((r["nfe"], r[metric]) for r in sub if r["method"] == method)
                ax.plot(*zip(*pts), "-o" if family[method] == "ours" else "--s", ms=3, lw=1.2, label=method)
            ad = sorted((r["nfe"], r[metric]) for r in sub if r["family"] == "ours_adaptive")
            if ad:
                ax.plot(*zip(*ad), "k^:", ms=5, label="adaptive_sde (rtol sweep)")
            for r in sub:
                if r["family"] == "reference":
                    ax.axhline(r[metric], ls="-." if r["method"] == "PC1000" else ":", c="gray",
                               label=f"{r['method']} (NFE {r['nfe']})")
            fv = [r[metric] for r in sub if r["family"] == "floor"]
            if fv:
                ax.axhspan(min(fv), max(fv), color="k", alpha=0.12, label="true vs true (range)")
                ax.set_ylim(0.5 * min(fv), 30 * max(fv))  # the worst few-step runs are off the chart
            ax.set(xscale="log", yscale="log", xlabel="NFE", ylabel=metric, title=f"{data} / {sde_name.upper()}: {METRICS[metric]}")
            ax.grid(alpha=0.3, which="both")
    axes[0][0].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small run: few NFEs, few samples")
    p.add_argument("--n", type=int, default=None, help="samples per run (default 3000; --quick 400)")
    p.add_argument("--workers", type=int, default=2, help="processes (one (data, SDE) job each)")
    p.add_argument("--no-peers", action="store_true", help="skip the diffusers schedulers")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--replot", action="store_true", help="re-print and re-plot the JSON in --out; run nothing")
    args = p.parse_args(argv)
    if args.replot:
        saved = json.loads((args.out / "nfe_quality.json").read_text())
        summarize(saved["rows"], saved["meta"]["nfes"])
        plot(saved["rows"], args.out / "nfe_quality.png")
        return 0
    nfes, rtols = (QUICK_NFES, QUICK_RTOLS) if args.quick else (NFES, ADAPTIVE_RTOLS)
    n = args.n or (400 if args.quick else 3000)
    peers, peer_note = not args.no_peers, None
    if peers:
        try:
            import diffusers
            peer_note = f"diffusers {diffusers.__version__}"
        except ImportError:
            peers, peer_note = False, "diffusers is not installed: peers skipped (pip install diffusers)"
            print(peer_note)
    jobs = [(d, s) for d in DATASETS for s in SDES]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = [pool.submit(run_job, d, s, n, nfes, rtols, peers) for d, s in jobs]
        results = [f.result() for f in futures]
    rows = [r for rs, _ in results for r in rs]
    cpu = {f"{d}/{s}": round(c, 1) for (d, s), (_, c) in zip(jobs, results)}
    wall = time.perf_counter() - t0
    goals = summarize(rows, nfes)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = dict(n_samples=n, nfes=list(nfes), eps=EPS, adaptive_rtols=list(rtols), peers=peer_note,
                wall_s=round(wall, 1), cpu_s_per_job=cpu, cpu_s_total=round(sum(cpu.values()), 1),
                torch=torch.__version__, quick=args.quick)
    (args.out / "nfe_quality.json").write_text(json.dumps(dict(meta=meta, goals=goals, rows=rows), indent=1))
    plot(rows, args.out / "nfe_quality.png")
    print(f"\nwrote {args.out / 'nfe_quality.json'} and nfe_quality.png in {wall:.0f} s "
          f"(CPU {sum(cpu.values()):.0f} s over {len(jobs)} jobs: {cpu})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
