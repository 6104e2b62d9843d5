"""A GPU check in one run (at most about 8 minutes on one GPU): speed, memory and one correctness line.

Rows (each measured on its own; a failing row records its error and the others still run):
- ``ddp``: a training run of 2 processes on one device equals that of one process (same global batch):
  NCCL when it works with two processes on one GPU, else gloo (CPU: gloo). A small toy model: this
  checks the DDP machinery (batch split, gradient averaging, EMA, rank-0 files), not speed.
- ``fid``: Inception-v3 feature extraction (torch-fidelity's network, random weights) of 10k random images.
- ``sample``: images/s of PC (the preset's own predictor / corrector) and DPM-Solver++ (2M) at 20 NFE, batch
  500, and the sampler's overhead: wall time / (NFE x the network's own time per evaluation).
- ``train``: optimizer steps/s of the full-size ``cifar10_ddpmpp_vp`` and ``cifar10_ncsnpp_ve`` networks
  (random weights, random data) at batch 128, as the training loop does a step (DSM loss, backward,
  gradient clipping, Adam, EMA), in fp32, bf16 autocast and fp32 with ``torch.compile``.
Every row has its peak memory: ``torch.cuda.max_memory_allocated`` on CUDA, the process's peak resident
size so far on CPU (not per row).

    python benchmarks/gpu_check.py                 # on the GPU: table + benchmarks/results/gpu_check.json
    python benchmarks/gpu_check.py --tiny          # everything on CPU with tiny sizes, in seconds
    python benchmarks/gpu_check.py --sections sample,fid --budget-s 200

Rows that would start after ``--budget-s`` seconds are skipped (their error says so); the slow
``torch.compile`` rows come last.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sdegen.train import load_config, load_run, train  # noqa: E402

PRESETS = ("cifar10_ddpmpp_vp", "cifar10_ncsnpp_ve")
SECTIONS = ("ddp", "fid", "sample", "train")
TRAIN_MODES = ("fp32", "bf16", "compile")
SAMPLERS = ("pc", "dpm_solver_pp_2m")
OUT = ROOT / "benchmarks" / "results" / "gpu_check.json"

# Sizes: the full check, and --tiny (CPU, seconds). The tiny networks are the 16x16 test networks of the
# same architectures (nf=16, one block per resolution).
FULL = {"train_batch": 128, "train_warmup": 3, "train_seconds": 10.0, "train_max_steps": 50,
        "sample_batch": 500, "nfe": 20, "net_evals": 3, "fid_n": 10_000, "fid_batch": 500,
        "compile_backend": "inductor", "small_preset": {}}
TINY = {"train_batch": 4, "train_warmup": 1, "train_seconds": 0.5, "train_max_steps": 2,
        "sample_batch": 4, "nfe": 4, "net_evals": 1, "fid_n": 4, "fid_batch": 4,
        "compile_backend": "eager",  # inductor would compile C++ for a minute on a CPU
        "small_preset": {"cifar10_ddpmpp_vp": "ddpmpp_vp_continuous_small",
                         "cifar10_ncsnpp_ve": "ncsnpp_ve_continuous_small"}}

# The DDP row's model: a small MLP on a 2-D Gaussian mixture, 12 steps of a global batch of 64.
DDP_CONFIG = {"data": {"name": "gauss3"},
              "model": {"preset": "mlp2d", "options": {"hidden": 32, "layers": 2, "embed_dim": 16}},
              "optim": {"lr": 2e-3, "warmup": 10, "ema_rate": 0.99},
              "training": {"batch_size": 64, "steps": 12, "log_every": 1, "ckpt_every": 6, "sample_every": 0,
                           "tensorboard": False, "reduce_mean": True},
              "sampling": {"predictor": "euler_maruyama", "corrector": "none", "steps": 20, "n": 16}}


# --- measuring ------------------------------------------------------------------------------------------

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mb(device: torch.device) -> float:
    """Peak memory of the row (CUDA) or the process's peak resident size so far (CPU), in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def row(section: str, name: str, **fields) -> dict:
    return {"section": section, "name": name, "error": None, **fields}


def run_row(r: dict, measure: Callable[[], dict], device: torch.device, deadline: float) -> dict:
    """Fill ``r`` with ``measure()``'s figures and the peak memory, or its error; never raises."""
    if time.perf_counter() > deadline:
        r["error"] = "skipped: the time budget (--budget-s) was spent"
        return r
    start = time.perf_counter()
    try:
        reset_peak(device)
        r.update(measure())
        r["peak_mem_mb"] = peak_mb(device)
    except Exception as e:  # a failing row (OOM, compile error...) is recorded; the next ones still run
        r["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        r["traceback"] = traceback.format_exc(limit=6)
    finally:
        r["seconds"] = time.perf_counter() - start
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return r


def preset_config(preset: str, sizes: dict, **training):
    overrides = {"training": training}
    small = sizes["small_preset"].get(preset)
    if small:
        overrides["model"] = {"preset": small}
    return load_config(preset, overrides)


# --- rows ---------------------------------------------------------------------------------------------

def measure_train(preset: str, mode: str, sizes: dict, device: torch.device) -> dict:
    """Optimizer steps/s as the training loop takes them (see sdegen/train/loop.py)."""
    from sdegen import noise
    from sdegen.losses import get_loss
    from sdegen.train.ema import EMA
    from sdegen.train.runs import build

    cfg = preset_config(preset, sizes)
    torch.manual_seed(0)
    model = build(cfg)
    net = model.net.to(device).train()
    ema = EMA(net, cfg.optim.ema_rate, cfg.optim.ema_warmup)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
                           eps=cfg.optim.eps, foreach=True)
    params = [p for p in net.parameters() if p.requires_grad]
    train_net = torch.compile(net, backend=sizes["compile_backend"]) if mode == "compile" else net
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if mode == "bf16" else contextlib.nullcontext())
    loss_fn = get_loss(cfg.training.loss)
    b = sizes["train_batch"]
    g = torch.Generator(device=device).manual_seed(0)
    x0 = torch.rand((b, *model.shape), generator=g, device=device)
    x0 = 2 * x0 - 1 if model.centered else x0
    t = cfg.training

    def step(i: int) -> None:
        gens = noise.per_sample_generators(i, range(b))  # per-sample noise, as the loop draws it
        with autocast:
            loss = loss_fn(model.sde, train_net, x0, parametrization=model.parametrization,
                           continuous=model.continuous, likelihood_weighting=t.likelihood_weighting,
                           reduce_mean=t.reduce_mean, eps=t.eps, generator=gens)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.update(net)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss {loss.item()} at step {i}")

    first = timed(lambda: [step(i) for i in range(sizes["train_warmup"])], device)  # compiles, warms up
    steps, elapsed = 0, 0.0
    while elapsed < sizes["train_seconds"] and steps < sizes["train_max_steps"]:
        elapsed += timed(lambda: step(sizes["train_warmup"] + steps), device)
        steps += 1
    n_params = sum(p.numel() for p in net.parameters())
    return {"steps_per_s": steps / elapsed, "images_per_s": steps * b / elapsed, "batch": b,
            "timed_steps": steps, "warmup_s": first, "params_m": n_params / 1e6,
            "network": cfg.model.preset, "precision": "bf16" if mode == "bf16" else "fp32",
            "compile": sizes["compile_backend"] if mode == "compile" else None}


def measure_sample(preset: str, sampler: str, sizes: dict, device: torch.device) -> dict:
    """Images/s of ``sampler`` at ``nfe`` score evaluations and its overhead over the network's time."""
    import sdegen
    from sdegen.score import CountingScore
    from sdegen.train.runs import build

    cfg = preset_config(preset, sizes)
    torch.manual_seed(0)
    model = build(cfg)
    model.net.to(device).eval()
    score = model.score_fn()
    b, nfe = sizes["sample_batch"], sizes["nfe"]
    shape = (b, *model.shape)
    s = cfg.sampling
    if sampler == "pc":  # the preset's own PC sampler; a corrector step costs one evaluation too
        per_step = 1 + (s.n_corrector_steps if s.corrector != "none" else 0)
        options = {"predictor": s.predictor, "corrector": None if s.corrector == "none" else s.corrector,
                   "snr": s.snr, "n_corrector_steps": s.n_corrector_steps, "steps": nfe // per_step,
                   "order": "corrector_first", "denoise": False}  # the official order: per_step NFE every step
    else:
        options = {"nfe": nfe}
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(shape, generator=g, device=device)
    tt = torch.rand(b, generator=g, device=device) * (model.sde.T - 1e-3) + 1e-3
    with torch.no_grad():
        score(x, tt)  # warm-up (cuDNN algorithm choice, allocations)
        net_s = timed(lambda: [score(x, tt) for _ in range(sizes["net_evals"])], device) / sizes["net_evals"]
        counter = CountingScore(score)
        out = {}
        wall = timed(lambda: out.setdefault("x", sdegen.generate(
            model.sde, counter, shape, sampler=sampler, generator=g, device=device, **options)), device)
    if not torch.isfinite(out["x"]).all():
        raise FloatingPointError("non-finite samples")
    return {"images_per_s": b / wall, "batch": b, "nfe": counter.nfe, "sampler_s": wall,
            "net_s_per_eval": net_s, "overhead": wall / (counter.nfe * net_s), "network": cfg.model.preset,
            "options": {k: v for k, v in options.items() if v is not None}}


def measure_fid(sizes: dict, device: torch.device, tmp: Path) -> dict:
    """Inception-v3 features of random uint8 images, as `sdegen fid` extracts them."""
    from sdegen.metrics.frechet import extract_features
    from sdegen.metrics.inception import InceptionV3, save_random_inception_weights

    weights = save_random_inception_weights(tmp / "random-inception.pth")
    net = InceptionV3(weights, device=device)
    n = sizes["fid_n"]
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    extract_features(net, images[: sizes["fid_batch"]], batch_size=sizes["fid_batch"])  # warm-up
    out = {}
    wall = timed(lambda: out.setdefault("f", extract_features(net, images, batch_size=sizes["fid_batch"])), device)
    feats = out["f"]
    if feats.shape != (n, 2048) or not math.isfinite(float(feats.sum())):
        raise FloatingPointError(f"features of shape {feats.shape}, finite: {math.isfinite(float(feats.sum()))}")
    return {"images_per_s": n / wall, "n": n, "batch": sizes["fid_batch"], "extract_s": wall}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_worker(workdir: str, backend: str, device: str) -> None:
    """One of the processes of the DDP row (started by torchrun): train DDP_CONFIG in ``workdir``."""
    import torch.distributed as dist

    dist.init_process_group(backend)
    try:  # an explicit device index keeps both processes on the one GPU
        train(load_config(None, {**DDP_CONFIG, "training": {**DDP_CONFIG["training"], "device": device}}),
              workdir, progress=False, verbose=False)
    finally:
        dist.destroy_process_group()


def measure_ddp(device: torch.device, tmp: Path) -> dict:
    """Train DDP_CONFIG with 2 processes and with 1; losses, gradient norms and EMA weights must agree."""
    dev = f"cuda:{device.index or 0}" if device.type == "cuda" else "cpu"
    cfg = load_config(None, {**DDP_CONFIG, "training": {**DDP_CONFIG["training"], "device": dev}})
    one = train(cfg, tmp / "ddp_one", progress=False, verbose=False)
    attempts = {}
    for backend in (("nccl", "gloo") if device.type == "cuda" else ("gloo",)):
        workdir = tmp / f"ddp_{backend}"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
               "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(Path(__file__).resolve()),
               "--ddp-worker", str(workdir), backend, dev]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=150)
        except subprocess.TimeoutExpired:
            attempts[backend] = "no answer after 150 s"
            continue
        if done.returncode == 0:
            break
        tail = [x for x in (done.stderr + done.stdout).splitlines() if "Error" in x or "error" in x]
        attempts[backend] = (tail[-1] if tail else f"exit code {done.returncode}")[:300]
    else:
        raise RuntimeError("DDP failed with every backend: " + "; ".join(f"{k}: {v}" for k, v in attempts.items()))
    rows = [json.loads(x) for x in (workdir / "stats.jsonl").read_text().splitlines()]
    if [r["step"] for r in rows] != [r["step"] for r in one.stats]:
        raise AssertionError(f"logged steps differ: {[r['step'] for r in rows]}")

    def rel(a: float, b: float) -> float:
        return abs(a - b) / max(abs(b), 1e-12)

    loss_diff = max(rel(a["loss"], b["loss"]) for a, b in zip(rows, one.stats))
    grad_diff = max(rel(a["grad_norm"], b["grad_norm"]) for a, b in zip(rows, one.stats))
    two = load_run(workdir)
    weight_diff = max((a.detach().cpu() - b.detach().cpu()).abs().max().item()
                      for a, b in zip(one.model.net.state_dict().values(), two.net.state_dict().values()))
    tol = 1e-4  # float32 sums in another order (the reduction over two processes), as tests/test_ddp.py
    return {"backend": backend, "failed_backends": attempts, "equal": max(loss_diff, grad_diff) < tol and
            weight_diff < 1e-4, "max_rel_diff_loss": loss_diff, "max_rel_diff_grad_norm": grad_diff,
            "max_abs_diff_ema_weights": weight_diff, "steps": len(rows)}


# --- the run ------------------------------------------------------------------------------------------

def planned_rows(sections=SECTIONS) -> list[tuple[str, str]]:
    """``(section, name)`` of every row, in the order they run (compile last: the slowest)."""
    rows = []
    if "ddp" in sections:
        rows.append(("ddp", "2 processes = 1 process"))
    if "fid" in sections:
        rows.append(("fid", "inception features"))
    if "sample" in sections:
        rows += [("sample", f"{p} {s}") for p in PRESETS for s in SAMPLERS]
    if "train" in sections:
        rows += [("train", f"{p} {m}") for m in TRAIN_MODES for p in PRESETS]
    return rows


def figure(r: dict) -> str:
    if r["error"]:
        return "-"
    if r["section"] == "ddp":
        return (f"{'equal' if r['equal'] else 'DIFFERENT'} ({r['backend']}; loss rel {r['max_rel_diff_loss']:.1e}, "
                f"weights {r['max_abs_diff_ema_weights']:.1e})")
    if r["section"] == "train":
        return f"{r['steps_per_s']:.3g} steps/s ({r['images_per_s']:.4g} img/s, warm-up {r['warmup_s']:.1f} s)"
    if r["section"] == "sample":
        return f"{r['images_per_s']:.4g} img/s at {r['nfe']} NFE, overhead x{r['overhead']:.3f}"
    return f"{r['images_per_s']:.4g} img/s ({r['n']} images)"


def table(rows: list[dict]) -> str:
    lines = ["| section | row | figure | peak MiB | s | error |", "|---|---|---|---|---|---|"]
    for r in rows:
        peak = f"{r['peak_mem_mb']:.0f}" if r.get("peak_mem_mb") is not None else "-"
        lines.append(f"| {r['section']} | {r['name']} | {figure(r)} | {peak} | {r.get('seconds', 0):.1f} | "
                     f"{r['error'] or ''} |")
    return "\n".join(lines) + "\n"


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(f.name, path)


def environment(device: torch.device) -> dict:
    env = {"torch": torch.__version__, "device": str(device), "cpu_threads": torch.get_num_threads(),
           "python": sys.version.split()[0]}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        env["nccl"] = ".".join(map(str, torch.cuda.nccl.version())) if hasattr(torch.cuda, "nccl") else None
    return env


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="CPU, tiny sizes, seconds (what the tests run)")
    p.add_argument("--device", default=None, help="default: cuda if available (cpu with --tiny)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {', '.join(SECTIONS)}")
    p.add_argument("--budget-s", type=float, default=420.0, help="start no row after this many seconds")
    p.add_argument("--out", default=str(OUT), help="JSON file to write (after every row)")
    p.add_argument("--ddp-worker", nargs=3, metavar=("WORKDIR", "BACKEND", "DEVICE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.ddp_worker:
        ddp_worker(*args.ddp_worker)
        return 0
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        p.error(f"unknown sections {unknown}; accepted: {', '.join(SECTIONS)}")
    device = torch.device(args.device or ("cpu" if args.tiny or not torch.cuda.is_available() else "cuda"))
    sizes = TINY if args.tiny else FULL
    deadline = time.perf_counter() + args.budget_s
    out = Path(args.out)
    result = {"tiny": args.tiny, "environment": environment(device), "sizes": sizes, "rows": []}
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        for section, name in planned_rows(sections):
            r = row(section, name)
            if section == "ddp":
                measure = lambda: measure_ddp(device, Path(tmp))  # noqa: E731
            elif section == "fid":
                measure = lambda: measure_fid(sizes, device, Path(tmp))  # noqa: E731
            elif section == "sample":
                preset, sampler = name.split()
                measure = lambda: measure_sample(preset, sampler, sizes, device)  # noqa: E731
            else:
                preset, mode = name.split()
                measure = lambda: measure_train(preset, mode, sizes, device)  # noqa: E731
            result["rows"].append(run_row(r, measure, device, deadline))
            print(f"{section:6s} {name:40s} {figure(r) if not r['error'] else 'ERROR ' + r['error']}", flush=True)
            atomic_write(out, json.dumps(result, indent=2) + "\n")
    print()
    print(table(result["rows"]), end="")
    print(f"wrote {out}")
    return 0 if all(r["error"] is None for r in result["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
