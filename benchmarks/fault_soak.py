"""Fault soak: kill -9 training and sampling jobs at random moments, damage checkpoints, run two processes
on one folder, and check that no finished work is lost.

Every job is a real ``python -m sdegen ...`` process on a small toy run (2-D mixture, MLP score model):

- **training kills** (``--kills``): a fresh run is killed with SIGKILL at a random step (about one kill in
  three is aimed at a checkpoint write: the script polls for the temporary file and kills while it exists),
  then resumed to the end; the final weights must equal, bit for bit, those of a run that never stopped.
  "Steps lost" is the last logged step before the kill minus the step the resume started from.
- **sampling kills** (``--sample-kills``): ``sdegen sample`` is killed after a random number of finished
  batches, then rerun; the samples must equal those of an uninterrupted job, bit for bit.
- **damaged checkpoints**: the newest checkpoint of a finished run is truncated, replaced by
  ``torch.save({})``, a bare tensor, a checkpoint with wrong state-dict keys, one with a flipped byte, one
  with NaN optimizer state, a pickle that runs code; the resume must report it by name, fall back and end
  bit for bit on the reference. Then every checkpoint is damaged: the run must stop with one line listing
  them and delete nothing.
- **two processes**: while a run trains, a second ``sdegen train`` on its folder (plain, ``--no-resume``,
  ``--restart``), and while a sampling job runs, a second one on its ``--out``, must refuse in one line
  naming the holder's PID and leave the folder untouched.

"Outputs lost" counts finished work that disappeared: a resume that started before the newest complete
checkpoint, a final result that differs from the reference, or a checkpoint file deleted by a refused or
damaged-run process. It must be 0.

Prints a table and writes ``benchmarks/results/fault_soak.json``.

    PYTHONPATH=. OMP_NUM_THREADS=1 nice python benchmarks/fault_soak.py --kills 10 --sample-kills 3 --steps 40
    PYTHONPATH=. python benchmarks/fault_soak.py --kills 2 --sample-kills 1      # a quick check
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
CKPT = "checkpoints"

TOY = ["data.name=gauss3", "model.preset=mlp2d", "model.options.hidden=32", "model.options.layers=2",
       "model.options.embed_dim=16", "optim.lr=2e-3", "optim.warmup=10", "optim.ema_rate=0.99",
       "training.batch_size=64", "training.log_every=1", "training.ckpt_every=10", "training.sample_every=0",
       "training.tensorboard=false", "training.reduce_mean=true", "sampling.predictor=euler_maruyama",
       "sampling.corrector=none", "sampling.steps=5", "sampling.n=20"]
SAMPLE = ["--predictor", "euler_maruyama", "--corrector", "none", "--steps", "50", "--batch-size", "50",
          "--seed", "1", "--no-progress"]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def sdegen_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "sdegen", *map(str, args)]


def run(*args, check: bool = False) -> subprocess.CompletedProcess:
    p = subprocess.run(sdegen_cmd(*args), env=env(), capture_output=True, text=True)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))} failed ({p.returncode}): {p.stderr[-2000:]}")
    return p


def train_args(steps: int, workdir: Path, *extra) -> list:
    return ["train", "toy2d_vp", *TOY, f"training.steps={steps}", "--workdir", workdir, "--no-progress", *extra]


def model_of(path: Path) -> dict:
    from sdegen import checkpoint
    return checkpoint.load(path)["model"]


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def newest(workdir: Path) -> int:
    from sdegen import checkpoint
    found = checkpoint.list_checkpoints(workdir / CKPT)
    return found[0][0] if found else 0


def last_logged(workdir: Path) -> int:
    path = workdir / "stats.jsonl"
    if not path.is_file():
        return 0
    rows = [line for line in path.read_text().splitlines() if line.strip()]
    for line in reversed(rows):   # the last line may be half written
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError):
            continue
    return 0


def resumed_from(stderr: str) -> int:
    for line in stderr.splitlines():
        if line.startswith("resuming from") and "(step " in line:
            return int(line.rsplit("(step ", 1)[1].rstrip(")"))
    return 0


def kill_training(i: int, steps: int, root: Path, reference: dict, rng: random.Random, duration: float) -> dict:
    """One training kill: start a run, SIGKILL it at a random step (or during a checkpoint write), resume
    to the end, compare with the reference."""
    work = root / f"kill_{i}"
    aim_write = i % 3 == 2
    proc = subprocess.Popen(sdegen_cmd(*train_args(steps, work)), env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    if aim_write:   # wait for the first temporary checkpoint file after a random number of checkpoints
        after = rng.randint(1, max(1, steps // 10 - 1)) * 10
        while proc.poll() is None:
            if last_logged(work) >= after - 1 and any((work / CKPT).glob(".ckpt_*.tmp")):
                break
            time.sleep(0.0005)
    else:   # a random step, then a random moment within it
        target = rng.randint(1, steps - 1)
        while proc.poll() is None and last_logged(work) < target:
            time.sleep(0.005)
        time.sleep(rng.uniform(0, duration / steps))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    in_write = any((work / CKPT).glob(".ckpt_*.tmp"))
    complete, logged = newest(work), last_logged(work)
    p = run(*train_args(steps, work))
    start = resumed_from(p.stderr)
    final = work / CKPT / f"ckpt_{steps:08d}.pt"
    bitwise = p.returncode == 0 and final.is_file() and same(model_of(final), reference)
    lost_output = start < complete or not bitwise
    shutil.rmtree(work, ignore_errors=True)
    return {"kill": i, "aimed_at_write": aim_write, "during_write": in_write,
            "finished_before_kill": proc.returncode == 0,
            "newest_checkpoint": complete, "last_logged": logged, "resumed_from": start,
            "steps_lost": max(0, logged - start), "exit": p.returncode, "bitwise": bitwise, "output_lost": lost_output}


def kill_sampling(i: int, run_dir: Path, root: Path, reference: np.ndarray, rng: random.Random, n: int) -> dict:
    """One sampling kill: start a job, SIGKILL it after a random number of finished shards (batches), rerun
    it, compare with the uninterrupted job."""
    out = root / f"sample_{i}.npz"
    shards = out.with_name(out.name + ".shards")
    proc = subprocess.Popen(sdegen_cmd("sample", run_dir, "--n", n, "--out", out, *SAMPLE), env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = rng.randint(0, n // int(SAMPLE[SAMPLE.index("--batch-size") + 1]) - 1)
    while proc.poll() is None and len(list(shards.glob("shard_*.npz"))) < target:
        time.sleep(0.005)
    time.sleep(rng.uniform(0, 0.2))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished_before = out.is_file()
    p = run("sample", run_dir, "--n", n, "--out", out, *SAMPLE)
    ok = p.returncode == 0 and out.is_file()
    if ok:
        with np.load(out) as f:
            ok = np.array_equal(f["samples"], reference)
    return {"kill": i, "finished_before_kill": finished_before, "exit": p.returncode, "bitwise": ok,
            "output_lost": not ok, "stderr": p.stderr.strip().splitlines()[-1:] if p.returncode else []}


# --- damaged checkpoints ------------------------------------------------------------------------------

class _Evil:
    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return os.mkdir, (self.target,)


def _flip_optimizer_byte(path: Path) -> None:
    from sdegen import checkpoint
    needle = checkpoint.load(path)["optimizer"]["state"][0]["exp_avg"].numpy().tobytes()
    raw = bytearray(path.read_bytes())
    at = raw.find(needle)
    raw[at + len(needle) // 2] ^= 0x10
    path.write_bytes(bytes(raw))


def _resave(path: Path, change) -> None:
    from sdegen import checkpoint
    state = checkpoint.load(path)
    change(state)
    checkpoint.atomic_save(state, path)


def _nan_optimizer(state: dict) -> None:
    next(iter(state["optimizer"]["state"].values()))["exp_avg_sq"].fill_(float("nan"))


def _wrong_keys(state: dict) -> None:
    state["model"] = {k + "_x": v for k, v in state["model"].items()}


DAMAGE = {
    "truncated": lambda p, root: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "torch.save({})": lambda p, root: torch.save({}, p),
    "bare tensor": lambda p, root: torch.save(torch.zeros(3), p),
    "wrong state-dict keys": lambda p, root: _resave(p, _wrong_keys),
    "flipped byte (optimizer)": lambda p, root: _flip_optimizer_byte(p),
    "NaN optimizer state": lambda p, root: _resave(p, _nan_optimizer),
    "malicious pickle": lambda p, root: torch.save({"model": _Evil(str(root / "pwned"))}, p),
}


def damaged(done: Path, root: Path, steps: int, reference: dict) -> list[dict]:
    rows = []
    for name, spoil in DAMAGE.items():
        work = root / f"damage_{len(rows)}"
        shutil.copytree(done, work)
        target = work / CKPT / f"ckpt_{steps:08d}.pt"
        spoil(target, root)
        p = run(*train_args(steps, work))
        final = work / CKPT / f"ckpt_{steps:08d}.pt"
        reported = target.name in p.stderr and "falling back" in p.stderr and "weights_only" not in p.stderr
        bitwise = p.returncode == 0 and same(model_of(final), reference)
        rows.append({"fault": name, "exit": p.returncode, "reported": reported, "bitwise": bitwise,
                     "code_ran": (root / "pwned").exists(), "output_lost": not bitwise})
        shutil.rmtree(work, ignore_errors=True)
    work = root / "damage_all"
    shutil.copytree(done, work)
    from sdegen import checkpoint
    for k, (_, path) in enumerate(checkpoint.list_checkpoints(work / CKPT)):
        list(DAMAGE.values())[k % 3](path, root)
    before = {p.name: p.read_bytes() for p in (work / CKPT).iterdir()}
    p = run(*train_args(steps, work))
    kept = {p.name: p.read_bytes() for p in (work / CKPT).iterdir()} == before
    err = p.stderr.strip().splitlines()
    one_line = p.returncode == 2 and len([ln for ln in err if ln.startswith("sdegen train: error")]) == 1
    listed = all(name in p.stderr for name in before)
    rows.append({"fault": "every checkpoint damaged", "exit": p.returncode, "reported": one_line and listed,
                 "bitwise": None, "code_ran": False, "output_lost": not kept})
    return rows


# --- two processes on one folder ----------------------------------------------------------------------

def two_processes(root: Path, run_dir: Path) -> list[dict]:
    rows = []
    work = root / "live"
    first = subprocess.Popen(sdegen_cmd(*train_args(10**7, work)), env=env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        while newest(work) == 0 and first.poll() is None:
            time.sleep(0.02)
        first.send_signal(signal.SIGSTOP)   # frozen: its folder must not change
        before = {p.name: p.stat().st_mtime_ns for p in (work / CKPT).iterdir()}
        for extra in ([], ["--no-resume"], ["--restart"]):
            p = run(*train_args(100, work, *extra))
            after = {p.name: p.stat().st_mtime_ns for p in (work / CKPT).iterdir()}
            rows.append({"fault": "second train " + " ".join(extra or ["(resume)"]), "exit": p.returncode,
                         "refused": p.returncode == 2 and f"PID {first.pid}" in p.stderr
                         and len(p.stderr.strip().splitlines()) == 1, "output_lost": after != before})
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    out = root / "two.npz"
    first = subprocess.Popen(sdegen_cmd("sample", run_dir, "--n", 100000, "--out", out, *SAMPLE), env=env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        lock = out.with_name(out.name + ".lock")
        while not (lock.is_file() and lock.read_text().strip()) and first.poll() is None:
            time.sleep(0.02)
        time.sleep(1.0)
        p = run("sample", run_dir, "--n", 100000, "--out", out, *SAMPLE)
        rows.append({"fault": "second sample on one --out", "exit": p.returncode,
                     "refused": p.returncode == 2 and f"PID {first.pid}" in p.stderr
                     and len(p.stderr.strip().splitlines()) == 1, "output_lost": first.poll() is not None})
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20, help="training jobs killed")
    ap.add_argument("--sample-kills", type=int, default=6, help="sampling jobs killed")
    ap.add_argument("--steps", type=int, default=80, help="steps of each toy training run")
    ap.add_argument("--n", type=int, default=2000, help="samples of each sampling job")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS / "fault_soak.json")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    started = time.time()
    root = Path(tempfile.mkdtemp(prefix="fault_soak_"))
    try:
        t0 = time.time()
        run("--help", check=True)
        startup = time.time() - t0
        ref = root / "reference"
        t0 = time.time()
        run(*train_args(args.steps, ref), check=True)
        duration = max(time.time() - t0 - startup, 0.5)
        reference = model_of(ref / CKPT / f"ckpt_{args.steps:08d}.pt")
        print(f"start-up {startup:.1f} s, a {args.steps}-step run {duration:.1f} s more", flush=True)

        kills = []
        for i in range(args.kills):
            kills.append(kill_training(i, args.steps, root, reference, rng, duration))
            k = kills[-1]
            print(f"train kill {i}: newest ckpt {k['newest_checkpoint']}, logged {k['last_logged']}, resumed from "
                  f"{k['resumed_from']}, during write {k['during_write']}, bitwise {k['bitwise']}", flush=True)

        sample_ref_path = root / "sample_reference.npz"
        run("sample", ref, "--n", args.n, "--out", sample_ref_path, *SAMPLE, check=True)
        with np.load(sample_ref_path) as f:
            sample_ref = f["samples"]
        samples = []
        for i in range(args.sample_kills):
            samples.append(kill_sampling(i, ref, root, sample_ref, rng, args.n))
            print(f"sample kill {i}: {samples[-1]}", flush=True)

        damage = damaged(ref, root, args.steps, reference)
        for row in damage:
            print(f"damage: {row}", flush=True)
        pairs = two_processes(root, ref)
        for row in pairs:
            print(f"two processes: {row}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    real_kills = [k for k in kills if not k["finished_before_kill"]]
    summary_kills = len(real_kills)
    lost = [k["steps_lost"] for k in real_kills]
    refusals = damage + pairs
    summary = {
        "faults injected": len(kills) + len(samples) + len(refusals),
        "training kills": len(kills),
        "training kills before the run finished": summary_kills,
        "training kills during a checkpoint write": sum(k["during_write"] for k in kills),
        "training runs resumed bit for bit": sum(k["bitwise"] for k in kills),
        "steps lost per kill (mean)": round(float(np.mean(lost)), 2) if lost else 0.0,
        "steps lost per kill (max)": max(lost, default=0),
        "sampling kills": len(samples),
        "sampling kills before the job finished": sum(not s["finished_before_kill"] for s in samples),
        "sampling jobs resumed bit for bit": sum(s["bitwise"] for s in samples),
        "damaged checkpoints": len(damage),
        "damaged checkpoints refused with a clear message": sum(bool(r["reported"]) for r in damage),
        "damaged runs that still ended bit for bit": sum(bool(r["bitwise"]) for r in damage),
        "pickled code executed": sum(r["code_ran"] for r in damage),
        "second processes": len(pairs),
        "second processes refused with the holder's PID": sum(r["refused"] for r in pairs),
        "outputs lost": sum(r["output_lost"] for r in kills + samples + refusals),
    }
    width = max(map(len, summary))
    print(f"\n{'figure':<{width}}  value")
    for key, value in summary.items():
        print(f"{key:<{width}}  {value}")
    print(f"(checkpoint every 10 steps, {args.steps}-step toy runs; {time.time() - started:.0f} s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"summary": summary, "kills": kills, "sample_kills": samples, "damage": damage,
                                    "two_processes": pairs, "settings": {k: str(v) for k, v in vars(args).items()},
                                    "machine": platform.platform(), "torch": torch.__version__,
                                    "seconds": round(time.time() - started, 1)}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
