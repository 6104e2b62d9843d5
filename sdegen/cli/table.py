"""``sdegen table``: the FID table of Song et al. 2021 (Table 1) for one score model.

Rows: ancestral sampling (where the SDE defines it), reverse diffusion, probability flow (the adaptive
ODE, one cell); columns ``P<N>``, ``P<2N>`` (predictor only) and ``PC<N>`` (predictor + Langevin
corrector), ``N`` being the SDE's steps times ``--steps-scale``. Each cell draws ``--n`` samples (sample
``i`` from seed ``(seed, i)`` in every cell) and measures them against ``--ref`` with FID (Inception-v3)
or FD-digits (8x8 digits). Prints the table as markdown; ``--json`` and ``--markdown`` save it (the JSON
after every cell).

``--metrics fid,kid,is,prc`` also computes the evaluation suite on each cell's samples, as ``sdegen fid
--metrics`` does (:mod:`sdegen.metrics.suite`): each metric on every block of ``--seeds``, printed after the
cell as one JSON line per metric (with its ``row`` and ``column``; mean and std over the blocks) and kept in
the cell's record of the JSON (``metrics``). KID and precision/recall need ``--ref`` as images (a data set,
samples .npz or image folder); the markdown table stays that of ``--metric`` over all ``--n`` samples.
"""
from __future__ import annotations

import argparse
import json
import sys

from .common import UsageError, choice, pick_device, positive_float, positive_int
from .fid import add_prc_arguments
from .models import add_external_arguments

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
    add_external_arguments(parser)


def load_model(args: argparse.Namespace, device):
    """``(model, name)``: the :class:`sdegen.train.ScoreModel` of the arguments on ``device`` (eval mode)."""
    from .sample import load_model as load_sample_model

    model, _, name = load_sample_model(args, device)
    return model, name


def write_text(path: str, text: str) -> None:
    from .. import checkpoint
    try:
        checkpoint.atomic_write(path, lambda f: f.write(text.encode()))   # a kill never leaves half a table
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
    parser.add_argument("--metrics", default=None, metavar="LIST",
                        help="also the suite on each cell, e.g. fid,kid,is,prc (also fd-digits): one JSON line per "
                             "metric and cell (precision and recall: one each) with mean and std over the --seeds "
                             "blocks; kid and prc need --ref as images (a data set, samples .npz or folder)")
    parser.add_argument("--seeds", type=positive_int, default=1, metavar="K",
                        help="with --metrics: split each cell's samples into K disjoint blocks")
    parser.add_argument("--inception-weights", default=None, metavar="PATH",
                        help="Inception-v3 weights for fid (else $SDEGEN_INCEPTION_WEIGHTS or torch hub's cache)")
    add_prc_arguments(parser)
    parser.add_argument("--steps-scale", type=positive_float, default=1.0,
                        help="multiply the step counts (0.05: P50, P100, PC50 for N=1000), for quick runs")
    parser.add_argument("--rows", default=",".join(ROW_NAMES),
                        help=f"comma-separated rows: {', '.join(ROW_NAMES)} (ancestral is skipped where the SDE "
                             "lacks it unless named alone)")
    parser.add_argument("--snr", type=positive_float, default=None,
                        help="signal-to-noise ratio of the corrector (default: the PC sampler's)")
    parser.add_argument("--snr-norm", default=None, choices=("sample", "batch"),
                        help="Langevin step from per-sample norms (batch-independent) or batch means (official); "
                             "default: the run's config (image presets: sample), else the PC sampler's")
    parser.add_argument("--eps", type=positive_float, default=None, help="last time of the samplers (default: theirs)")
    parser.add_argument("--ode-rtol", type=positive_float, default=None,
                        help="probability-flow ODE rtol (default: the ODE sampler's)")
    parser.add_argument("--ode-atol", type=positive_float, default=None,
                        help="probability-flow ODE atol (default: the ODE sampler's)")
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


def _suite_metrics(args) -> list[str]:
    """The names of ``--metrics`` (none if unset)."""
    from ..metrics.suite import parse_metrics

    if args.metrics is None:
        if args.seeds != 1:
            raise UsageError("--seeds splits the samples of --metrics; give --metrics too")
        return []
    try:
        return parse_metrics(args.metrics)
    except ValueError as e:
        raise UsageError(f"--metrics: {e}")


def _references(args, extractors: dict, ref_args: argparse.Namespace, opened) -> dict:
    """The reference of each kind of features but logits (:func:`sdegen.metrics.suite.evaluate`): that of
    ``--ref`` (a statistics file, or the features of its images), else the features of the 1797 digits."""
    from .fid import suite_references

    if args.ref is not None:
        return suite_references(extractors, args.ref, ref_args, opened)
    from ..metrics.fd_digits import load_digits_split
    from ..metrics.frechet import extract_features

    images = load_digits_split("all")[0]
    return {kind: extract_features(ex, images, value_range=(0.0, 1.0), batch_size=args.batch_size)
            for kind, ex in extractors.items() if kind == "digits"}


def run(args: argparse.Namespace) -> int:
    from ..evaluation import run_table, table_cells, table_markdown
    from ..metrics.frechet import FeatureStats
    from ..metrics.suite import SUITE, Suite
    from .fid import LABELS, check_suite_reference, make_extractors, open_reference, warn_if_few

    if args.metric is not None:
        choice(args.metric, METRICS, "metric")
    metrics = _suite_metrics(args)
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
    need_ref = [m for m in metrics if m not in ("fd-digits", "is")]
    if need_ref and args.ref is None:
        raise UsageError(f"--metrics {','.join(need_ref)} needs --ref: a data set name, samples .npz or image folder")
    rows = _rows(args, model.sde)
    try:
        n_cells = len(table_cells(model.sde, args.steps_scale, rows))
    except ValueError as e:
        raise UsageError(f"--steps-scale: {e}")
    ref_args = argparse.Namespace(metric=metric, inception_weights=args.inception_weights, value_range="unit",
                                  prc_features=args.prc_features, vgg16_weights=args.vgg16_weights,
                                  data_root=args.data_root, split=args.ref_split, batch_size=args.batch_size,
                                  device=args.device)
    opened = open_reference(args.ref, ref_args) if args.ref is not None else None   # files before networks
    check_suite_reference(metrics, args.ref, opened)
    extractors = make_extractors(list(dict.fromkeys([metric, *metrics])), ref_args)
    extractor = extractors[SUITE[metric]]
    references = _references(args, extractors, ref_args, opened)
    reference = references[SUITE[metric]]
    if not isinstance(reference, FeatureStats):
        reference = FeatureStats.from_features(reference, extractor.name, extractor.weights_sha256)
    ref_name = args.ref if args.ref is not None else "the 1797 digits"
    suite = None
    if metrics:
        kinds = {SUITE[m] for m in metrics}
        suite = Suite(tuple(metrics), {k: extractors[k] for k in kinds}, references, args.seeds)
        try:
            suite.check(args.n)   # before any sampling
        except ValueError as e:
            raise UsageError(f"--metrics with --n {args.n}, --seeds {args.seeds}, --ref {ref_name}: {e}")
    if metric not in metrics:
        warn_if_few(metric, args.n)

    data = model.config.data.name if model.config is not None else None
    title = f"{LABELS[metric]}{' on ' + data if data else ''}"
    about = f"model {source}, reference {ref_name}"

    snr_norm = args.snr_norm or (model.config.sampling.snr_norm if model.config is not None else None)

    def save(table: dict) -> None:
        c = table["cells"][-1]
        if not sys.stderr.isatty():  # logs and CI get a line per finished cell (a terminal has the bar)
            value = "failed" if c["value"] is None else f"{c['value']:.4g}"
            print(f"table: cell {len(table['cells'])}/{n_cells} {c['row']} {c['column']}: {LABELS[metric]} "
                  f"{value} ({c['seconds']:.1f} s)", file=sys.stderr, flush=True)
        for r in c.get("metrics") or []:   # the suite: one JSON line per metric of the cell
            if "bias_scale" in r and len(table["cells"]) == 1:
                warn_if_few(r["metric"], r["block_count"], r["bias_scale"])
            print(json.dumps({**r, "count": args.n, "row": c["row"], "column": c["column"], "model": source,
                              **({"ref": ref_name} if "ref_count" in r else {})}), flush=True)
        if args.json:
            record = {"model": source, "step": model.step, "data": data, "ref": ref_name, **table,
                      "markdown": table_markdown(table, title, about)}
            write_text(args.json, json.dumps(record, indent=2) + "\n")

    try:
        table = run_table(model, extractor, reference, n=args.n, batch_size=args.batch_size, seed=args.seed,
                          steps_scale=args.steps_scale, rows=rows, snr=args.snr, snr_norm=snr_norm, eps=args.eps,
                          ode_rtol=args.ode_rtol, ode_atol=args.ode_atol, metric=LABELS[metric], device=device,
                          progress=sys.stderr.isatty(), suite=suite, on_cell=save)
    except ValueError as e:   # a metric of --metrics that these samples or this reference cannot give
        raise UsageError(f"--metrics vs {ref_name}: {e}" if suite is not None else str(e))
    failed = [f"{c['row']} {c['column']}: {c['error']}" for c in table["cells"] if c["value"] is None]
    for line in failed:
        print(f"warning: cell failed: {line}", file=sys.stderr)
    text = table_markdown(table, title, about)
    print(text, end="")
    if args.markdown:
        write_text(args.markdown, text)
    return 0
