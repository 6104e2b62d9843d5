"""The training loop of a score model: Adam with linear warm-up, gradient clipping, EMA, mixed
precision, optional ``torch.compile``, DDP, checkpoints, resume.

A run folder holds ``config.yaml`` (the resolved config), ``checkpoints/ckpt_<step>.pt`` (model, EMA,
optimizer, grad scaler, step, RNG states, config; written atomically), ``stats.jsonl`` (one row per
log step: loss, grad norm, lr, it/s), TensorBoard scalars in ``tb/`` and pictures of EMA samples in
``samples/step_<step>.png``. Data order and noise are functions of ``(seed, step)``
(:mod:`sdegen.train.batches`) and dropout is re-seeded each step from ``(seed, step, rank)``, so a
resumed run gives, on CPU, bitwise the weights of a run that never stopped.
"""
from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .. import checkpoint
from ..losses import get_loss
from . import distributed
from .batches import Batches, derived_seed
from .config import Config, ConfigError, resume_conflicts, to_dict, to_yaml
from .ema import EMA
from .runs import CHECKPOINTS, FORMAT, ScoreModel, build
from .sample_job import SamplerOptions, draw, save_picture

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the message names the step."""


@dataclass
class TrainResult:
    """What :func:`train` leaves: the EMA model (eval mode), the step reached, the logged rows."""
    model: ScoreModel
    step: int
    stats: list[dict] = field(default_factory=list)
    workdir: Path = Path(".")
    stopped: str = "steps"      # "steps" (all done) or "time_limit"


def learning_rate(step: int, lr: float, warmup: int) -> float:
    """Learning rate of the update that follows ``step`` finished updates: linear warm-up to ``lr`` over
    ``warmup`` updates (score_sde ``optimization_manager``, counting the first update as 1)."""
    return lr * min((step + 1) / warmup, 1.0) if warmup > 0 else lr


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
                 progress: bool):
        self.path, self.rows, self.writer, self.bar, self.main = workdir / "stats.jsonl", [], None, None, main
        if not main:
            return
        if self.path.is_file():
            rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
            self.rows = [r for r in rows if r["step"] <= step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in self.rows))
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(workdir / "tb"), purge_step=step + 1)  # drops events after step
        if progress and step < total:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, initial=step, desc=desc, dynamic_ncols=True)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

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
            self.bar.set_postfix(loss=f"{row['loss']:.4g}", lr=f"{row['lr']:.2g}")

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

    def collect(self, ctx: distributed.Context) -> torch.Tensor:
        """``[n, 2]`` on CPU: (loss, grad norm) of each step, averaged over the processes; raises
        :class:`NonFiniteLossError` naming the first step whose loss is not finite."""
        w = distributed.all_reduce_mean(torch.stack(self.rows), ctx).cpu()
        bad = (~torch.isfinite(w[:, 0])).nonzero()
        if len(bad):
            step = self.first_step + int(bad[0]) + 1
            raise NonFiniteLossError(f"the loss became {w[int(bad[0]), 0].item()} at step {step}")
        return w


def _picture(model: ScoreModel, cfg: Config, reference: Optional[torch.Tensor], path: Path, step: int) -> None:
    """EMA samples of ``cfg.sampling`` (seed ``sampling.seed``): a grid of images or a scatter of points."""
    x = draw(model, list(range(cfg.sampling.n)), cfg.sampling.seed, SamplerOptions.from_config(cfg.sampling))
    save_picture(model, x, path, reference=reference, title=f"{cfg.data.name}, {cfg.sde.name.upper()}, step {step}")


def train(cfg: Config, workdir: str | Path, *, resume: bool = True, progress: bool = True,
          verbose: bool = True) -> TrainResult:
    """Train ``cfg`` in ``workdir`` up to ``cfg.training.steps`` steps (or ``training.time_limit``).

    With ``resume`` the run continues from the newest good checkpoint of ``workdir`` (corrupt ones are
    reported and skipped); its config must equal ``cfg`` except for
    :data:`sdegen.train.config.RESUMABLE_CHANGES`. Under a process group (see
    :func:`sdegen.train.distributed.session`) every process trains on its share of the global batch
    with DDP; rank 0 writes the files. Raises :class:`NonFiniteLossError` (the newest checkpoint then
    is the last good one), :class:`ConfigError`, or ValueError/FileNotFoundError for bad data."""
    ctx = distributed.context(cfg.training.device)
    devices = [ctx.device] if ctx.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # the caller's global RNG is left as it was
        return _train(cfg, Path(workdir), ctx, resume, progress and ctx.is_main, verbose)


def _restore(ckdir: Path, cfg: Config, net: nn.Module, ema: EMA, opt: torch.optim.Optimizer,
             scaler: torch.amp.GradScaler, say) -> int:
    """Load the newest good checkpoint of ``ckdir`` (corrupt ones are reported and skipped) into the
    training state; return its step (0 if there is none)."""
    found = checkpoint.load_latest(ckdir, map_location="cpu")
    if found is None:
        return 0
    state, path = found
    conflicts = resume_conflicts(state["config"], cfg)
    if conflicts:
        raise ConfigError(f"cannot resume from {path}: the config differs in {'; '.join(conflicts)}; "
                          "use another workdir, or --no-resume to start afresh")
    net.load_state_dict(state["model"], strict=True)
    ema.load_state_dict(state["ema"])
    opt.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    checkpoint.set_rng_state(state["rng"])
    say(f"resuming from {path} (step {state['step']})")
    return int(state["step"])


def _clear(workdir: Path, ckdir: Path, resume: bool, say) -> None:
    """Remove what a kill during a checkpoint write left; without ``resume``, the earlier run too."""
    ckdir.mkdir(parents=True, exist_ok=True)
    for stale in ckdir.glob(".ckpt_*.tmp"):
        stale.unlink(missing_ok=True)
    if not resume:  # a fresh start replaces the run: its checkpoints would be resumed from later
        old = checkpoint.list_checkpoints(ckdir)
        for _, path in old:
            path.unlink()
        (workdir / "stats.jsonl").unlink(missing_ok=True)
        if old:
            say(f"starting afresh: removed {len(old)} checkpoint(s) of an earlier run in {ckdir}")


def _train(cfg: Config, workdir: Path, ctx: distributed.Context, resume: bool, progress: bool,
           verbose: bool) -> TrainResult:
    t = cfg.training
    say = (lambda text: _say(ctx, text)) if verbose else (lambda text: None)
    if t.precision == "fp16" and ctx.device.type != "cuda":
        raise ConfigError("training.precision=fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    torch.manual_seed(t.seed)  # the initial weights; the same on every process
    model = build(cfg)
    net = model.net.to(ctx.device).train()
    batches = Batches(cfg.data.name, seed=t.seed, global_batch=t.batch_size,
                      rows=distributed.local_slice(t.batch_size, ctx), root=cfg.data.root,
                      image_size=cfg.data.image_size or (model.shape[-1] if model.is_image else None),
                      centered=model.centered, flip=cfg.data.flip, dequantize=cfg.data.dequantize)
    if batches.shape != model.shape:
        raise ConfigError(f"data {cfg.data.name} gives samples of shape {list(batches.shape)} but the network of "
                          f"model.preset={cfg.model.preset} takes {list(model.shape)}")
    ema = EMA(net, cfg.optim.ema_rate, cfg.optim.ema_warmup)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
                           eps=cfg.optim.eps, weight_decay=cfg.optim.weight_decay, foreach=True)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=t.precision == "fp16")
    ckdir = workdir / CHECKPOINTS
    if ctx.is_main:
        _clear(workdir, ckdir, resume, say)
    distributed.barrier(ctx)
    step = _restore(ckdir, cfg, net, ema, opt, scaler, say) if resume else 0
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

    def save(step: int) -> None:
        if ctx.is_main:
            checkpoint.atomic_save({"format": FORMAT, "model": net.state_dict(), "ema": ema.state_dict(),
                                    "optimizer": opt.state_dict(), "scaler": scaler.state_dict(), "step": step,
                                    "rng": checkpoint.rng_state(), "config": to_dict(cfg)},
                                   checkpoint.checkpoint_path(ckdir, step))
            checkpoint.prune(ckdir, t.keep)

    def picture(step: int) -> None:
        if ctx.is_main:
            _picture(ema_model, cfg, reference, workdir / "samples" / f"step_{step:08d}.png", step)

    log = _Log(workdir, step, t.steps, f"train {cfg.data.name} {cfg.sde.name}", main=ctx.is_main,
               tensorboard=t.tensorboard, progress=progress)
    window = _Window()
    started = last_log = time.perf_counter()
    last_log_step, saved_step, stopped = step, step, "steps"
    params = [p for p in net.parameters() if p.requires_grad]
    max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
    try:
        while step < t.steps:
            x0, gens = batches(step)
            x0 = x0.to(ctx.device, non_blocking=True)
            lr = learning_rate(step, cfg.optim.lr, cfg.optim.warmup)
            for group in opt.param_groups:
                group["lr"] = lr
            _seed_global(derived_seed(t.seed, step, ctx.rank, stream="dropout"), ctx.device)
            with autocast:
                loss = loss_fn(model.sde, train_net, x0, parametrization=model.parametrization,
                               continuous=model.continuous, likelihood_weighting=t.likelihood_weighting,
                               reduce_mean=t.reduce_mean, eps=t.eps, generator=gens)
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
                w = window.collect(ctx)
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
                    window.collect(ctx)   # never checkpoint weights made by a non-finite loss
                save(step)
                saved_step = step
            if t.sample_every and step % t.sample_every == 0 and not last:
                picture(step)
    except NonFiniteLossError as e:
        good = checkpoint.list_checkpoints(ckdir)
        where = f"the last good checkpoint is {good[0][1]} (step {good[0][0]})" if good else "no checkpoint was written"
        raise NonFiniteLossError(f"{e}; training stopped, {where}. Lower optim.lr, raise optim.warmup, "
                                 "or set optim.grad_clip") from None
    finally:
        log.close()
    if saved_step != step:
        save(step)
    distributed.barrier(ctx)
    if not (workdir / "samples" / f"step_{step:08d}.png").is_file():
        picture(step)
    if stopped == "time_limit":
        say(f"time limit of {t.time_limit} min reached at step {step}; rerun to continue")
    ema_model.step = step
    return TrainResult(ema_model, step, log.rows, workdir, stopped)
