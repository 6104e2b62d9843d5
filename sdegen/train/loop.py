"""The training loop of a score model: Adam with linear warm-up, gradient clipping, EMA, mixed
precision, optional ``torch.compile``, DDP, checkpoints, resume.

A run folder holds ``config.yaml`` (the resolved config), ``checkpoints/ckpt_<step>.pt`` (model, EMA,
optimizer, grad scaler, step, RNG states, config; written atomically), ``stats.jsonl`` (one row per
log step: loss, grad norm, lr, it/s), TensorBoard scalars in ``tb/`` and pictures of EMA samples in
``samples/step_<step>.png``. Data order and noise are functions of ``(seed, step)``
(:mod:`sdegen.train.batches`) and dropout is re-seeded each step from ``(seed, step, rank)``, so a
resumed run gives, on CPU, bitwise the weights of a run that never stopped.

Runs never lose work: the run folder is locked while a process trains in it (:mod:`sdegen.locking`);
a checkpoint is written only when the model, EMA and optimizer state are finite, and resuming takes the
newest checkpoint that passes every check (checksum, layout, finite values, the network's keys and
shapes), reporting the others; pruning deletes only checkpoints of this run. The run stops
(:class:`NonFiniteLossError`) when the loss or the gradient norm is NaN or infinite, or when the loss
explodes: a step's loss above :data:`EXPLOSION` times the mean loss of the run's first logged window.
"""
from __future__ import annotations

import contextlib
import json
import math
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .. import checkpoint
from ..locking import LockedError, hold_lock
from ..losses import get_loss
from . import distributed
from .batches import Batches, derived_seed
from .config import Config, ConfigError, loss_options, resume_conflicts, to_dict, to_yaml
from .ema import EMA
from .runs import CHECKPOINTS, FORMAT, ScoreModel, build, check_training_state, state_dict_problem
from .sample_job import SamplerOptions, draw, save_picture

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


EXPLOSION = 1e6   # a step's loss above EXPLOSION x the mean loss of the first logged window stops the run
OLD = "old_"      # prefix of the folder in checkpoints/ that --restart moves earlier checkpoints to


class NonFiniteLossError(FloatingPointError):
    """The training diverged: the loss or the gradient norm became NaN or infinite, the loss exploded
    (see :data:`EXPLOSION`), or the weights became non-finite; the message names the step."""


@dataclass
class TrainResult:
    """What :func:`train` leaves: the EMA model (eval mode), the step reached, the logged rows."""
    model: ScoreModel
    step: int
    stats: list[dict] = field(default_factory=list)
    workdir: Path = Path(".")
    stopped: str = "steps"      # "steps" (all done) or "time_limit"


def learning_rate(step: int, lr: float, warmup: int, decay: int = 0) -> float:
    """Learning rate of the update that follows ``step`` finished updates: linear warm-up to ``lr`` over
    ``warmup`` updates (score_sde ``optimization_manager``, counting the first update as 1), then, when
    ``decay`` > 0, inverse square-root decay ``lr / sqrt(max(n / decay, 1))`` for update ``n``
    (Karras et al. 2024, EDM2: ``learning_rate_schedule`` of its training loop)."""
    n = step + 1
    scale = min(n / warmup, 1.0) if warmup > 0 else 1.0
    return lr * scale / math.sqrt(max(n / decay, 1.0)) if decay > 0 else lr * scale


def _say(ctx: distributed.Context, text: str) -> None:
    if ctx.is_main:
        print(text, file=sys.stderr, flush=True)


def _seed_global(seed: int, device: torch.device) -> None:
    """Seed torch's global generator of ``device`` (what dropout draws from)."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)


class _Log:
    """What rank 0 reports: rows of ``stats.jsonl`` (rows after ``step``, from a run that was killed after
    its last checkpoint, are dropped), TensorBoard scalars, and the progress bar."""

    KEYS = ("loss", "grad_norm", "lr", "it_per_s")

    def __init__(self, workdir: Path, step: int, total: int, desc: str, *, main: bool, tensorboard: bool,
                 progress: bool, time_limit: Optional[float] = None):
        self.path, self.rows, self.writer, self.bar, self.main = workdir / "stats.jsonl", [], None, None, main
        self.step, self.started = step, None
        if not main:
            return
        self.rows = checkpoint.stats_upto(self.path, step)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(workdir / "tb"), purge_step=step + 1)  # drops events after step
        if progress and step < total:
            from tqdm.auto import tqdm
            if time_limit is None:
                self.bar = tqdm(total=total, initial=step, desc=desc, dynamic_ncols=True)
            else:   # a time budget: the bar counts its seconds, the steps go beside it
                self.started = time.perf_counter()
                self.bar = tqdm(total=round(60 * time_limit), desc=desc, unit="s", dynamic_ncols=True,
                                bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt} s{postfix}")
                self.bar.set_postfix(step=step)

    def advance(self) -> None:
        self.step += 1
        if self.bar is None:
            return
        if self.started is None:
            self.bar.update(1)
        elif self.step % 10 == 0:
            elapsed = min(time.perf_counter() - self.started, self.bar.total)
            self.bar.update(elapsed - self.bar.n)

    def add(self, row: dict) -> None:
        if not self.main:
            return
        self.rows.append(row)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for key in self.KEYS:
                self.writer.add_scalar(f"train/{key}", row[key], row["step"])
        if self.bar is not None:
            self.bar.set_postfix(**({"step": row["step"]} if self.started is not None else {}),
                                 loss=f"{row['loss']:.4g}", lr=f"{row['lr']:.2g}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()


class _Window:
    """Per-step losses and gradient norms since the last log, kept on the device (no sync per step)."""

    def __init__(self):
        self.rows: list[torch.Tensor] = []
        self.first_step = 0

    def add(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        if not self.rows:
            self.first_step = step
        self.rows.append(torch.stack([loss.detach().float(), grad_norm.detach().float()]))

    def collect(self, ctx: distributed.Context, check_grad: bool = True,
                reference: Optional[float] = None) -> torch.Tensor:
        """``[n, 2]`` on CPU: (loss, grad norm) of each step, averaged over the processes. Raises
        :class:`NonFiniteLossError` naming the first step whose loss is not finite, whose gradient norm
        is not finite (if ``check_grad``; fp16 loss scaling skips such steps itself), or whose loss
        exceeds ``EXPLOSION * reference``."""
        w = distributed.all_reduce_mean(torch.stack(self.rows), ctx).cpu()
        tests = [(~torch.isfinite(w[:, 0]), "the loss became {}", 0)]
        if check_grad:
            tests.append((~torch.isfinite(w[:, 1]), "the gradient norm became {}", 1))
        if reference is not None and reference > 0:
            tests.append((w[:, 0] > EXPLOSION * reference, "the loss exploded to {:.4g} (over "
                          f"{EXPLOSION:g} times its first logged mean, {reference:.4g})", 0))
        found = [(int(bad.nonzero()[0]), text, col) for bad, text, col in tests if bad.any()]
        if found:
            i, text, col = min(found, key=lambda f: f[0])
            raise NonFiniteLossError(f"{text.format(w[i, col].item())} at step {self.first_step + i + 1}")
        return w


class _WithLabels(nn.Module):
    """A class-conditional network ``net(x, labels, y)`` with its class labels ``y`` bound: what the
    score-matching losses call as ``net(x, labels)``."""

    def __init__(self, net: nn.Module, y: torch.Tensor):
        super().__init__()
        self.net, self.y = net, y

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.net(x, labels, self.y)


def _picture(model: ScoreModel, cfg: Config, reference: Optional[torch.Tensor], path: Path, step: int) -> None:
    """EMA samples of ``cfg.sampling`` (seed ``sampling.seed``): a grid of images or a scatter of points."""
    x = draw(model, list(range(cfg.sampling.n)), cfg.sampling.seed, SamplerOptions.from_config(cfg.sampling))
    if not torch.isfinite(x).all():
        raise FloatingPointError(f"{int((~torch.isfinite(x)).flatten(1).any(1).sum())} of the {len(x)} samples "
                                 "hold NaN or infinite values")
    save_picture(model, x, path, reference=reference, title=f"{cfg.data.name}, {cfg.sde.name.upper()}, step {step}")


def train(cfg: Config, workdir: str | Path, *, resume: bool = True, restart: bool = False, progress: bool = True,
          verbose: bool = True) -> TrainResult:
    """Train ``cfg`` in ``workdir`` up to ``cfg.training.steps`` steps (or ``training.time_limit``).

    With ``resume`` the run continues from the newest good checkpoint of ``workdir`` (corrupt ones are
    reported and skipped; if every one is refused, :class:`sdegen.checkpoint.NoUsableCheckpointError`
    lists them); its config must equal ``cfg`` except for :data:`sdegen.train.config.RESUMABLE_CHANGES`.
    Without ``resume`` the earlier checkpoints are deleted; with ``restart`` the run starts from step 0
    and moves them (readable or not) to ``checkpoints/old_<time>/``. ``workdir`` is locked for the whole
    run (rank 0 holds the lock): another process on it raises :class:`sdegen.locking.LockedError` before
    touching anything. Under a process group (see :func:`sdegen.train.distributed.session`) every
    process trains on its share of the global batch with DDP; rank 0 writes the files. Raises
    :class:`NonFiniteLossError` (naming the last good checkpoint), :class:`ConfigError`, or
    ValueError/FileNotFoundError for bad data or a ``workdir`` that is a file."""
    ctx = distributed.context(cfg.training.device)
    devices = [ctx.device] if ctx.device.type == "cuda" else []
    with _locked(Path(workdir), ctx), torch.random.fork_rng(devices=devices):  # caller's global RNG kept
        return _train(cfg, Path(workdir), ctx, resume and not restart, restart, progress and ctx.is_main, verbose)


@contextlib.contextmanager
def _locked(workdir: Path, ctx: distributed.Context):
    """Hold the run folder's lock on rank 0; every rank raises if rank 0 could not take it."""
    with contextlib.ExitStack() as stack:
        error = None
        if ctx.is_main:
            try:
                stack.enter_context(hold_lock(workdir, "run folder", folder=True))
            except (ValueError, OSError) as e:
                error = e
        if distributed.any_true(error is not None, ctx):
            raise error or LockedError(f"the run folder {workdir} could not be locked by rank 0")
        yield


def _optimizer_problem(opt: torch.optim.Optimizer, saved: dict) -> Optional[str]:
    """How a saved optimizer state differs from ``opt``'s parameters (None if it fits)."""
    groups, own = saved["param_groups"], opt.param_groups
    if len(groups) != len(own) or any(not isinstance(g, dict) or len(g.get("params", ())) != len(o["params"])
                                      for g, o in zip(groups, own)):
        return "its optimizer has other parameter groups than the network"
    shapes = dict(zip((i for g in groups for i in g["params"]), (p.shape for o in own for p in o["params"])))
    for key, entry in saved["state"].items():
        if key not in shapes or not isinstance(entry, dict):
            return f"its optimizer state has an entry {key!r} for no parameter"
        for name, v in entry.items():
            if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape != shapes[key]:
                return f"its optimizer's {name} of parameter {key} has shape {list(v.shape)}, not {list(shapes[key])}"
    return None


@dataclass
class _Resumed:
    step: int = 0
    run: str = field(default_factory=lambda: uuid.uuid4().hex)   # tags this run's checkpoint files
    reference: Optional[float] = None                          # mean loss of the first logged window
    path: Optional[Path] = None


def _restore(ckdir: Path, cfg: Config, net: nn.Module, ema: EMA, opt: torch.optim.Optimizer,
             scaler: torch.amp.GradScaler, say) -> _Resumed:
    """Load the newest checkpoint of ``ckdir`` that passes every check (checksum, layout, finite values,
    this network's keys and shapes; the others are reported and skipped) into the training state."""
    def check(state, path: Path) -> None:
        check_training_state(state, path)
        conflicts = resume_conflicts(state["config"], cfg)
        if conflicts:
            raise ConfigError(f"cannot resume from {path}: the config differs in {'; '.join(conflicts)}; "
                              "use another workdir, or --no-resume to start afresh")
        problem = (state_dict_problem(net.state_dict(), state["model"])
                   or state_dict_problem(ema.module.state_dict(), state["ema"]["module"])
                   or _optimizer_problem(opt, state["optimizer"]))
        if problem:
            raise checkpoint.CheckpointError(f"checkpoint {path} is refused: it does not fit the network: {problem}")

    try:
        found = checkpoint.load_latest(ckdir, map_location="cpu", check=check)
    except checkpoint.NoUsableCheckpointError as e:
        raise checkpoint.NoUsableCheckpointError(f"{e}. Training stopped; to start over from step 0 use --restart "
                                                 f"(they are moved to {ckdir}/{OLD}<time>/)") from None
    if found is None:
        return _Resumed()
    state, path = found
    net.load_state_dict(state["model"], strict=True)
    ema.load_state_dict(state["ema"])
    opt.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    checkpoint.set_rng_state(state["rng"])
    say(f"resuming from {path} (step {state['step']})")
    run, reference = state.get("run"), state.get("loss_reference")
    return _Resumed(int(state["step"]), run if isinstance(run, str) else uuid.uuid4().hex,
                    float(reference) if isinstance(reference, float) else None, path)


def _clear(workdir: Path, ckdir: Path, resume: bool, restart: bool, say) -> None:
    """Remove what a kill during a checkpoint write left; with ``restart`` move the earlier checkpoints
    to ``old_<time>/``; else without ``resume`` delete them."""
    ckdir.mkdir(parents=True, exist_ok=True)
    for stale in ckdir.glob(".ckpt_*.tmp"):
        stale.unlink(missing_ok=True)
    if restart:
        old = checkpoint.list_checkpoints(ckdir)
        if old:
            aside = ckdir / f"{OLD}{time.strftime('%Y%m%d-%H%M%S')}"
            aside.mkdir(exist_ok=True)
            for _, path in old:
                path.rename(aside / path.name)
            say(f"starting over: moved {len(old)} earlier checkpoint(s) to {aside}")
    elif not resume:  # a fresh start replaces the run: its checkpoints would be resumed from later
        old = checkpoint.list_checkpoints(ckdir)
        for _, path in old:
            path.unlink()
        (workdir / "stats.jsonl").unlink(missing_ok=True)
        if old:
            say(f"starting afresh: removed {len(old)} checkpoint(s) of an earlier run in {ckdir}")


def _train(cfg: Config, workdir: Path, ctx: distributed.Context, resume: bool, restart: bool, progress: bool,
           verbose: bool) -> TrainResult:
    t = cfg.training
    say = (lambda text: _say(ctx, text)) if verbose else (lambda text: None)
    if t.precision == "fp16" and ctx.device.type != "cuda":
        raise ConfigError("training.precision=fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    torch.manual_seed(t.seed)  # the initial weights; the same on every process
    model = build(cfg)
    net = model.net.to(ctx.device).train()
    def load_batches(download: bool) -> Batches:
        return Batches(cfg.data.name, seed=t.seed, global_batch=t.batch_size,
                       rows=distributed.local_slice(t.batch_size, ctx), root=cfg.data.root,
                       image_size=cfg.data.image_size or (model.shape[-1] if model.is_image else None),
                       centered=model.centered, flip=cfg.data.flip, dequantize=cfg.data.dequantize,
                       download=download, label_dropout=t.label_dropout)

    if cfg.data.download and ctx.distributed:  # rank 0 downloads; the others then read the files or share its error
        batches, error = None, None
        if ctx.is_main:
            try:
                batches = load_batches(True)
            except (ValueError, FileNotFoundError) as e:
                error = e
        message = distributed.broadcast_object(None if error is None else str(error), ctx)
        if error is not None:
            raise error
        if message is not None:
            raise ValueError(message)
        batches = batches or load_batches(False)
    else:
        batches = load_batches(cfg.data.download)
    if batches.shape != model.shape:
        raise ConfigError(f"data {cfg.data.name} gives samples of shape {list(batches.shape)} but the network of "
                          f"model.preset={cfg.model.preset} takes {list(model.shape)}")
    if model.num_classes and batches.num_classes != model.num_classes:
        raise ConfigError(f"data {cfg.data.name} has {batches.num_classes} classes but the network of "
                          f"model.preset={cfg.model.preset} takes num_classes={model.num_classes}; set "
                          "model.options.num_classes to the data's" if batches.num_classes else
                          f"data {cfg.data.name} has no class labels: a classifier or a class-conditional network "
                          "needs a labelled data set (digits, mnist, cifar10, a Gaussian mixture)")
    ema = EMA(net, cfg.optim.ema_rate, cfg.optim.ema_warmup)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
                           eps=cfg.optim.eps, weight_decay=cfg.optim.weight_decay, foreach=True)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=t.precision == "fp16")
    ckdir = workdir / CHECKPOINTS
    if ctx.is_main:
        _clear(workdir, ckdir, resume, restart, say)
    distributed.barrier(ctx)
    resumed = _restore(ckdir, cfg, net, ema, opt, scaler, say) if resume else _Resumed()
    step, last_good = resumed.step, resumed.path
    if ctx.is_main:
        (workdir / "config.yaml").write_text(to_yaml(cfg))

    train_net: nn.Module = net
    if ctx.distributed:
        from torch.nn.parallel import DistributedDataParallel
        train_net = DistributedDataParallel(net, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    if t.compile:
        train_net = torch.compile(train_net)
    loss_fn = get_loss(t.loss)
    autocast = (torch.autocast(ctx.device.type, dtype=AUTOCAST_DTYPES[t.precision])
                if t.precision in AUTOCAST_DTYPES else contextlib.nullcontext())
    reference = batches.reference(2000) if not model.is_image else None
    ema_model = ScoreModel(ema.module, model.sde, model.parametrization, model.continuous, model.centered,
                           model.shape, cfg)

    check_grad = not scaler.is_enabled()   # fp16 loss scaling skips steps with non-finite gradients itself

    def collect() -> torch.Tensor:
        w = window.collect(ctx, check_grad, resumed.reference)
        if resumed.reference is None:
            resumed.reference = w[:, 0].mean().item()
        return w

    def save(step: int) -> None:
        nonlocal last_good
        state = {"model": net.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict()}
        if not checkpoint.all_finite(state):  # the same on every process (DDP keeps the replicas equal)
            raise NonFiniteLossError(f"the model, EMA or optimizer state holds NaN or infinite values at step {step}")
        if ctx.is_main:
            path = checkpoint.checkpoint_path(ckdir, step)
            checkpoint.atomic_save({"format": FORMAT, **state, "scaler": scaler.state_dict(), "step": step,
                                    "rng": checkpoint.rng_state(), "config": to_dict(cfg), "run": resumed.run,
                                    "loss_reference": resumed.reference}, path, run=resumed.run)
            checkpoint.prune(ckdir, t.keep, run=resumed.run)
            last_good = path

    def picture(step: int) -> None:
        if ctx.is_main and not model.is_classifier:  # a classifier draws no samples
            try:
                _picture(ema_model, cfg, reference, workdir / "samples" / f"step_{step:08d}.png", step)
            except (ValueError, RuntimeError, FloatingPointError) as e:   # a picture never stops a run
                say(f"warning: no picture of step {step}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")

    log = _Log(workdir, step, t.steps, f"train {cfg.data.name} {cfg.sde.name}", main=ctx.is_main,
               tensorboard=t.tensorboard, progress=progress, time_limit=t.time_limit)
    window = _Window()
    started = last_log = time.perf_counter()
    last_log_step, saved_step, stopped = step, step, "steps"
    params = [p for p in net.parameters() if p.requires_grad]
    max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
    try:
        while step < t.steps:
            x0, y, gens = batches.labelled(step)
            x0 = x0.to(ctx.device, non_blocking=True)
            lr = learning_rate(step, cfg.optim.lr, cfg.optim.warmup, cfg.optim.lr_decay)
            for group in opt.param_groups:
                group["lr"] = lr
            _seed_global(derived_seed(t.seed, step, ctx.rank, stream="dropout"), ctx.device)
            net_in, labelled = train_net, {}
            if model.num_classes:   # class labels: a classifier's targets, or a conditional network's input
                y = y.to(ctx.device)
                net_in, labelled = (train_net, {"y": y}) if model.is_classifier else (_WithLabels(train_net, y), {})
            with autocast:
                loss = loss_fn(model.sde, net_in, x0, parametrization=model.parametrization,
                               continuous=model.continuous, likelihood_weighting=t.likelihood_weighting,
                               reduce_mean=t.reduce_mean, eps=t.eps, generator=gens, **loss_options(t),
                               **labelled)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            ema.update(net)
            window.add(step, loss, grad_norm)
            step += 1
            log.advance()
            last = step == t.steps
            if step % t.log_every == 0 or last:
                w = collect()
                now = time.perf_counter()
                log.add({"step": step, "loss": w[:, 0].mean().item(), "grad_norm": w[:, 1].mean().item(), "lr": lr,
                         "it_per_s": (step - last_log_step) / max(now - last_log, 1e-9)})
                window, last_log, last_log_step = _Window(), now, step
                if t.time_limit is not None and not last:
                    if distributed.any_true(now - started > 60 * t.time_limit, ctx):
                        stopped = "time_limit"
                        break
            if step % t.ckpt_every == 0 or last:
                if window.rows:
                    collect()   # never checkpoint weights made by a non-finite or exploding loss
                save(step)
                saved_step = step
            if t.sample_every and step % t.sample_every == 0 and not last:
                picture(step)
        if saved_step != step:
            save(step)
    except NonFiniteLossError as e:
        where = (f"the last good checkpoint is {last_good} (step {int(last_good.stem[5:])})" if last_good is not None
                 else "no checkpoint was written")
        raise NonFiniteLossError(f"{e}; training stopped, {where}. Lower optim.lr, raise optim.warmup, "
                                 "or set optim.grad_clip") from None
    finally:
        log.close()
    distributed.barrier(ctx)
    if not (workdir / "samples" / f"step_{step:08d}.png").is_file():
        picture(step)
    if stopped == "time_limit":
        say(f"time limit of {t.time_limit} min reached at step {step}; rerun to continue")
    ema_model.step = step
    return TrainResult(ema_model, step, log.rows, workdir, stopped)
