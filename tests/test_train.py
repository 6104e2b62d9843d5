"""Score-model training: warm-up, EMA, seed+step batches, learning a toy mixture, checkpoints, bitwise
resume (also after SIGKILL), corrupt checkpoints, non-finite losses, config errors, sharded sampling."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sdegen import checkpoint, noise
from sdegen.metrics import sliced_wasserstein
from sdegen.toy import get_toy
from sdegen.train import (EMA, ConfigError, NonFiniteLossError, SamplerOptions, draw, learning_rate, load_config,
                          load_run, sample_to_npz, train)
from sdegen.train import sample_job
from sdegen.train.batches import Batches
from sdegen.train.runs import build

REPO = Path(__file__).resolve().parents[1]




TOY = {"data": {"name": "gauss3"},
       "model": {"preset": "mlp2d", "options": {"hidden": 32, "layers": 2, "embed_dim": 16}},
       "optim": {"lr": 2e-3, "warmup": 10, "ema_rate": 0.99},
       "training": {"batch_size": 64, "steps": 30, "log_every": 5, "ckpt_every": 10, "sample_every": 0,
                    "tensorboard": False, "reduce_mean": True},
       "sampling": {"predictor": "euler_maruyama", "corrector": "none", "steps": 20, "n": 100}}


def toy_cfg(*overrides: str):
    return load_config(None, TOY) if not overrides else _merge(overrides)


def _merge(overrides):
    from omegaconf import OmegaConf
    base = OmegaConf.to_container(OmegaConf.merge(OmegaConf.create(TOY), OmegaConf.from_dotlist(list(overrides))))
    return load_config(None, base)


def weights(state_dict):
    return {k: v.clone() for k, v in state_dict.items()}


def assert_bitwise(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# --- pieces -----------------------------------------------------------------------------------------

def test_learning_rate_warms_up_linearly():
    assert learning_rate(0, 2.0, 4) == 0.5
    assert learning_rate(1, 2.0, 4) == 1.0
    assert learning_rate(3, 2.0, 4) == 2.0 and learning_rate(100, 2.0, 4) == 2.0
    assert learning_rate(0, 2.0, 0) == 2.0


def test_ema_averages_trainable_parameters_only():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(3))
            self.fixed = nn.Parameter(torch.zeros(2), requires_grad=False)  # like NCSN++'s Fourier W
            self.register_buffer("b", torch.zeros(1))

    net = Net()
    ema = EMA(net, rate=0.9, warmup=False)
    assert ema.names == ["w"]
    with torch.no_grad():
        net.w.fill_(1.0), net.fixed.fill_(5.0), net.b.fill_(7.0)
    ema.update(net)
    torch.testing.assert_close(ema.module.w, torch.full((3,), 0.1))   # 0.9 * 0 + 0.1 * 1
    assert torch.equal(ema.module.fixed, torch.zeros(2))             # not averaged
    assert torch.equal(ema.module.b, torch.full((1,), 7.0))          # buffers copied
    ema.update(net)
    torch.testing.assert_close(ema.module.w, torch.full((3,), 0.19))
    warm = EMA(net, rate=0.999)                                      # official warm-up: min(rate, (1+n)/(10+n))
    assert warm.decay() == pytest.approx(2 / 11)
    warm.num_updates = 10_000
    assert warm.decay() == 0.999


def test_batches_depend_on_seed_and_step_only_and_shard_exactly():
    full = Batches("digits", seed=3, global_batch=8, flip=True)
    x5, g5 = full(5)
    again, g5b = Batches("digits", seed=3, global_batch=8, flip=True)(5)
    assert torch.equal(x5, again)
    draw = lambda g, rows: (noise.rand((rows,), g), noise.randn((rows, 4), g))  # the loss's draws  # noqa: E731
    assert all(torch.equal(a, b) for a, b in zip(draw(g5, 8), draw(g5b, 8)))
    assert not torch.equal(full(6)[0], x5) and not torch.equal(Batches("digits", seed=4, global_batch=8)(5)[0], x5)
    halves = [Batches("digits", seed=3, global_batch=8, rows=slice(r * 4, r * 4 + 4), flip=True)(5) for r in (0, 1)]
    assert torch.equal(torch.cat([h[0] for h in halves]), x5)
    z_full = draw(full(5)[1], 8)
    z_halves = [draw(h[1], 4) for h in halves]   # each process draws its rows of the whole batch's noise
    assert all(torch.equal(z, torch.cat(parts)) for z, parts in zip(z_full, zip(*z_halves)))
    assert not torch.equal(draw(full(6)[1], 8)[1], z_full[1])
    epoch = Batches("digits", seed=0, global_batch=500)               # 1500 images: 3 steps per epoch
    seen = sum((epoch.indices(s) for s in range(3)), [])
    assert sorted(seen) == list(range(1500))
    toy = Batches("gauss3", seed=0, global_batch=6)
    assert torch.equal(toy(2)[0], toy(2)[0]) and toy(2)[0].shape == (6, 2)
    assert torch.equal(Batches("gauss3", seed=0, global_batch=6, rows=slice(3, 6))(2)[0], toy(2)[0][3:])


def test_global_batch_splits_over_processes():
    from sdegen.train.distributed import Context, local_slice
    assert [local_slice(8, Context(r, 2)) for r in (0, 1)] == [slice(0, 4), slice(4, 8)]
    assert local_slice(5, Context(0, 1)) == slice(0, 5)
    with pytest.raises(ValueError, match="global batch size 5 does not split over 2 processes"):
        local_slice(5, Context(1, 2))


# --- training ---------------------------------------------------------------------------------------

def test_training_on_a_toy_mixture_lowers_the_loss_and_matches_the_data(tmp_path):
    cfg = toy_cfg("training.steps=400", "training.batch_size=128", "training.log_every=50", "optim.lr=3e-3",
                  "training.ckpt_every=400", "model.options.hidden=64", "optim.ema_rate=0.98")
    run = train(cfg, tmp_path, progress=False)
    losses = [r["loss"] for r in run.stats]
    assert [r["step"] for r in run.stats] == list(range(50, 401, 50))
    assert np.mean(losses[-3:]) < 0.8 * losses[0]
    toy = get_toy("gauss3")
    x = draw(run.model, range(1000), 1, SamplerOptions.from_config(cfg.sampling, steps=100))
    truth = toy.sample(1000, torch.Generator().manual_seed(2))
    prior = torch.randn(1000, 2, generator=torch.Generator().manual_seed(3))
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    sw, sw_prior = sliced_wasserstein(x, truth, generator=g()), sliced_wasserstein(prior, truth, generator=g())
    report = toy.moment_report(x)
    assert sw < 0.25 and sw < sw_prior / 4, (sw, sw_prior)
    assert report["weights_err"] < 0.08 and report["means_err"] < 0.3, report
    assert (tmp_path / "samples" / "step_00000400.png").is_file()
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / "stats.jsonl").is_file()


def test_checkpoint_round_trip(tmp_path):
    cfg = toy_cfg("training.steps=20", "training.keep=5", "training.sample_every=10", "training.tensorboard=true")
    run = train(cfg, tmp_path, progress=False)
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path / "checkpoints")] == [20, 10]
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["step_00000010.png", "step_00000020.png"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    assert {"train/loss", "train/grad_norm", "train/lr", "train/it_per_s"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("train/loss")] == [5, 10, 15, 20]
    np.testing.assert_allclose([e.value for e in events.Scalars("train/loss")], [r["loss"] for r in run.stats],
                               rtol=1e-6)
    state = checkpoint.load(tmp_path / "checkpoints" / "ckpt_00000020.pt")
    assert {"format", "model", "ema", "optimizer", "scaler", "step", "rng", "config"} <= set(state)
    assert state["step"] == 20 and state["ema"]["num_updates"] == 20
    assert load_config(None, state["config"]) == cfg
    assert load_config(tmp_path / "config.yaml") == cfg                     # the resolved config reloads
    ema = load_run(tmp_path)
    assert_bitwise(ema.net.state_dict(), run.model.net.state_dict())
    raw = load_run(tmp_path / "checkpoints" / "ckpt_00000020.pt", use_ema=False)
    assert_bitwise(raw.net.state_dict(), state["model"])
    assert not torch.equal(raw.net.out.weight, ema.net.out.weight)
    assert ema.step == 20 and ema.config == cfg and ema.shape == (2,)


def test_mixed_precision(tmp_path):
    run = train(toy_cfg("training.steps=10", "training.precision=bf16"), tmp_path / "bf16", progress=False)
    assert all(np.isfinite(r["loss"]) for r in run.stats)
    fp32 = train(toy_cfg("training.steps=10"), tmp_path / "fp32", progress=False)
    assert run.stats[0]["loss"] != fp32.stats[0]["loss"]                     # autocast was on
    assert abs(run.stats[0]["loss"] - fp32.stats[0]["loss"]) < 0.05 * fp32.stats[0]["loss"]
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
            train(toy_cfg("training.precision=fp16"), tmp_path / "fp16", progress=False)


def test_resume_gives_bitwise_the_uninterrupted_weights(tmp_path):
    full = train(toy_cfg(), tmp_path / "a", progress=False)
    train(toy_cfg("training.steps=20"), tmp_path / "b", progress=False)
    resumed = train(toy_cfg(), tmp_path / "b", progress=False)
    assert_bitwise(resumed.model.net.state_dict(), full.model.net.state_dict())
    a = checkpoint.load(tmp_path / "a" / "checkpoints" / "ckpt_00000030.pt")
    b = checkpoint.load(tmp_path / "b" / "checkpoints" / "ckpt_00000030.pt")
    assert_bitwise(a["model"], b["model"])
    assert [r["loss"] for r in resumed.stats] == [r["loss"] for r in full.stats]
    fresh = train(toy_cfg("training.steps=20"), tmp_path / "b", resume=False, progress=False)
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path / "b" / "checkpoints")] == [20, 10]
    assert fresh.step == 20 and [r["step"] for r in fresh.stats] == [5, 10, 15, 20]


SCRIPT = """
import sys
from sdegen.cli import COMMANDS, main
COMMANDS.setdefault("train", "sdegen.cli.train")
COMMANDS.setdefault("sample", "sdegen.cli.sample")
sys.exit(main(sys.argv[1:]))
"""


def cli_script(tmp_path: Path) -> Path:
    """A launcher for ``sdegen`` with the train and sample commands (whether or not they are registered)."""
    path = tmp_path / "sdegen_cli.py"
    path.write_text(SCRIPT)
    return path


def subprocess_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def write_yaml(path: Path, cfg) -> Path:
    from sdegen.train.config import to_yaml
    path.write_text(to_yaml(cfg))
    return path


def test_a_run_killed_with_sigkill_resumes_to_the_same_weights(tmp_path, capsys):
    cfg = toy_cfg("training.steps=200", "training.ckpt_every=20", "training.log_every=20", "sampling.n=10",
                  "sampling.steps=2")
    yaml = write_yaml(tmp_path / "toy.yaml", cfg)
    cmd = [sys.executable, str(cli_script(tmp_path)), "train", str(yaml), "--workdir", str(tmp_path / "killed"),
           "--no-progress"]
    proc = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    ckpts = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 120
    while not checkpoint.list_checkpoints(ckpts) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    reached = checkpoint.list_checkpoints(ckpts)[0][0]
    assert proc.returncode == -signal.SIGKILL and 20 <= reached < 200, (proc.returncode, reached)
    resumed = train(cfg, tmp_path / "killed", progress=False)           # resume in this process
    assert f"resuming from {checkpoint.checkpoint_path(ckpts, reached)} (step {reached})" in capsys.readouterr().err
    reference = train(cfg, tmp_path / "reference", progress=False)
    assert_bitwise(resumed.model.net.state_dict(), reference.model.net.state_dict())
    final = checkpoint.load(ckpts / "ckpt_00000200.pt")
    assert_bitwise(final["model"], checkpoint.load(tmp_path / "reference" / "checkpoints" / "ckpt_00000200.pt")["model"])
    assert [r["loss"] for r in resumed.stats] == [r["loss"] for r in reference.stats]


def test_a_corrupt_checkpoint_is_reported_and_the_previous_one_used(tmp_path):
    reference = train(toy_cfg(), tmp_path / "ref", progress=False)
    train(toy_cfg(), tmp_path / "run", progress=False)
    latest = tmp_path / "run" / "checkpoints" / "ckpt_00000030.pt"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])   # truncated, as by a full disk
    with pytest.warns(RuntimeWarning, match="ckpt_00000030.pt is corrupt"):
        resumed = train(toy_cfg(), tmp_path / "run", progress=False)    # falls back to step 20, redoes 21..30
    assert_bitwise(resumed.model.net.state_dict(), reference.model.net.state_dict())
    assert checkpoint.load(latest)["step"] == 30                        # rewritten, whole


def test_a_non_finite_loss_stops_the_run_naming_the_step(tmp_path, monkeypatch):
    from sdegen.train import loop
    real = loop.get_loss
    calls = [0]

    def poisoned(name):
        fn = real(name)

        def loss(*args, **kwargs):
            calls[0] += 1
            value = fn(*args, **kwargs)
            return value * float("nan") if calls[0] == 13 else value
        return loss

    monkeypatch.setattr(loop, "get_loss", poisoned)
    cfg = toy_cfg("training.steps=40", "training.ckpt_every=5", "training.log_every=4")
    with pytest.raises(NonFiniteLossError, match=r"nan at step 13; .*ckpt_00000010\.pt \(step 10\)"):
        train(cfg, tmp_path, progress=False)
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path / "checkpoints")][0] == 10
    good = checkpoint.load(tmp_path / "checkpoints" / "ckpt_00000010.pt")
    assert all(torch.isfinite(v).all() for v in good["model"].values())


# --- configs ----------------------------------------------------------------------------------------

def test_presets_load_and_build(tmp_path):
    from sdegen.train import preset_names
    names = preset_names()
    assert {"toy2d_vp", "toy2d_ve", "digits_vp", "digits_ve", "mnist_vp", "cifar10_ddpmpp_vp",
            "cifar10_ncsnpp_ve"} <= set(names)
    vp, ve = load_config("cifar10_ddpmpp_vp"), load_config("cifar10_ncsnpp_ve")
    for c in (vp, ve):   # the paper's hyperparameters
        assert (c.training.batch_size, c.optim.lr, c.optim.warmup, c.optim.grad_clip) == (128, 2e-4, 5000, 1.0)
        assert c.data.flip
    assert (vp.optim.ema_rate, ve.optim.ema_rate) == (0.9999, 0.999)
    for name in names:
        cfg = load_config(name)
        with torch.device("meta"):
            model = build(cfg)
        assert model.net is not None
    assert build(load_config("digits_ve")).parametrization == "score"


@pytest.mark.parametrize("override, match", [
    ("training.stepz=3", "training.stepz"),
    ("optim.lr=fast", "optim.lr"),
    ("training.steps=1.5", "training.steps"),
    ("sde.name=foo", "sde.name: unknown value 'foo'; accepted: ve, vp, subvp"),
    ("training.loss=smld", "training.loss=smld needs sde.name=ve"),
    ("optim.ema_rate=1.0", "optim.ema_rate"),
    ("training.batch_size=0", "training.batch_size must be > 0"),
    ("sampling.corrector=foo", "sampling.corrector"),
])
def test_config_errors_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match.replace("(", r"\(").replace(".", r"\.")):
        load_config("toy2d_vp", [override])


def test_config_file_and_network_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  stepz: 3\n")
    with pytest.raises(ConfigError, match="training.stepz"):
        load_config(bad)
    with pytest.raises(FileNotFoundError, match="no config file"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="unknown config 'nope'.*digits_vp"):
        load_config("nope")
    with pytest.raises(ConfigError, match="nff"):
        build(load_config("digits_vp", ["model.options.nff=3"]))
    with pytest.raises(ConfigError, match="conditioned on 't999' but sde.name=ve"):
        build(load_config("digits_vp", ["sde.name=ve"]))
    with pytest.raises(ConfigError, match="shape"):
        train(load_config(None, {**TOY, "data": {"name": "digits"}}), tmp_path / "shape", progress=False)
    train(toy_cfg("training.steps=10"), tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match=r"cannot resume.*optim\.lr \(0\.002 in the checkpoint, now 0\.01\)"):
        train(toy_cfg("training.steps=20", "optim.lr=0.01"), tmp_path / "run", progress=False)


# --- sampling jobs ----------------------------------------------------------------------------------

def image_model():
    cfg = load_config("digits_ve", ["model.options.nf=8", "sampling.steps=6"])
    torch.manual_seed(0)
    model = build(cfg)
    model.net.eval().requires_grad_(False)
    return model, SamplerOptions.from_config(cfg.sampling)


def test_samples_depend_on_seed_and_index_only_and_shards_resume(tmp_path, monkeypatch):
    model, opts = image_model()
    one = sample_to_npz(model, tmp_path / "a.npz", n=12, batch_size=12, seed=5, options=opts)
    with np.load(one) as f:
        a, a_float = f["samples"], f["samples_float"]
    assert a.shape == (12, 8, 8, 1) and a.dtype == np.uint8 and a_float.shape == (12, 1, 8, 8)
    assert not (tmp_path / "a.npz.shards").exists()
    with np.load(sample_to_npz(model, tmp_path / "b.npz", n=12, batch_size=5, seed=5, options=opts)) as f:
        np.testing.assert_allclose(f["samples_float"], a_float, atol=1e-5)
        assert np.abs(f["samples"].astype(int) - a).max() <= 1
    first = draw(model, [7, 3], 5, opts)                      # samples 7 and 3 alone
    np.testing.assert_allclose(model.to_signed(first).numpy(), a_float[[7, 3]], atol=1e-5)
    with np.load(sample_to_npz(model, tmp_path / "c.npz", n=12, batch_size=12, seed=6, options=opts)) as f:
        assert np.abs(f["samples_float"] - a_float).max() > 0.1

    calls = []
    real_draw = sample_job.draw

    def failing(model, indices, *args, **kwargs):
        calls.append(list(indices))
        if len(calls) == 3:
            raise KeyboardInterrupt   # the job is interrupted in its third batch
        return real_draw(model, indices, *args, **kwargs)

    monkeypatch.setattr(sample_job, "draw", failing)
    with pytest.raises(KeyboardInterrupt):
        sample_to_npz(model, tmp_path / "d.npz", n=12, batch_size=5, seed=5, options=opts)
    assert sorted(p.name for p in (tmp_path / "d.npz.shards").glob("shard_*")) == ["shard_000000.npz",
                                                                                  "shard_000001.npz"]
    with pytest.raises(ValueError, match=r"another sampling job \(differs in seed\)"):
        sample_to_npz(model, tmp_path / "d.npz", n=12, batch_size=5, seed=6, options=opts)
    calls.clear()
    monkeypatch.setattr(sample_job, "draw", lambda *a, **k: (calls.append(list(a[1])), real_draw(*a, **k))[1])
    with np.load(sample_to_npz(model, tmp_path / "d.npz", n=12, batch_size=5, seed=5, options=opts)) as f:
        np.testing.assert_allclose(f["samples_float"], a_float, atol=1e-5)
    assert calls == [[10, 11]]                                  # only the unfinished batch was drawn
    (tmp_path / "e.npz.shards").mkdir()     # a job that failed before its first shard is replaced
    (tmp_path / "e.npz.shards" / "job.json").write_text('{"seed": 1}')
    assert sample_to_npz(model, tmp_path / "e.npz", n=2, batch_size=5, seed=5, options=opts).is_file()
