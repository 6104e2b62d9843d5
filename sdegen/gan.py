"""GAN training (Goodfellow et al. 2014, non-saturating generator loss) for 2-D toy data and image sets.

Losses, with ``D = sigmoid(d)`` and ``d`` the discriminator's logit:

    L_D = -E_x log D(x) - E_z log(1 - D(G(z)))       (Goodfellow et al. 2014, Eq. 1)
    L_G = -E_z log D(G(z))                            (non-saturating, Goodfellow et al. 2014, Sec. 3)

both as binary cross-entropy on logits; Adam(2e-4, betas (0.5, 0.999)) as in DCGAN (Radford et al. 2016).
A run folder holds ``ckpt_<step>.pt`` (G, D, both optimizers, step, generator states, config), the
current ``generator.pt`` / ``discriminator.pt`` (self-describing, for :func:`load_net` and DDLS),
``stats.jsonl`` and ``samples/step_<step>.png``. Training resumes bitwise from the last good checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.nn import functional as F

from . import checkpoint, noise
from .ddls import eval_mode
from .nets.dcgan import DCGANDiscriminator, DCGANGenerator
from .nets.gan_mlp import MLPDiscriminator, MLPGenerator
from .toy import TOY_SETS, get_toy

GAN_NETS: dict[str, type[nn.Module]] = {
    "mlp_generator": MLPGenerator,
    "mlp_discriminator": MLPDiscriminator,
    "dcgan_generator": DCGANGenerator,
    "dcgan_discriminator": DCGANDiscriminator,
}
IMAGE_SETS = ("digits", "mnist", "cifar10", "folder")   # names of sdegen.data.DATASETS


@dataclass
class GANConfig:
    """Options of a GAN run (a schema: a YAML config with an unknown key is an error).

    ``data``: a 2-D toy set (``sdegen.toy.TOY_SETS``; MLP nets) or an image set (``IMAGE_SETS``; DCGAN
    nets, images in [-1, 1]). ``latent_dim`` is the MLP latent size or the DCGAN ``nz``."""

    data: str = "grid25"
    data_root: Optional[str] = None      # folder of an image set (not needed for digits)
    image_size: Optional[int] = None     # resize images (DCGAN sizes: 8, 16, 32, 64); None: native
    latent_dim: int = 2
    hidden: int = 128                    # MLP width
    depth: int = 3                       # MLP hidden layers
    ngf: int = 32                        # DCGAN generator width
    ndf: int = 32                        # DCGAN discriminator width
    batch_size: int = 256
    steps: int = 10000
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    ckpt_every: int = 1000
    keep: int = 3                        # checkpoints kept
    sample_every: int = 1000             # PNG of samples (0: at the end only)
    log_every: int = 100
    seed: int = 0
    device: str = "auto"

    def validate(self) -> "GANConfig":
        if self.data not in TOY_SETS and self.data not in IMAGE_SETS:
            raise ValueError(f"unknown data {self.data!r}; accepted: {', '.join(list(TOY_SETS) + list(IMAGE_SETS))}")
        for name in ("latent_dim", "hidden", "depth", "ngf", "ndf", "batch_size", "ckpt_every", "keep",
                     "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.steps < 0 or self.sample_every < 0 or not self.lr > 0:
            raise ValueError("steps and sample_every must be >= 0 and lr > 0")
        return self


# Options that may change when a run is resumed; all others must match the checkpoint's config.
RESUMABLE_CHANGES = ("steps", "ckpt_every", "keep", "sample_every", "log_every", "device", "data_root")


def load_config(path: Optional[str | os.PathLike] = None, overrides: Optional[dict[str, Any]] = None) -> GANConfig:
    """A :class:`GANConfig` from an optional YAML file, then ``overrides``; unknown keys are errors."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException
    try:
        cfg = OmegaConf.structured(GANConfig)
        if path is not None:
            cfg = OmegaConf.merge(cfg, OmegaConf.load(path))
        if overrides:
            cfg = OmegaConf.merge(cfg, overrides)
        return GANConfig(**OmegaConf.to_container(cfg)).validate()
    except OmegaConfBaseException as e:
        raise ValueError(f"bad GAN config: {str(e).splitlines()[0]}") from e


# --- losses --------------------------------------------------------------------------------------

def d_loss(real_logit: torch.Tensor, fake_logit: torch.Tensor) -> torch.Tensor:
    """``L_D = -E log D(x) - E log(1 - D(G(z)))`` (Goodfellow et al. 2014, Eq. 1), from logits ``[batch]``."""
    return (F.binary_cross_entropy_with_logits(real_logit, torch.ones_like(real_logit))
            + F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit)))


def g_loss(fake_logit: torch.Tensor) -> torch.Tensor:
    """Non-saturating ``L_G = -E log D(G(z))`` (Goodfellow et al. 2014, Sec. 3), from logits ``[batch]``."""
    return F.binary_cross_entropy_with_logits(fake_logit, torch.ones_like(fake_logit))


# --- nets and their files ------------------------------------------------------------------------

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


def _arch_name(net: nn.Module) -> str:
    for name, cls in GAN_NETS.items():
        if type(net) is cls:
            return name
    raise ValueError(f"{type(net).__name__} is not one of the GAN nets {sorted(GAN_NETS)}")


def net_record(net: nn.Module) -> dict:
    """``{"arch", "kwargs", "state_dict"}``: a self-describing file content for :func:`load_net`."""
    return {"arch": _arch_name(net), "kwargs": dict(net.config), "state_dict": net.state_dict()}


def save_net(net: nn.Module, path: str | os.PathLike) -> Path:
    return checkpoint.atomic_save(net_record(net), path)


def load_net(path: str | os.PathLike, role: Optional[str] = None, map_location="cpu") -> nn.Module:
    """Rebuild a net saved by :func:`save_net` (``role``: ``"generator"`` or ``"discriminator"`` to check
    which it is). Returned in eval mode. Raises FileNotFoundError or ValueError saying what is wrong."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no file at {path}")
    try:
        rec = checkpoint.load(path, map_location)
    except checkpoint.CheckpointError as e:
        raise ValueError(str(e)) from e
    if not isinstance(rec, dict) or not {"arch", "kwargs", "state_dict"} <= set(rec):
        raise ValueError(f"{path} is not an sdegen GAN net file (a dict with arch, kwargs, state_dict); "
                         "for the csinva pretrained DCGAN use the csinva-dcgan format")
    if rec["arch"] not in GAN_NETS:
        raise ValueError(f"{path}: unknown arch {rec['arch']!r}; accepted: {sorted(GAN_NETS)}")
    if role is not None and not rec["arch"].endswith(role):
        raise ValueError(f"{path} holds a {rec['arch']}, not a {role}")
    net = GAN_NETS[rec["arch"]](**rec["kwargs"])
    try:
        net.load_state_dict(rec["state_dict"], strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not fit {rec['arch']}({rec['kwargs']}): "
                         f"{str(e).splitlines()[0]}") from e
    return net.eval()


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


# --- pictures ------------------------------------------------------------------------------------

def to_uint8_images(x: torch.Tensor) -> torch.Tensor:
    """Images ``[N, C, H, W]`` in [-1, 1] -> uint8 ``[N, H, W, C]`` (``round((x + 1) / 2 * 255)``)."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()


def save_samples_png(x: torch.Tensor, path: str | os.PathLike, *, reference: Optional[torch.Tensor] = None,
                     title: str = "", nrow: int = 8) -> Path:
    """A scatter plot of 2-D points ``[N, 2]`` (over ``reference`` points, grey) or a grid of the first
    ``nrow**2`` images ``[N, C, H, W]`` in [-1, 1] (or uint8 ``[N, H, W, C]``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if x.dim() == 2:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(4, 4))
        if reference is not None:
            ax.scatter(*reference[:, :2].cpu().numpy().T, s=1, c="0.75", label="data")
        ax.scatter(*x[:, :2].detach().cpu().numpy().T, s=1, c="C0", label="samples")
        ax.set_aspect("equal")
        ax.set_title(title, fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path
    from PIL import Image
    imgs = x if x.dtype == torch.uint8 else to_uint8_images(x)
    imgs = imgs[: nrow * nrow]
    n, h, w, c = imgs.shape
    rows = -(-n // nrow)
    grid = torch.zeros(rows * (h + 2) + 2, nrow * (w + 2) + 2, c, dtype=torch.uint8)
    for k in range(n):
        r, q = divmod(k, nrow)
        grid[2 + r * (h + 2): 2 + r * (h + 2) + h, 2 + q * (w + 2): 2 + q * (w + 2) + w] = imgs[k]
    arr = grid.numpy()
    Image.fromarray(arr[..., 0] if c == 1 else arr).save(path)
    return path


# --- training ------------------------------------------------------------------------------------

def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    device = _device(cfg.device)
    batch_fn, shape = make_data(cfg)
    with torch.random.fork_rng(devices=[]):      # network initialisation from the seed, global RNG untouched
        torch.manual_seed(cfg.seed)
        G, D = build_nets(cfg, shape)
    G, D = G.to(device), D.to(device)
    opt_G = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    opt_D = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    gen_z = torch.Generator().manual_seed(cfg.seed * 2 + 1)
    gen_data = torch.Generator().manual_seed(cfg.seed * 2 + 2)
    step = 0
    found = checkpoint.load_latest(workdir) if resume else None
    if found is not None:
        state, path = found
        _check_resumable(state.get("config", {}), cfg, path)
        G.load_state_dict(state["G"])
        D.load_state_dict(state["D"])
        opt_G.load_state_dict(state["opt_G"])
        opt_D.load_state_dict(state["opt_D"])
        gen_z.set_state(state["rng"]["z"])
        gen_data.set_state(state["rng"]["data"])
        step = int(state["step"])
    stats = _read_stats(workdir / "stats.jsonl", upto=step)
    (workdir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    reference = batch_fn(2000, torch.Generator().manual_seed(cfg.seed)) if len(shape) == 1 else None

    def save(step: int) -> None:
        checkpoint.atomic_save({"G": G.state_dict(), "D": D.state_dict(), "opt_G": opt_G.state_dict(),
                                "opt_D": opt_D.state_dict(), "step": step,
                                "rng": {"z": gen_z.get_state(), "data": gen_data.get_state()},
                                "config": dataclasses.asdict(cfg)}, checkpoint.checkpoint_path(workdir, step))
        checkpoint.prune(workdir, cfg.keep)
        save_net(G, workdir / "generator.pt")
        save_net(D, workdir / "discriminator.pt")

    def picture(step: int) -> None:
        with torch.no_grad(), eval_mode(G):
            x = G(noise.randn((1000 if len(shape) == 1 else 64,) + G.latent_shape,
                              torch.Generator().manual_seed(cfg.seed), device=device))
        save_samples_png(x, workdir / "samples" / f"step_{step:08d}.png", reference=reference,
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


def _check_resumable(saved: dict, cfg: GANConfig, path: Path) -> None:
    now = dataclasses.asdict(cfg)
    diff = sorted(k for k in now if k not in RESUMABLE_CHANGES and saved.get(k) != now[k])
    if diff:
        raise ValueError(f"cannot resume from {path}: its config differs in {diff} "
                         f"({', '.join(f'{k}={saved.get(k)!r}, now {now[k]!r}' for k in diff)}); "
                         "use a new workdir or resume=False")


def _read_stats(path: Path, upto: int) -> list[dict]:
    """Logged rows up to step ``upto`` (later rows, from after the last checkpoint, are dropped)."""
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["step"] <= upto]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows
