"""Evaluation of score models: bits/dim of held-out data, and the sampler-by-steps table of FIDs.

- :func:`likelihood_bpd`: negative log-likelihood through the probability-flow ODE (Song et al. 2021,
  Sec. 4.3), over a data set in batches, as mean ± standard error in bits/dim (images) or nats (points),
  with the number of score evaluations.
- :func:`run_table`: the grid of Song et al. 2021, Table 1 (and the seed's result tables): rows are
  predictors (ancestral sampling, reverse diffusion) and the probability-flow ODE; columns are ``P<N>``,
  ``P<2N>`` (predictor only) and ``PC<N>`` (predictor + one Langevin corrector step per level). Each
  cell gets a Frechet distance (FID or FD-digits), wall time and score evaluations, and optionally the
  evaluation suite (:class:`sdegen.metrics.suite.Suite`: FID, KID, IS, precision/recall over seeds).

Sample ``i`` of every cell draws its noise from a generator seeded by ``(seed, i)``, so the cells share
their random numbers and differ only by the sampler.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from . import noise
from .likelihood import bits_per_dim, log_likelihood
from .sampling import PREDICTORS
from .score import CountingScore, ScoreFn
from .sde import SDE

if TYPE_CHECKING:
    from .metrics.frechet import FeatureStats
    from .metrics.suite import Suite
    from .train.runs import ScoreModel
    from .train.sample_job import SamplerOptions

STREAMS = {"dequantize": 1, "probes": 2, "points": 3}  # independent random streams of one seed


def stream_seed(seed: int, stream: str) -> int:
    """The seed of a named random stream of ``seed``: :func:`sdegen.noise.derive_seed` of ``(seed, stream
    number)`` (streams never share draws)."""
    return noise.derive_seed(seed, STREAMS[stream])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- likelihood -----------------------------------------------------------------------------------

def dequantization_offset(levels: int, centered: bool) -> float:
    """The bits/dim to add to a continuous density of uniformly dequantised data: ``log2(levels / width)``.

    Codes ``k`` in ``0..levels-1`` dequantised to ``(k + u) / levels`` lie in bins of width
    ``1 / levels``, so ``-log2 P(k) <= -log2 p(x) + D log2 levels`` (Theis et al. 2016, eq. 9); data
    centred to ``[-1, 1]`` has width 2 and loses one bit. 8-bit images: 8 for [0, 1], 7 for [-1, 1]
    (the official ``offset = 7 - inverse_scaler(-1)``); scikit-learn's 17-level digits: ``log2 17``
    (4.09) and 3.09."""
    if levels < 2:
        raise ValueError(f"levels must be >= 2, got {levels}")
    return math.log2(levels) - (1.0 if centered else 0.0)


def likelihood_data(name: str, n: int, *, root=None, split: str = "test", centered: bool = True,
                    seed: int = 0):
    """Held-out data for :func:`likelihood_bpd`: ``(data, offset)``.

    ``name``: an image set of :data:`sdegen.data.DATASETS` (uniformly dequantised with a generator of
    ``seed``, in [-1, 1] when ``centered`` else [0, 1]; ``offset`` from :func:`dequantization_offset`)
    or a toy set of :data:`sdegen.toy.TOY_SETS` (``n`` fresh points ``[n, D]``, ``offset`` None:
    report nats)."""
    from .toy import TOY_SETS, get_toy

    if name in TOY_SETS:
        g = torch.Generator().manual_seed(stream_seed(seed, "points"))
        return get_toy(name).sample(n, g), None
    from .data import get_dataset

    g = torch.Generator().manual_seed(stream_seed(seed, "dequantize"))
    data = get_dataset(name, root, split=split, centered=centered, dequantize=True, generator=g)
    return data, dequantization_offset(data.levels, centered)


def _rows(data, start: int, stop: int) -> torch.Tensor:
    """Rows ``start..stop-1`` of a tensor ``[N, ...]`` or a Dataset of tensors (or (tensor, label) pairs)."""
    if torch.is_tensor(data):
        return data[start:stop]
    items = [data[i] for i in range(start, stop)]
    return torch.stack([it[0] if isinstance(it, (tuple, list)) else it for it in items])


def likelihood_bpd(sde: SDE, score_fn: ScoreFn, data, *, n: Optional[int] = None, n_probes: int = 1,
                   exact: bool = False, offset: Optional[float] = 0.0, batch_size: int = 64, seed: int = 0,
                   eps: float = 1e-5, rtol: float = 1e-5, atol: float = 1e-5, device=None,
                   progress: bool = False, on_batch: Optional[Callable[[dict], None]] = None) -> dict[str, Any]:
    """Negative log-likelihood of the first ``n`` items of ``data`` under the model ``score_fn``.

    Args:
        data: a tensor ``[N, ...]`` or a Dataset of ``[...]`` tensors (dequantised images, points).
        n: items to use (default: all).
        n_probes: Hutchinson probes (Rademacher) per sample; ``exact``: exact divergence instead
            (``D`` backward passes per score evaluation: small ``D`` only).
        offset: bits/dim added (see :func:`dequantization_offset`); None reports nats per sample.
        seed: the probes of item ``i`` come from a generator of ``(seed, i)``, so results do not
            depend on ``batch_size`` (up to the ODE solver's tolerance, whose steps serve a batch).
        eps, rtol, atol: start time and tolerances of the probability-flow ODE (dopri5).
        on_batch: called after each batch with ``{"done", "n", "nats_mean", "nfe", "seconds"}`` (items
            done so far, their mean NLL in nats, the batch's score evaluations, seconds since the start).

    Returns a dict: ``unit`` ("bpd" or "nats"), ``mean``, ``stderr`` (std / sqrt(n): data, dequantization
    and probe noise together), ``values`` (per item), ``nats_mean`` / ``nats_stderr`` (NLL per item),
    ``dims``, ``offset``, ``nfe_per_batch`` (score evaluations of each batch), ``nfe_total``, ``seconds``.
    """
    total = len(data)
    n = total if n is None else int(n)
    if not 1 <= n <= total:
        raise ValueError(f"n must be in 1..{total} (the size of the data), got {n}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    counter = CountingScore(score_fn)
    nats, nfe = [], []
    start_time = time.perf_counter()
    from tqdm.auto import tqdm

    with tqdm(total=n, disable=not progress, unit="sample", desc="likelihood", leave=False) as bar:
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            x = _rows(data, start, stop).to(device)
            gens = noise.per_sample_generators(stream_seed(seed, "probes"), range(start, stop))
            counter.reset()
            logp = log_likelihood(sde, counter, x, exact_divergence=exact, n_probes=n_probes, eps=eps,
                                  rtol=rtol, atol=atol, generator=gens)
            nats.append(-logp.detach().double().cpu())
            nfe.append(counter.nfe)
            bar.update(stop - start)
            bar.set_postfix(nll=f"{torch.cat(nats).mean().item():.4g}", nfe=counter.nfe)
            if on_batch is not None:
                on_batch({"done": stop, "n": n, "nats_mean": torch.cat(nats).mean().item(), "nfe": counter.nfe,
                          "seconds": time.perf_counter() - start_time})
    _sync(device)
    seconds = time.perf_counter() - start_time
    nats = torch.cat(nats)
    dims = int(x[0].numel())
    if not torch.isfinite(nats).all():
        raise FloatingPointError(f"{int((~torch.isfinite(nats)).sum())} of {n} log-likelihoods are not finite")
    values = nats if offset is None else bits_per_dim(-nats, dims, offset)

    def stderr(v: torch.Tensor) -> float:
        return float(v.std() / math.sqrt(len(v))) if len(v) > 1 else math.nan

    return {"unit": "nats" if offset is None else "bpd", "mean": float(values.mean()), "stderr": stderr(values),
            "n": n, "dims": dims, "offset": offset, "nats_mean": float(nats.mean()), "nats_stderr": stderr(nats),
            "exact": exact, "n_probes": None if exact else n_probes, "eps": eps, "rtol": rtol, "atol": atol,
            "batch_size": batch_size, "seed": seed, "nfe_per_batch": nfe, "nfe_mean": float(np.mean(nfe)),
            "nfe_total": int(sum(nfe)), "seconds": seconds, "values": values.tolist()}


# --- the table of samplers --------------------------------------------------------------------------

# Rows: name in the table -> predictor (None: the probability-flow ODE).
ROWS: dict[str, Optional[str]] = {
    "ancestral sampling": "ancestral",
    "reverse diffusion": "reverse_diffusion",
    "probability flow": None,
}
ODE_COLUMN = "ODE"


@dataclass(frozen=True)
class Cell:
    """One sampler of the table: predictor (None for the ODE), corrector, steps (None for the ODE)."""
    row: str
    column: str
    predictor: Optional[str]
    corrector: Optional[str]
    steps: Optional[int]


def table_cells(sde: SDE, steps_scale: float = 1.0, rows: Optional[Sequence[str]] = None) -> list[Cell]:
    """The cells of the table for ``sde``: for each predictor row ``P<N>``, ``P<2N>`` and ``PC<N>`` with
    ``N = round(steps_scale * sde.N)``; the probability-flow row has one cell, ``ODE``.

    ``rows``: names of :data:`ROWS` (default: all; ancestral sampling only where ``sde`` defines it).
    Raises ValueError for an unknown row, ancestral sampling of an SDE without it, ``N < 1``, or a step
    count for which a cell's discrete chain is undefined (VP / sub-VP need ``N > beta_max``)."""
    if not steps_scale > 0:
        raise ValueError(f"steps_scale must be > 0, got {steps_scale}")
    N = round(steps_scale * sde.N)
    if N < 1:
        raise ValueError(f"steps_scale={steps_scale} gives {steps_scale * sde.N:.3g} < 1 steps for N={sde.N}; "
                         f"use at least {0.5 / sde.N:.3g}")
    if rows is None:
        rows = [r for r, p in ROWS.items() if p != "ancestral" or sde.supports_ancestral]
    cells = []
    for row in rows:
        if row not in ROWS:
            raise ValueError(f"unknown row {row!r}; accepted: {', '.join(ROWS)}")
        predictor = ROWS[row]
        if predictor == "ancestral" and not sde.supports_ancestral:
            raise ValueError(f"ancestral sampling is not defined for {type(sde).__name__}")
        if predictor is None:
            cells.append(Cell(row, ODE_COLUMN, None, None, None))
            continue
        cells += [Cell(row, f"P{N}", predictor, None, N), Cell(row, f"P{2 * N}", predictor, None, 2 * N),
                  Cell(row, f"PC{N}", predictor, "langevin", N)]
    for cell in cells:
        _check_discretization(sde, cell)
    return cells


def _check_discretization(sde: SDE, cell: Cell) -> None:
    """Take one step of the cell's sampler at ``t = T`` (the largest discrete beta) on a dummy point, so
    that a step count without a valid discrete chain fails before any sampling."""
    if cell.steps is None:
        return
    s = sde.with_steps(cell.steps)
    x = torch.zeros(1, 1, dtype=torch.float64)
    t = torch.full((1,), s.T, dtype=torch.float64)
    try:
        PREDICTORS[cell.predictor](s, lambda x, t: torch.zeros_like(x), x, t, torch.zeros_like(x))
        if cell.corrector is not None:
            s.langevin_alpha(t)
    except ValueError as e:
        raise ValueError(f"{cell.row} with {cell.steps} steps: {e}") from None


def _to_unit(model: "ScoreModel", x: torch.Tensor) -> torch.Tensor:
    """Images in the model's data range -> [0, 1], clipped."""
    return ((model.to_signed(x.float()) + 1) / 2).clamp(0, 1)


def cell_options(cell: Cell, *, snr: Optional[float] = None, snr_norm: Optional[str] = None,
                 eps: Optional[float] = None, ode_rtol: Optional[float] = None,
                 ode_atol: Optional[float] = None) -> "SamplerOptions":
    """The sampler of ``cell``: PC with one corrector step per level (or none), or the probability-flow
    ODE; all end with the noise-free denoising step (the official ``noise_removal``). Options left None
    take the sampler's defaults (:func:`sdegen.sampling.sampler_defaults`). With ``snr_norm="sample"``
    (what the image presets choose) a cell's sample ``i`` does not depend on its batch."""
    from .train.sample_job import SamplerOptions

    if cell.predictor is None:
        return SamplerOptions("ode", {"denoise": True}).changed(rtol=ode_rtol, atol=ode_atol, eps=eps)
    return SamplerOptions("pc", {"predictor": cell.predictor, "corrector": cell.corrector, "n_corrector_steps": 1,
                                 "steps": cell.steps, "denoise": True}).changed(snr=snr, snr_norm=snr_norm, eps=eps)


def run_cell(model: "ScoreModel", cell: Cell, extractor: Union[Callable, Mapping[str, Callable]], *, n: int,
             batch_size: int, seed: int, snr: Optional[float] = None, snr_norm: Optional[str] = None,
             eps: Optional[float] = None, ode_rtol: Optional[float] = None, ode_atol: Optional[float] = None,
             device=None, progress: bool = False) -> tuple[Union[np.ndarray, dict[str, np.ndarray]], dict]:
    """Draw samples ``0..n-1`` with ``cell``'s sampler (:func:`cell_options`) in the one sampling job
    (:func:`sdegen.train.sample_job.run_job`, in memory) and return their features ``[n, D]`` and a record
    (NFE per sample, score evaluations, seconds). ``extractor(images [B, C, H, W] in [0, 1], (0, 1))``
    gives features ``[B, D]`` (see :mod:`sdegen.metrics.frechet`); given a dict of extractors by name, the
    features are a dict by name too (an extractor named twice runs once)."""
    from .train.distributed import Context
    from .train.sample_job import draw, run_job

    device = torch.device(device) if device is not None else next(model.net.parameters()).device
    options = cell_options(cell, snr=snr, snr_norm=snr_norm, eps=eps, ode_rtol=ode_rtol, ode_atol=ode_atol)
    counter = CountingScore(model.score_fn())
    seconds = {"sampling": 0.0, "metric": 0.0}

    extractors = dict(extractor) if isinstance(extractor, Mapping) else {"features": extractor}

    def features(indices: list[int], gens: list[torch.Generator]) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        x = draw(model, indices, seed, options, device=device, generators=gens, score_fn=counter)
        _sync(device)
        t1 = time.perf_counter()
        images, done = _to_unit(model, x), {}
        for ex in extractors.values():
            if id(ex) not in done:
                done[id(ex)] = np.asarray(torch.as_tensor(ex(images, (0.0, 1.0))).double().cpu())
        seconds["metric"] += time.perf_counter() - t1
        seconds["sampling"] += t1 - t0
        return {name: done[id(ex)] for name, ex in extractors.items()}

    result = run_job(None, features, n=n, batch_size=batch_size, seed=seed, job={}, ctx=Context(device=device),
                     progress=progress, what=f"{cell.row} {cell.column}")
    record = {"row": cell.row, "column": cell.column, "predictor": cell.predictor, "corrector": cell.corrector,
              "steps": cell.steps, "nfe_per_sample": counter.n_scored / n, "score_evaluations": counter.nfe,
              "seconds_sampling": seconds["sampling"], "seconds_metric": seconds["metric"],
              "seconds": seconds["sampling"] + seconds["metric"]}
    feats = {name: result.arrays[name] for name in extractors}
    return (feats if isinstance(extractor, Mapping) else feats["features"]), record


def run_table(model: "ScoreModel", extractor: Callable, reference: "FeatureStats", *, n: int,
              batch_size: int = 500, seed: int = 0, steps_scale: float = 1.0, rows: Optional[Sequence[str]] = None,
              snr: Optional[float] = None, snr_norm: Optional[str] = None, eps: Optional[float] = None,
              ode_rtol: Optional[float] = None, ode_atol: Optional[float] = None, metric: str = "FID",
              device=None, progress: bool = False, suite: Optional["Suite"] = None,
              on_cell: Optional[Callable[[dict], None]] = None) -> dict[str, Any]:
    """The table of Song et al. 2021 (Table 1) for ``model``: every cell of :func:`table_cells`.

    Args:
        extractor: a feature extractor (Inception-v3 for FID, the digits CNN for FD-digits) with
            ``name`` and ``weights_sha256``; ``reference``: statistics of real data from the same one.
        n: samples per cell (>= 2); ``seed``: sample ``i`` of every cell uses the generator of ``(seed, i)``.
        snr, snr_norm: the Langevin corrector of the ``PC`` cells (see :func:`sdegen.sampling.langevin_corrector`).
        eps: last time of the samplers; ``ode_rtol``, ``ode_atol``: tolerances of the ODE (dopri5). Left
            None, ``snr``, ``eps``, ``ode_rtol`` and ``ode_atol`` are the samplers' defaults.
        metric: the label of the distance in the table ("FID", "FD-digits").
        suite: also the metrics of this suite on each cell's samples (the features of an extractor that is
            also ``extractor`` are computed once); each cell's record then has ``metrics``: one record per
            metric (:func:`sdegen.metrics.suite.evaluate`: mean and std over ``suite.seeds`` blocks).
        on_cell: called with the table so far after each cell (e.g. to save it).

    Returns ``{"metric", "sde", "columns", "rows", "values": {row: {column: distance}}, "cells": [records],
    ...}`` (with a suite also ``"metrics"``, its names, and ``"seeds"``); :func:`table_markdown` prints it.
    A cell whose samples become non-finite gets value None and its ``error``; the other cells still run.
    A metric the suite cannot compute raises ValueError.
    """
    from .metrics.frechet import FeatureStats, fid_from_stats

    from .sampling import sampler_defaults

    pc, ode = sampler_defaults("pc"), sampler_defaults("ode")   # the samplers' own defaults
    snr = pc["snr"] if snr is None else snr
    snr_norm = pc["snr_norm"] if snr_norm is None else snr_norm
    eps = pc["eps"] if eps is None else eps
    ode_rtol = ode["rtol"] if ode_rtol is None else ode_rtol
    ode_atol = ode["atol"] if ode_atol is None else ode_atol
    if n < 2:
        raise ValueError(f"a Frechet distance needs n >= 2 samples per cell, got {n}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not model.is_image:
        raise ValueError(f"the table measures images; this model makes samples of shape {list(model.shape)}")
    cells = table_cells(model.sde, steps_scale, rows)
    columns = list(dict.fromkeys(c.column for c in cells if c.steps is not None))
    if any(c.steps is None for c in cells):
        columns.append(ODE_COLUMN)
    table: dict[str, Any] = {
        "metric": metric, "sde": type(model.sde).__name__, "N": model.sde.N, "steps_scale": steps_scale,
        "n": n, "batch_size": batch_size, "seed": seed, "snr": snr, "snr_norm": snr_norm, "eps": eps,
        "ode": {"method": "dopri5", "rtol": ode_rtol, "atol": ode_atol}, "extractor": extractor.name,
        "reference_count": reference.count, "columns": columns, "rows": list(dict.fromkeys(c.row for c in cells)),
        "values": {}, "cells": [], "seconds": 0.0,
    }
    extractors = dict(suite.extractors) if suite is not None else {}
    main = next((kind for kind, ex in extractors.items() if ex is extractor), "main")
    extractors[main] = extractor
    if suite is not None:
        suite.check(n)
        table.update(metrics=list(suite.metrics), seeds=suite.seeds)
    for cell in cells:
        try:
            feats, record = run_cell(model, cell, extractors, n=n, batch_size=batch_size, seed=seed, snr=snr,
                                     snr_norm=snr_norm, eps=eps, ode_rtol=ode_rtol, ode_atol=ode_atol,
                                     device=device, progress=progress)
            stats = FeatureStats.from_features(feats[main], extractor.name, extractor.weights_sha256)
            record["value"] = fid_from_stats(stats, reference)
            if suite is not None:
                record["metrics"] = suite.evaluate({kind: feats[kind] for kind in suite.extractors})
        except FloatingPointError as e:  # samples blew up: the cell fails, the table goes on
            record = {"row": cell.row, "column": cell.column, "predictor": cell.predictor,
                      "corrector": cell.corrector, "steps": cell.steps, "value": None, "error": str(e),
                      "nfe_per_sample": None, "score_evaluations": None, "seconds": 0.0}
        table["values"].setdefault(cell.row, {})[cell.column] = record["value"]
        table["cells"].append(record)
        table["seconds"] += record["seconds"]
        if on_cell is not None:
            on_cell(table)
    return table


def table_markdown(table: dict[str, Any], title: Optional[str] = None, source: Optional[str] = None) -> str:
    """The table in the seed's layout (rows: samplers, columns: step counts, ``–`` where a row has no
    such cell), then one of score evaluations per sample and seconds per cell.

    ``title``: what is measured (default: the metric); ``source``: a line naming model and reference."""
    cols = table["columns"]
    cells = {(c["row"], c["column"]): c for c in table["cells"]}

    def grid(corner: str, text: Callable[[dict], str]) -> list[str]:
        lines = [f"| {corner} | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for row in table["rows"]:
            lines.append(f"| {row} | " + " | ".join(text(cells[row, c]) if (row, c) in cells else "–"
                                                     for c in cols) + " |")
        return lines

    sde = {"VESDE": "VE", "VPSDE": "VP", "SubVPSDE": "sub-VP"}.get(table["sde"], table["sde"])
    out = [f"{title or table['metric']}. {sde} SDE, {table['n']} samples per cell"]
    out += [source, ""] if source else [""]
    out += grid(table["metric"], lambda c: "failed" if c["value"] is None else f"{c['value']:.2f}")
    out += ["", "Score evaluations per sample (wall seconds of the cell)", ""]
    out += grid("NFE (s)", lambda c: "failed" if c["value"] is None else
                f"{c['nfe_per_sample']:.0f} ({c['seconds']:.1f} s)")
    return "\n".join(out) + "\n"


__all__ = ["Cell", "ROWS", "ODE_COLUMN", "dequantization_offset", "likelihood_data", "likelihood_bpd",
           "table_cells", "cell_options", "run_cell", "run_table", "table_markdown", "stream_seed"]
