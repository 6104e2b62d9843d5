"""diffusers models in sdegen: tiny random UNet2DModels saved with diffusers' own schedulers, loaded with
`sdegen.load_diffusers`, checked against diffusers' scores and samplers from the same noise."""
import json
import sys

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import (DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, ScoreSdeVePipeline,  # noqa: E402
                       ScoreSdeVeScheduler, UNet2DModel)

from sdegen import load_diffusers, solvers  # noqa: E402
from sdegen.interop import diffusers_times  # noqa: E402
from sdegen.sampling import sample  # noqa: E402
from sdegen.sde import VESDE, VPSDE  # noqa: E402


def tiny_unet(seed: int = 0, fourier: bool = False, out_channels: int = 3) -> UNet2DModel:
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=8, in_channels=3, out_channels=out_channels, layers_per_block=1,
                       block_out_channels=(8, 16), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4, attention_head_dim=4,
                       time_embedding_type="fourier" if fourier else "positional")


def abar64(scheduler) -> torch.Tensor:
    """The scheduler's alpha-bar from its betas in float64 (diffusers' float32 cumprod loses ~1e-4
    relative of 1 - abar at the first timesteps)."""
    return torch.cumprod(1.0 - scheduler.betas.double(), 0)


@pytest.fixture(scope="module")
def ddim_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddim")
    DDIMPipeline(unet=tiny_unet(0), scheduler=DDIMScheduler(clip_sample=False)).save_pretrained(root)
    return root


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_vp_score_is_what_diffusers_implies(tmp_path, prediction):
    unet = tiny_unet(1)
    unet.save_pretrained(tmp_path / "unet")
    scheduler = DDPMScheduler(prediction_type=prediction, beta_start=2e-4, beta_end=0.03, num_train_timesteps=500)
    scheduler.save_pretrained(tmp_path / "scheduler")
    sde, score_fn, info = load_diffusers(tmp_path)
    assert isinstance(sde, VPSDE) and sde.N == 500
    assert (sde.beta_min, sde.beta_max) == pytest.approx((2e-4 * 500, 0.03 * 500), rel=1e-12)
    assert info["centered"] and info["shape"] == (3, 8, 8) and info["prediction_type"] == prediction

    k = torch.tensor([0, 1, 37, 250, 499])
    x = torch.randn(len(k), 3, 8, 8, generator=torch.Generator().manual_seed(0))
    t = info["t_of_timestep"](k)
    assert torch.equal(info["timestep_of_t"](t).round(), k.double())
    ab = abar64(scheduler)[k].view(-1, 1, 1, 1)
    out = unet(x, k).sample.double()
    # diffusers' conversions (DDIMScheduler.step) to eps, and score = -eps / sqrt(1 - abar)
    eps = {"epsilon": out, "v_prediction": ab.sqrt() * out + (1 - ab).sqrt() * x,
           "sample": (x - ab.sqrt() * out) / (1 - ab).sqrt()}[prediction]
    want = -eps / (1 - ab).sqrt()
    got = score_fn(x, t)
    assert got.dtype == x.dtype
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    # the SDE's marginal at t_k is the chain's at k (betas in float64; diffusers rounds them to float32)
    betas = torch.linspace(2e-4, 0.03, 500, dtype=torch.float64)
    ab = torch.cumprod(1 - betas, 0)[k]
    a, s = sde.marginal_coeffs(t)
    torch.testing.assert_close(a, ab.sqrt(), rtol=1e-12, atol=0)
    torch.testing.assert_close(s, (1 - ab).sqrt(), rtol=1e-10, atol=0)


def test_ddim_matches_diffusers_ddim_from_the_same_noise(ddim_folder):
    sde, score_fn, info = load_diffusers(ddim_folder)
    unet = info["net"]
    scheduler = DDIMScheduler.from_pretrained(ddim_folder / "scheduler")
    K = 8
    scheduler.set_timesteps(K)
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    x = x_T.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:   # DDIMPipeline's loop (eta = 0)
            x = scheduler.step(unet(x, t).sample, t, x).prev_sample
    # sdegen's DDIM on the same timesteps, ending with the step to sigma = 0 (diffusers' final alpha_bar = 1)
    times = diffusers_times(info, K)
    assert torch.equal(times, info["t_of_timestep"](scheduler.timesteps.double()))
    ours = solvers.ddim(sde, score_fn, x_T.shape, times=times, x_T=x_T)
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)
    pipe = DDIMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=2, generator=torch.Generator().manual_seed(1), num_inference_steps=K, eta=0.0,
                  output_type="pt").images
    torch.testing.assert_close(images, (ours / 2 + 0.5).clamp(0, 1), rtol=0, atol=1e-4)


def test_pc_matches_score_sde_ve_pipeline(tmp_path):
    """Where they coincide: Langevin corrector before the reverse-diffusion predictor (the official order),
    batch-mean norms in the step size, one generator for the batch, ``steps`` = the pipeline's inference
    steps, ``eps`` = its sampling_eps. They differ in that the pipeline clamps the result to [0, 1] (sdegen
    returns the unclamped mean; compared here before and after clamping) and sdegen's sampling jobs use
    per-sample generators and norms, so a sample does not depend on its batch."""
    unet = tiny_unet(2, fourier=True)
    scheduler = ScoreSdeVeScheduler(sigma_max=20.0, snr=0.15, num_train_timesteps=100)
    unet.save_pretrained(tmp_path)
    scheduler.save_pretrained(tmp_path)   # a bare UNet2DModel folder with its scheduler_config.json
    sde, score_fn, info = load_diffusers(tmp_path)
    assert isinstance(sde, VESDE) and (sde.sigma_min, sde.sigma_max, sde.N) == (0.01, 20.0, 100)
    assert not info["centered"]
    x = torch.randn(3, 3, 8, 8)
    t = torch.tensor([0.05, 0.5, 1.0], dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(score_fn(x, t), unet(x, sde.sigma(t).float()).sample, rtol=1e-6, atol=1e-6)

    K, seed = 6, 3
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 8, 8, generator=g) * scheduler.init_noise_sigma
    scheduler.set_timesteps(K)
    scheduler.set_sigmas(K)
    with torch.no_grad():
        for i, t_i in enumerate(scheduler.timesteps):   # ScoreSdeVePipeline's loop
            sigma = scheduler.sigmas[i] * torch.ones(2)
            for _ in range(scheduler.config.correct_steps):
                x = scheduler.step_correct(unet(x, sigma).sample, x, generator=g).prev_sample
            step = scheduler.step_pred(unet(x, sigma).sample, t_i, x, generator=g)
            x, mean = step.prev_sample, step.prev_sample_mean
    s = info["sampling"]
    ours = sample(sde, score_fn, (2, 3, 8, 8), predictor=s["predictor"], corrector=s["corrector"], snr=s["snr"],
                  n_corrector_steps=s["n_corrector_steps"], steps=K, eps=s["eps"], order=s["order"],
                  snr_norm=s["snr_norm"], generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(ours, mean, rtol=1e-4, atol=1e-4)
    pipe = ScoreSdeVePipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=2, num_inference_steps=K, generator=torch.Generator().manual_seed(seed),
                  output_type="np").images
    torch.testing.assert_close(torch.from_numpy(images), ours.clamp(0, 1).permute(0, 2, 3, 1), rtol=0, atol=1e-4)


def test_folder_layouts_and_scheduler_by_name(tmp_path, ddim_folder):
    # a pipeline folder (model_index.json), and the same unet as a bare folder with a scheduler by name
    _, score_a, info = load_diffusers(ddim_folder)
    assert info["scheduler"] == "DDIMScheduler"
    _, score_b, info_b = load_diffusers(ddim_folder / "unet", scheduler="ddpm")
    _, score_c, _ = load_diffusers(ddim_folder, subfolder="unet")
    assert info_b["scheduler"] == "DDPMScheduler"
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([0.3, 0.7])
    torch.testing.assert_close(score_a(x, t), score_b(x, t), rtol=0, atol=0)
    torch.testing.assert_close(score_a(x, t), score_c(x, t), rtol=0, atol=0)
    # a learned-variance model: the first half of the channels is the noise
    unet = tiny_unet(4, out_channels=6)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(variance_type="learned_range")).save_pretrained(tmp_path / "lv")
    sde, score_fn, info = load_diffusers(tmp_path / "lv")
    k = torch.tensor([10, 900])
    want = -unet(x, k).sample[:, :3] / (1 - abar64(DDPMScheduler())[k]).sqrt().view(-1, 1, 1, 1).float()
    torch.testing.assert_close(score_fn(x, info["t_of_timestep"](k)), want, rtol=1e-5, atol=1e-4)


def test_old_attention_names_and_bin_weights_load(tmp_path, ddim_folder):
    """Checkpoints from before diffusers renamed attention layers (query/key/value/proj_attn), stored as
    .bin, load (with weights_only) to the same score."""
    from safetensors.torch import load_file
    state = load_file(ddim_folder / "unet" / "diffusion_pytorch_model.safetensors")
    renames = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}
    old = {}
    for key, value in state.items():
        for new, was in renames.items():
            key = key.replace(new, was)
        old[key] = value
    assert any(".query." in k for k in old)
    (tmp_path / "unet").mkdir()
    torch.save(old, tmp_path / "unet" / "diffusion_pytorch_model.bin")
    (tmp_path / "unet" / "config.json").write_text((ddim_folder / "unet" / "config.json").read_text())
    _, score_old, _ = load_diffusers(tmp_path / "unet", scheduler=str(ddim_folder / "scheduler" /
                                                                     "scheduler_config.json"))
    _, score_new, _ = load_diffusers(ddim_folder)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([0.2, 0.9])
    torch.testing.assert_close(score_old(x, t), score_new(x, t), rtol=0, atol=0)


def test_clear_errors(tmp_path, ddim_folder, monkeypatch):
    with pytest.raises(FileNotFoundError, match="no diffusers folder"):
        load_diffusers(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a diffusers folder"):
        load_diffusers(tmp_path / "empty")
    with pytest.raises(ValueError, match="beta_schedule='squaredcos_cap_v2'"):
        load_diffusers(ddim_folder, scheduler={"_class_name": "DDPMScheduler", "num_train_timesteps": 1000,
                                               "beta_schedule": "squaredcos_cap_v2"})
    with pytest.raises(ValueError, match="unknown scheduler 'euler_a'"):
        load_diffusers(ddim_folder / "unet", scheduler="euler_a")
    with pytest.raises(ValueError, match="no scheduler config"):
        load_diffusers(ddim_folder / "unet")
    # weights that do not match the config; a malicious pickle is refused, never executed
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((ddim_folder / "unet" / "config.json").read_text())
    torch.save({"conv_in.weight": torch.zeros(1)}, bad / "diffusion_pytorch_model.bin")
    with pytest.raises(ValueError, match="do not match config.json; missing"):
        load_diffusers(bad, scheduler="ddpm")

    class Evil:
        def __reduce__(self):
            return (exec, ("raise SystemExit('executed')",))

    torch.save({"x": Evil()}, bad / "diffusion_pytorch_model.bin")
    with pytest.raises(ValueError, match="diffusion_pytorch_model.bin is not a checkpoint this tool trusts"):
        load_diffusers(bad, scheduler="ddpm")
    cfg = json.loads((ddim_folder / "unet" / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "_class_name": "UNet2DConditionModel"}))
    with pytest.raises(ValueError, match="only UNet2DModel"):
        load_diffusers(bad, scheduler="ddpm")
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(ImportError, match=r"pip install 'sdegen\[diffusers\]'"):
        load_diffusers(ddim_folder)


def test_diffusers_times_follow_the_scheduler_spacing(ddim_folder):
    _, _, info = load_diffusers(ddim_folder)
    for spacing in ("leading", "trailing"):   # trailing starts at timestep N - 1, whose time is above T
        info_s = dict(info, scheduler_config=dict(info["scheduler_config"], timestep_spacing=spacing))
        scheduler = DDIMScheduler.from_config(info_s["scheduler_config"])
        scheduler.set_timesteps(5)
        times = diffusers_times(info_s, 5)
        assert times.dtype == torch.float64 and torch.equal(info["timestep_of_t"](times).round(),
                                                             scheduler.timesteps.double())
    with pytest.raises(ValueError, match="no DDPM timesteps"):   # what load_diffusers gives a VE model
        diffusers_times({"scheduler": "ScoreSdeVeScheduler", "scheduler_config": {}}, 5)
    with pytest.raises(ValueError, match="num_inference_steps"):
        diffusers_times(info, 0)


def test_cli_sample_from_diffusers_is_the_library_sampler(tmp_path, ddim_folder, capsys):
    from sdegen.cli import main
    from sdegen.interop import load_diffusers_model
    from sdegen.train.sample_job import SamplerOptions, draw, to_uint8

    out = tmp_path / "s.npz"
    assert main(["sample", "--from-diffusers", str(ddim_folder), "--solver", "ddim", "--steps", "4", "--n", "3",
                 "--batch-size", "2", "--out", str(out), "--no-grid", "--no-progress", "--device", "cpu"]) == 0
    assert str(out) in capsys.readouterr().out
    with np.load(out) as f:
        got = f["samples"]
    model, _ = load_diffusers_model(ddim_folder)
    want = to_uint8(model, draw(model, range(3), 0, SamplerOptions("ddim", {"steps": 4, "eps": 1e-3})))
    assert got.shape == (3, 8, 8, 3) and abs(got.astype(int) - want.astype(int)).max() <= 1


@pytest.mark.parametrize("argv, message", [
    (["sample", "--from-diffusers", "{tmp}/missing", "--out", "{tmp}/x.npz"], "no diffusers folder at"),
    (["sample", "--from-score-sde", "{tmp}/checkpoint_8.pth", "--config", "cifar10_ddpmpp_continuous",
      "--out", "{tmp}/x.npz"], "github.com/yang-song/score_sde_pytorch"),
    (["likelihood", "--from-diffusers", "{tmp}/missing"], "no diffusers folder at"),
    (["sample", "--from-diffusers", "{tmp}", "--from-score-sde", "x.pth", "--out", "{tmp}/x.npz"], "not both"),
    (["sample", "run", "--scheduler", "ddpm", "--out", "{tmp}/x.npz"], "--scheduler applies to --from-diffusers"),
])
def test_cli_mistakes_are_one_line(tmp_path, capsys, argv, message):
    from sdegen.cli import main

    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
