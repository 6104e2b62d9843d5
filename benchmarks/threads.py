"""`sdegen`'s default thread count against 1 and 2 threads, on an idle and on a loaded machine.

A short `sdegen sample` run (digits_vp, ancestral sampling, 50 steps, 64 samples; a 2-step run trained
first) is timed as a whole command with ``--threads 1``, ``--threads 2`` and the default (no flag,
``OMP_NUM_THREADS`` unset: ``min(4, cores // 2)``); "loaded" runs the same with one busy-loop process
per core beside it. Each figure is the median of ``--repeats`` runs; the load average before each
phase is recorded (on a machine shared with other work, "idle" means "without our busy loops").

    python benchmarks/threads.py                  # table + benchmarks/results/threads.json
    python benchmarks/threads.py --repeats 1 --steps 10 --out /tmp/threads.json   # a quick check
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "threads.json"
SETTINGS = ("default", "1", "2")
BUSY = "while True: pass"


def sdegen(*args: str, env: dict) -> float:
    """Wall seconds of ``python -m sdegen ARGS`` (raises with its stderr if it fails)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "sdegen", *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"sdegen {' '.join(args)} failed: {done.stderr.strip()[-500:]}")
    return time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=50, help="ancestral sampling steps")
    p.add_argument("--n", type=int, default=64, help="samples")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)

    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    sys.path.insert(0, str(ROOT))
    from sdegen.cli import default_threads
    default = default_threads() if "OMP_NUM_THREADS" not in os.environ else None
    result = {"cores": cores, "default_threads": default, "repeats": args.repeats, "steps": args.steps,
              "n": args.n, "command": None, "phases": {}}
    with tempfile.TemporaryDirectory(prefix="threads_") as tmp:
        run = Path(tmp) / "run"
        sdegen("train", "digits_vp", "--workdir", str(run), "training.steps=2", "training.sample_every=0",
               "training.tensorboard=false", "sampling.n=4", "--no-progress", "--threads", "1", env=env)
        command = ["sample", str(run), "--predictor", "ancestral", "--corrector", "none", "--steps", str(args.steps),
                   "--n", str(args.n), "--batch-size", str(args.n), "--no-progress"]
        result["command"] = "sdegen " + " ".join(command[:1] + ["RUN"] + command[2:] + ["--out", "OUT.npz"])
        outs = (str(Path(tmp) / f"s{i}.npz") for i in range(10**6))  # a fresh file for every run
        for phase in ("idle", "loaded"):
            busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(cores if phase == "loaded" else 0)]
            try:
                time.sleep(1.0 if busy else 0.0)
                rows = {"loadavg_1min_before": os.getloadavg()[0]}
                for setting in SETTINGS:
                    flag = [] if setting == "default" else ["--threads", setting]
                    times = [sdegen(*command, *flag, "--out", next(outs), env=env) for _ in range(args.repeats)]
                    rows[setting] = {"median_s": statistics.median(times), "times_s": times}
                    print(f"{phase:6s} threads {setting:7s} {statistics.median(times):7.2f} s  "
                          f"({', '.join(f'{t:.2f}' for t in times)})", flush=True)
            finally:
                for proc in busy:  # only the processes started here
                    proc.kill()
                    proc.wait()
            result["phases"][phase] = rows
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp_out, out)
    print(f"\n| machine | default ({default} thread(s)) | 1 thread | 2 threads |\n|---|---|---|---|")
    for phase, rows in result["phases"].items():
        print(f"| {phase} (load {rows['loadavg_1min_before']:.1f}) | "
              + " | ".join(f"{rows[s]['median_s']:.2f} s" for s in SETTINGS) + " |")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
