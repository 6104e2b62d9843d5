"""`sdegen export`: a run's EMA weights as safetensors + config, reloaded by sdegen to the same score."""
import numpy as np
import pytest
import torch

from sdegen import cli
from sdegen.interop import EXPORT_CONFIG, EXPORT_WEIGHTS, load_export
from sdegen.train import load_config, load_run, train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    cfg = load_config("digits_vp", ["model.options.nf=8", "training.steps=3", "training.batch_size=8",
                                    "training.log_every=1", "training.sample_every=0", "training.tensorboard=false",
                                    "sampling.n=4", "sampling.steps=2", "optim.ema_rate=0.5"])
    train(cfg, workdir, progress=False)
    return workdir


def test_export_round_trip_gives_the_same_score_and_samples(run, tmp_path, capsys):
    out = tmp_path / "export"
    assert cli.main(["export", str(run), str(out)]) == 0
    assert str(out / EXPORT_WEIGHTS) in capsys.readouterr().out
    ours, theirs = load_run(run), load_export(out)
    assert theirs.step == ours.step == 3 and theirs.config == ours.config
    ema, raw = ours.net.state_dict(), load_run(run, use_ema=False).net.state_dict()
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)   # the EMA differs from the raw weights ...
    x = torch.randn(4, *ours.shape, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.01, 0.3, 0.6, 1.0])
    torch.testing.assert_close(theirs.score_fn()(x, t), ours.score_fn()(x, t), rtol=1e-6, atol=1e-6)  # ... and is kept

    # `sdegen sample` takes the export as its source, with the run's sampling defaults
    common = ["--n", "3", "--batch-size", "3", "--steps", "3", "--no-grid", "--no-progress", "--device", "cpu"]
    assert cli.main(["sample", str(out), "--out", str(tmp_path / "a.npz"), *common]) == 0
    assert cli.main(["sample", str(run), "--out", str(tmp_path / "b.npz"), *common]) == 0
    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "b.npz") as b:
        np.testing.assert_array_equal(a["samples"], b["samples"])


def test_export_refusals(run, tmp_path, capsys):
    assert cli.main(["export", str(run), str(tmp_path / "d"), "--format", "diffusers"]) == 2
    err = capsys.readouterr().err
    assert "no sdegen network maps exactly onto diffusers' UNet2DModel" in err and "--format safetensors" in err
    assert len(err.strip().splitlines()) == 1
    out = tmp_path / "e"
    assert cli.main(["export", str(run), str(out)]) == 0
    assert cli.main(["export", str(run), str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert cli.main(["export", str(run), str(out), "--overwrite"]) == 0
    (out / EXPORT_CONFIG).write_text('{"format": "something-else"}')
    assert cli.main(["sample", str(out), "--out", str(tmp_path / "x.npz")]) == 2
    assert "not an sdegen export" in capsys.readouterr().err
    assert cli.main(["export", str(tmp_path / "nothing"), str(tmp_path / "f")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
