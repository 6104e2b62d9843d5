"""Discriminator Driven Latent Sampling (DDLS, Che et al. 2020): Langevin dynamics in a GAN's latent space.

A GAN whose discriminator is ``D(x) = sigmoid(d(x))`` holds an energy-based model: at the optimum
``d(x) = log p_data(x) - log p_g(x)``, so ``p_data(x) = p_g(x) exp(d(x))`` (Che et al. 2020, Sec. 3).
Pulled back to the latent space of ``x = G(z)``, ``z ~ p0``, this is ``p_t(z) ∝ exp(-E(z))`` with

    E(z) = -log p0(z) - d(G(z))                     (Che et al. 2020, Sec. 3 and Algorithm 1)

and ``G(z)``, ``z ~ p_t``, is distributed as ``p_data`` (exactly when ``d`` is optimal and G is
invertible, the case the tests check). DDLS samples ``p_t`` with Langevin dynamics (their Algorithm 1)

    z' = z - (e/2) grad E(z) + sqrt(e) n,  n ~ N(0, I),

run here by the one engine :func:`sdegen.langevin.langevin` (its ``eps`` is ``e/2``); with ``mala=True``
each proposal is Metropolis-adjusted, so the chain targets ``p_t`` exactly at any step size.

WGAN (Che et al. 2020, Algorithm 2): pass the critic as ``logit``; the energy is then
``-log p0(z) - D(G(z))``. A critic (or a hinge-loss discriminator) is not a calibrated logit; fit
``a d + b`` on held-out real and generated samples with :func:`calibrate_logit` and pass its ``.logit``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol, Sequence

import torch
from torch import nn

from .. import noise
from ..langevin import langevin
from ..nets.modes import eval_mode

Net = Callable[[torch.Tensor], torch.Tensor]


class Prior(Protocol):
    """A latent prior: ``log_prob(z)`` per sample ``[batch]``; ``sample(n, generator)`` ``[n, *shape]``."""

    def log_prob(self, z: torch.Tensor) -> torch.Tensor: ...

    def sample(self, n: int, generator: noise.Generator = None) -> torch.Tensor: ...


class StandardNormal:
    """``p0 = N(0, I)`` over latents of shape ``shape`` (e.g. ``(100, 1, 1)`` for DCGAN)."""

    def __init__(self, shape: Optional[Sequence[int]] = None):
        self.shape = None if shape is None else tuple(int(s) for s in shape)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``log N(z; 0, I)`` in nats, ``[batch]``."""
        flat = z.reshape(z.shape[0], -1)
        return -0.5 * flat.pow(2).sum(1) - 0.5 * flat.shape[1] * math.log(2 * math.pi)

    def sample(self, n: int, generator: noise.Generator = None, *, device=None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if self.shape is None:
            raise ValueError("StandardNormal needs a latent shape to sample; pass latent_shape")
        return noise.randn((n,) + self.shape, generator, device=device, dtype=dtype)


def _per_sample(v: torch.Tensor, n: int, what: str) -> torch.Tensor:
    if v.numel() != n:
        raise ValueError(f"{what} must give one value per sample ([{n}] or [{n}, 1]), got {tuple(v.shape)}")
    return v.reshape(n)


def latent_energy(generator: Net, logit: Net, prior: Optional[Prior] = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The DDLS energy ``z -> E(z) = -log p0(z) - d(G(z))`` ``[batch]`` (Che et al. 2020, Algorithm 1).

    Args:
        generator: ``G``, latents ``[batch, *latent_shape]`` -> samples.
        logit: ``d``, samples -> logit ``[batch]`` (the discriminator before its sigmoid; or a WGAN critic).
        prior: ``p0`` with ``log_prob``; default :class:`StandardNormal`.
    The networks are used as they are (train or eval mode); :func:`ddls` puts them in eval mode."""
    prior = prior if prior is not None else StandardNormal()

    def energy(z: torch.Tensor) -> torch.Tensor:
        d = _per_sample(logit(generator(z)), z.shape[0], "logit(generator(z))")
        return -prior.log_prob(z) - d

    return energy


def _device_of(net: object, default=None):
    if isinstance(net, nn.Module):
        for p in net.parameters():
            return p.device
    return default


@dataclass
class DDLSResult:
    """Result of :func:`ddls`: latents ``z`` ``[n, *latent_shape]``, samples ``x = G(z)``, per-sample final
    ``energy`` and ``logit`` ``[n]``, and the MALA acceptance rate (``None`` without MALA)."""

    z: torch.Tensor
    x: torch.Tensor
    energy: torch.Tensor
    logit: torch.Tensor
    acceptance_rate: Optional[float] = None
    accepted: Optional[torch.Tensor] = field(default=None, repr=False)


def ddls(generator: Net, logit: Net, z0: Optional[torch.Tensor] = None, n: Optional[int] = None, *,
         step_size, n_steps: int, mala: bool = False, rng: noise.Generator = None,
         callback: Optional[Callable[[dict], None]] = None, progress: bool = False,
         prior: Optional[Prior] = None, latent_shape: Optional[Sequence[int]] = None) -> DDLSResult:
    """Discriminator Driven Latent Sampling (Che et al. 2020, Algorithm 1; with ``mala=True``, MALA).

    Args:
        generator, logit: ``G`` and ``d`` (see :func:`latent_energy`). ``nn.Module`` s are put in eval
            mode for the run (BatchNorm uses its running statistics; every chain is independent of the
            others) and restored after; no gradient reaches their parameters.
        z0: initial latents ``[n, *latent_shape]``; default ``n`` draws from the prior using ``rng``.
        step_size: ``e`` of Algorithm 1 (``z' = z - (e/2) grad E + sqrt(e) n``); float or ``[n]``.
        n_steps: number of Langevin steps (0 gives the plain generator's samples ``G(z0)``).
        rng: ``None``, a ``torch.Generator`` or one generator per chain (then chain ``i`` depends only
            on ``rng[i]``, not on the batch it runs in).
        callback: called after each step with ``{"i", "z", "energy", "logit", "accepted"}``.
        prior: ``p0``, default :class:`StandardNormal`; latent_shape: default ``generator.latent_shape``.
    """
    shape = _latent_shape(generator, latent_shape)
    _check_count(n_steps, "n_steps", 0)
    if n is not None:
        _check_count(n, "n", 1)
    noise.check_generator(rng)
    prior = prior if prior is not None else StandardNormal(shape)
    device = _device_of(generator, _device_of(logit))
    if z0 is None:
        if n is None:
            raise ValueError("give z0 or the number of chains n")
        z0 = prior.sample(n, rng)
        z0 = z0.to(device) if device is not None else z0
    else:
        _check_z0(z0, shape, _dtype_of(generator))
        if n is not None and n != z0.shape[0]:
            raise ValueError(f"n={n} does not match z0 with {z0.shape[0]} chains")
    energy = latent_energy(generator, logit, prior)

    def log_prob(z: torch.Tensor) -> torch.Tensor:
        return -energy(z)

    def on_step(info: dict) -> None:
        z, e = info["x"], -info["log_prob"]
        callback({"i": info["i"], "z": z, "energy": e, "logit": -e - prior.log_prob(z),
                  "accepted": info["accepted"]})

    with eval_mode(generator, logit):
        chain = langevin(z0, log_prob, step_size=_half(step_size), n_steps=n_steps, mala=mala,
                         generator=rng, callback=on_step if callback is not None else None,
                         progress=progress)
        with torch.no_grad():
            x = generator(chain.x)
    e = -chain.log_prob
    return DDLSResult(z=chain.x, x=x.detach(), energy=e, logit=(-e - prior.log_prob(chain.x)).detach(),
                      acceptance_rate=chain.acceptance_rate, accepted=chain.accepted)


def _check_count(value, name: str, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer >= {low}, got {type(value).__name__} {value!r}")
    if value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value}")


def _latent_shape(generator: Net, latent_shape: Optional[Sequence[int]]) -> Optional[tuple[int, ...]]:
    """``latent_shape`` or the generator's; an error if both are given and hold different sizes."""
    own = getattr(generator, "latent_shape", None)
    if latent_shape is None:
        return None if own is None else tuple(own)
    shape = tuple(int(s) for s in latent_shape)
    if own is not None and math.prod(shape) != math.prod(own):
        raise ValueError(f"latent_shape {list(shape)} does not fit the generator, which takes latents "
                         f"of shape {list(own)}")
    return shape


def _dtype_of(net: object) -> Optional[torch.dtype]:
    if isinstance(net, nn.Module):
        for p in net.parameters():
            return p.dtype
    return None


def _check_z0(z0, shape: Optional[tuple[int, ...]], dtype: Optional[torch.dtype]) -> None:
    """A clear error for initial latents of the wrong type, dtype or size."""
    if not torch.is_tensor(z0):
        raise TypeError(f"z0 must be a tensor [n, *latent_shape], got {type(z0).__name__}")
    if not z0.is_floating_point():
        raise TypeError(f"z0 must be a floating-point tensor, got {z0.dtype}")
    if dtype is not None and z0.dtype != dtype:
        raise TypeError(f"z0 is {z0.dtype} but the generator's weights are {dtype}; pass z0.to({dtype})")
    if z0.dim() < 2 or len(z0) == 0:
        raise ValueError(f"z0 must be a batch of latents [n >= 1, *latent_shape], got shape {list(z0.shape)}")
    if shape is not None and z0[0].numel() != math.prod(shape):
        raise ValueError(f"z0 holds latents of shape {list(z0.shape[1:])}; the generator takes "
                         f"{list(shape)} ({math.prod(shape)} values per latent)")


def _half(step_size):
    # Che et al. 2020 Algorithm 1 moves by (e/2) grad; the engine's eps (Song et al. 2021) is e/2
    return step_size / 2


# --- calibration of a discriminator's logit --------------------------------------------------------

class CalibratedLogit(nn.Module):
    """``x -> a d(x) + b`` ``[batch]``: a logit made calibrated by a fitted logistic head."""

    def __init__(self, logit: Net, a: float, b: float):
        super().__init__()
        self.logit, self.a, self.b = logit, float(a), float(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * _per_sample(self.logit(x), x.shape[0], "logit(x)") + self.b


@dataclass
class Calibration:
    """Result of :func:`calibrate_logit`: the head ``a d + b``, the calibrated ``logit`` and the scores
    (``log_loss`` in nats, ``ece``, ``accuracy``; classes weighted equally) on the held-out part,
    ``before`` (``sigmoid(d)``) and ``after`` (``sigmoid(a d + b)``)."""

    a: float
    b: float
    logit: CalibratedLogit
    before: dict
    after: dict


@torch.no_grad()
def _logits_of(logit: Net, x: torch.Tensor, batch_size: int, device) -> torch.Tensor:
    out = [_per_sample(logit(x[i:i + batch_size].to(device)), min(batch_size, len(x) - i), "logit(x)")
           for i in range(0, len(x), batch_size)]
    return torch.cat(out).to(torch.float64).cpu()


def _scores(s: torch.Tensor, t: torch.Tensor, w: torch.Tensor, n_bins: int) -> dict:
    """Class-weighted log loss, expected calibration error and accuracy of logits ``s`` for labels ``t``."""
    p = torch.sigmoid(s)
    log_loss = (w * (nn.functional.softplus(s) - t * s)).sum() / w.sum()   # BCE with logits
    bins = torch.clamp((p * n_bins).long(), max=n_bins - 1)
    ece = torch.zeros((), dtype=torch.float64)
    for k in range(n_bins):                                                # ECE, Guo et al. 2017
        m = bins == k
        if m.any():
            wk = w[m].sum()
            ece += wk / w.sum() * ((w[m] * t[m]).sum() / wk - (w[m] * p[m]).sum() / wk).abs()
    acc = (w * ((p > 0.5).to(t.dtype) == t)).sum() / w.sum()
    return {"log_loss": log_loss.item(), "ece": ece.item(), "accuracy": acc.item()}


def _fit_logistic(d: torch.Tensor, t: torch.Tensor, w: torch.Tensor, ridge: float = 1e-6,
                  iters: int = 100) -> tuple[float, float]:
    """Weighted logistic regression of ``t`` on ``a d + b`` by damped Newton steps (float64)."""
    X = torch.stack([d, torch.ones_like(d)], 1)
    w = w / w.sum()

    def loss(th):
        s = X @ th
        return (w * (nn.functional.softplus(s) - t * s)).sum() + 0.5 * ridge * th.pow(2).sum()

    th = torch.tensor([1.0, 0.0], dtype=torch.float64)
    for _ in range(iters):
        p = torch.sigmoid(X @ th)
        g = X.T @ (w * (p - t)) + ridge * th
        if g.norm() < 1e-12:
            break
        H = X.T @ (X * (w * p * (1 - p))[:, None]) + ridge * torch.eye(2, dtype=torch.float64)
        step, lr, f0 = torch.linalg.solve(H, g), 1.0, loss(th)
        while loss(th - lr * step) > f0 and lr > 1e-10:
            lr /= 2
        th = th - lr * step
    return th[0].item(), th[1].item()


def calibrate_logit(logit: Net, real: torch.Tensor, fake: torch.Tensor, *, holdout: float = 0.5,
                    batch_size: int = 1024, generator: Optional[torch.Generator] = None,
                    n_bins: int = 15) -> Calibration:
    """Fit a logistic head ``a d(x) + b`` on real vs generated samples, so that ``sigmoid(a d + b)``
    estimates ``p_data / (p_data + p_g)`` (as Che et al. 2020 do for discriminators not trained with the
    logistic loss). Use real samples the discriminator was not trained on.

    Args:
        logit: ``d``, samples -> ``[batch]`` (in eval mode for the fit, restored after).
        real, fake: ``[n_real, ...]`` held-out data and ``[n_fake, ...]`` generator samples.
        holdout: fraction of each set kept out of the fit, on which ``before``/``after`` are scored.
        generator: for the random fit/holdout split.
    The two classes get equal total weight, whatever their sizes (the optimal-discriminator identity
    assumes equal priors)."""
    if not 0 < holdout < 1:
        raise ValueError(f"holdout must be in (0, 1), got {holdout}")
    if min(len(real), len(fake)) < 4:
        raise ValueError(f"need at least 4 real and 4 fake samples, got {len(real)} and {len(fake)}")
    device = _device_of(logit, real.device)
    with eval_mode(logit):
        d_real = _logits_of(logit, real, batch_size, device)
        d_fake = _logits_of(logit, fake, batch_size, device)
    fit_parts, eval_parts = [], []
    for label, d in ((1.0, d_real), (0.0, d_fake)):
        perm = torch.randperm(len(d), generator=generator)
        n_eval = min(max(1, round(holdout * len(d))), len(d) - 1)
        for part, idx in ((eval_parts, perm[:n_eval]), (fit_parts, perm[n_eval:])):
            part.append((d[idx], torch.full((len(idx),), label, dtype=torch.float64),
                         torch.full((len(idx),), 1.0 / len(idx), dtype=torch.float64)))
    d_fit, t_fit, w_fit = (torch.cat(v) for v in zip(*fit_parts))
    d_ev, t_ev, w_ev = (torch.cat(v) for v in zip(*eval_parts))
    a, b = _fit_logistic(d_fit, t_fit, w_fit)
    return Calibration(a=a, b=b, logit=CalibratedLogit(logit, a, b),
                       before=_scores(d_ev, t_ev, w_ev, n_bins),
                       after=_scores(a * d_ev + b, t_ev, w_ev, n_bins))
