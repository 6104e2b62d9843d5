"""``sdegen table``: the FID table of Song et al. 2021 (Table 1) for one score model.

Rows: ancestral sampling (where the SDE defines it), reverse diffusion, probability flow (the adaptive
ODE, one cell); columns ``P<N>``, ``P<2N>`` (predictor only) and ``PC<N>`` (predictor + Langevin
corrector), ``N`` being the SDE's steps times ``--steps-scale``. Each cell draws ``--n`` samples (sample
``i`` from seed ``(seed, i)`` in every cell) and measures them against ``--ref`` with FID (Inception-v3)
or FD-digits (8x8 digits). Prints the table as markdown; ``--json`` and ``--markdown`` save it (the JSON
after every cell).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import UsageError, choice, pick_device, positive_float, positive_int

HELP = "FID / FD-digits table of the samplers of Song et al. 2021 (P<N>, P<2N>, PC<N>, ODE) for one model"

METRICS = ("fid", "fd-digits")
ROW_NAMES = {"ancestral": "ancestral sampling", "reverse_diffusion": "reverse diffusion",
             "probability_flow": "probability flow"}


# --- the model: the options of `sdegen sample`, loaded by its loader (shared with `sdegen likelihood`) ---

def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", nargs="?", default=None, metavar="WORKDIR|CHECKPOINT",
                        help="run folder of `sdegen train` (its newest good checkpoint) or a ckpt_<step>.pt file")
    parser.add_argument("--from-score-sde", default=None, metavar="CHECKPOINT",
                        help="an official score_sde checkpoint_N.pth instead (EMA weights); needs --config")
    parser.add_argument("--config", default=None, metavar="PRESET|JSON",
                        help="with --from-score-sde: a network preset (e.g. cifar10_ddpmpp_continuous) or an "
                             "official-style config .json")
    parser.add_argument("--sde", default=None, choices=("ve", "vp", "subvp"),
                        help="with --from-score-sde: the SDE (default from the network: sigma-conditioned: ve, "
                             "else vp)")
    parser.add_argument("--raw", action="store_true", help="use the raw weights of a run, not its EMA")


def load_model(args: argparse.Namespace, device):
    """``(model, name)``: the :class:`sdegen.train.ScoreModel` of the arguments on ``device`` (eval mode)."""
    from .sample import _load

    model, _, name = _load(args, device)
    return model, name


def write_text(path: str, text: str) -> None:
    try:
        Path(path).write_text(text)
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e}")


# --- the command -----------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--n", type=positive_int, default=50000, help="samples per cell")
    parser.add_argument("--metric", default=None,
                        help=f"{', '.join(METRICS)}; unset: fd-digits for 8x8 grey models, else fid")
    parser.add_argument("--ref", default=None,
                        help="reference: statistics .npz from `sdegen fid-stats` (same --metric) or a data set "
                             "name; fd-digits defaults to the 1797 digits, fid needs it")
    parser.add_argument("--ref-split", default="train", help="split of a data set --ref")
    parser.add_argument("--data-root", default="data", help="folder of the data sets (for a data set --ref)")
    parser.add_argument("--inception-weights", default=None, metavar="PATH",
                        help="Inception-v3 weights for fid (else $SDEGEN_INCEPTION_WEIGHTS or torch hub's cache)")
    parser.add_argument("--steps-scale", type=positive_float, default=1.0,
                        help="multiply the step counts (0.05: P50, P100, PC50 for N=1000), for quick runs")
    parser.add_argument("--rows", default=",".join(ROW_NAMES),
                        help=f"comma-separated rows: {', '.join(ROW_NAMES)} (ancestral is skipped where the SDE "
                             "lacks it unless named alone)")
    parser.add_argument("--snr", type=positive_float, default=0.16, help="signal-to-noise ratio of the corrector")
    parser.add_argument("--snr-norm", default="sample", choices=("sample", "batch"),
                        help="Langevin step from per-sample norms (batch-independent) or batch means (official)")
    parser.add_argument("--eps", type=positive_float, default=1e-3, help="last time of the samplers")
    parser.add_argument("--ode-rtol", type=positive_float, default=1e-5, help="probability-flow ODE rtol")
    parser.add_argument("--ode-atol", type=positive_float, default=1e-5, help="probability-flow ODE atol")
    parser.add_argument("--batch-size", type=positive_int, default=500, help="samples drawn at once")
    parser.add_argument("--seed", type=int, default=0, help="sample i of each cell uses seed (seed, i)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the table as JSON (after each cell)")
    parser.add_argument("--markdown", default=None, metavar="PATH", help="write the markdown table")


def _rows(args, sde) -> list[str]:
    names = [r.strip() for r in args.rows.split(",") if r.strip()]
    for r in names:
        choice(r, ROW_NAMES, "row")
    if "ancestral" in names and not sde.supports_ancestral:
        if len(names) == 1:
            raise UsageError(f"ancestral sampling is not defined for {type(sde).__name__}; choose other --rows")
        names.remove("ancestral")
    return [ROW_NAMES[r] for r in dict.fromkeys(names)]


def _reference(args, metric: str, extractor):
    """Reference statistics: the 1797 digits (fd-digits default), a statistics file or a data set."""
    from .fid import _reference as fid_reference

    if args.ref is None:
        from ..metrics.fd_digits import digits_stats, load_digits_split
        return digits_stats(load_digits_split("all")[0]), "the 1797 digits"
    ref_args = argparse.Namespace(metric=metric, inception_weights=args.inception_weights, value_range="unit",
                                  data_root=args.data_root, split=args.ref_split, batch_size=args.batch_size,
                                  device=args.device)
    return fid_reference(args.ref, extractor, ref_args), args.ref


def run(args: argparse.Namespace) -> int:
    from ..evaluation import run_table, table_cells, table_markdown
    from .fid import LABELS, make_extractor, warn_if_few

    if args.metric is not None:
        choice(args.metric, METRICS, "metric")
    if args.n < 2:
        raise UsageError("--n must be at least 2 (a Frechet distance needs a covariance)")
    device = pick_device(args.device)
    model, source = load_model(args, device)
    if not model.is_image:
        raise UsageError(f"the table measures images, but this model makes {list(model.shape)} points")
    metric = args.metric or ("fd-digits" if tuple(model.shape) == (1, 8, 8) else "fid")
    if metric == "fid" and args.ref is None:
        raise UsageError("--metric fid needs --ref: statistics .npz from `sdegen fid-stats` or a data set name "
                         "(e.g. cifar10 with --data-root)")
    rows = _rows(args, model.sde)
    try:
        table_cells(model.sde, args.steps_scale, rows)
    except ValueError as e:
        raise UsageError(f"--steps-scale: {e}")
    extractor = make_extractor(argparse.Namespace(metric=metric, inception_weights=args.inception_weights,
                                                  device=args.device))
    reference, ref_name = _reference(args, metric, extractor)
    warn_if_few(metric, args.n)

    data = model.config.data.name if model.config is not None else None
    title = f"{LABELS[metric]}{' on ' + data if data else ''}"
    about = f"model {source}, reference {ref_name}"

    def save(table: dict) -> None:
        if args.json:
            record = {"model": source, "step": model.step, "data": data, "ref": ref_name, **table,
                      "markdown": table_markdown(table, title, about)}
            write_text(args.json, json.dumps(record, indent=2) + "\n")

    table = run_table(model, extractor, reference, n=args.n, batch_size=args.batch_size, seed=args.seed,
                      steps_scale=args.steps_scale, rows=rows, snr=args.snr, snr_norm=args.snr_norm, eps=args.eps,
                      ode_rtol=args.ode_rtol, ode_atol=args.ode_atol, metric=LABELS[metric], device=device,
                      progress=sys.stderr.isatty(), on_cell=save)
    failed = [f"{c['row']} {c['column']}: {c['error']}" for c in table["cells"] if c["value"] is None]
    for line in failed:
        print(f"warning: cell failed: {line}", file=sys.stderr)
    text = table_markdown(table, title, about)
    print(text, end="")
    if args.markdown:
        write_text(args.markdown, text)
    return 0
