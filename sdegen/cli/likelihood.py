"""``sdegen likelihood``: bits/dim of held-out data under a score model, by the probability-flow ODE.

Images are uniformly dequantised (``(k + u) / levels``) and scaled as the model was trained ([-1, 1]
when it is centred, else [0, 1]); the reported bits/dim add ``log2(levels / width)``: 8 for 8-bit data in
[0, 1], 7 in [-1, 1] (the official ``7 - inverse_scaler(-1)``), ``log2 17`` resp. ``log2 17 - 1`` for the
17-level digits. Models of points (toy sets) report nats per sample. The divergence is Hutchinson's
estimate with ``--probes`` Rademacher probes, or exact with ``--exact`` (one backward pass per dimension).
"""
from __future__ import annotations

import argparse
import json
import sys

from .common import UsageError, pick_device, positive_float, positive_int
from .table import add_model_arguments, load_model, write_text

HELP = "bits/dim (nats for points) of held-out data under a score model, via the probability-flow ODE"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--data", default=None,
                        help="an image set (digits, mnist, cifar10, folder) or a toy set; unset: the run's data")
    parser.add_argument("--data-root", default=None,
                        help="folder of the data set; unset: the run's data.root, else ./data")
    parser.add_argument("--split", default="test", help="split of an image set")
    parser.add_argument("--n", type=positive_int, default=256, help="items of the split to evaluate (the first n)")
    parser.add_argument("--probes", type=positive_int, default=1, help="Hutchinson probes per sample")
    parser.add_argument("--exact", action="store_true",
                        help="exact divergence (one backward pass per dimension: small dimensions only)")
    parser.add_argument("--eps", type=positive_float, default=1e-5, help="start time of the ODE")
    parser.add_argument("--rtol", type=positive_float, default=1e-5, help="ODE relative tolerance (dopri5)")
    parser.add_argument("--atol", type=positive_float, default=1e-5, help="ODE absolute tolerance (dopri5)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="items per ODE solve")
    parser.add_argument("--seed", type=int, default=0, help="seed of the dequantization noise and the probes")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the result as JSON")


def _log_batch(info: dict) -> None:
    """A line per finished batch when stderr is not a terminal (logs, CI), where no bar is drawn."""
    print(f"likelihood: {info['done']}/{info['n']} items, mean NLL {info['nats_mean']:.4f} nats, "
          f"{info['nfe']} score evaluations in the last batch, {info['seconds']:.1f} s", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..data import DataError
    from ..evaluation import likelihood_bpd, likelihood_data

    device = pick_device(args.device)
    model, source = load_model(args, device)
    cfg = model.config
    name = args.data or (cfg.data.name if cfg is not None else None)
    if name is None:
        raise UsageError("--data is needed for a model without a training config (e.g. cifar10 --data-root DIR)")
    root = args.data_root or (cfg.data.root if cfg is not None else None) or "data"
    try:
        data, offset = likelihood_data(name, args.n, root=root, split=args.split, centered=model.centered,
                                       seed=args.seed)
    except (ValueError, FileNotFoundError, DataError) as e:
        raise UsageError(f"data set {name!r}: {e}")
    item_shape = tuple(data.shape[1:]) if isinstance(data, torch.Tensor) else tuple(data.shape)
    if item_shape != tuple(model.shape):
        raise UsageError(f"{name} items have shape {list(item_shape)} but the model takes {list(model.shape)}; "
                         "likelihoods need the data at the model's own resolution")
    if args.n > len(data):
        raise UsageError(f"--n {args.n}: the {args.split} split of {name} has only {len(data)} items")
    try:
        result = likelihood_bpd(model.sde, model.score_fn(), data, n=args.n, n_probes=args.probes, exact=args.exact,
                                offset=offset, batch_size=args.batch_size, seed=args.seed, eps=args.eps,
                                rtol=args.rtol, atol=args.atol, device=device, progress=sys.stderr.isatty(),
                                on_batch=None if sys.stderr.isatty() else _log_batch)
    except (ValueError, FloatingPointError) as e:
        raise UsageError(str(e))

    divergence = "exact divergence" if args.exact else f"{args.probes} Rademacher probe(s)"
    if result["unit"] == "bpd":
        head = f"bits/dim {result['mean']:.4f} ± {result['stderr']:.4f}"
        how = f"offset {offset:.4f} bits for dequantised data in {'[-1, 1]' if model.centered else '[0, 1]'}"
    else:
        head = f"NLL {result['mean']:.4f} ± {result['stderr']:.4f} nats per sample"
        how = f"{result['dims']}-D points"
    print(f"{head}  ({result['n']} items of {name}"
          f"{' ' + args.split if result['unit'] == 'bpd' else ''}, {divergence}, {how}; "
          f"score evaluations {result['nfe_mean']:.0f} per batch, {result['nfe_total']} in all; "
          f"{result['seconds']:.1f} s)")
    if args.json:
        record = {"model": source, "step": model.step, "sde": type(model.sde).__name__, "data": name,
                  "split": args.split if result["unit"] == "bpd" else None, "centered": model.centered, **result}
        write_text(args.json, json.dumps(record, indent=2) + "\n")
    return 0
