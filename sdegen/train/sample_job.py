"""Large sampling jobs: per-sample seeds, shards per process, resume, merge into one ``.npz``.

Sample ``i`` draws all its noise from a generator seeded by ``(seed, i)`` (on CPU, so the draws do not
depend on the device), and the PC sampler takes per-sample Langevin steps (``snr_norm="sample"``), so
a sample does not depend on the batch it is drawn in nor on the number of processes (up to float
round-off of batched network calls). The fixed-step solvers of :mod:`sdegen.solvers` are per-sample
too; the adaptive ODE solver (``ode``) is so only up to its tolerance, since it picks its steps for the
whole batch.

A job writes ``OUT.shards/`` (``job.json`` and one ``shard_<k>.npz`` per batch ``k``), batch ``k``
going to process ``k mod world_size``; a rerun of the same job skips the finished shards (a folder of
another job is an error once it holds a finished shard); at the end rank 0 merges the shards into
``OUT`` and removes the folder.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..noise import per_sample_generators
from ..sampling import sample, sample_ode
from . import distributed
from .config import SamplingConfig
from .runs import ScoreModel

FLOAT_LIMIT = 1 << 24  # largest number of values for which the float samples are kept in the .npz


@dataclass(frozen=True)
class SamplerOptions:
    """How to sample: PC (``predictor``/``corrector``, ``None`` for none), the probability-flow ODE
    (``ode``), or a fast solver of :mod:`sdegen.solvers` (``solver`` with ``steps`` and its
    ``solver_options``)."""
    solver: Optional[str] = None
    solver_options: dict = field(default_factory=dict)
    predictor: Optional[str] = "reverse_diffusion"
    corrector: Optional[str] = "langevin"
    snr: float = 0.16
    n_corrector_steps: int = 1
    snr_norm: str = "sample"
    steps: Optional[int] = None
    eps: float = 1e-3
    denoise: bool = True
    ode: bool = False
    ode_method: str = "dopri5"
    rtol: float = 1e-5
    atol: float = 1e-5

    @classmethod
    def from_config(cls, s: SamplingConfig, **changes) -> "SamplerOptions":
        none = lambda v: None if v == "none" else v  # noqa: E731
        base = cls(solver=s.solver, solver_options=dict(s.solver_options), predictor=none(s.predictor),
                   corrector=none(s.corrector), snr=s.snr, n_corrector_steps=s.n_corrector_steps,
                   snr_norm=s.snr_norm, steps=s.steps, eps=s.eps, denoise=s.denoise)
        return replace(base, **{k: v for k, v in changes.items() if v is not None})


def describe(options: SamplerOptions, sde_steps: int) -> str:
    """A short human description, e.g. ``heun, 20 steps, s_churn=10.0``."""
    if options.ode:
        return f"probability-flow ODE ({options.ode_method}, rtol {options.rtol:g})"
    steps = options.steps or sde_steps
    if options.solver is not None:
        extra = "".join(f", {k}={v}" for k, v in options.solver_options.items())
        return f"{options.solver}, {steps} steps{extra}"
    return f"{options.predictor or 'no predictor'} + {options.corrector or 'no corrector'}, {steps} steps"


def draw(model: ScoreModel, indices: Sequence[int], seed: int, options: SamplerOptions, *,
         device=None, progress: bool = False) -> torch.Tensor:
    """Samples number ``indices`` of the job ``seed``: ``[len(indices), *model.shape]`` in the model's
    data range, on ``device`` (default: the network's)."""
    device = device if device is not None else next(model.net.parameters()).device
    gens = per_sample_generators(seed, indices)
    shape = (len(indices), *model.shape)
    if options.solver is not None and not options.ode:
        from ..solvers import solve
        return solve(model.sde, model.score_fn(), shape, solver=options.solver, steps=options.steps,
                     eps=options.eps, generator=gens, device=device, **options.solver_options)
    if options.ode:
        return sample_ode(model.sde, model.score_fn(), shape, rtol=options.rtol, atol=options.atol,
                          method=options.ode_method, eps=options.eps, denoise=options.denoise,
                          generator=gens, device=device)
    return sample(model.sde, model.score_fn(), shape, predictor=options.predictor, corrector=options.corrector,
                  snr=options.snr, n_corrector_steps=options.n_corrector_steps, steps=options.steps,
                  eps=options.eps, denoise=options.denoise, snr_norm=options.snr_norm, generator=gens,
                  device=device, progress=progress)


def to_uint8(model: ScoreModel, x: torch.Tensor) -> np.ndarray:
    """Images ``[N, C, H, W]`` in the model's data range -> uint8 ``[N, H, W, C]``."""
    signed = model.to_signed(x.detach().float().cpu()).clamp(-1, 1)
    return ((signed + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def save_picture(model: ScoreModel, x: torch.Tensor, path: str | os.PathLike, *,
                 reference: Optional[torch.Tensor] = None, title: str = "", nrow: Optional[int] = None) -> Path:
    """A grid of images (``x`` in the model's data range, or uint8 ``[N, H, W, C]``), each enlarged to at
    least 32 pixels, or a scatter plot of points over ``reference``."""
    from ..gan import save_samples_png

    if not model.is_image:
        return save_samples_png(x.float().cpu(), path, reference=reference, title=title)
    images = x if x.dtype == torch.uint8 else torch.from_numpy(to_uint8(model, x))
    scale = -(-32 // images.shape[1])
    if scale > 1:  # nearest-neighbour enlargement of small images
        images = images.repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    return save_samples_png(images, path, nrow=nrow or math.ceil(math.sqrt(len(images))))


def _atomic_savez(path: Path, **arrays) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read_shard(path: Path, expected: np.ndarray) -> Optional[np.ndarray]:
    """The samples of a finished shard, or None if it is missing, unreadable or of another batch."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            if not np.array_equal(f["indices"], expected):
                return None
            return f["samples"]
    except (OSError, ValueError, KeyError, EOFError):
        return None


def _batches(n: int, batch_size: int) -> list[np.ndarray]:
    return [np.arange(k, min(k + batch_size, n)) for k in range(0, n, batch_size)]


def _prepare(shards: Path, job: dict, ctx: distributed.Context) -> None:
    """Create the shard folder, or check that an existing one with finished shards belongs to the same
    job (on rank 0)."""
    problem = None
    if ctx.is_main:
        shards.mkdir(parents=True, exist_ok=True)
        meta = shards / "job.json"
        if meta.is_file() and any(shards.glob("shard_*.npz")):
            old = json.loads(meta.read_text())
            if old != job:
                diff = sorted(k for k in set(old) | set(job) if old.get(k) != job.get(k))
                problem = (f"{shards} holds shards of another sampling job (differs in {', '.join(diff)}); "
                           "delete it or choose another output file")
        else:
            meta.write_text(json.dumps(job, indent=1))
    problem = distributed.broadcast_object(problem, ctx)
    if problem:
        raise ValueError(problem)


def sample_to_npz(model: ScoreModel, out: str | os.PathLike, *, n: int, batch_size: int, seed: int,
                  options: SamplerOptions, source: str = "", ctx: Optional[distributed.Context] = None,
                  progress: bool = False) -> Optional[Path]:
    """Draw samples ``0 .. n-1`` of the job ``seed`` into ``out`` (``.npz``), sharded over processes.

    ``out`` holds ``samples``: uint8 ``[N, H, W, C]`` for images, float32 ``[N, D]`` for points; for
    images with at most :data:`FLOAT_LIMIT` values also ``samples_float``: float32 ``[N, C, H, W]`` in
    [-1, 1] (unclamped). ``source`` names the model in the job's identity. Returns ``out`` on rank 0,
    None on the others."""
    ctx = ctx or distributed.context()
    out = Path(out)
    if n < 1 or batch_size < 1:
        raise ValueError(f"n and batch_size must be >= 1, got n={n}, batch_size={batch_size}")
    shards = out.with_name(out.name + ".shards")
    job = {"source": source, "step": model.step, "n": n, "batch_size": batch_size, "seed": seed,
           "options": asdict(options)}
    _prepare(shards, job, ctx)
    batches = _batches(n, batch_size)
    mine = [k for k in range(len(batches)) if k % ctx.world_size == ctx.rank]
    todo = [k for k in mine if _read_shard(shards / f"shard_{k:06d}.npz", batches[k]) is None]
    bar = None
    if progress and ctx.is_main:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc="sampling batches", dynamic_ncols=True)
    try:
        for k in todo:
            x = draw(model, batches[k].tolist(), seed, options, device=ctx.device)
            _atomic_savez(shards / f"shard_{k:06d}.npz", indices=batches[k], samples=x.float().cpu().numpy())
            if bar is not None:
                bar.update(1)
    except BaseException:
        if ctx.is_main and not any(shards.glob("shard_*.npz")):  # nothing to resume: leave no folder behind
            shutil.rmtree(shards, ignore_errors=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    distributed.barrier(ctx)
    if not ctx.is_main:
        return None
    parts = []
    for k, idx in enumerate(batches):
        part = _read_shard(shards / f"shard_{k:06d}.npz", idx)
        if part is None:
            raise RuntimeError(f"shard {k} of {shards} is missing or unreadable after sampling")
        parts.append(part)
    samples = np.concatenate(parts)
    arrays = {}
    if model.is_image:
        x = torch.from_numpy(samples)
        arrays["samples"] = to_uint8(model, x)
        if samples.size <= FLOAT_LIMIT:
            arrays["samples_float"] = model.to_signed(x).numpy().astype(np.float32)
    else:
        arrays["samples"] = samples.astype(np.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    _atomic_savez(out, **arrays)
    shutil.rmtree(shards)
    return out
