"""GAN training (Goodfellow et al. 2014, non-saturating generator loss) for 2-D toy data and image sets.

Losses, with ``D = sigmoid(d)`` and ``d`` the discriminator's logit:

    L_D = -E_x log D(x) - E_z log(1 - D(G(z)))       (Goodfellow et al. 2014, Eq. 1)
    L_G = -E_z log D(G(z))                            (non-saturating, Goodfellow et al. 2014, Sec. 3)

both as binary cross-entropy on logits; Adam(2e-4, betas (0.5, 0.999)) as in DCGAN (Radford et al. 2016).
A run folder (locked while a run uses it, :mod:`sdegen.locking`) holds ``ckpt_<step>.pt`` (G, D, both
optimizers, step, generator states, config), the current ``generator.pt`` / ``discriminator.pt``
(self-describing, for :func:`sdegen.gan.io.load_net` and DDLS), ``stats.jsonl`` and
``samples/step_<step>.png``. Training resumes bitwise from the last good checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from .. import checkpoint, noise
from ..locking import hold_lock
from ..nets.dcgan import DCGANDiscriminator, DCGANGenerator
from ..nets.gan_mlp import MLPDiscriminator, MLPGenerator
from ..nets.modes import eval_mode
from ..plotting import save_samples
from ..toy import TOY_SETS, get_toy
from ..train.distributed import resolve_device
from .config import RESUMABLE_CHANGES, GANConfig
from .io import save_net

# Independent random streams of a run's seed (noise.derive_seed(seed, stream)).
STREAMS = {"init": 1, "z": 2, "data": 3, "picture": 4, "reference": 5}


# --- losses --------------------------------------------------------------------------------------

def d_loss(real_logit: torch.Tensor, fake_logit: torch.Tensor) -> torch.Tensor:
    """``L_D = -E log D(x) - E log(1 - D(G(z)))`` (Goodfellow et al. 2014, Eq. 1), from logits ``[batch]``."""
    return (F.binary_cross_entropy_with_logits(real_logit, torch.ones_like(real_logit))
            + F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit)))


def g_loss(fake_logit: torch.Tensor) -> torch.Tensor:
    """Non-saturating ``L_G = -E log D(G(z))`` (Goodfellow et al. 2014, Sec. 3), from logits ``[batch]``."""
    return F.binary_cross_entropy_with_logits(fake_logit, torch.ones_like(fake_logit))


# --- nets ----------------------------------------------------------------------------------------

def build_nets(cfg: GANConfig, data_shape: tuple[int, ...]) -> tuple[nn.Module, nn.Module]:
    """Generator and discriminator for data of per-sample shape ``data_shape`` (``(D,)`` or ``(C, H, W)``)."""
    if len(data_shape) == 1:
        return (MLPGenerator(cfg.latent_dim, data_shape[0], cfg.hidden, cfg.depth),
                MLPDiscriminator(data_shape[0], cfg.hidden, cfg.depth))
    c, h, w = data_shape
    if h != w:
        raise ValueError(f"DCGAN needs square images, got {h}x{w}")
    return (DCGANGenerator(nz=cfg.latent_dim, ngf=cfg.ngf, nc=c, image_size=h),
            DCGANDiscriminator(ndf=cfg.ndf, nc=c, image_size=h))


# --- data ----------------------------------------------------------------------------------------

BatchFn = Callable[[int, torch.Generator], torch.Tensor]


def make_data(cfg: GANConfig) -> tuple[BatchFn, tuple[int, ...]]:
    """``(batch_fn, shape)``: ``batch_fn(n, generator)`` draws ``n`` training samples ``[n, *shape]``
    (fresh draws for toy sets, uniform draws with replacement from an image set, in [-1, 1])."""
    if cfg.data in TOY_SETS:
        toy = get_toy(cfg.data)
        return (lambda n, g: toy.sample(n, g)), (toy.dim,)
    from .data import get_dataset  # images only
    ds = get_dataset(cfg.data, cfg.data_root, image_size=cfg.image_size, centered=True)

    def batch(n: int, g: torch.Generator) -> torch.Tensor:
        idx = torch.randint(len(ds), (n,), generator=g)
        return torch.stack([ds[int(i)] for i in idx])

    return batch, tuple(ds[0].shape)


# --- training ------------------------------------------------------------------------------------

@dataclass
class GANRun:
    """Result of :func:`train_gan`: the nets (eval mode), the step reached and the logged stats."""

    G: nn.Module
    D: nn.Module
    step: int
    stats: list[dict]
    workdir: Path


def train_gan(cfg: GANConfig, workdir: str | os.PathLike, *, resume: bool = True, progress: bool = True
              ) -> GANRun:
    """Train a GAN with the losses :func:`d_loss` / :func:`g_loss` for ``cfg.steps`` steps in ``workdir``.

    One step: a batch of data and of ``z ~ N(0, I)``; one Adam step on ``L_D`` with ``G(z)`` detached;
    one Adam step on ``L_G`` through ``D`` (whose parameters are frozen for it). With ``resume``, the run
    continues from the newest loadable checkpoint of ``workdir`` (its config must match ``cfg``
    except for :data:`RESUMABLE_CHANGES`); the result is then the same as an uninterrupted run."""
    cfg.validate()
    with hold_lock(workdir, what="GAN run folder", folder=True):
        return _train(cfg, Path(workdir), resume=resume, progress=progress)


def _seed(cfg: GANConfig, stream: str) -> int:
    return noise.derive_seed(cfg.seed, STREAMS[stream])


def _train(cfg: GANConfig, workdir: Path, *, resume: bool, progress: bool) -> GANRun:
    device = resolve_device(cfg.device)
    batch_fn, shape = make_data(cfg)
    with torch.random.fork_rng(devices=[]):      # network initialisation from the seed, global RNG untouched
        torch.manual_seed(_seed(cfg, "init"))
        G, D = build_nets(cfg, shape)
    G, D = G.to(device), D.to(device)
    opt_G = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    opt_D = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    gen_z = torch.Generator().manual_seed(_seed(cfg, "z"))
    gen_data = torch.Generator().manual_seed(_seed(cfg, "data"))
    step = 0
    found = checkpoint.load_latest(workdir) if resume else None
    if found is not None:
        state, path = found
        check_resumable(state.get("config", {}), cfg, path)
        G.load_state_dict(state["G"])
        D.load_state_dict(state["D"])
        opt_G.load_state_dict(state["opt_G"])
        opt_D.load_state_dict(state["opt_D"])
        gen_z.set_state(state["rng"]["z"])
        gen_data.set_state(state["rng"]["data"])
        step = int(state["step"])
    # tags this run's checkpoint files: pruning deletes no file another run wrote
    run_id = state.get("run") if found is not None and isinstance(state.get("run"), str) else uuid.uuid4().hex
    stats = checkpoint.stats_upto(workdir / "stats.jsonl", step)
    config = json.dumps(dataclasses.asdict(cfg), indent=2).encode()
    checkpoint.atomic_write(workdir / "config.json", lambda f: f.write(config))
    reference = batch_fn(2000, torch.Generator().manual_seed(_seed(cfg, "reference"))) if len(shape) == 1 else None

    def save(step: int) -> None:
        checkpoint.atomic_save({"G": G.state_dict(), "D": D.state_dict(), "opt_G": opt_G.state_dict(),
                                "opt_D": opt_D.state_dict(), "step": step,
                                "rng": {"z": gen_z.get_state(), "data": gen_data.get_state()},
                                "config": dataclasses.asdict(cfg), "run": run_id},
                               checkpoint.checkpoint_path(workdir, step), run=run_id)
        checkpoint.prune(workdir, cfg.keep, run=run_id)
        save_net(G, workdir / "generator.pt")
        save_net(D, workdir / "discriminator.pt")

    def picture(step: int) -> None:
        with torch.no_grad(), eval_mode(G):
            x = G(noise.randn((1000 if len(shape) == 1 else 64,) + G.latent_shape,
                              torch.Generator().manual_seed(_seed(cfg, "picture")), device=device))
        save_samples(x, workdir / "samples" / f"step_{step:08d}.png", reference=reference,
                     title=f"{cfg.data}, step {step}")

    G.train(), D.train()
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.steps, initial=min(step, cfg.steps), desc=f"gan {cfg.data}", dynamic_ncols=True)
    while step < cfg.steps:
        real = batch_fn(cfg.batch_size, gen_data).to(device)
        z = noise.randn((cfg.batch_size,) + G.latent_shape, gen_z, device=device)
        fake = G(z)
        d_real, d_fake = D(real), D(fake.detach())
        loss_d = d_loss(d_real, d_fake)
        opt_D.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_D.step()
        D.requires_grad_(False)
        loss_g = g_loss(D(fake))
        opt_G.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_G.step()
        D.requires_grad_(True)
        step += 1
        if step % cfg.log_every == 0 or step == cfg.steps:
            row = {"step": step, "loss_D": loss_d.item(), "loss_G": loss_g.item(),
                   "D_real": torch.sigmoid(d_real).mean().item(), "D_fake": torch.sigmoid(d_fake).mean().item()}
            stats.append(row)
            with open(workdir / "stats.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            if bar is not None:
                bar.set_postfix(loss_D=f"{row['loss_D']:.3f}", loss_G=f"{row['loss_G']:.3f}")
        if step % cfg.ckpt_every == 0 or step == cfg.steps:
            save(step)
        if (cfg.sample_every and step % cfg.sample_every == 0) or step == cfg.steps:
            picture(step)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return GANRun(G=G.eval(), D=D.eval(), step=step, stats=stats, workdir=workdir)


def check_resumable(saved: dict, cfg: GANConfig, path: Path) -> None:
    now = dataclasses.asdict(cfg)
    diff = sorted(k for k in now if k not in RESUMABLE_CHANGES and saved.get(k) != now[k])
    if diff:
        raise ValueError(f"cannot resume from {path}: its config differs in {diff} "
                         f"({', '.join(f'{k}={saved.get(k)!r}, now {now[k]!r}' for k in diff)}); "
                         "use a new workdir or resume=False")
