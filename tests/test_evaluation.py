import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sdegen import cli
from sdegen.evaluation import (dequantization_offset, likelihood_bpd, likelihood_data, run_table, table_cells,
                               table_markdown)
from sdegen.sde import SubVPSDE, VESDE, VPSDE
from sdegen.toy import GaussianMixture

SHARED = Path(__file__).resolve().parent / "data" / "score_sde_format"  # interop vectors
EPS = 1e-5
TRAIN = ["training.batch_size=16", "training.tensorboard=false", "training.sample_every=0", "training.log_every=12",
         "training.ckpt_every=1000", "sampling.n=1", "sampling.steps=25", "optim.warmup=0"]


def _main(argv):
    return cli.main(argv)


def _train(workdir, preset, overrides):
    from sdegen.train import load_config, train

    train(load_config(preset, TRAIN + overrides), workdir, progress=False, verbose=False)
    return str(workdir)


@pytest.fixture(scope="module")
def ve_run(tmp_path_factory):
    """A tiny VE model of the digits ([0, 1] data), trained 24 steps."""
    return _train(tmp_path_factory.mktemp("ve"), "digits_ve", ["training.steps=24", "model.options.nf=16"])


def _gaussian(dim=4, seed=0):
    """One full-covariance Gaussian: exact score and log-density at every t."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    return GaussianMixture(torch.randn(1, dim, generator=g, dtype=torch.float64) * 0.5,
                           (0.2 * a @ a.T / dim + 0.05 * torch.eye(dim, dtype=torch.float64))[None])


# --- likelihood ----------------------------------------------------------------------------------

def test_offsets():
    assert dequantization_offset(256, centered=False) == 8.0
    assert dequantization_offset(256, centered=True) == 7.0
    assert dequantization_offset(17, centered=False) == pytest.approx(math.log2(17))
    with pytest.raises(ValueError):
        dequantization_offset(1, centered=False)


# beta_max=40: p_T is N(0, I) to 1e-4 nats (with 20, the mean exp(-5) mu left at T costs up to 0.02 nats)
SDE = VPSDE(beta_max=40.0)


def test_bpd_of_an_exact_score_matches_the_closed_form():
    sde, mix = SDE, _gaussian()
    x = mix.sample(48, torch.Generator().manual_seed(1), dtype=torch.float64)
    true_nats = -mix.log_prob_t(x, torch.full((48,), EPS, dtype=torch.float64), sde)
    true_bpd = true_nats / (4 * math.log(2)) + 7.0
    out = likelihood_bpd(sde, mix.score_fn(sde), x, exact=True, offset=7.0, batch_size=32, eps=EPS)
    assert out["unit"] == "bpd" and out["dims"] == 4 and out["offset"] == 7.0 and out["n"] == 48
    assert (torch.tensor(out["values"], dtype=torch.float64) - true_bpd).abs().max() < 5e-4
    assert out["mean"] == pytest.approx(true_bpd.mean().item(), abs=2e-4)
    assert out["stderr"] == pytest.approx(true_bpd.std().item() / math.sqrt(48), rel=0.01)
    assert out["nats_mean"] == pytest.approx(true_nats.mean().item(), abs=1e-3)
    assert len(out["nfe_per_batch"]) == 2 and out["nfe_total"] == sum(out["nfe_per_batch"]) > 10

    # Hutchinson: random per sample, unbiased, and independent of the batch size (per-sample probes)
    hutch = [likelihood_bpd(sde, mix.score_fn(sde), x, n_probes=1, offset=7.0, batch_size=b, eps=EPS, seed=3)
             for b in (48, 16)]
    err = torch.tensor(hutch[0]["values"]) - torch.tensor(out["values"])
    assert err.abs().max() > 1e-3
    assert abs(err.mean().item()) < 4 * err.std().item() / math.sqrt(48)
    assert torch.allclose(torch.tensor(hutch[0]["values"]), torch.tensor(hutch[1]["values"]), atol=1e-3)
    assert hutch[0]["n_probes"] == 1 and not hutch[0]["exact"]


def test_bpd_does_not_depend_on_the_data_range():
    # the same data in [0, 1] (offset 8) and in [-1, 1] (x' = 2x - 1, offset 7) costs the same bits
    sde, mix = SDE, _gaussian(seed=2)
    wide = GaussianMixture(2 * mix.means - 1, 4 * mix.covs)
    x = mix.sample(16, torch.Generator().manual_seed(0), dtype=torch.float64)
    unit = likelihood_bpd(sde, mix.score_fn(sde), x, exact=True, offset=dequantization_offset(256, False))
    signed = likelihood_bpd(sde, wide.score_fn(sde), 2 * x - 1, exact=True, offset=dequantization_offset(256, True))
    assert unit["mean"] == pytest.approx(signed["mean"], abs=5e-4)
    nats = likelihood_bpd(sde, mix.score_fn(sde), x, exact=True, offset=None, n=8)
    assert nats["unit"] == "nats" and nats["n"] == 8
    assert nats["mean"] == pytest.approx(-mix.log_prob_t(x[:8], torch.full((8,), EPS), sde).mean().item(), abs=1e-3)
    with pytest.raises(ValueError, match="n must be"):
        likelihood_bpd(sde, mix.score_fn(sde), x, n=17)


def test_likelihood_data():
    data, offset = likelihood_data("digits", 10, split="test", centered=True, seed=0)
    again, _ = likelihood_data("digits", 10, split="test", centered=True, seed=0)
    x = torch.stack([data[i] for i in range(10)])
    assert offset == pytest.approx(math.log2(17) - 1) and len(data) == 297
    assert x.min() >= -1 and x.max() <= 1 and (x * 17 % 2).std() > 0   # dequantised, not on the code grid
    assert torch.equal(x, torch.stack([again[i] for i in range(10)]))
    points, none = likelihood_data("gauss3", 7, seed=0)
    assert none is None and points.shape == (7, 2)


def test_likelihood_cli(ve_run, tmp_path, capsys):
    out = tmp_path / "l.json"
    rc = _main(["likelihood", ve_run, "--n", "4", "--batch-size", "4", "--rtol", "1e-2", "--atol", "1e-2",
                "--device", "cpu", "--json", str(out)])
    assert rc == 0
    captured = capsys.readouterr()
    assert "bits/dim" in captured.out
    assert "likelihood: 4/4 items, mean NLL" in captured.err     # stderr is no terminal: a line per batch
    r = json.loads(out.read_text())
    assert r["unit"] == "bpd" and r["data"] == "digits" and r["split"] == "test" and not r["centered"]
    assert r["offset"] == pytest.approx(math.log2(17))          # 17-level digits in [0, 1]
    assert math.isfinite(r["mean"]) and r["stderr"] > 0
    assert r["mean"] == pytest.approx(r["nats_mean"] / (64 * math.log(2)) + r["offset"])
    assert r["nfe_per_batch"] == [r["nfe_total"]] and r["nfe_total"] > 2 and r["step"] == 24


def test_likelihood_cli_points_in_nats(tmp_path, capsys):
    run = _train(tmp_path / "toy", "toy2d_vp", ["training.steps=4"])
    out = tmp_path / "toy.json"
    assert _main(["likelihood", run, "--n", "8", "--exact", "--rtol", "1e-3", "--atol", "1e-3",
                  "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert "nats per sample" in capsys.readouterr().out
    assert r["unit"] == "nats" and r["offset"] is None and r["dims"] == 2 and r["data"] == "gauss3"
    assert r["mean"] == pytest.approx(r["nats_mean"]) and math.isfinite(r["mean"])


# --- the table ------------------------------------------------------------------------------------

def test_table_cells():
    cells = table_cells(VPSDE(), 0.05)
    assert [(c.row, c.column, c.steps, c.corrector) for c in cells] == [
        ("ancestral sampling", "P50", 50, None), ("ancestral sampling", "P100", 100, None),
        ("ancestral sampling", "PC50", 50, "langevin"),
        ("reverse diffusion", "P50", 50, None), ("reverse diffusion", "P100", 100, None),
        ("reverse diffusion", "PC50", 50, "langevin"), ("probability flow", "ODE", None, None)]
    assert "ancestral sampling" not in {c.row for c in table_cells(SubVPSDE(), 1.0)}   # no ancestral rule
    assert [c.column for c in table_cells(VESDE(), 0.02)][:3] == ["P20", "P40", "PC20"]
    with pytest.raises(ValueError, match="beta_max"):          # the VP chain needs N > beta_max
        table_cells(VPSDE(), 0.02)
    with pytest.raises(ValueError, match="< 1 steps"):
        table_cells(VESDE(), 1e-4)
    with pytest.raises(ValueError, match="ancestral"):
        table_cells(SubVPSDE(), 1.0, rows=["ancestral sampling"])


def test_table_cell_is_the_fd_of_the_sample_commands_samples():
    # an untrained centred VP model: the cell's distance is FD-digits of the samples `draw` makes
    from sdegen.metrics.fd_digits import digits_stats, fd_digits, DigitsFeatures, load_digits_split
    from sdegen.train import SamplerOptions, draw, load_config
    from sdegen.train.runs import build

    torch.manual_seed(0)
    model = build(load_config("digits_vp", ["model.options.nf=16"]))
    model.net.eval().requires_grad_(False)
    ref = digits_stats(load_digits_split("test")[0])
    table = run_table(model, DigitsFeatures(), ref, n=6, batch_size=4, seed=4, steps_scale=0.021,
                      rows=["reverse diffusion"], metric="FD-digits")
    assert table["columns"] == ["P21", "P42", "PC21"] and table["rows"] == ["reverse diffusion"]
    x = draw(model, range(6), 4, SamplerOptions("pc", {"predictor": "reverse_diffusion", "corrector": None, "steps": 21}))
    assert table["values"]["reverse diffusion"]["P21"] == pytest.approx(fd_digits(x, ref, value_range=(-1, 1)),
                                                                       rel=1e-4)
    nfe = {c["column"]: c["nfe_per_sample"] for c in table["cells"]}
    assert nfe == {"P21": 21, "P42": 42, "PC21": 41}   # predictor-first PC: no corrector after the last step
    text = table_markdown(table)
    assert "| FD-digits | P21 | P42 | PC21 |" in text and "| reverse diffusion | " in text


def test_table_cli(ve_run, tmp_path, capsys):
    js, md = tmp_path / "t.json", tmp_path / "t.md"
    rc = _main(["table", ve_run, "--n", "6", "--batch-size", "6", "--steps-scale", "0.02", "--metric", "fd-digits",
                "--ode-rtol", "1e-3", "--ode-atol", "1e-3", "--json", str(js), "--markdown", str(md)])
    assert rc == 0
    captured = capsys.readouterr()
    printed = captured.out
    logged = [x for x in captured.err.splitlines() if x.startswith("table: cell ")]   # a line per finished cell
    assert [x.split(":")[1] for x in logged] == [f" cell {i}/7 " + r for i, r in enumerate(
        ["ancestral sampling P20", "ancestral sampling P40", "ancestral sampling PC20", "reverse diffusion P20",
         "reverse diffusion P40", "reverse diffusion PC20", "probability flow ODE"], 1)]
    t = json.loads(js.read_text())
    assert t["columns"] == ["P20", "P40", "PC20", "ODE"] and t["sde"] == "VESDE" and t["metric"] == "FD-digits"
    assert t["rows"] == ["ancestral sampling", "reverse diffusion", "probability flow"]
    assert len(t["cells"]) == 7
    for c in t["cells"]:
        assert math.isfinite(c["value"]) and c["value"] > 0 and c["seconds"] > 0 and c["score_evaluations"] > 0
        expected = {"P20": 20, "P40": 40, "PC20": 39}.get(c["column"])
        assert expected is None or c["nfe_per_sample"] == expected
    assert t["values"]["probability flow"] == {"ODE": t["cells"][-1]["value"]}
    text = md.read_text()
    assert text == printed and text == t["markdown"]
    lines = text.splitlines()
    assert "| FD-digits | P20 | P40 | PC20 | ODE |" in lines
    assert next(x for x in lines if x.startswith("| probability flow")).count("–") == 3
    assert "failed" not in text


@pytest.fixture(scope="module")
def random_inception(tmp_path_factory):
    from sdegen.metrics import inception as inc

    path = tmp_path_factory.getbasetemp() / "random-inception.pth"  # shared by the test files of a session
    return path if path.is_file() else inc.save_random_inception_weights(path, seed=0)


def _fid_suite(ve_run, tmp_path, capsys, n: int, ref, argv) -> list[dict]:
    """`sdegen fid --metrics` on the samples of the table's probability-flow cell, drawn again."""
    import argparse

    import numpy as np

    from sdegen.cli import fid as fid_cli
    from sdegen.evaluation import Cell, cell_options
    from sdegen.sampling import sampler_defaults
    from sdegen.train import draw, load_run

    model = load_run(ve_run)
    options = cell_options(Cell("probability flow", "ODE", None, None, None), eps=sampler_defaults("pc")["eps"],
                           ode_rtol=1e-3, ode_atol=1e-3)
    x = draw(model, range(n), 0, options)
    samples = tmp_path / "cell.npz"
    np.savez(samples, samples=((model.to_signed(x) + 1) / 2).clamp(0, 1).numpy())   # as the table sees them
    parser = argparse.ArgumentParser()
    fid_cli.add_arguments(parser)
    assert fid_cli.run(parser.parse_args([str(samples), "--ref", str(ref), *argv])) == 0
    return [json.loads(x) for x in capsys.readouterr().out.splitlines()]


def _table_suite(ve_run, capsys, n: int, argv) -> tuple[list[dict], str]:
    assert _main(["table", ve_run, "--n", str(n), "--batch-size", "8", "--rows", "probability_flow", "--ode-rtol",
                  "1e-3", "--ode-atol", "1e-3", *argv]) == 0
    out = capsys.readouterr().out
    return [json.loads(x) for x in out.splitlines() if x.startswith("{")], out


def _same_figures(got: list[dict], want: list[dict]) -> None:
    assert [r["metric"] for r in got] == [r["metric"] for r in want]
    for g, w in zip(got, want):
        assert g["values"] == pytest.approx(w["values"], rel=1e-4, abs=1e-6), g["metric"]
        assert (g["blocks"], g["block_count"], g.get("ref_count")) == (w["blocks"], w["block_count"], w.get("ref_count"))
        assert g.get("bias_scale", 0.0) == pytest.approx(w.get("bias_scale", 0.0), rel=1e-4)
        assert g["mean"] == pytest.approx(np.mean(g["values"])) and g["std"] == pytest.approx(np.std(g["values"]))


def test_table_metrics_over_seeds_are_sdegen_fid_on_the_cell(ve_run, tmp_path, capsys):
    """`table --metrics --seeds`: one JSON line per metric of each cell (mean and std over the blocks), kept in
    the cell's record of the JSON, equal to what `sdegen fid --metrics` gives on that cell's samples; the
    markdown table is still the main metric's, over all samples."""
    js = tmp_path / "t.json"
    lines, out = _table_suite(ve_run, capsys, 8, ["--metrics", "fd-digits", "--seeds", "2", "--json", str(js)])
    assert [(r["metric"], r["row"], r["column"], r["blocks"]) for r in lines] == [("fd-digits", "probability flow",
                                                                                    "ODE", 2)]
    assert "| FD-digits | ODE |" in out
    t = json.loads(js.read_text())
    assert t["metrics"] == ["fd-digits"] and t["seeds"] == 2
    assert [{k: v for k, v in r.items() if k not in ("count", "row", "column", "model", "ref")} for r in lines] == \
        t["cells"][0]["metrics"]
    from sdegen.metrics.fd_digits import load_digits_split

    ref = tmp_path / "digits.npz"   # the table's default reference: the 1797 digits
    np.savez(ref, samples=load_digits_split("all")[0].numpy())
    _same_figures(lines, _fid_suite(ve_run, tmp_path, capsys, 8, ref, ["--metrics", "fd-digits", "--seeds", "2"]))


def test_table_inception_metrics_are_sdegen_fid_on_the_cell(ve_run, random_inception, tmp_path, capsys):
    """KID, IS and precision/recall (random Inception weights) of a cell: `sdegen fid --metrics`'s figures."""
    from sdegen.metrics.fd_digits import load_digits_split

    ref = tmp_path / "ref.npz"
    np.savez(ref, samples=load_digits_split("test")[0][:4].numpy())   # 4 digits as images, floats in [0, 1]
    w = ["--inception-weights", str(random_inception), "--prc-features", "inception", "--device", "cpu"]
    lines, out = _table_suite(ve_run, capsys, 4, ["--metrics", "kid,is,prc", "--ref", str(ref), *w])
    assert [(r["metric"], r["column"]) for r in lines] == [(m, "ODE") for m in ("kid", "is", "precision", "recall")]
    assert "| FD-digits | ODE |" in out and all(r["ref"] == str(ref) for r in lines if r["metric"] != "is")
    _same_figures(lines, _fid_suite(ve_run, tmp_path, capsys, 4, ref, ["--metrics", "kid,is,prc", *w]))


def test_table_cli_official_checkpoint(tmp_path):
    js = tmp_path / "t.json"
    rc = _main(["table", "--from-score-sde", str(SHARED / "ddpmpp_vp_continuous.checkpoint.pth"),
                "--config", str(SHARED / "ddpmpp_vp_continuous.config.json"), "--metric", "fd-digits", "--n", "4",
                "--steps-scale", "0.021", "--rows", "ancestral", "--json", str(js)])
    assert rc == 0
    t = json.loads(js.read_text())
    assert t["columns"] == ["P21", "P42", "PC21"] and t["sde"] == "VPSDE" and t["step"] is None
    assert all(math.isfinite(c["value"]) for c in t["cells"])


def _error(capsys, argv, match):
    assert _main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err


def test_cli_errors(ve_run, tmp_path, capsys):
    missing = str(tmp_path / "nothing")
    _error(capsys, ["likelihood", missing], "no checkpoint at")
    _error(capsys, ["table", missing, "--n", "4"], "no checkpoint at")
    _error(capsys, ["table", ve_run, "--metric", "is"], "unknown metric 'is'")
    _error(capsys, ["table", ve_run, "--steps-scale", "1e-5"], "--steps-scale")
    _error(capsys, ["table", ve_run, "--metric", "fid"], "--metric fid needs --ref")
    _error(capsys, ["table", ve_run, "--rows", "langevin"], "unknown row")
    _error(capsys, ["table", "--from-score-sde", missing], "needs --config")
    _error(capsys, ["table", ve_run, "--metrics", "fd-digits,kid"], "--metrics kid needs --ref")
    _error(capsys, ["table", ve_run, "--metrics", "fd-digits,psnr"], "--metrics: unknown metric(s) ['psnr']")
    _error(capsys, ["table", ve_run, "--seeds", "2"], "--seeds splits the samples of --metrics")
    _error(capsys, ["table", ve_run, "--n", "6", "--metrics", "fd-digits", "--seeds", "4"],
           "6 samples cannot make 4 blocks")
    _error(capsys, ["likelihood", ve_run, "--data", "nope"], "unknown data set")
    _error(capsys, ["likelihood", ve_run, "--data", "gauss3"], "shape [2]")
    _error(capsys, ["likelihood", ve_run, "--n", "300"], "only 297 items")
    for bad in ("0", "-1", "abc"):
        with pytest.raises(SystemExit) as e:
            _main(["table", ve_run, "--steps-scale", bad])
        assert e.value.code == 2
        assert "--steps-scale" in capsys.readouterr().err
