"""``sdegen ddls``: sample a GAN by Discriminator Driven Latent Sampling and write the samples.

Output ``--out`` (.npz): ``samples`` (uint8 ``[N, H, W, C]`` for images, as ``sdegen fid`` reads them;
float32 ``[N, D]`` for low-dimensional data), ``latents`` (float32 ``[N, latent size]``), the chain
means ``energy_trace`` and ``logit_trace`` (``[steps + 1]``, step 0 = the plain generator) and, with
``--mala``, ``acceptance_rate``. Chain ``i`` draws from its own generator seeded by ``(seed, i)``, so the
samples do not depend on ``--batch-size``. The chains run in the one sampling job
(:func:`sdegen.train.sample_job.run_job`): ``--out`` is locked while it runs, written atomically, an
interrupted run resumes from its finished batches, an existing ``--out`` is an error unless
``--overwrite`` (the finished output of the same job is left as it is). A grid of the first samples goes
next to it (``--grid``, default ``OUT.png``; ``--no-grid``) with the chain plot (``--plot``).

``--calibrate --data NAME`` first fits a logistic head ``a d + b`` on held-out real samples against as many
generated ones (Che et al. 2020; :func:`sdegen.gan.ddls.calibrate_logit`, half of each set kept out of the
fit), prints the held-out log loss, calibration error and accuracy before and after, and runs DDLS with
the calibrated logit (the traces then hold it too; ``calibration_a`` and ``calibration_b`` are saved).
Real samples: the ``--data-split`` (default ``test``) of an image set of ``sdegen.data`` (scaled to
[-1, 1] and resized to the generator's size, as the GAN was trained), or fresh draws of a 2-D toy set;
at most ``--calibrate-n`` of them, picked at random. The generated ones come from the latents of chains
``n, n + 1, ...`` of the seed scheme, so they are never the sampled chains' starts.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import (UsageError, choice, non_negative_int, output_paths, pick_device, positive_float,
                     positive_int)

HELP = "sample a GAN by Discriminator Driven Latent Sampling (Langevin in latent space); write .npz"

FORMATS = {
    "sdegen": "generator.pt / discriminator.pt written by `sdegen gan train`",
    "csinva-dcgan": "state dicts of the pretrained DCGAN of csinva/gan-vae-pretrained-pytorch "
                    "(netG_epoch_199.pth, netD_epoch_199.pth)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--generator", required=True, help="generator weights file")
    parser.add_argument("--discriminator", required=True, help="discriminator weights file")
    parser.add_argument("--format", default="sdegen",
                        help="weights format: " + "; ".join(f"{k}: {v}" for k, v in FORMATS.items()))
    parser.add_argument("--n", type=positive_int, default=50000, help="number of samples")
    parser.add_argument("--batch-size", type=positive_int, default=500, help="chains run at once")
    parser.add_argument("--steps", type=non_negative_int, default=100,
                        help="Langevin steps (0: samples of the plain generator)")
    parser.add_argument("--step-size", type=positive_float, default=0.01,
                        help="e of Che et al. 2020, Algorithm 1: z' = z - (e/2) grad E(z) + sqrt(e) n")
    parser.add_argument("--mala", action="store_true", help="Metropolis-adjust each step (MALA)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="output .npz")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out (and its pictures)")
    parser.add_argument("--grid", help="PNG of the first 100 samples (scatter plot for 2-D data; default: --out "
                                       "with .png)")
    parser.add_argument("--no-grid", action="store_true", help="write no grid")
    parser.add_argument("--plot", help="PNG of mean energy and mean logit along the chain "
                                       "(default: next to --out, <out>_chain.png)")
    parser.add_argument("--calibrate", action="store_true",
                        help="fit a d + b on held-out real (--data) vs generated samples and run DDLS "
                             "with the calibrated logit (Che et al. 2020)")
    parser.add_argument("--data", help="real samples for --calibrate: an image set (digits, mnist, cifar10, "
                                       "folder) or a 2-D toy set (grid25, ring8, ...)")
    parser.add_argument("--data-root", help="folder of the --data image set (not needed for digits)")
    parser.add_argument("--data-split", default="test", help="split of the --data image set: train, test")
    parser.add_argument("--calibrate-n", type=positive_int, default=2000,
                        help="at most this many real samples, and as many generated ones, for --calibrate")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--no-progress", action="store_true")


def _load(args: argparse.Namespace, device):
    from ..gan.io import load_csinva_dcgan, load_net
    choice(args.format, FORMATS, "format")
    try:
        if args.format == "csinva-dcgan":
            G, D = load_csinva_dcgan(args.generator, args.discriminator, map_location="cpu")
        else:
            G = load_net(args.generator, "generator")
            D = load_net(args.discriminator, "discriminator")
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(f"{e} (format {args.format})")
    return G.to(device).eval(), D.to(device).eval()


def _real_samples(args: argparse.Namespace, shape: tuple, m: int):
    """Up to ``m`` real samples of ``--data`` ``[m, *shape]`` (``shape``: the generator's sample shape),
    scaled as the GAN was trained, and where they came from."""
    import torch

    from ..data import DATASETS, DataError, get_dataset
    from ..toy import TOY_SETS, get_toy
    choice(args.data, list(DATASETS) + list(TOY_SETS), "data")
    gen = torch.Generator().manual_seed(args.seed)
    if args.data in TOY_SETS:
        toy = get_toy(args.data)
        if shape != (toy.dim,):
            raise UsageError(f"toy set {args.data} has {toy.dim}-d points; the generator makes {list(shape)}")
        return toy.sample(m, gen).float(), f"toy set {args.data}"
    if len(shape) != 3:
        raise UsageError(f"the generator makes {list(shape)} vectors, not images; give a toy set as --data")
    choice(args.data_split, ("train", "test"), "data split")
    try:
        ds = get_dataset(args.data, args.data_root, split=args.data_split, image_size=shape[-1], centered=True,
                         grayscale=args.data == "folder" and shape[0] == 1)
    except (DataError, ValueError) as e:   # DataNotFoundError is a DataError
        raise UsageError(f"--data {args.data}: {e}")
    if tuple(ds.shape) != shape:
        raise UsageError(f"{args.data} images are {list(ds.shape)}; the generator makes {list(shape)}")
    idx = torch.randperm(len(ds), generator=gen)[:m]
    return torch.stack([ds[int(i)] for i in idx]), f"{args.data} {args.data_split} split"


def _calibrate(args: argparse.Namespace, G, D, prior, shape: tuple, device):
    """``(calibrated logit, Calibration)``: ``a d + b`` fitted on real (``--data``) vs generated samples."""
    import torch

    from .. import noise
    from ..gan.ddls import calibrate_logit
    real, where = _real_samples(args, shape, args.calibrate_n)
    if len(real) < 8:
        raise UsageError(f"--calibrate needs at least 8 real samples; {args.data} gave {len(real)}")
    fake = []
    for start in range(0, len(real), args.batch_size):   # latents of chains n, n+1, ...: not the sampled ones
        idx = range(args.n + start, args.n + min(len(real), start + args.batch_size))
        with torch.no_grad():
            fake.append(G(prior.sample(len(idx), noise.per_sample_generators(args.seed, idx)).to(device)).cpu())
    cal = calibrate_logit(D, real.to(device), torch.cat(fake).to(device), batch_size=args.batch_size,
                          generator=torch.Generator().manual_seed(args.seed))
    print(f"calibration on {len(real)} real ({where}) vs {len(real)} generated samples: "
          f"a = {cal.a:.4f}, b = {cal.b:.4f}")
    for key in ("log_loss", "ece", "accuracy"):
        print(f"  held-out {key:<8} before {cal.before[key]:.4f}  after {cal.after[key]:.4f}")
    return cal.logit, cal


def _plot_chain(energy, logit, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for ax, values, name in ((axes[0], energy, "mean energy E(z)"), (axes[1], logit, "mean logit d(G(z))")):
        ax.plot(range(len(values)), values)
        ax.set_xlabel("Langevin step")
        ax.set_title(name, fontsize=9)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _identity(args: argparse.Namespace) -> dict:
    """What makes a DDLS job: the nets' files (and their sizes and times) and the chain's options."""
    files = {}
    for role in ("generator", "discriminator"):
        path = Path(getattr(args, role)).resolve()
        st = path.stat()
        files[role] = [str(path), st.st_size, st.st_mtime_ns]
    calibration = ([args.data, args.data_root, args.data_split, args.calibrate_n] if args.calibrate else None)
    return {"what": "ddls", "format": args.format, **files, "steps": args.steps, "step_size": args.step_size,
            "mala": args.mala, "calibration": calibration}


def run(args: argparse.Namespace) -> int:
    import sys

    import numpy as np
    import torch

    from ..gan.ddls import StandardNormal, ddls, latent_energy
    from ..nets.modes import eval_mode
    from ..plotting import save_samples, to_uint8_images
    from ..train.sample_job import job_identity, read_job, run_job

    out, grid = output_paths(args.out, args.grid, no_grid=args.no_grid, overwrite=args.overwrite)
    plot = Path(args.plot) if args.plot else out.with_name(out.stem + "_chain.png")
    if args.calibrate and args.data is None:
        raise UsageError("--calibrate needs --data: the real samples to calibrate the logit on")
    if args.data is not None and not args.calibrate:
        raise UsageError("--data is used with --calibrate only")
    device = pick_device(args.device)
    G, D = _load(args, device)
    identity = _identity(args)
    if out.exists() and not args.overwrite and read_job(out) == job_identity(
            identity, n=args.n, batch_size=args.batch_size, seed=args.seed):   # before calibrating
        print(f"{out} is finished already (the same job); nothing to do (--overwrite to run it again)")
        return 0
    prior = StandardNormal(G.latent_shape)
    energy = latent_energy(G, D, prior)
    with torch.no_grad(), eval_mode(G, D):
        try:
            z = prior.sample(1, torch.Generator().manual_seed(0)).to(device)
            energy(z)
        except RuntimeError as e:
            raise UsageError(f"the discriminator does not take the generator's samples: {str(e).splitlines()[0]}")
        shape = tuple(G(z).shape[1:])
    logit, cal = (D, None) if not args.calibrate else _calibrate(args, G, D, prior, shape, device)
    energy = latent_energy(G, logit, prior)
    step_bars = not args.no_progress and sys.stderr.isatty()

    def draw(indices: list[int], gens: list[torch.Generator]) -> dict:
        """Chains ``indices``: samples, latents, per-chain energy and logit at each step, MALA acceptances."""
        b = len(indices)
        trace_e = torch.zeros(b, args.steps + 1, dtype=torch.float64)
        trace_d = torch.zeros_like(trace_e)
        z0 = prior.sample(b, gens).to(device)
        with torch.no_grad(), eval_mode(G, D):
            e0 = energy(z0)
        trace_e[:, 0], trace_d[:, 0] = e0.cpu(), (-e0 - prior.log_prob(z0)).cpu()
        bar = None
        if step_bars:
            from tqdm.auto import tqdm
            bar = tqdm(total=args.steps, desc=f"chains {indices[0]}..{indices[-1]}", unit="step", leave=False)

        def record(info: dict) -> None:
            trace_e[:, info["i"] + 1] = info["energy"].detach().double().cpu()
            trace_d[:, info["i"] + 1] = info["logit"].detach().double().cpu()
            if bar is not None:
                bar.update(1)

        try:
            res = ddls(G, logit, z0, step_size=args.step_size, n_steps=args.steps, mala=args.mala, rng=gens,
                       callback=record)
        finally:
            if bar is not None:
                bar.close()
        arrays = {"samples": to_uint8_images(res.x) if res.x.dim() == 4 else res.x.float().cpu(),
                  "latents": res.z.reshape(b, -1).float().cpu(), "energy": trace_e, "logit": trace_d}
        if args.mala and args.steps:
            arrays["accepted"] = res.accepted.cpu()
        return arrays

    def finish(a: dict) -> dict:
        result = {"samples": a["samples"], "latents": a["latents"], "energy_trace": a["energy"].mean(0),
                  "logit_trace": a["logit"].mean(0)}
        if "accepted" in a:
            result["acceptance_rate"] = np.float64(a["accepted"].sum() / (args.n * args.steps))
        if cal is not None:
            result["calibration_a"], result["calibration_b"] = np.float64(cal.a), np.float64(cal.b)
        return result

    try:
        job = run_job(out, draw, n=args.n, batch_size=args.batch_size, seed=args.seed, job=identity,
                      finish=finish, overwrite=args.overwrite, progress=not args.no_progress, what="ddls")
    except FloatingPointError as e:
        raise UsageError(f"{str(e).splitlines()[0].split(';')[0]}; lower --step-size (now {args.step_size:g})")
    except ValueError as e:
        raise UsageError(str(e))
    with np.load(out) as f:
        x, mean_e, mean_d = f["samples"], f["energy_trace"], f["logit_trace"]
        rate = float(f["acceptance_rate"]) if "acceptance_rate" in f.files else None
    title = (f"DDLS{' (MALA)' if args.mala else ''}{', calibrated logit' if cal is not None else ''}: "
             f"{args.steps} steps, e = {args.step_size}, n = {args.n}")
    if job.already_done:
        print(f"{out} is finished already (the same job: {len(x)} samples); nothing to do "
              "(--overwrite to run it again)")
    else:
        print(f"wrote {args.n} samples {tuple(x.shape[1:])} to {out}")
    if grid is not None and (not job.already_done or not grid.exists()):
        save_samples(torch.from_numpy(x), grid, title=title)
        print(f"grid -> {grid}")
    if not job.already_done or not plot.exists():
        _plot_chain(mean_e, mean_d, plot, title)
        print(f"chain plot -> {plot}")
    print(f"mean logit {mean_d[0]:.4f} -> {mean_d[-1]:.4f}, mean energy {mean_e[0]:.4f} -> {mean_e[-1]:.4f}"
          + (f", acceptance rate {rate:.3f}" if rate is not None else ""))
    return 0
