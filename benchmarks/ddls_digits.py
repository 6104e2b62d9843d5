"""DDLS on 8x8 digits: does Langevin sampling in a DCGAN's latent space lower FD-digits?

Trains a small DCGAN on scikit-learn's digits (the 1500-image ``train`` split, images in [-1, 1]; a few
minutes on CPU, reused from ``--workdir`` when already trained), then draws ``--n`` samples from

- the plain generator ``G(z)``, ``z ~ N(0, I)`` (and, as a yardstick of the metric's noise, from five
  other sets of latents: their mean and standard deviation);
- DDLS (Che et al. 2020, Algorithm 1) and DDLS + MALA with the discriminator's logit ``d``, at several
  step sizes ``e``, read after several step counts of one chain (the state after ``k`` steps of a
  longer chain is the state of a ``k``-step run: same latents, same noise);
- the same with the calibrated logit ``a d + b`` (:func:`sdegen.gan.ddls.calibrate_logit`, fitted on the
  297 held-out ``test`` digits against as many generated samples from other latents),

all from the same initial latents and noise seeds. The best setting of each method (picked on those
latents) is then run again from the five other latent sets and compared, pairwise, with the plain
generator on the same latents, per set and pooled (5 x ``--n`` samples): no selection bias, and less
noise (FD-digits of 1000 samples varies by about 1 between latent sets).

Reported: FD-digits (Frechet distance in the features of the digits CNN, :mod:`sdegen.metrics.fd_digits`)
to all 1797 digits, the mean logit of the samples, the MALA acceptance rate, and FD-digits of ``--n``
real digits drawn from the 1797 (a floor, optimistic: they are part of the reference). Prints tables;
writes benchmarks/results/ddls_digits.json and ddls_digits.png (sample grids side by side).

    PYTHONPATH=. python benchmarks/ddls_digits.py      # ~3 min training + ~10 min sampling, 1 CPU thread
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from sdegen import checkpoint
from sdegen.data import get_dataset
from sdegen.gan import GANConfig, calibrate_logit, ddls, train_gan
from sdegen.metrics.fd_digits import digits_stats, fd_digits, load_digits_split

RESULTS = Path(__file__).parent / "results"
OTHER_SEEDS = range(100, 105)           # offsets of the seeds of the five other latent sets
STEP_SIZES = (0.01, 0.03, 0.1)
STEP_COUNTS = (10, 30, 100)
PM1 = (-1.0, 1.0)                       # the GAN's value range


def train(args: argparse.Namespace) -> tuple:
    cfg = GANConfig(data="digits", latent_dim=args.nz, ngf=args.width, ndf=args.width, batch_size=64,
                    lr=args.lr, steps=args.train_steps, ckpt_every=500, keep=1, sample_every=0,
                    log_every=100, seed=args.seed, device="cpu")
    done = checkpoint.list_checkpoints(args.workdir)
    t = time.time()
    run = train_gan(cfg, args.workdir, progress=False)
    keys = ("data", "latent_dim", "ngf", "ndf", "batch_size", "lr", "steps", "seed")
    return run, {"config": {k: getattr(cfg, k) for k in keys}, "seconds": round(time.time() - t, 1),
                 "reused_checkpoint": bool(done and done[0][0] >= cfg.steps),
                 "last": run.stats[-1] if run.stats else None}


def stack(ds) -> torch.Tensor:
    """All images of a data set, ``[N, C, H, W]``."""
    return torch.stack([ds[i] for i in range(len(ds))])


def chain_rows(G, logit, z0: torch.Tensor, method: str, e: float, mala: bool, seed: int, ref) -> tuple:
    """One chain of ``max(STEP_COUNTS)`` steps; a row (FD-digits, mean logit, acceptance) per step count."""
    snaps, n_acc = {}, torch.zeros(len(z0))

    def grab(info: dict) -> None:
        k = info["i"] + 1
        if info["accepted"] is not None:
            n_acc.add_(info["accepted"].float())
        if k in STEP_COUNTS:
            snaps[k] = (info["z"].detach().clone(), info["logit"].mean().item(),
                        n_acc.mean().item() / k if mala else None)

    t = time.time()
    ddls(G, logit, z0, step_size=e, n_steps=max(STEP_COUNTS), mala=mala,
         rng=torch.Generator().manual_seed(seed + 1), callback=grab)
    seconds = round(time.time() - t, 1)
    rows, images = [], {}
    for k, (z, mean_logit, acc) in snaps.items():
        with torch.no_grad():
            x = G(z)
        rows.append({"method": method, "step_size": e, "n_steps": k, "fd_digits": fd_digits(x, ref, value_range=PM1),
                     "mean_logit": mean_logit, "acceptance": acc, "seconds_chain": seconds})
        images[(method, e, k)] = x
    return rows, images


def table(rows: list[dict]) -> str:
    head = f"{'method':<16} {'e':>6} {'steps':>5} {'FD-digits':>10} {'mean d':>8} {'accept':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        acc = f"{r['acceptance']:.3f}" if r.get("acceptance") is not None else "-"
        md = f"{r['mean_logit']:.3f}" if r.get("mean_logit") is not None else "-"
        lines.append(f"{r['method']:<16} {str(r['step_size'] or '-'):>6} {r['n_steps']:>5} "
                     f"{r['fd_digits']:>10.3f} {md:>8} {acc:>7}")
    return "\n".join(lines)


def plot(panels: list[tuple[str, torch.Tensor]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchvision.utils import make_grid
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6))
    for ax, (title, x) in zip(axes, panels):
        grid = make_grid((x[:64].clamp(-1, 1) + 1) / 2, nrow=8, padding=1, pad_value=0.5)
        ax.imshow(grid[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000, help="samples (chains) per method")
    ap.add_argument("--train-steps", type=int, default=3000)
    ap.add_argument("--nz", type=int, default=32, help="latent size")
    ap.add_argument("--width", type=int, default=32, help="DCGAN ngf = ndf")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--workdir", type=Path, default=Path("runs/bench_ddls_digits"),
                    help="GAN run (reused when trained)")
    ap.add_argument("--no-calibration", action="store_true", help="skip DDLS with the calibrated logit")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the nets are tiny)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()

    run, info = train(args)
    G, D = run.G, run.D
    print(f"digits DCGAN: {info['config']['steps']} steps in {info['seconds']} s "
          f"(reused: {info['reused_checkpoint']}); last {info['last']}", flush=True)

    all_x = load_digits_split("all")[0]                                  # [1797, 1, 8, 8] in [0, 1]
    ref = digits_stats(all_x)
    pick = torch.randperm(len(all_x), generator=torch.Generator().manual_seed(args.seed))[:args.n]
    floor = {"n": len(pick), "fd_digits": fd_digits(all_x[pick], ref)}
    test_x = stack(get_dataset("digits", split="test", centered=True))   # [297, 1, 8, 8] in [-1, 1]

    shape = (args.n,) + G.latent_shape
    z0 = torch.randn(shape, generator=torch.Generator().manual_seed(args.seed))
    with torch.no_grad():
        x0 = G(z0)
        d0 = D(x0).mean().item()
        z_other = [torch.randn(shape, generator=torch.Generator().manual_seed(args.seed + s)) for s in OTHER_SEEDS]
        x_other = [G(z) for z in z_other]
        other = torch.tensor([fd_digits(x, ref, value_range=PM1) for x in x_other])
        other_pooled = fd_digits(torch.cat(x_other), ref, value_range=PM1)
    rows = [{"method": "plain", "step_size": None, "n_steps": 0, "fd_digits": fd_digits(x0, ref, value_range=PM1),
             "mean_logit": d0, "acceptance": None},
            {"method": "plain, 5 other z", "step_size": None, "n_steps": 0, "fd_digits": other.mean().item(),
             "fd_digits_sd": other.std().item(), "fd_digits_each": other.tolist(), "mean_logit": None,
             "acceptance": None}]
    images = {("plain", None, 0): x0}

    logits = [("ddls", D, False), ("ddls+mala", D, True)]
    calib = None
    if not args.no_calibration:
        z_cal = torch.randn((len(test_x),) + G.latent_shape, generator=torch.Generator().manual_seed(args.seed + 200))
        with torch.no_grad():
            fake = G(z_cal)
        cal = calibrate_logit(D, test_x, fake, generator=torch.Generator().manual_seed(args.seed + 300))
        calib = {"a": cal.a, "b": cal.b, "before": cal.before, "after": cal.after,
                 "n_real": len(test_x), "n_fake": len(fake)}
        print(f"calibration on {len(test_x)} held-out digits vs {len(fake)} generated: a = {cal.a:.4f}, "
              f"b = {cal.b:.4f}; held-out log loss {cal.before['log_loss']:.4f} -> {cal.after['log_loss']:.4f}, "
              f"ECE {cal.before['ece']:.4f} -> {cal.after['ece']:.4f}, "
              f"accuracy {cal.before['accuracy']:.3f} -> {cal.after['accuracy']:.3f}", flush=True)
        logits += [("ddls cal", cal.logit, False), ("ddls+mala cal", cal.logit, True)]

    for method, logit, mala in logits:
        for e in STEP_SIZES:
            r, im = chain_rows(G, logit, z0, method, e, mala, args.seed, ref)
            rows += r
            images.update(im)
        print(f"  {method} done ({time.time() - t0:.0f} s)", flush=True)
    print(table(rows), flush=True)

    def best(method: str) -> dict:
        return min((r for r in rows if r["method"] == method), key=lambda r: r["fd_digits"])

    panels = [(f"plain G(z): FD {rows[0]['fd_digits']:.2f}", x0)]
    summary = {"plain": rows[0]["fd_digits"], "plain_other_z_mean": rows[1]["fd_digits"],
               "plain_other_z_sd": rows[1]["fd_digits_sd"]}
    for method, _, _ in logits:
        b = best(method)
        summary[f"best {method}"] = {k: b[k] for k in ("step_size", "n_steps", "fd_digits")}
        if method in ("ddls", "ddls+mala", "ddls cal"):
            panels.append((f"{method} e={b['step_size']} k={b['n_steps']}: FD {b['fd_digits']:.2f}",
                           images[(method, b["step_size"], b["n_steps"])]))
    e, k = max(STEP_SIZES), max(STEP_COUNTS)
    worst = next(r for r in rows if (r["method"], r["step_size"], r["n_steps"]) == ("ddls+mala", e, k))
    panels.append((f"ddls+mala e={e} k={k}: FD {worst['fd_digits']:.2f}", images[("ddls+mala", e, k)]))
    print(f"FD-digits of plain G over 5 other latent sets: {other.mean():.3f} +- {other.std():.3f} (sd); "
          f"of {floor['n']} real digits (in the reference; a floor): {floor['fd_digits']:.3f}")
    print("best per method:", json.dumps(summary), flush=True)

    confirm = []                          # the best settings again, from the other latent sets
    for method, logit, mala in logits:
        b = best(method)
        xs = [ddls(G, logit, z, step_size=b["step_size"], n_steps=b["n_steps"], mala=mala,
                   rng=torch.Generator().manual_seed(args.seed + s + 1)).x for s, z in zip(OTHER_SEEDS, z_other)]
        fds = torch.tensor([fd_digits(x, ref, value_range=PM1) for x in xs])
        diff = fds - other
        confirm.append({"method": method, "step_size": b["step_size"], "n_steps": b["n_steps"],
                        "fd_digits_each": fds.tolist(), "plain_fd_digits_each": other.tolist(),
                        "fd_digits_mean": fds.mean().item(), "diff_mean": diff.mean().item(),
                        "diff_sd": diff.std().item(), "improved_on": int((diff < 0).sum()),
                        "fd_digits_pooled": fd_digits(torch.cat(xs), ref, value_range=PM1),
                        "plain_fd_digits_pooled": other_pooled})
    n_pool = len(OTHER_SEEDS) * args.n
    print(f"best settings from {len(OTHER_SEEDS)} other latent sets, paired with the plain generator "
          f"(FD-digits {other.mean():.3f} per set of {args.n}, {other_pooled:.3f} of all {n_pool}):")
    for c in confirm:
        print(f"  {c['method']:<14} e={c['step_size']:<5} k={c['n_steps']:<4} FD-digits {c['fd_digits_mean']:.3f}; "
              f"minus plain {c['diff_mean']:+.3f} +- {c['diff_sd']:.3f} (sd); lower on {c['improved_on']} of "
              f"{len(OTHER_SEEDS)}; of all {n_pool}: {c['fd_digits_pooled']:.3f}", flush=True)

    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"n": args.n, "step_sizes": STEP_SIZES, "step_counts": STEP_COUNTS, "train": info,
           "reference": "FD-digits to all 1797 scikit-learn digits", "real_floor": floor,
           "calibration": calib, "rows": rows, "summary": summary, "confirm": confirm, "threads": args.threads,
           "seconds": round(time.time() - t0, 1)}
    (RESULTS / "ddls_digits.json").write_text(json.dumps(out, indent=2))
    plot(panels, RESULTS / "ddls_digits.png")
    print(f"wrote {RESULTS / 'ddls_digits.json'} and {RESULTS / 'ddls_digits.png'} ({out['seconds']} s)")


if __name__ == "__main__":
    main()
