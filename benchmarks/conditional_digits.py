"""Class-conditional digits: how often guided samples are the asked-for digit, and FD-digits per class.

Trains (or resumes, or takes with ``--classifier-run`` / ``--cond-run``) a noise-conditional classifier
(``digits_classifier_vp``) and a class-conditional score model with label dropout (``digits_vp_cond``) for
a few CPU minutes each, then draws ``--per-class`` samples of each digit with the run's sampler under
each guidance setting:

- ``null``: the conditional network with the null label (unconditional samples; "asked" class ``i mod 10``:
  the chance level);
- ``cfg w=W``: classifier-free guidance ``(1 + w) s(x, t, y) - w s(x, t, null)`` (Ho & Salimans 2022);
- ``clf s=S``: the null-label (unconditional) score guided by the classifier, ``s + S grad log p_t(y | x)``
  (Song et al. 2021, eq. 14; Dhariwal & Nichol 2021).

Accuracy: the share of samples that the FD-digits CNN (:class:`sdegen.metrics.fd_digits.DigitsCNN`, its
classifier head) labels as the asked-for digit; its accuracy on the 360 held-out real digits is the ceiling.
FD-digits of class ``k``: the samples of ``k`` against the ~180 real digits ``k``; the floor is FD-digits of
``--per-class`` real digits ``k`` against the same set (the small-sample bias).

Prints two markdown tables (accuracy and FD per class and setting), writes
``benchmarks/results/conditional_digits.json``.

    PYTHONPATH=. nice python benchmarks/conditional_digits.py --minutes-classifier 2 --minutes-cond 6
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from sdegen import NULL_LABEL
from sdegen.metrics.fd_digits import DigitsFeatures, digits_stats, fd_digits, load_digits_split, to_digit_input
from sdegen.train import SamplerOptions, draw, load_config, load_run, train

RESULTS = Path(__file__).resolve().parent / "results"
CLASSES = 10


def trained(preset: str, folder: Path, minutes: float, given: str | None) -> Path:
    """A run folder of ``preset`` trained (or resumed) for ``minutes`` more, or ``given`` as it is."""
    if given:
        return Path(given)
    if minutes > 0:
        cfg = load_config(preset, [f"training.time_limit={minutes}", "training.steps=1000000", "training.device=cpu",
                                   "training.sample_every=0", "training.tensorboard=false"])
        run = train(cfg, folder, progress=False, verbose=False)
        print(f"{preset}: step {run.step}, last loss {run.stats[-1]['loss']:.4g}", flush=True)
    return folder


def settings(guidance: list[float], scales: list[float]) -> dict[str, dict]:
    """Name -> keyword arguments of ``ScoreModel.class_score_fn`` (None: the null label)."""
    out: dict[str, dict | None] = {"null": None}
    out.update({f"cfg w={w:g}": {"guidance": w} for w in guidance})
    out.update({f"clf s={s:g}": {"classifier": True, "scale": s} for s in scales})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes-classifier", type=float, default=2.0, help="training minutes of the classifier")
    p.add_argument("--minutes-cond", type=float, default=6.0, help="training minutes of the conditional model")
    p.add_argument("--classifier-run", default=None, help="take this classifier run instead of training one")
    p.add_argument("--cond-run", default=None, help="take this conditional run instead of training one")
    p.add_argument("--per-class", type=int, default=100, help="samples of each digit per setting")
    p.add_argument("--guidance", type=float, nargs="*", default=[0.0, 1.0, 3.0], help="classifier-free w")
    p.add_argument("--scale", type=float, nargs="*", default=[1.0, 3.0], help="classifier guidance scales")
    p.add_argument("--sample-steps", type=int, default=None, help="sampler steps (default: the preset's)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workdir", default="runs/bench_conditional_digits")
    p.add_argument("--out", default=str(RESULTS / "conditional_digits.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    start = time.perf_counter()
    clf_dir = trained("digits_classifier_vp", work / "classifier", args.minutes_classifier, args.classifier_run)
    cond_dir = trained("digits_vp_cond", work / "cond", args.minutes_cond, args.cond_run)
    train_s = time.perf_counter() - start
    model, classifier = load_run(cond_dir), load_run(clf_dir)
    options = SamplerOptions.from_config(model.config.sampling, steps=args.sample_steps)
    cnn = DigitsFeatures().net
    real, labels = load_digits_split("all")
    test_x, test_y = load_digits_split("test")
    ceiling = (cnn(test_x).argmax(1) == test_y).float().mean().item()
    refs = {k: digits_stats(real[labels == k]) for k in range(CLASSES)}
    floor = {k: fd_digits(real[labels == k][: args.per_class], refs[k]) for k in range(CLASSES)}

    results = {}
    for name, kw in settings(args.guidance, args.scale).items():
        t0 = time.perf_counter()
        acc, fd = {}, {}
        for k in range(CLASSES):
            indices = list(range(k * args.per_class, (k + 1) * args.per_class))
            if kw is None:   # unconditional samples, "asked" for class i mod 10
                asked = torch.tensor(indices) % CLASSES
                score = model.cond_score_fn()
                guided = model.with_score_fn(lambda x, t: score(x, t, NULL_LABEL))
            else:
                asked = torch.full((args.per_class,), k)
                extra = {**kw, "classifier": classifier if kw.get("classifier") else None}
                guided = model.with_score_fn(model.class_score_fn(k, **extra))
            x = model.to_signed(draw(guided, indices, 0, options)).clamp(-1, 1)
            with torch.no_grad():
                acc[k] = (cnn(to_digit_input(x, (-1.0, 1.0))).argmax(1) == asked).float().mean().item()
            fd[k] = fd_digits(x, refs[k], value_range=(-1.0, 1.0))
        results[name] = {"accuracy": acc, "fd": fd, "seconds": time.perf_counter() - t0}
        print(f"{name}: accuracy {sum(acc.values()) / CLASSES:.3f}, FD-digits {sum(fd.values()) / CLASSES:.2f} "
              f"({results[name]['seconds']:.0f} s)", flush=True)

    names = list(results)
    for title, key, fmt, extra in (("share classified as the asked-for digit", "accuracy", "{:.2f}",
                                    ("CNN on real", ceiling)), ("FD-digits per class", "fd", "{:.1f}", None)):
        print(f"\n{title} ({args.per_class} samples per digit)\n")
        head = ["digit", *names] + (["real floor"] if key == "fd" else [])
        print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
        for k in range(CLASSES):
            row = [fmt.format(results[n][key][k]) for n in names] + ([f"{floor[k]:.1f}"] if key == "fd" else [])
            print(f"| {k} | " + " | ".join(row) + " |")
        mean = [fmt.format(sum(results[n][key].values()) / CLASSES) for n in names]
        mean += [f"{sum(floor.values()) / CLASSES:.1f}"] if key == "fd" else []
        print("| mean | " + " | ".join(mean) + " |")
        if extra:
            print(f"\n{extra[0]} held-out digits: {extra[1]:.3f}")
    record = {"classifier_run": str(clf_dir), "classifier_step": classifier.step, "cond_run": str(cond_dir),
              "cond_step": model.step, "train_seconds": train_s, "per_class": args.per_class,
              "sampler": options.sampler, "sampler_options": options.options, "cnn_accuracy_real": ceiling,
              "fd_floor": floor, "results": results, "threads": args.threads, "machine": platform.platform()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1))
    print(f"\n-> {args.out}")


if __name__ == "__main__":
    main()
