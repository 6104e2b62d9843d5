"""DDLS on 2-D toy data: does Langevin sampling in latent space improve a trained GAN's samples?

Trains a small MLP GAN on ``grid25`` (25 Gaussians, std 0.05) and on ``swiss_roll`` (CPU, about a minute
each; reused from ``--workdir`` when already trained), then draws ``--n`` samples from

- the plain generator ``G(z)``, ``z ~ N(0, I)``;
- DDLS (Che et al. 2020, Algorithm 1) and DDLS + MALA, at several step sizes ``e`` and step counts,

all from the same initial latents and the same noise seeds. grid25 reports the modes recovered (of 25)
and the high-quality share (within 4 std of a centre, the protocol of Che et al. 2020's synthetic
experiments) plus the KL divergence of the high-quality samples' mode histogram from uniform (low: no
mode was favoured). swiss roll reports the sliced 2-Wasserstein distance and the MMD^2 to fresh data
samples, and the share of samples within 3 noise std (0.15) of the noiseless spiral. Prints a table; writes benchmarks/results/ddls_grid25.json
and .png. The GANs (2-D latent, MLPs of 3 x 128) use Adam with lr 1e-3, betas (0.5, 0.999): the default
lr 2e-4 needs several times more steps.

    PYTHONPATH=. python benchmarks/ddls_grid25.py      # a few minutes on CPU
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from sdegen import checkpoint
from sdegen.gan import GANConfig, ddls, train_gan
from sdegen.metrics.lowdim import mmd_rbf, mode_stats, sliced_wasserstein
from sdegen.toy import get_toy

RESULTS = Path(__file__).parent / "results"
STEP_SIZES = (0.003, 0.01, 0.03)
STEP_COUNTS = (25, 100, 250)


def grid25_metrics(x: torch.Tensor) -> dict:
    toy = get_toy("grid25")
    s = mode_stats(x, toy.means, 0.05, threshold=4.0)
    counts = torch.tensor(s["counts"], dtype=torch.float64)
    p = counts / counts.sum().clamp(min=1)
    kl = float((p[p > 0] * (p[p > 0] * len(p)).log()).sum())
    return {"modes": s["modes_recovered"], "hq_share": s["high_quality_share"], "mode_kl": kl}


def _spiral(n: int = 4000) -> torch.Tensor:
    theta = torch.linspace(1.5 * math.pi, 4.5 * math.pi, n, dtype=torch.float64)
    return torch.stack([theta * theta.cos(), theta * theta.sin()], 1) / 7.0   # sdegen.toy's swiss roll


def swiss_metrics(x: torch.Tensor, reference: torch.Tensor) -> dict:
    near = torch.cdist(x.double(), _spiral()).min(1).values <= 0.15
    return {"sw2": sliced_wasserstein(x, reference, 256, torch.Generator().manual_seed(0)),
            "mmd2": mmd_rbf(x[:2000], reference[:2000]), "near_share": float(near.double().mean())}


def evaluate(name: str, G, D, n: int, metrics, seed: int = 0) -> tuple[list[dict], dict]:
    z0 = torch.randn((n,) + G.latent_shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        rows = [{"method": "plain", "step_size": None, "n_steps": 0, **metrics(G(z0))}]
    samples = {"plain": G(z0).detach()}
    for mala in (False, True):
        for e in STEP_SIZES:
            for k in STEP_COUNTS:
                t = time.time()
                r = ddls(G, D, z0, step_size=e, n_steps=k, mala=mala,
                         rng=torch.Generator().manual_seed(seed + 1))
                method = "ddls+mala" if mala else "ddls"
                rows.append({"method": method, "step_size": e, "n_steps": k, **metrics(r.x),
                             "acceptance": r.acceptance_rate, "seconds": round(time.time() - t, 2)})
                samples[f"{method} e={e} k={k}"] = r.x
        print(f"  {name}: {'MALA' if mala else 'ULA'} done", flush=True)
    return rows, samples


def train(data: str, steps: int, workdir: Path, seed: int) -> tuple:
    cfg = GANConfig(data=data, steps=steps, lr=1e-3, batch_size=256, hidden=128, depth=3, latent_dim=2,
                    ckpt_every=steps, sample_every=0, log_every=100, seed=seed)
    done = checkpoint.list_checkpoints(workdir / data)
    t = time.time()
    run = train_gan(cfg, workdir / data, progress=False)
    return run, {"config": {k: getattr(cfg, k) for k in ("steps", "lr", "batch_size", "hidden", "depth",
                                                          "latent_dim", "seed")},
                 "seconds": round(time.time() - t, 1), "reused_checkpoint": bool(done and done[0][0] >= steps),
                 "last": run.stats[-1] if run.stats else None}


def table(rows: list[dict], keys: list[str]) -> str:
    head = f"{'method':<10} {'e':>6} {'steps':>5} " + " ".join(f"{k:>10}" for k in keys) + f" {'accept':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        vals = " ".join(f"{r[k]:>10.4f}" if isinstance(r[k], float) else f"{r[k]:>10}" for k in keys)
        acc = f"{r['acceptance']:.3f}" if r.get("acceptance") is not None else "-"
        lines.append(f"{r['method']:<10} {str(r['step_size'] or '-'):>6} {r['n_steps']:>5} {vals} {acc:>7}")
    return "\n".join(lines)


def plot(panels: list[tuple[str, torch.Tensor, torch.Tensor]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 3, figsize=(12, 8))
    for ax, (title, x, ref) in zip(axes.flat, panels):
        ax.scatter(*ref[:, :2].numpy().T, s=1, c="0.8")
        ax.scatter(*x[:3000, :2].detach().numpy().T, s=1, c="C0")
        ax.set_title(title, fontsize=9)
        ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def best(rows: list[dict], method: str, key: str, largest: bool = True) -> dict:
    cand = [r for r in rows if r["method"] == method]
    return max(cand, key=lambda r: r[key] if largest else -r[key])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="samples per method")
    ap.add_argument("--train-steps", type=int, default=4000)
    ap.add_argument("--workdir", default="runs/bench_ddls", help="GAN runs (reused when present)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for these tiny nets)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    out: dict = {"n": args.n, "step_sizes": STEP_SIZES, "step_counts": STEP_COUNTS}
    panels = []
    workdir = Path(args.workdir)

    run, info = train("grid25", args.train_steps, workdir, args.seed)
    print(f"grid25 GAN trained in {info['seconds']} s: {info['last']}", flush=True)
    rows, samples = evaluate("grid25", run.G, run.D, args.n, grid25_metrics, args.seed)
    out["grid25"] = {"train": info, "rows": rows}
    print(table(rows, ["modes", "hq_share", "mode_kl"]), flush=True)
    ref = get_toy("grid25").sample(3000, torch.Generator().manual_seed(1))
    b_ula, b_mala = best(rows, "ddls", "hq_share"), best(rows, "ddls+mala", "hq_share")
    panels += [(f"grid25 plain: HQ {rows[0]['hq_share']:.3f}", samples["plain"], ref),
               (f"DDLS e={b_ula['step_size']} k={b_ula['n_steps']}: HQ {b_ula['hq_share']:.3f}",
                samples[f"ddls e={b_ula['step_size']} k={b_ula['n_steps']}"], ref),
               (f"DDLS+MALA e={b_mala['step_size']} k={b_mala['n_steps']}: HQ {b_mala['hq_share']:.3f}",
                samples[f"ddls+mala e={b_mala['step_size']} k={b_mala['n_steps']}"], ref)]

    run, info = train("swiss_roll", args.train_steps, workdir, args.seed)
    print(f"swiss_roll GAN trained in {info['seconds']} s: {info['last']}", flush=True)
    reference = get_toy("swiss_roll").sample(args.n, torch.Generator().manual_seed(7))
    other = get_toy("swiss_roll").sample(args.n, torch.Generator().manual_seed(8))
    rows, samples = evaluate("swiss_roll", run.G, run.D, args.n, lambda x: swiss_metrics(x, reference), args.seed)
    out["swiss_roll"] = {"train": info, "rows": rows, "data_vs_data": swiss_metrics(other, reference)}
    print(table(rows, ["sw2", "mmd2", "near_share"]))
    print("data vs data:", {k: round(v, 5) for k, v in out["swiss_roll"]["data_vs_data"].items()}, flush=True)
    b_ula, b_mala = best(rows, "ddls", "sw2", False), best(rows, "ddls+mala", "sw2", False)
    panels += [(f"swiss roll plain: SW2 {rows[0]['sw2']:.4f}", samples["plain"], reference),
               (f"DDLS e={b_ula['step_size']} k={b_ula['n_steps']}: SW2 {b_ula['sw2']:.4f}",
                samples[f"ddls e={b_ula['step_size']} k={b_ula['n_steps']}"], reference),
               (f"DDLS+MALA e={b_mala['step_size']} k={b_mala['n_steps']}: SW2 {b_mala['sw2']:.4f}",
                samples[f"ddls+mala e={b_mala['step_size']} k={b_mala['n_steps']}"], reference)]

    out["seconds"] = round(time.time() - t0, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ddls_grid25.json").write_text(json.dumps(out, indent=2))
    plot(panels, RESULTS / "ddls_grid25.png")
    print(f"total {out['seconds']} s; wrote {RESULTS / 'ddls_grid25.json'} and .png")


if __name__ == "__main__":
    main()
