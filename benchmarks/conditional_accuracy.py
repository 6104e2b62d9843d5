"""How close each inpainting method of :mod:`sdegen.conditional` comes to the exact conditional.

With the exact score of a 2-D Gaussian mixture, the conditional of the unobserved coordinate given the
observed one is an exact mixture (``GaussianMixture.condition``); every error left is the method's own,
plus the sampling noise of ``n`` draws. Cases (one observed coordinate, the same value in every row):

- ``gauss3|x1=0.5``: :func:`sdegen.toy.gauss3` given ``x_1 = 0.5`` (components 0 and 1, 63% / 37%);
- ``gauss3|x0=-1``: given ``x_0 = -1`` (components 0 and 2, 76% / 24%);
- ``corr2|x0=0``: two correlated components (60% / 40%) with ``x_0 = 0`` between them.

Sweeps, under the VP SDE (and VE for ``corr2``): ``replace`` on the PC sampler (reverse diffusion + Langevin) against
its steps and on ``dpm_solver_pp_2m`` against its NFE; ``repaint`` (200 steps, predictor only, ``J = 10``)
against ``U``, and on EDM's stochastic Heun sampler (``repaint:heun``: 50 steps, ``s_churn = 10``, ``J = 5``); ``smc`` (the twisted diffusion sampler, 200 steps) against ``K``. ``nfe`` is score evaluations per returned draw
(``steps * K`` for smc, each with two backward passes through the score). Errors (``GaussianMixture.distribution_report``): ``tv`` between the mean
responsibilities and the exact component weights, the error of the conditional mean and the relative
error of its variance. The noise floor is the same figures for exact draws (mean over 10 sets of ``n``).

Prints a table, writes ``benchmarks/results/conditional_accuracy.json`` (after every run, atomically;
``--resume`` continues an interrupted run) and ``conditional_accuracy.png``.

    PYTHONPATH=. python benchmarks/conditional_accuracy.py           # n = 4000 (~5-10 min on 2 busy cores)
    PYTHONPATH=. python benchmarks/conditional_accuracy.py --quick   # smoke run (~20 s)
"""
from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import torch

from sdegen.checkpoint import atomic_write
from sdegen.conditional import inpaint
from sdegen.sde import VESDE, VPSDE
from sdegen.toy import GaussianMixture, gauss3

RESULTS = Path(__file__).resolve().parent / "results"
SDES = {"vp": VPSDE, "ve": VESDE}
METRICS = ("tv", "mean_err", "cov_err")
FLOOR_SETS = 10


def corr2() -> GaussianMixture:
    return GaussianMixture([[-1.5, -1.0], [1.5, 1.0]], [[[0.3, 0.25], [0.25, 0.3]], [[0.3, -0.2], [-0.2, 0.3]]],
                           weights=[0.6, 0.4])


# case -> (mixture, observed coordinate, its value, SDEs)
CASES = {"gauss3|x1=0.5": (gauss3, 1, 0.5, ("vp",)), "gauss3|x0=-1": (gauss3, 0, -1.0, ("vp",)),
         "corr2|x0=0": (corr2, 0, 0.0, ("vp", "ve"))}


def sweeps(quick: bool) -> list[tuple[str, str, int, dict]]:
    """(method label, swept parameter, its value, inpaint options)."""
    steps = (100, 200) if quick else (100, 200, 500, 1000)
    nfes = (20,) if quick else (20, 50)
    us = (1, 3) if quick else (1, 2, 5, 10)
    ks = (1, 4) if quick else (1, 4, 16, 64)
    out = [("replace:pc", "steps", s, dict(method="replace", steps=s)) for s in steps]
    out += [("replace:dpm_solver_pp_2m", "nfe", n, dict(method="replace", sampler="dpm_solver_pp_2m", nfe=n))
            for n in nfes]
    out += [("repaint", "U", u, dict(method="repaint", steps=200, corrector=None, resample=u, jump=10)) for u in us]
    out += [("repaint:heun", "U", u, dict(method="repaint", sampler="heun", steps=50, s_churn=10.0, resample=u,
                                          jump=5)) for u in us]
    out += [("smc", "K", k, dict(method="smc", steps=200, particles=k)) for k in ks]
    return out


def nfe_of(label: str, opts: dict) -> int:
    if label == "replace:pc":
        return 2 * opts["steps"] - 1                      # a predictor and (but after the last) a corrector
    if label == "replace:dpm_solver_pp_2m":
        return opts["nfe"]
    if label.startswith("repaint"):                       # each jump level J steps back up U - 1 times
        n, j, u = opts["steps"], opts["jump"], opts["resample"]
        per_step = 2 if label == "repaint:heun" else 1      # Heun: 2 per step, 1 for the final denoising step
        return per_step * n + (label == "repaint:heun") + per_step * (u - 1) * j * len(range(1, n - j + 1, j))
    return opts["steps"] * opts["particles"]


def report(cond: GaussianMixture, x: torch.Tensor) -> dict:
    rep = cond.distribution_report(x)
    return {k: rep[k] for k in METRICS}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=4000, help="draws per run (default 4000)")
    ap.add_argument("--quick", action="store_true", help="a small smoke run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--resume", action="store_true", help="keep the finished runs of the JSON file in --out "
                    "(written after every run) and do the rest")
    args = ap.parse_args(argv)
    n = 500 if args.quick else args.n
    t_start = time.time()
    path = args.out / "conditional_accuracy.json"
    rows, floors = [], {}
    done = {}
    if args.resume and path.exists():   # keep the finished runs of an interrupted run with the same settings
        old = json.loads(path.read_text())
        if old["meta"]["n"] == n and old["meta"]["seed"] == args.seed:
            done = {(r["case"], r["sde"], r["method"], r["value"]): r for r in old["rows"]}
    meta = dict(n=n, seed=args.seed, quick=args.quick, floor_sets=FLOOR_SETS, threads=torch.get_num_threads(),
                cases={c: dict(observed=o, value=v, sdes=list(s)) for c, (_, o, v, s) in CASES.items()})

    def save(final: bool) -> None:
        text = json.dumps(dict(meta={**meta, "complete": final, "wall_seconds": time.time() - t_start},
                               floors=floors, rows=rows), indent=1).encode()
        atomic_write(path, lambda f: f.write(text))

    for case, (make, obs, value, sde_names) in CASES.items():
        mix = make()
        mask = torch.zeros(2, dtype=torch.bool)
        mask[obs] = True
        known = torch.zeros(n, 2)
        known[:, obs] = value
        cond = mix.condition(known[0].double(), mask)
        draws = [report(cond, cond.sample(n, torch.Generator().manual_seed(1000 + i))) for i in range(FLOOR_SETS)]
        floors[case] = {k: sum(d[k] for d in draws) / FLOOR_SETS for k in METRICS}
        for sde_name in sde_names[:1] if args.quick else sde_names:
            sde = SDES[sde_name]()
            for label, param, value_, opts in sweeps(args.quick):
                if (case, sde_name, label, value_) in done:
                    rows.append(done[(case, sde_name, label, value_)])
                    continue
                t0 = time.time()
                x = inpaint(sde, mix.score_fn(sde), known, mask, generator=torch.Generator().manual_seed(args.seed),
                            **opts)
                assert torch.equal(x[:, obs], known[:, obs])
                row = dict(case=case, sde=sde_name, method=label, param=param, value=value_,
                           nfe=nfe_of(label, opts), **report(cond, x[:, ~mask]), seconds=time.time() - t0)
                rows.append(row)
                save(final=False)
                print(f"{case:14} {sde_name:3} {label:25} {param:>5}={value_:<5} nfe={row['nfe']:6d} "
                      + " ".join(f"{k}={row[k]:.3f}" for k in METRICS) + f"  ({row['seconds']:.1f} s)", flush=True)
    wall = time.time() - t_start
    table = markdown(rows, floors)
    print("\n" + table)
    save(final=True)
    plot(rows, floors, args.out / "conditional_accuracy.png")
    print(f"\nwrote {path} and conditional_accuracy.png in {wall:.0f} s")
    return 0


def markdown(rows: list[dict], floors: dict) -> str:
    lines = ["| case | SDE | method | parameter | NFE | TV weights | mean err | var err (rel) |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['sde']} | {r['method']} | {r['param']}={r['value']} | {r['nfe']} | "
                     f"{r['tv']:.3f} | {r['mean_err']:.3f} | {r['cov_err']:.3f} |")
    for case, f in floors.items():
        lines.append(f"| {case} | - | exact draws (noise floor) | - | - | {f['tv']:.3f} | {f['mean_err']:.3f} | "
                     f"{f['cov_err']:.3f} |")
    return "\n".join(lines)


def plot(rows: list[dict], floors: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("replace:pc", "NFE (PC steps x 2)", "nfe"), ("repaint", "U (resamplings, J = 10, 200 steps)", "value"),
              ("repaint:heun", "U (resamplings, J = 5, Heun 50 steps)", "value"),
              ("smc", "K (particles, 200 steps)", "value")]
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.2))
    colors = dict(zip(floors, ("C0", "C1", "C2")))
    for ax, (method, xlabel, xkey) in zip(axes, panels):
        for case in floors:
            for sde, style in (("vp", "-o"), ("ve", "--s")):
                pts = [(r[xkey], r["tv"]) for r in rows
                       if r["method"] == method and r["case"] == case and r["sde"] == sde]
                if pts:
                    ax.plot(*zip(*pts), style, color=colors[case], label=f"{case} {sde}")
            ax.axhline(floors[case]["tv"], color=colors[case], lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_title(method)
    axes[0].set_ylabel("TV of conditional component weights")
    axes[0].legend(fontsize=7)
    fig.suptitle("inpainting with exact scores vs the exact conditional (dotted: noise floor of exact draws)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


if __name__ == "__main__":
    raise SystemExit(main())
