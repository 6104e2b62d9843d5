"""The sampler contract: every entry of SAMPLERS, reached through `generate`, reproduces an exact-score
mixture, reports its steps in one layout, honours the step hook and starts from a given x_T."""
import pytest
import torch

import sdegen
from sdegen.sampling import SAMPLERS, generate, sampler_defaults
from sdegen.sde import SubVPSDE, VESDE, VPSDE
from sdegen.toy import gauss3

MIX = gauss3()
N_SAMPLES = 2000
Z_MAX = 5.0
SDES = [VESDE(), VPSDE(), SubVPSDE()]
# options that make each sampler accurate on gauss3 for every SDE at a moderate cost (sub-VP needs the most)
OPTIONS = {
    "pc": dict(steps=200),
    "ode": dict(),
    "heun": dict(nfe=61),
    "ddim": dict(nfe=100),
    "dpm_solver": dict(nfe=30),
    "dpm_solver_multistep": dict(nfe=30, order=3),
    "dpm_solver_pp_2m": dict(nfe=30),
    "adaptive_sde": dict(rtol=0.005, atol=0.002),
}
CHEAP = {**OPTIONS, "pc": dict(steps=30), "ode": dict(rtol=1e-3, atol=1e-3), "adaptive_sde": dict(rtol=0.05)}
LAYOUT = {"i", "t", "x", "denoised", "sigma"}


def test_every_sampler_is_covered():
    assert set(OPTIONS) == set(SAMPLERS)


def _worst_z(x):
    rep = MIX.moment_report(x)
    return max(rep["weights_z"], rep["means_z"], rep["covs_z"])


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_generate_reproduces_the_mixture_and_reports_each_step(name, sde):
    seen = []
    x = generate(sde, MIX.score_fn(sde), (N_SAMPLES, 2), sampler=name, generator=torch.Generator().manual_seed(0),
                 callback=seen.append, **OPTIONS[name])
    assert _worst_z(x) < Z_MAX, (name, MIX.moment_report(x))
    assert seen, "the callback was never called"
    assert all(set(d) == LAYOUT for d in seen)
    assert [d["i"] for d in seen] == list(range(len(seen)))
    for d in seen:
        assert d["x"].shape == x.shape and d["denoised"].shape == x.shape
        assert d["sigma"] is None or d["sigma"] >= 0
    times = [float(torch.as_tensor(d["t"]).max()) for d in seen]
    assert all(a >= b for a, b in zip(times, times[1:])), "time must not increase"
    assert torch.equal(seen[-1]["x"], x), "the last report holds the returned samples"


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("name", sorted(set(OPTIONS) - {"ode"}))
def test_step_hook_pins_a_coordinate(name, sde):
    times = []

    def pin(x, t):
        assert t.shape == (x.shape[0],)
        times.append(t)
        x = x.clone()
        x[:, 0] = 0.5
        return x

    x = generate(sde, MIX.score_fn(sde), (200, 2), sampler=name, generator=torch.Generator().manual_seed(1),
                 step_hook=pin, **CHEAP[name])
    assert times, "the hook was never called"
    assert torch.all(x[:, 0] == 0.5)
    # the free coordinate still moves away from the prior towards the data
    assert x[:, 1].std() < 3 and x[:, 1].std() > 0.1


def test_the_ode_refuses_a_step_hook():
    sde = VPSDE()
    with pytest.raises(ValueError, match="step_hook"):
        generate(sde, MIX.score_fn(sde), (4, 2), sampler="ode", step_hook=lambda x, t: x)


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_x_T_is_the_start_point(name):
    # drawing x_T from the prior with a generator and passing both equals letting the sampler draw it
    sde = VESDE()
    g = torch.Generator().manual_seed(3)
    x_T = sde.prior_sampling((50, 2), g)
    given = generate(sde, MIX.score_fn(sde), (50, 2), sampler=name, x_T=x_T, generator=g, **CHEAP[name])
    drawn = generate(sde, MIX.score_fn(sde), (50, 2), sampler=name, generator=torch.Generator().manual_seed(3),
                     **CHEAP[name])
    assert torch.equal(given, drawn)
    other = generate(sde, MIX.score_fn(sde), (50, 2), sampler=name, x_T=x_T + 1.0,
                     generator=torch.Generator().manual_seed(3), **CHEAP[name])
    assert not torch.equal(given, other)


def test_x_T_of_the_wrong_shape_is_refused():
    sde = VPSDE()
    with pytest.raises(ValueError, match=r"x_T must be a tensor of shape \(4, 2\)"):
        generate(sde, MIX.score_fn(sde), (4, 2), sampler="ddim", nfe=5, x_T=torch.zeros(3, 2))


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_unknown_options_are_refused_with_the_accepted_ones(name):
    sde = VPSDE()
    with pytest.raises(ValueError, match=r"does not take \['bogus'\]; it takes \[.*'eps'"):
        generate(sde, MIX.score_fn(sde), (4, 2), sampler=name, bogus=1)


def test_unknown_sampler_lists_the_registry():
    with pytest.raises(ValueError, match="choose one of .*'dpm_solver_pp_2m'.*'pc'"):
        generate(VPSDE(), MIX.score_fn(VPSDE()), (4, 2), sampler="rk45")


def test_defaults_are_read_from_the_signatures():
    assert sampler_defaults("pc")["snr"] == 0.16
    assert sampler_defaults("pc")["snr_norm"] == "batch"
    assert "order" not in sampler_defaults("dpm_solver_pp_2m")
    assert sampler_defaults("dpm_solver_multistep")["order"] == 2
    assert sdegen.SAMPLERS is SAMPLERS and sdegen.generate is generate


def test_front_doors_equal_generate():
    sde = VPSDE()
    score = MIX.score_fn(sde)
    run = lambda f, **kw: f(sde, score, (64, 2), generator=torch.Generator().manual_seed(4), **kw)  # noqa: E731
    assert torch.equal(run(sdegen.sample, steps=40), run(generate, sampler="pc", steps=40))
    assert torch.equal(run(sdegen.sample_ode, rtol=1e-3), run(generate, sampler="ode", rtol=1e-3))
    assert torch.equal(run(sdegen.solve, solver="heun", nfe=9), run(generate, sampler="heun", nfe=9))


def test_a_non_finite_score_is_named_before_the_ode_solver_fails():
    sde = VPSDE()
    with pytest.raises(FloatingPointError, match="score_fn returned non-finite"):
        generate(sde, lambda x, t: torch.full_like(x, float("nan")), (4, 2), sampler="ode")


PC_KEYS = ("predictor", "corrector", "snr", "n_corrector_steps", "snr_norm", "eps", "denoise")


def test_the_config_schema_takes_the_samplers_defaults():
    from sdegen.train.config import SamplingConfig
    pc, cfg = sampler_defaults("pc"), SamplingConfig()
    assert {k: getattr(cfg, k) for k in PC_KEYS} == {k: pc[k] for k in PC_KEYS}
    name, options = cfg.sampler()
    assert name == "pc" and {k: options[k] for k in PC_KEYS} == {k: pc[k] for k in PC_KEYS}


@pytest.mark.parametrize("argv", [["sample", "runs/x"], ["table", "runs/x"], ["toy"]], ids=lambda a: a[0])
def test_cli_flags_leave_sampler_options_to_the_sampler(argv):
    # a flag either is unset (None: the run's config or the sampler decides) or says the sampler's default
    from sdegen.cli import build_parser
    args = build_parser().parse_args(argv)
    pc = sampler_defaults("pc")
    for key in ("snr", "n_corrector_steps", "snr_norm", "eps", "predictor", "corrector", "order"):
        if hasattr(args, key):
            assert getattr(args, key) in (None, pc[key]), (argv[0], key, getattr(args, key))
