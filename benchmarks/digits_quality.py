"""FD-digits of models of the 8x8 digits against training steps and CPU time, recipe against recipe.

Each preset (default: ``digits_vp`` and ``digits_ve``, the DSM recipes, and ``digits_edm``, EDM's recipe)
trains once per seed in its own run folder; training pauses at each of ``--steps`` (cumulative), the EMA
model draws ``--n`` samples with the preset's sampler (sampling seed = training seed) and FD-digits is
measured against the 1797 real digits. Each point is the mean and spread (sample std) over the seeds.

Time: the CPU time of the training process (``time.process_time``, ``--threads`` 1 by default), which is
what the same training takes in wall time on an idle core; on a machine shared with other work the wall
time is longer (also recorded) while the CPU time barely moves. So the figures are read at a number of
STEPS, and the CPU-minute axis converts them. The goals speak of minutes on 2 idle cores: ``--measure-rate``
(run on idle cores) measures each preset's steps per minute with 1 and 2 threads, and the goals are judged on
both clocks: one thread's CPU minutes, and the steps that 2 idle cores with 2 threads give (what
``sdegen quickstart`` uses on an idle 2-core machine). Two real-data figures: ``--n`` real digits drawn from the
reference itself (with replacement when ``--n`` exceeds the 1797), mean and spread over the seeds, which
only a model that copies its training digits can reach; and ``--n`` digits independent of the reference
(:func:`independent_real_figure`, from the Frechet distance's 1/n bias fitted on disjoint real splits),
what a perfect model scores. The goals are judged against the independent figure; the table shows both.

Prints a table and the goals (within 1.25x the independent real-data figure after 3 minutes, 1.1x after 15),
writes ``benchmarks/results/digits_quality.json`` and a plot ``digits_quality.png``.

    PYTHONPATH=. python benchmarks/digits_quality.py --measure-rate --presets digits_edm   # on idle cores
    PYTHONPATH=. python benchmarks/digits_quality.py                      # 3 seeds, n = 2000 (hours on 1 core)
    PYTHONPATH=. python benchmarks/digits_quality.py --short              # a check: 1 seed, 60 steps, n = 200
    PYTHONPATH=. python benchmarks/digits_quality.py --presets digits_edm "digits_edm:optim.lr=1e-3" \\
        --steps 500 1000 2000 --seeds 0
    PYTHONPATH=. python benchmarks/digits_quality.py --merge a.json b.json   # one table and plot of several runs
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from sdegen.metrics import fd_digits
from sdegen.metrics.fd_digits import load_digits_split
from sdegen.train import SamplerOptions, draw, load_config, train

RESULTS = Path(__file__).resolve().parent / "results"
GOALS = ((3.0, 1.25), (15.0, 1.1))   # (minutes, FD-digits within this factor of the real-data figure)
RATES = RESULTS / "digits_quality_rates.json"   # training steps per minute on idle cores (--measure-rate)


def idle_steps_per_minute(preset: str, threads: int, steps: int = 300) -> float:
    """Training steps per wall-clock minute of ``preset`` with ``threads`` threads: the median rate of the
    training log's windows after the first (the first holds the start-up). Meaningful on idle cores only."""
    import tempfile

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(preset, [f"training.steps={steps}", "training.device=cpu", "training.sample_every=0",
                                   "training.tensorboard=false", "training.log_every=25"])
        run = train(cfg, Path(tmp) / "run", progress=False, verbose=False)
    return 60 * statistics.median(r["it_per_s"] for r in run.stats[1:])


def evaluate(model, cfg, n: int, seed: int, steps: int | None) -> tuple[float, float]:
    """FD-digits of ``n`` EMA samples (sampling seed ``seed``) and the seconds it took to draw them."""
    start = time.perf_counter()
    x = draw(model, list(range(n)), seed, SamplerOptions.from_config(cfg.sampling, steps=steps))
    seconds = time.perf_counter() - start
    return fd_digits(model.to_signed(x).clamp(-1, 1), value_range=(-1.0, 1.0)), seconds


def real_figure(n: int, seed: int) -> float:
    """FD-digits of ``n`` real digits (with replacement if ``n`` > 1797) against all 1797."""
    real = load_digits_split("all")[0]
    g = torch.Generator().manual_seed(seed)
    pick = torch.randint(len(real), (n,), generator=g) if n > len(real) else torch.randperm(len(real), generator=g)[:n]
    return fd_digits(real[pick])


def split_half_figure(seed: int) -> float:
    """FD-digits of half of the real digits against the other half (898 vs 899, a random split): real data
    independent of its reference, as model samples are. The figure above, whose real digits are part of
    the reference, is several times lower; model samples cannot reach it."""
    real = load_digits_split("all")[0]
    order = torch.randperm(len(real), generator=torch.Generator().manual_seed(seed))
    return fd_digits(real[order[:898]], real[order[898:]])


SPLIT_SIZES = (200, 300, 450, 600, 898)   # disjoint real splits m vs 1797 - m for the bias fit


def independent_real_figure(n: int, repeats: int = 8) -> tuple[float, float]:
    """FD-digits that ``n`` digits independent of the reference (the digits' own distribution, not copies
    of the reference, as a model that does not memorise would draw) would get against all 1797: what a
    perfect model scores. The plug-in Frechet distance of two independent samples of one distribution is
    a bias linear in ``1/n_a + 1/n_b`` (Chong & Forsyth 2020); its slope ``c`` is fitted through the origin
    to disjoint real splits (``m`` vs ``1797 - m``, :data:`SPLIT_SIZES`), once per repeat (random splits);
    returns the mean and spread of ``c (1/n + 1/1797)`` over the repeats."""
    real = load_digits_split("all")[0]
    total = len(real)
    figures = []
    for r in range(repeats):
        xs, ys = [], []
        for m in SPLIT_SIZES:
            order = torch.randperm(total, generator=torch.Generator().manual_seed(1000 * r + m))
            xs.append(1 / m + 1 / (total - m))
            ys.append(fd_digits(real[order[:m]], real[order[m:]]))
        c = sum(x * y for x, y in zip(xs, ys)) / sum(x * x for x in xs)
        figures.append(c * (1 / n + 1 / total))
    return _spread(figures)


def _spread(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def run_preset(spec: str, steps: list[int], seeds: list[int], n: int, sample_steps: int | None,
               workdir: Path, on_row=lambda rows: None, sample_sets: int = 1) -> list[dict]:
    """Train ``spec`` (``NAME[:key=value,...]``) per seed, evaluating at each of ``steps``; one row per
    (seed, steps); ``on_row(rows)`` after each (the caller saves them, so a killed run keeps its rows).
    A row's FD-digits is the mean over ``sample_sets`` sets of ``n`` samples (sampling seeds ``seed``,
    ``seed + 1000``, ...; each set's figure in ``fd_sets``): one model's figure moves with its sample set."""
    name, _, extra = spec.partition(":")
    overrides = [o for o in extra.split(",") if o]
    rows = []
    for seed in seeds:
        folder = workdir / f"{spec.replace(':', '_').replace(',', '_').replace('=', '-')}_seed{seed}"
        clock = folder / "benchmark_time.json"   # training time so far, so that a rerun with more steps adds to it
        cpu, wall = json.loads(clock.read_text()).values() if clock.is_file() else (0.0, 0.0)
        for target in steps:
            cfg = load_config(name, overrides + [f"training.steps={target}", f"training.seed={seed}",
                                                 "training.device=cpu", "training.sample_every=0",
                                                 "training.tensorboard=false"])
            cpu0, wall0 = time.process_time(), time.perf_counter()
            run = train(cfg, folder, progress=False, verbose=False)
            cpu, wall = cpu + time.process_time() - cpu0, wall + time.perf_counter() - wall0
            clock.write_text(json.dumps({"cpu": cpu, "wall": wall}))
            sets = [evaluate(run.model, cfg, n, seed + 1000 * k, sample_steps) for k in range(sample_sets)]
            fd = statistics.mean(f for f, _ in sets)
            rows.append({"preset": spec, "seed": seed, "steps": run.step, "cpu_minutes": cpu / 60,
                         "wall_minutes": wall / 60, "loss": run.stats[-1]["loss"] if run.stats else None,
                         "fd_digits": fd, "fd_sets": [f for f, _ in sets], "sample_seconds": sets[0][1]})
            on_row(rows)
            print(f"{spec:34s} seed {seed}  step {run.step:6d}  CPU {cpu / 60:6.2f} min  wall {wall / 60:6.2f} min  "
                  f"FD-digits {fd:8.3f}", flush=True)
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and spread over seeds, per (preset, steps)."""
    out = []
    for key in sorted({(r["preset"], r["steps"]) for r in rows}, key=lambda k: ([r["preset"] for r in rows].index(k[0]), k[1])):
        group = [r for r in rows if (r["preset"], r["steps"]) == key]
        fd, fd_sd = _spread([r["fd_digits"] for r in group])
        cpu, _ = _spread([r["cpu_minutes"] for r in group])
        out.append({"preset": key[0], "steps": key[1], "seeds": len(group), "cpu_minutes": cpu,
                    "fd_digits": fd, "fd_digits_sd": fd_sd})
    return out


def goal_lines(summary: list[dict], indep: float, floor: float, rates: dict) -> list[str]:
    """The goals judged per preset on two clocks: the CPU time of one thread (the points measured within
    the goal's minutes, 5% over allowed: CPU time per step moves with the machine's load), and the wall
    time of 2 idle cores (the points within the steps that ``rates[preset]["2"]`` steps per minute give,
    measured by ``--measure-rate``)."""
    lines = []
    for minutes, factor in GOALS:
        for preset in dict.fromkeys(s["preset"] for s in summary):
            mine = [s for s in summary if s["preset"] == preset]
            rate = rates.get(preset.partition(":")[0], {}).get("2")
            clocks = [("1 thread", lambda s: s["cpu_minutes"] <= 1.05 * minutes,
                       mine[-1]["cpu_minutes"] >= 0.5 * minutes)]
            if rate:
                clocks.append((f"2 idle cores ({rate:.0f} steps/min)", lambda s: s["steps"] <= 1.05 * minutes * rate,
                               mine[-1]["steps"] >= 0.5 * minutes * rate))
            for clock, within, measured in clocks:
                done = [s for s in mine if within(s)]
                head = f"goal {factor}x real after {minutes:g} min on {clock}: {preset}"
                if not measured:
                    lines.append(f"{head} not measured (trained too little)")
                elif done:
                    best = done[-1]
                    verdict = "meets" if best["fd_digits"] <= factor * indep else "misses"
                    lines.append(f"{head} {verdict} it at step {best['steps']} ({best['cpu_minutes']:.2f} CPU-min): "
                                 f"{best['fd_digits']:.3f} +- {best['fd_digits_sd']:.3f} vs {factor * indep:.3f} "
                                 f"({factor}x independent real digits; {best['fd_digits'] / floor:.2f}x the resampled "
                                 "figure)")
    return lines


def plot(summary: list[dict], floor: float, floor_sd: float, n: int, path: Path, indep: float) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for preset in dict.fromkeys(s["preset"] for s in summary):
        pts = [s for s in summary if s["preset"] == preset]
        for ax, key in zip(axes, ("steps", "cpu_minutes")):
            ax.errorbar([p[key] for p in pts], [p["fd_digits"] for p in pts], yerr=[p["fd_digits_sd"] for p in pts],
                        marker="o", capsize=3, label=preset)
    for ax, xlabel in zip(axes, ("training steps", "CPU minutes of training (1 thread; = wall time on an idle core)")):
        ax.axhspan(floor - floor_sd, floor + floor_sd, color="0.85")
        ax.axhline(floor, color="0.4", lw=1, label=f"real digits ({n}, resampled from the reference)")
        ax.axhline(indep, color="C3", lw=1, label=f"real digits ({n}, independent of the reference)")
        for factor, style in ((1.25, "--"), (1.1, ":")):
            ax.axhline(factor * indep, color="C3", lw=1, ls=style, label=f"{factor}x independent real")
        ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel=f"FD-digits ({n} samples)")
    for minutes, _ in GOALS:
        axes[1].axvline(minutes, color="0.7", lw=1)
    axes[0].legend(fontsize=8)
    fig.suptitle("FD-digits against training (mean and spread over seeds; lower is better)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["digits_vp", "digits_ve", "digits_edm"],
                   help="presets, each optionally with overrides: NAME[:key=value,key=value]")
    p.add_argument("--steps", nargs="+", type=int, default=None,
                   help="evaluation points in training steps, cumulative (default 500 1000 2000 4000 8000 16000)")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="training seeds (default 0 1 2)")
    p.add_argument("--n", type=int, default=None, help="samples per evaluation (default 2000)")
    p.add_argument("--short", action="store_true", help="a quick check: 1 seed, 30 and 60 steps, n = 200")
    p.add_argument("--sample-steps", type=int, default=None, help="sampler steps (default: the preset's)")
    p.add_argument("--sample-sets", type=int, default=1,
                   help="sets of --n samples per evaluation (sampling seeds seed, seed + 1000, ...); the point is "
                        "their mean FD-digits")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workdir", default="runs/bench_digits_quality")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="train nothing: one table and plot of these result files (same --n), e.g. presets run in "
                        "parallel processes")
    p.add_argument("--out", default=str(RESULTS / "digits_quality.json"))
    p.add_argument("--measure-rate", action="store_true",
                   help=f"train nothing for the table: measure each preset's steps per minute with 1 and 2 threads "
                        f"(run it on idle cores) into {RATES.name}, by which the goals are also judged in wall time "
                        "on 2 idle cores")
    args = p.parse_args()
    if args.measure_rate:
        rates = {spec: {str(k): idle_steps_per_minute(spec, k) for k in (1, 2)} for spec in args.presets}
        tmp = RATES.with_suffix(".tmp")
        tmp.write_text(json.dumps({"steps_per_minute": rates, "load_average_before": os.getloadavg(),
                                   "machine": platform.processor() or platform.machine()}, indent=1))
        os.replace(tmp, RATES)
        for spec, r in rates.items():
            print(f"{spec:34s} steps per minute: 1 thread {r['1']:7.0f}   2 threads {r['2']:7.0f}  "
                  f"({r['2'] / r['1']:.2f}x)")
        print(f"wrote {RATES}")
        return
    steps = sorted(args.steps or ([30, 60] if args.short else [500, 1000, 2000, 4000, 8000, 16000]))
    seeds = args.seeds or ([0] if args.short else [0, 1, 2])
    n = args.n or (200 if args.short else 2000)
    torch.set_num_threads(args.threads)
    rows = []
    if args.merge:
        loaded = [json.loads(Path(f).read_text()) for f in args.merge]
        if len({d["n"] for d in loaded}) != 1:
            raise SystemExit(f"--merge: the files were measured with different --n: {[d['n'] for d in loaded]}")
        n, seeds = loaded[0]["n"], sorted({s for d in loaded for s in d["seeds"]})
        rows = [r for d in loaded for r in d["rows"]]
        steps = sorted({r["steps"] for r in rows})
    reals = [real_figure(n, seed) for seed in seeds]
    floor, floor_sd = _spread(reals)
    halves = [split_half_figure(seed) for seed in seeds]
    indep, indep_sd = independent_real_figure(n)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(rows: list[dict]) -> None:   # atomically, after every evaluation
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"rows": rows, "summary": summarise(rows), "real_digits": reals,
                                   "real_halves": halves, "real_independent": [indep, indep_sd],
                                   "real_digits_mean": floor, "real_digits_sd": floor_sd, "n": n, "seeds": seeds,
                                   "steps": steps, "sample_steps": args.sample_steps, "threads": args.threads,
                                   "load_average": os.getloadavg(), "clock": "process CPU time",
                                   "machine": platform.processor() or platform.machine()}, indent=1))
        os.replace(tmp, out)

    for spec in ([] if args.merge else args.presets):
        done = list(rows)
        rows += run_preset(spec, steps, seeds, n, args.sample_steps, Path(args.workdir),
                           on_row=lambda new: save(done + new), sample_sets=args.sample_sets)
    summary = summarise(rows)
    print(f"\n{'preset':34s} {'steps':>6s} {'CPU min':>8s} {'FD-digits':>16s} {'/ indep':>7s} {'/ resampled':>11s}")
    for s in summary:
        print(f"{s['preset']:34s} {s['steps']:6d} {s['cpu_minutes']:8.2f} {s['fd_digits']:9.3f} +- {s['fd_digits_sd']:5.3f}"
              f" {s['fd_digits'] / indep:7.2f} {s['fd_digits'] / floor:11.2f}")
    print(f"{'real digits, independent':34s} {'':6s} {'':8s} {indep:9.3f} +- {indep_sd:5.3f}   ({n} digits independent "
          "of the reference, from the bias fit of disjoint splits: what a perfect model scores)")
    print(f"{'real digits, resampled':34s} {'':6s} {'':8s} {floor:9.3f} +- {floor_sd:5.3f}   ({n} drawn from the "
          f"reference itself, {len(seeds)} seed(s): reachable only by copying it)")
    print(f"{'real, independent halves':34s} {'':6s} {'':8s} {_spread(halves)[0]:9.3f} +- {_spread(halves)[1]:5.3f}"
          "   (898 vs 899: data independent of its reference)")
    rates = json.loads(RATES.read_text())["steps_per_minute"] if RATES.is_file() else {}
    for line in goal_lines(summary, indep, floor, rates):
        print(line)
    picture = out.with_suffix(".png")
    plot(summary, floor, floor_sd, n, picture, indep)
    save(rows)
    print(f"wrote {out} and {picture}")


if __name__ == "__main__":
    main()
