"""`sdegen train`, `sdegen sample` and `sdegen quickstart` end to end, and every user mistake they report."""
import json
import re

import numpy as np
import pytest
import torch

from sdegen import checkpoint, cli
from sdegen.nets import build_network
from sdegen.train import load_config
from sdegen.train.config import to_yaml

from test_train import TOY, _merge


def sdegen(capsys, *argv):
    """Run the CLI; return (exit status, stdout, stderr)."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as e:   # argparse errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def toy_yaml(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "toy.yaml"
    path.write_text(to_yaml(_merge(["training.steps=20", "sampling.n=50", "sampling.steps=10"])))
    return path


@pytest.fixture(scope="module")
def toy_run(toy_yaml, tmp_path_factory):
    """A trained toy run folder (made through the CLI)."""
    workdir = tmp_path_factory.mktemp("run")
    assert cli.main(["train", str(toy_yaml), "training.steps=30", "--workdir", str(workdir), "--no-progress"]) == 0
    return workdir


def test_train_then_sample(toy_run, tmp_path, capsys):
    assert (toy_run / "checkpoints" / "ckpt_00000030.pt").is_file()
    assert (toy_run / "samples" / "step_00000030.png").is_file() and (toy_run / "config.yaml").is_file()
    assert load_config(toy_run / "config.yaml").training.steps == 30
    code, out, err = sdegen(capsys, "sample", toy_run, "--n", 20, "--batch-size", 7, "--seed", 3,
                            "--out", tmp_path / "s.npz", "--grid", tmp_path / "g.png", "--no-progress")
    assert code == 0, err
    assert "20 samples [20, 2] float32" in out and (tmp_path / "g.png").is_file()
    with np.load(tmp_path / "s.npz") as f:
        a = f["samples"]
    assert a.shape == (20, 2) and np.isfinite(a).all()
    code, _, err = sdegen(capsys, "sample", toy_run / "checkpoints" / "ckpt_00000030.pt", "--n", 20,
                          "--batch-size", 20, "--seed", 3, "--out", tmp_path / "t.npz", "--no-progress")
    assert code == 0, err
    with np.load(tmp_path / "t.npz") as f:
        np.testing.assert_allclose(f["samples"], a, atol=1e-5)       # any batch size, same samples
    code, _, err = sdegen(capsys, "sample", toy_run, "--n", 5, "--ode", "--out", tmp_path / "o.npz", "--no-progress")
    assert code == 0, err
    code, _, err = sdegen(capsys, "sample", toy_run, "--n", 5, "--solver", "heun", "--solver-option", "s_churn=5",
                          "--steps", 4, "--out", tmp_path / "h.npz", "--no-progress")
    assert code == 0, err
    code, _, err = sdegen(capsys, "sample", toy_run, "--n", 5, "--solver", "heun", "--solver-option", "churn=5",
                          "--out", tmp_path / "f.npz", "--no-progress")
    assert code == 2 and "sampler 'heun' does not take ['churn']" in err
    code, _, err = sdegen(capsys, "sample", toy_run, "--n", 5, "--solver", "ddim", "--out", tmp_path / "f.npz",
                          "--no-progress")                           # the failed job does not block this one
    assert code == 0, err
    code, _, err = sdegen(capsys, "sample", toy_run, "--n", 5, "--predictor", "none", "--corrector",
                          "annealed_langevin", "--steps", "30", "--out", tmp_path / "c.npz", "--no-progress")
    assert code == 0, err


def test_train_resumes_and_refuses_a_changed_config(toy_run, toy_yaml, capsys):
    code, out, err = sdegen(capsys, "train", toy_yaml, "training.steps=40", "--workdir", toy_run, "--no-progress")
    assert code == 0 and "resuming from" in err and "step 40" in out
    code, _, err = sdegen(capsys, "train", toy_yaml, "training.steps=50", "optim.lr=0.5", "--workdir", toy_run,
                          "--no-progress")
    assert code == 2 and "cannot resume" in err and "optim.lr" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["nope", "--workdir", "{tmp}"], "unknown config 'nope'"),
    (["{tmp}/missing.yaml", "--workdir", "{tmp}"], "no config file"),
    (["toy2d_vp", "training.stepz=3", "--workdir", "{tmp}"], "training.stepz"),
    (["toy2d_vp", "optim.lr=fast", "--workdir", "{tmp}"], "optim.lr"),
    (["toy2d_vp", "training.steps", "--workdir", "{tmp}"], "expected key=value overrides"),
    (["toy2d_vp", "--workdir", "{tmp}", "--device", "tpu"], "unknown device 'tpu'"),
    (["mnist_vp", "data.root={tmp}", "--workdir", "{tmp}/m"], "MNIST not found"),
    (["digits_vp", "data.name=gauss3", "--workdir", "{tmp}/s"], "data gauss3 gives samples of shape [2]"),
    (["toy2d_vp", "model.preset=tiny8", "--workdir", "{tmp}/o"], "unknown option(s) ['hidden', 'layers']"),
])
def test_train_errors(args, message, tmp_path, capsys):
    code, out, err = sdegen(capsys, "train", *[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert code == 2, (out, err)
    assert message in err and err.startswith("sdegen train: error:") and len(err.strip().splitlines()) == 1, err


def test_train_requires_a_workdir(capsys):
    code, _, err = sdegen(capsys, "train", "toy2d_vp")
    assert code == 2 and "--workdir" in err


def test_train_reports_a_non_finite_loss(toy_yaml, tmp_path, capsys, monkeypatch):
    from sdegen.train import loop
    monkeypatch.setattr(loop, "get_loss", lambda name: lambda *a, **k: torch.tensor(float("inf"), requires_grad=True))
    code, _, err = sdegen(capsys, "train", toy_yaml, "--workdir", tmp_path, "--no-progress")
    assert code == 1 and "the loss became inf at step 1" in err and "no checkpoint was written" in err


def official_checkpoint(path, preset):
    """A random network saved in the official score_sde layout (module. prefix, EMA shadow params)."""
    torch.manual_seed(0)
    net = build_network(preset)
    shadow = [p.detach() + 0.01 for p in net.parameters() if p.requires_grad]
    torch.save({"model": {f"module.{k}": v for k, v in net.state_dict().items()},
                "ema": {"decay": 0.999, "num_updates": 1, "shadow_params": shadow}, "step": 1}, path)
    return path


def test_sample_from_an_official_checkpoint(tmp_path, capsys):
    ckpt = official_checkpoint(tmp_path / "checkpoint_26.pth", "ncsnpp_ve_continuous_small")
    code, out, err = sdegen(capsys, "sample", "--from-score-sde", ckpt, "--config", "ncsnpp_ve_continuous_small",
                            "--steps", 3, "--n", 2, "--batch-size", 2, "--out", tmp_path / "s.npz",
                            "--grid", tmp_path / "g.png", "--no-progress")
    assert code == 0, err
    with np.load(tmp_path / "s.npz") as f:
        assert f["samples"].shape == (2, 16, 16, 3) and f["samples"].dtype == np.uint8
        assert f["samples_float"].shape == (2, 3, 16, 16)
    cfg_json = tmp_path / "vp.json"
    cfg_json.write_text(json.dumps({"config_model": {"name": "ncsnpp", "nf": 16, "ch_mult": [1, 2],
                                                     "num_res_blocks": 1, "attn_resolutions": [8], "dropout": 0.0,
                                                     "embedding_type": "positional", "fir": False,
                                                     "progressive_input": "none", "scale_by_sigma": False},
                                    "sde": "subvpsde", "image_size": 16, "num_channels": 3, "data_centered": True}))
    vp = official_checkpoint(tmp_path / "vp.pth", "ddpmpp_vp_continuous_small")
    code, _, err = sdegen(capsys, "sample", "--from-score-sde", vp, "--config", cfg_json, "--steps", 2, "--n", 1,
                          "--out", tmp_path / "v.npz", "--no-progress")
    assert code == 0, err


@pytest.mark.parametrize("args, message", [
    ([], "give a run folder"),
    (["{tmp}/nothing"], "no checkpoint at"),
    (["{run}", "--from-score-sde", "x.pth", "--config", "c"], "not both"),
    (["--from-score-sde", "{tmp}/x.pth"], "--from-score-sde needs --config"),
    (["--from-score-sde", "{tmp}/x.pth", "--config", "ncsnpp_ve_continuous_small"], "checkpoint not found"),
    (["--from-score-sde", "{tmp}/x.pth", "--config", "{tmp}/c.json"], "no config file"),
    (["{run}", "--config", "cifar10_ncsnpp_continuous"], "--config applies to --from-score-sde only"),
    (["{run}", "--ode", "--predictor", "euler_maruyama"], "--ode integrates the probability-flow ODE"),
    (["{run}", "--predictor", "leapfrog"],
     "unknown predictor 'leapfrog'; choose one of ancestral, euler_maruyama, reverse_diffusion or none"),
    (["{run}", "--predictor", "none", "--corrector", "none"], "cannot both be None"),
    (["{run}", "--eps", "2"], "eps must be in (0, T=1"),
    (["{run}", "--solver", "rk45"], "unknown sampler 'rk45'"),
    (["{run}", "--solver", "heun", "--predictor", "ancestral"], "not both"),
    (["{run}", "--solver-option", "s_churn=1"], "--solver-option needs a --solver"),
    (["{run}", "--solver", "heun", "--solver-option", "s_churn"], "--solver-option takes KEY=VALUE"),
    (["{run}", "--predictor", "reverse_diffusion", "--steps", "10"], "N > beta_max"),
    (["{run}", "--out", "{tmp}/s.txt"], "--out must be a .npz"),
    (["{run}", "--grid", "{tmp}/g.jpg"], "--grid must be a .png"),
    (["{run}", "--device", "cuda:9"], "cuda"),
])
def test_sample_errors(args, message, toy_run, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{run}", str(toy_run)) for a in args]
    if torch.cuda.is_available() and "cuda:9" in argv:
        pytest.skip("a CUDA machine")
    code, out, err = sdegen(capsys, "sample", *argv, "--n", 2, "--no-progress",
                            *([] if "--out" in argv else ["--out", tmp_path / "s.npz"]))
    assert code == 2, (out, err)
    assert not (tmp_path / "s.npz.shards").exists()                  # a failed job leaves nothing behind
    assert message in err and err.startswith("sdegen sample: error:") and len(err.strip().splitlines()) == 1, err


def test_sample_errors_on_files(toy_run, tmp_path, capsys):
    junk = tmp_path / "ckpt_00000001.pt"
    junk.write_bytes(b"not a checkpoint")
    code, _, err = sdegen(capsys, "sample", junk, "--n", 2, "--out", tmp_path / "j.npz")
    assert code == 2 and "is corrupt" in err
    other = tmp_path / "other.pt"
    checkpoint.atomic_save({"weights": torch.zeros(2)}, other)
    code, _, err = sdegen(capsys, "sample", other, "--n", 2, "--out", tmp_path / "j.npz")
    assert code == 2 and "not an sdegen training checkpoint" in err and "--from-score-sde" in err
    official = official_checkpoint(tmp_path / "ve.pth", "ncsnpp_ve_continuous_small")
    code, _, err = sdegen(capsys, "sample", "--from-score-sde", official, "--config", "ncsnpp_ve_continuous_small",
                          "--sde", "vp", "--n", 2, "--out", tmp_path / "j.npz")
    assert code == 2 and "conditioned on sigma" in err
    code, _, err = sdegen(capsys, "sample", "--from-score-sde", official, "--config", "ddpmpp_vp_continuous_small",
                          "--n", 2, "--out", tmp_path / "j.npz")
    assert code == 2 and "does not match the network" in err
    stale = tmp_path / "s.npz.shards"
    stale.mkdir()
    (stale / "job.json").write_text("{}")
    (stale / "shard_000000.npz").write_bytes(b"")
    code, _, err = sdegen(capsys, "sample", toy_run, "--n", 2, "--out", tmp_path / "s.npz", "--no-progress")
    assert code == 2 and "another sampling job" in err


def test_quickstart_writes_samples_grid_and_quality_figure(tmp_path, capsys):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(to_yaml(load_config("digits_vp", ["model.options.nf=8", "training.log_every=2",
                                                     "training.batch_size=16", "sampling.steps=4"])))
    code, out, err = sdegen(capsys, "quickstart", "--workdir", tmp_path / "qs", "--config", cfg, "--minutes", 0.001,
                            "--threads", 1, "--n", 12, "--no-progress")
    assert code == 0, err
    for name in ("samples.npz", "grid.png", "quality.png"):
        assert (tmp_path / "qs" / name).is_file() and str(tmp_path / "qs" / name) in out
    assert re.search(r"FD-digits: samples [\d.]+, real data [\d.]+ \(12 of each; lower is better\) after [\d,]+ training "
                     r"steps", out)
    steps = re.search(r"trained ([\d,]+) steps in 0.001 min on 1 thread\(s\); the step count, and so the quality, "
                      r"depends on this machine's speed", out)   # the time budget's steps, and what they depend on
    assert steps and int(steps.group(1).replace(",", "")) >= 2 and "quickstart --minutes" in out
    with np.load(tmp_path / "qs" / "samples.npz") as f:
        assert f["samples"].shape == (12, 8, 8, 1)
    code, _, err = sdegen(capsys, "quickstart", "--config", "nope", "--workdir", tmp_path / "x")
    assert code == 2 and "unknown config 'nope'" in err


def test_sampler_names_pc_and_ode_are_the_pc_sampler_and_ode(toy_run, tmp_path, capsys):
    import numpy as np
    common = ["--n", 6, "--seed", 2, "--no-progress", "--no-grid"]
    for named, flags in ((["--sampler", "ode"], ["--ode"]), (["--sampler", "pc", "--steps", 30], ["--steps", 30])):
        a, b = tmp_path / f"{named[1]}_named.npz", tmp_path / f"{named[1]}_flags.npz"
        assert sdegen(capsys, "sample", toy_run, *named, *common, "--out", a)[0] == 0
        assert sdegen(capsys, "sample", toy_run, *flags, *common, "--out", b)[0] == 0
        with np.load(a) as fa, np.load(b) as fb:
            assert np.array_equal(fa["samples"], fb["samples"])
    code, _, err = sdegen(capsys, "sample", toy_run, "--sampler", "rk45", *common, "--out", tmp_path / "x.npz")
    assert code == 2 and "unknown sampler 'rk45'" in err
