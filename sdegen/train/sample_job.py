"""The one sampling job: batched, per-sample-seeded, sharded over processes, resumable, locked.

:func:`run_job` draws items ``0 .. n-1`` in batches of ``batch_size`` with any ``draw(indices,
generators) -> arrays`` function, item ``i`` drawing all its noise from the generator of
:func:`sdegen.noise.sample_seed` ``(seed, i)`` (on CPU, so the draws do not depend on the device). It
serves ``sdegen sample`` (score models through :func:`sdegen.sampling.generate`: :func:`score_job`),
``sdegen ddls`` (GANs) and the seed's table runner (:func:`sdegen.evaluation.run_cell`).

A job writing ``OUT`` (``.npz``):
- holds the lock of ``OUT`` (:mod:`sdegen.locking`; one process, rank 0 under torchrun), so a second job
  on the same output stops at once with a one-line error naming the holder's PID;
- refuses an existing ``OUT`` unless ``overwrite``; if ``OUT`` is the finished output of the same job, it
  says so and computes nothing;
- writes ``OUT.shards/`` (``job.json`` and one ``shard_<k>.npz`` per batch ``k``, each written
  atomically), batch ``k`` going to process ``k mod world_size``; batches are planned lazily, so memory
  does not grow with ``n``; a rerun of the same job skips the finished shards (a folder of another job is
  an error once it holds a finished shard, unless ``overwrite``); a job that fails before its first shard
  leaves no folder;
- at the end, rank 0 merges the shards into ``OUT`` (atomically, with the job's identity in the array
  ``job``) and removes the folder.

Score models: sample ``i`` uses per-sample Langevin steps (``snr_norm="sample"``), so it does not depend
on the batch it is drawn in nor on the number of processes (up to float round-off of batched network
calls). The fixed-step solvers are per-sample too; the adaptive ODE solver (``ode``) is so only up to its
tolerance, since it picks its steps for the whole batch.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from .. import checkpoint
from ..locking import hold_lock
from ..noise import per_sample_generators
from ..plotting import save_samples, to_uint8_images
from ..sde import ScoreFn
from . import distributed
from .config import SamplingConfig
from .runs import ScoreModel

FLOAT_LIMIT = 1 << 24  # largest number of values for which the float samples are kept in the .npz

# draw(indices, generators) -> per-item arrays (first axis: the items), or one tensor (the "samples")
DrawFn = Callable[[list[int], list[torch.Generator]], Any]
# finish(arrays merged over all items) -> the arrays written to the output
FinishFn = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


# --- the generic job ------------------------------------------------------------------------------

@dataclass
class JobResult:
    """What :func:`run_job` did: ``path`` of the output (None on processes other than rank 0),
    ``already_done`` (the output was the finished output of this very job: nothing was computed),
    ``batches`` computed by this process, ``resumed`` (finished shards found at the start), and the
    finished ``arrays`` of a job run without an output file."""
    path: Optional[Path]
    already_done: bool = False
    batches: int = 0
    resumed: int = 0
    arrays: Optional[dict[str, np.ndarray]] = field(default=None, repr=False)  # the result, without ``out``


def shards_folder(out: str | os.PathLike) -> Path:
    """The folder of ``out``'s unfinished shards: ``OUT.shards``."""
    out = Path(out)
    return out.with_name(out.name + ".shards")


def check_output(out: str | os.PathLike) -> Path:
    """``out`` as a Path if it can be an output file (an ``.npz`` name that is not a folder), else a ValueError.
    Call it before any work."""
    out = Path(out)
    if out.suffix != ".npz":
        raise ValueError(f"the output must be a .npz file, got {str(out)!r}")
    if out.is_dir():
        raise ValueError(f"the output {out} is a folder; give a file name ending in .npz")
    if out.parent.exists() and not out.parent.is_dir():
        raise ValueError(f"cannot write {out}: {out.parent} is not a folder")
    return out


def read_job(path: str | os.PathLike) -> Optional[dict]:
    """The job identity stored in a finished output (None if it has none or does not load)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return json.loads(str(f["job"])) if "job" in f.files else None
    except (OSError, ValueError, KeyError, EOFError):
        return None


def job_identity(job: dict, *, n: int, batch_size: int, seed: int) -> dict:
    """The identity :func:`run_job` stores for ``job`` (compare with :func:`read_job` of an output)."""
    return {**job, "n": n, "batch_size": batch_size, "seed": seed}


def _savez(path: Path, **arrays: np.ndarray) -> None:
    checkpoint.atomic_write(path, lambda f: np.savez(f, **arrays))


def _shard_path(shards: Path, k: int) -> Path:
    return shards / f"shard_{k:06d}.npz"


def _read_shard(path: Path, indices: np.ndarray) -> Optional[dict[str, np.ndarray]]:
    """The arrays of a finished shard, or None if it is missing, unreadable or of another batch."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            if not np.array_equal(f["indices"], indices):
                return None
            return {k: f[k] for k in f.files if k != "indices"}
    except (OSError, ValueError, KeyError, EOFError):
        return None


def _batch(k: int, n: int, batch_size: int) -> np.ndarray:
    return np.arange(k * batch_size, min((k + 1) * batch_size, n))


def _as_arrays(drawn: Any, n_items: int) -> dict[str, np.ndarray]:
    arrays = {"samples": drawn} if torch.is_tensor(drawn) or isinstance(drawn, np.ndarray) else dict(drawn)
    out = {}
    for key, v in arrays.items():
        v = v.detach().cpu().numpy() if torch.is_tensor(v) else np.asarray(v)
        if v.ndim == 0 or len(v) != n_items:
            raise ValueError(f"draw returned {key!r} of shape {list(v.shape)} for {n_items} items; "
                             "each array needs one row per item")
        out[key] = v
    return out


def _prepare(out: Path, shards: Path, job: dict, overwrite: bool) -> tuple[bool, Optional[str]]:
    """On rank 0, before any work: ``(already_done, problem)``; creates the shard folder."""
    if out.exists():
        if not overwrite:
            if read_job(out) == job:
                return True, None
            return False, (f"{out} exists; give --overwrite (overwrite=True) to replace it, or choose another "
                           "output file")
    if shards.exists() and not shards.is_dir():
        return False, f"{shards} is a file; the job needs that name for its shards folder"
    meta = shards / "job.json"
    if meta.is_file() and any(shards.glob("shard_*.npz")):
        try:
            old = json.loads(meta.read_text())
        except ValueError:
            old = {}
        if old != job:
            if not overwrite:
                diff = sorted(k for k in set(old) | set(job) if old.get(k) != job.get(k))
                return False, (f"{shards} holds shards of another sampling job (differs in {', '.join(diff)}); "
                               "give --overwrite to discard them, or choose another output file")
            shutil.rmtree(shards)
    shards.mkdir(parents=True, exist_ok=True)
    checkpoint.atomic_write(meta, lambda f: f.write(json.dumps(job, indent=1).encode()))
    return False, None


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_job(out: Optional[str | os.PathLike], draw: DrawFn, *, n: int, batch_size: int, seed: int, job: dict,
            finish: Optional[FinishFn] = None, overwrite: bool = False,
            ctx: Optional[distributed.Context] = None, progress: bool = False, what: str = "samples") -> JobResult:
    """Draw items ``0 .. n-1`` of the job ``seed`` into ``out`` (see the module doc).

    Args:
        draw: ``draw(indices, generators)`` -> a dict of arrays with one row per item (or one tensor /
            array, saved as ``samples``); ``generators[j]`` is item ``indices[j]``'s own generator.
        job: the job's identity (JSON data: source, sampler, options...); ``n``, ``batch_size`` and
            ``seed`` are added to it. A rerun resumes only shards of the same identity.
        finish: turns the merged arrays into the arrays written to ``out`` (default: as they are).
        out: the output file; None keeps the result in memory (``JobResult.arrays``; one process, no
            shards, nothing to resume: for evaluations that reduce the samples at once).
        overwrite: replace an existing ``out`` (and discard shards of another job).
        progress: on a terminal a bar over the batches; otherwise one line per finished batch (stderr).
    Raises ValueError for bad sizes, an existing output, a foreign shard folder, and
    :class:`sdegen.locking.LockedError` (a ValueError) if another process holds the output."""
    for name, v in (("n", n), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    ctx = ctx or distributed.context()
    job = job_identity(job, n=n, batch_size=batch_size, seed=seed)
    if out is None:
        return _run(None, None, draw, n, batch_size, seed, finish, distributed.Context(device=ctx.device),
                    progress, what)
    out = check_output(out)
    shards = shards_folder(out)
    json.dumps(job)  # a job identity must be JSON data
    with contextlib.ExitStack() as stack:
        done, problem = False, None
        if ctx.is_main:
            try:
                stack.enter_context(hold_lock(out, what="output", folder=False))
                done, problem = _prepare(out, shards, job, overwrite)
            except ValueError as e:   # LockedError is one
                problem = str(e)
        done, problem = distributed.broadcast_object((done, problem), ctx)
        if problem:
            raise ValueError(problem)
        if done:
            return JobResult(out if ctx.is_main else None, already_done=True)
        distributed.barrier(ctx)   # the folder exists before any process writes into it
        return _run(out, shards, draw, n, batch_size, seed, finish, ctx, progress, what)


def _run(out: Optional[Path], shards: Optional[Path], draw: DrawFn, n: int, batch_size: int, seed: int,
         finish: Optional[FinishFn], ctx: distributed.Context, progress: bool, what: str) -> JobResult:
    n_batches = -(-n // batch_size)
    mine = range(ctx.rank, n_batches, ctx.world_size)           # lazy: nothing per batch is held
    # finished shards (the set grows with them only); in memory (no ``out``): the batches' arrays
    finished = {p.name for p in shards.glob("shard_*.npz")} if shards is not None else set()
    kept: list[dict[str, np.ndarray]] = []
    resumed = computed = 0
    bar = None
    if progress and ctx.is_main and sys.stderr.isatty():
        from tqdm.auto import tqdm
        bar = tqdm(total=len(mine), desc=f"{what}: batches", dynamic_ncols=True)
    try:
        for k in mine:
            indices = _batch(k, n, batch_size)
            path = _shard_path(shards, k) if shards is not None else None
            if path is not None and path.name in finished and _read_shard(path, indices) is not None:
                resumed += 1
                if bar is not None:
                    bar.update(1)
                continue
            start = time.perf_counter()
            idx = indices.tolist()
            arrays = _as_arrays(draw(idx, per_sample_generators(seed, idx)), len(idx))
            if path is not None:
                _savez(path, indices=indices, **arrays)
            else:
                kept.append(arrays)
            computed += 1
            if bar is not None:
                bar.update(1)
            elif progress and ctx.is_main:
                _say(f"{what}: batch {k + 1}/{n_batches} (items {idx[0]}..{idx[-1]}) done in "
                     f"{time.perf_counter() - start:.1f} s")
    except BaseException:
        if shards is not None and ctx.is_main and not any(shards.glob("shard_*.npz")):
            shutil.rmtree(shards, ignore_errors=True)   # nothing to resume: leave no folder behind
        raise
    finally:
        if bar is not None:
            bar.close()
    if shards is None:
        arrays = {key: np.concatenate([part[key] for part in kept]) for key in kept[0]}
        return JobResult(None, batches=computed, arrays=finish(arrays) if finish is not None else arrays)
    distributed.barrier(ctx)
    if not ctx.is_main:
        return JobResult(None, batches=computed, resumed=resumed)
    parts: dict[str, list[np.ndarray]] = {}
    for k in range(n_batches):
        part = _read_shard(_shard_path(shards, k), _batch(k, n, batch_size))
        if part is None:
            raise RuntimeError(f"shard {k} of {shards} is missing or unreadable after sampling")
        for key, v in part.items():
            parts.setdefault(key, []).append(v)
    merged = {key: np.concatenate(v) for key, v in parts.items()}
    del parts
    arrays = finish(merged) if finish is not None else merged
    job = json.loads((shards / "job.json").read_text())
    _savez(out, **arrays, job=np.array(json.dumps(job, sort_keys=True)))
    shutil.rmtree(shards)
    return JobResult(out, batches=computed, resumed=resumed)


# --- score models ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class SamplerOptions:
    """How to sample a score model: a ``sampler`` of :data:`sdegen.sampling.SAMPLERS` and its
    ``options`` (the others take the defaults of its signature, :func:`sdegen.sampling.sampler_defaults`)."""
    sampler: str = "pc"
    options: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, s: SamplingConfig, **changes) -> "SamplerOptions":
        """The sampler of a run's ``sampling`` config (:meth:`SamplingConfig.sampler`); ``changes`` (e.g.
        ``steps=100``) replace options where they are not None."""
        name, options = s.sampler()
        return cls(name, options).changed(**changes)

    def changed(self, **changes) -> "SamplerOptions":
        """A copy whose options are updated by the ``changes`` that are not None."""
        return replace(self, options={**self.options, **{k: v for k, v in changes.items() if v is not None}})

    def check(self, model: Optional[ScoreModel] = None) -> "SamplerOptions":
        """Raise a ValueError for an unknown sampler or an option it does not take (listing those it takes)
        and, given a ``model``, for options its SDE does not allow (:func:`sdegen.sampling.check_sampler`),
        before any sampling."""
        from ..sampling import check_sampler, check_sampler_options
        check_sampler_options(self.sampler, self.options)
        if model is not None:
            check_sampler(model.sde, self.sampler, (1, *model.shape), **self.options)
        return self


def describe(options: SamplerOptions, sde_steps: int) -> str:
    """A short human description, e.g. ``heun, 20 steps, s_churn=10.0``."""
    from ..sampling import sampler_defaults
    o = {**sampler_defaults(options.sampler), **options.options}
    if options.sampler == "ode":
        return f"probability-flow ODE ({o['method']}, rtol {o['rtol']:g})"
    steps = o.get("steps") or sde_steps
    if options.sampler == "pc":
        return f"{o.get('predictor') or 'no predictor'} + {o.get('corrector') or 'no corrector'}, {steps} steps"
    skip = ("steps", "eps")
    given = options.options.get("nfe") is not None or options.options.get("times") is not None
    head = f"{options.sampler}, {steps} steps" if "steps" in o and not given else options.sampler
    return head + "".join(f", {k}={v}" for k, v in options.options.items()
                                                         if k not in skip)


def draw(model: ScoreModel, indices: Sequence[int], seed: int, options: SamplerOptions, *,
         device=None, callback: Optional[Callable[[dict], None]] = None,
         generators: Optional[list[torch.Generator]] = None, score_fn: Optional[ScoreFn] = None) -> torch.Tensor:
    """Samples number ``indices`` of the job ``seed``: ``[len(indices), *model.shape]`` in the model's
    data range, on ``device`` (default: the network's), through :func:`sdegen.sampling.generate`.
    ``generators``: the samples' own generators (default: those of ``(seed, index)``); ``score_fn``: the
    model's score function, wrapped (e.g. counting its calls)."""
    from ..sampling import generate

    device = device if device is not None else next(model.net.parameters()).device
    gens = generators if generators is not None else per_sample_generators(seed, indices)
    score_fn = score_fn if score_fn is not None else model.score_fn()
    return generate(model.sde, score_fn, (len(indices), *model.shape), sampler=options.sampler,
                    generator=gens, device=device, callback=callback, **options.options)


def to_uint8(model: ScoreModel, x: torch.Tensor) -> np.ndarray:
    """Images ``[N, C, H, W]`` in the model's data range -> uint8 ``[N, H, W, C]``."""
    return to_uint8_images(model.to_signed(x.detach().float().cpu())).numpy()


def save_picture(model: ScoreModel, x: torch.Tensor, path: str | os.PathLike, *,
                 reference: Optional[torch.Tensor] = None, title: str = "", nrow: Optional[int] = None) -> Path:
    """A grid of images (``x`` in the model's data range, or uint8 ``[N, H, W, C]``), each enlarged to at
    least 32 pixels, or a scatter plot of points over ``reference`` (:func:`sdegen.plotting.save_samples`)."""
    if model.is_image and x.dtype != torch.uint8:
        x = model.to_signed(x.detach().float().cpu())
    return save_samples(x.detach().cpu(), path, reference=reference, title=title, nrow=nrow)


@contextlib.contextmanager
def _step_bar(desc: str) -> Iterator[Callable[[dict], None]]:
    """A progress bar counting a sampler's steps, fed by its ``callback``."""
    from tqdm.auto import tqdm
    with tqdm(desc=desc, unit="step", leave=False, dynamic_ncols=True) as bar:
        yield lambda d: bar.update(1)


def score_job(model: ScoreModel, out: str | os.PathLike, *, n: int, batch_size: int, seed: int,
              options: SamplerOptions, source: str = "", overwrite: bool = False,
              ctx: Optional[distributed.Context] = None, progress: bool = False,
              score_for: Optional[Callable[[list[int]], Callable]] = None) -> JobResult:
    """Samples ``0 .. n-1`` of a score model into ``out`` by :func:`run_job`.

    ``out`` holds ``samples``: uint8 ``[N, H, W, C]`` for images, float32 ``[N, D]`` for points; for
    images with at most :data:`FLOAT_LIMIT` values also ``samples_float``: float32 ``[N, C, H, W]`` in
    [-1, 1] (unclamped). ``source`` names the model in the job's identity. With ``progress`` on a
    terminal, a bar counts each batch's sampler steps (the sampler's ``callback``). ``score_for(indices)``:
    the score function of a batch of sample indices (e.g. a guided score, one class per sample; name it
    in ``source``); default ``model.score_fn()``."""
    options.check()
    ctx = ctx or distributed.context()
    step_bars = progress and ctx.is_main and sys.stderr.isatty()

    def draw_batch(indices: list[int], gens: list[torch.Generator]) -> torch.Tensor:
        with contextlib.ExitStack() as stack:
            callback = (stack.enter_context(_step_bar(f"samples {indices[0]}..{indices[-1]}"))
                        if step_bars else None)
            m = model if score_for is None else model.with_score_fn(score_for(indices))
            return draw(m, indices, seed, options, device=ctx.device, callback=callback, generators=gens).float()

    def finish(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        samples = arrays["samples"]
        if not model.is_image:
            return {"samples": samples.astype(np.float32)}
        x = torch.from_numpy(samples)
        result = {"samples": to_uint8(model, x)}
        if samples.size <= FLOAT_LIMIT:
            result["samples_float"] = model.to_signed(x).numpy().astype(np.float32)
        return result

    job = {"source": source, "step": model.step, "sampler": options.sampler, "options": options.options}
    return run_job(out, draw_batch, n=n, batch_size=batch_size, seed=seed, job=job, finish=finish,
                   overwrite=overwrite, ctx=ctx, progress=progress)


def sample_to_npz(model: ScoreModel, out: str | os.PathLike, *, n: int, batch_size: int, seed: int,
                  options: SamplerOptions, source: str = "", overwrite: bool = False,
                  ctx: Optional[distributed.Context] = None, progress: bool = False) -> Optional[Path]:
    """:func:`score_job`, returning the output's path on rank 0 (None on the others)."""
    return score_job(model, out, n=n, batch_size=batch_size, seed=seed, options=options, source=source,
                     overwrite=overwrite, ctx=ctx, progress=progress).path


__all__ = ["JobResult", "run_job", "check_output", "job_identity", "read_job", "shards_folder", "SamplerOptions",
           "describe",
           "draw", "to_uint8", "save_picture", "score_job", "sample_to_npz", "FLOAT_LIMIT"]
