"""sdegen.solvers: convergence orders against the exact probability-flow map of a Gaussian, exact NFE
accounting, determinism and per-sample seeding, moments of the stochastic samplers, input checks."""
import math

import pytest
import torch

from sdegen import solvers, toy
from sdegen.brownian import BrownianMemory, BrownianTree, mix64, tree_seeds
from sdegen.noise import per_sample_generators
from sdegen.score import CountingScore
from sdegen.sde import SubVPSDE, VESDE, VPSDE
from sdegen.solvers import SOLVERS, sigma_of_t, solve, t_of_sigma, time_grid

EPS = 1e-3
MU = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
C = torch.tensor([0.3, 1.0, 2.5], dtype=torch.float64)  # per-dimension data std
GAUSS = toy.GaussianMixture(MU[None], torch.diag(C ** 2)[None])


def coeffs(sde, t):
    a, s = sde.marginal_coeffs(torch.tensor([t], dtype=torch.float64))
    return a.item(), s.item()


def exact_flow(sde, x_T, eps=EPS):
    """The probability-flow ODE map from T to eps for data N(MU, diag(C^2)).

    With x_hat = x / a and sigma = s / a, x_hat_sigma ~ N(MU, C^2 + sigma^2) and the ODE
    d x_hat / d sigma = (x_hat - D) / sigma with D = MU + C^2 / (C^2 + sigma^2) (x_hat - MU) gives
    d (x_hat - MU) / d sigma = sigma / (C^2 + sigma^2) (x_hat - MU), so x_hat - MU grows like
    sqrt(C^2 + sigma^2): x_eps = a_eps [MU + sqrt((C^2 + s_eps^2) / (C^2 + s_T^2)) (x_T / a_T - MU)]."""
    a_T, s_T = coeffs(sde, sde.T)
    a_e, s_e = coeffs(sde, eps)
    sig_T, sig_e = s_T / a_T, s_e / a_e
    return a_e * (MU + torch.sqrt((C ** 2 + sig_e ** 2) / (C ** 2 + sig_T ** 2)) * (x_T / a_T - MU))


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


ALL_SDES = [VPSDE(), VESDE(), SubVPSDE()]


# --- time grids and the sigma parametrisation ----------------------------------------------------

@pytest.mark.parametrize("sde", ALL_SDES, ids=lambda s: type(s).__name__)
def test_t_of_sigma_inverts_sigma_of_t(sde):
    t = torch.tensor([EPS, 0.01, 0.3, 0.77, 1.0, 1.2], dtype=torch.float64)
    assert torch.allclose(t_of_sigma(sde, sigma_of_t(sde, t)), t, rtol=0, atol=1e-12)


def test_time_grids():
    sde = VPSDE()
    for schedule in solvers.SCHEDULES:
        t = time_grid(sde, 10, schedule, EPS)
        assert t.shape == (11,) and t[0] == 1.0 and t[-1] == EPS and (t.diff() < 0).all()
    sig = sigma_of_t(sde, time_grid(sde, 10, "edm", EPS, rho=7.0))
    root = sig ** (1 / 7)  # EDM eq. 5: sigma^(1/rho) is linear in the step index
    assert torch.allclose(root.diff(), root.diff()[:1].expand(10), rtol=1e-9)
    lam = -sigma_of_t(sde, time_grid(sde, 10, "logsnr", EPS)).log()
    assert torch.allclose(lam.diff(), lam.diff()[:1].expand(10), rtol=1e-9)
    ve = VESDE()  # sigma(t) is geometric for VE: uniform in t is uniform in log-SNR
    assert torch.allclose(time_grid(ve, 7, "uniform", EPS), time_grid(ve, 7, "logsnr", EPS), atol=1e-12)


@pytest.mark.parametrize("sde", ALL_SDES, ids=lambda s: type(s).__name__)
def test_denoiser_from_score_is_tweedie(sde):
    model = solvers._Model(sde, GAUSS.score_fn(sde))
    xh = torch.randn(5, 3, generator=gen(), dtype=torch.float64) * 3
    for t in (0.01, 0.2, 0.9):
        a, s = coeffs(sde, t)
        sig = s / a
        eps, den = model(xh, t)
        assert torch.allclose(den, MU + C ** 2 / (C ** 2 + sig ** 2) * (xh - MU), atol=1e-10)
        assert torch.allclose(eps, (xh - den) / sig, atol=1e-10)


# --- convergence orders on the exact Gaussian flow ----------------------------------------------

CASES = [  # (solver options, steps compared, (low, high) bounds of the observed order)
    (dict(solver="ddim"), (32, 64), (0.85, 1.3)),
    (dict(solver="heun"), (32, 64), (1.8, 2.4)),
    (dict(solver="dpm_solver", order=2), (32, 64), (1.8, 2.4)),
    (dict(solver="dpm_solver", order=3), (16, 32), (2.7, 6.0)),
    (dict(solver="dpm_solver_multistep", order=2), (32, 64), (1.8, 2.4)),
    (dict(solver="dpm_solver_multistep", order=3), (64, 128), (2.6, 3.6)),
    (dict(solver="dpm_solver_pp_2m"), (32, 64), (1.8, 2.4)),
    (dict(solver="dpm_solver_multistep", order=3, prediction="data"), (32, 64), (2.6, 3.6)),
]


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("opts,steps,bounds", CASES, ids=lambda v: str(v) if isinstance(v, dict) else "")
def test_converges_at_its_order(sde, opts, steps, bounds):
    x_T = sde.prior_sampling((8, 3), gen(), dtype=torch.float64)  # the solvers' first draw
    ref = exact_flow(sde, x_T)
    errs = []
    for k in steps:
        x = solve(sde, GAUSS.score_fn(sde), (8, 3), steps=k, denoise=False, dtype=torch.float64,
                  generator=gen(), **opts)
        errs.append((x - ref).abs().max().item())
    order = math.log2(errs[0] / errs[1])
    assert errs[1] < 0.15 and bounds[0] < order < bounds[1], (errs, order)


@pytest.mark.parametrize("solver", ["heun", "ddim", "dpm_solver"])
def test_denoise_is_tweedie_at_eps(solver):
    sde = VPSDE()
    kw = dict(solver=solver, steps=20, dtype=torch.float64)
    x_eps = solve(sde, GAUSS.score_fn(sde), (6, 3), denoise=False, generator=gen(), **kw)
    x_0 = solve(sde, GAUSS.score_fn(sde), (6, 3), denoise=True, generator=gen(), **kw)
    a, s = coeffs(sde, EPS)
    tweedie = (x_eps + s * s * GAUSS.score_fn(sde)(x_eps, torch.full((6,), EPS, dtype=torch.float64))) / a
    assert torch.allclose(x_0, tweedie, atol=1e-10)


def test_first_order_methods_coincide():
    """DDIM(eta=0) = DPM-Solver-1 = multistep order 1 (noise or data): Euler in sigma."""
    sde = VESDE()
    score = GAUSS.score_fn(sde)

    def run(**opts):
        return solve(sde, score, (6, 3), steps=12, dtype=torch.float64, generator=gen(), **opts)

    ref = run(solver="ddim")
    for opts in (dict(solver="dpm_solver", order=1), dict(solver="dpm_solver_multistep", order=1),
                 dict(solver="dpm_solver_multistep", order=1, prediction="data")):
        assert torch.allclose(run(**opts), ref, atol=1e-10)
    assert not torch.allclose(run(solver="heun"), ref, atol=1e-3)
    assert torch.equal(run(solver="dpm_solver_pp_2m"),
                       run(solver="dpm_solver_multistep", order=2, prediction="data"))


# --- NFE accounting -----------------------------------------------------------------------------

FIXED = [dict(solver="heun"), dict(solver="heun", s_churn=5.0), dict(solver="ddim", eta=0.5),
         dict(solver="dpm_solver", order=1), dict(solver="dpm_solver", order=2),
         dict(solver="dpm_solver", order=3), dict(solver="dpm_solver_multistep", order=3),
         dict(solver="dpm_solver_pp_2m")]


@pytest.mark.parametrize("opts", FIXED, ids=str)
@pytest.mark.parametrize("denoise", [True, False])
def test_uses_exactly_the_nfe_budget(opts, denoise):
    sde, mix = VPSDE(), toy.gauss3()
    for nfe in (2, 3, 4, 5, 10, 20, 35):
        score, info = CountingScore(mix.score_fn(sde)), {}
        solve(sde, score, (4, 2), nfe=nfe, denoise=denoise, generator=gen(), info=info, **opts)
        assert score.nfe == info["nfe"] == nfe and score.n_scored == 4 * nfe


@pytest.mark.parametrize("opts,per_step", [(dict(solver="heun"), 2), (dict(solver="ddim"), 1),
                                           (dict(solver="dpm_solver", order=3), 3),
                                           (dict(solver="dpm_solver_multistep", order=2), 1)], ids=str)
def test_steps_map_to_nfe(opts, per_step):
    sde, mix = VESDE(), toy.gauss3()
    for denoise in (True, False):
        score = CountingScore(mix.score_fn(sde))
        solve(sde, score, (4, 2), steps=7, denoise=denoise, generator=gen(), **opts)
        assert score.nfe == per_step * 7 + int(denoise)


def test_adaptive_reports_its_nfe():
    sde, mix = VPSDE(), toy.gauss3()
    score, info = CountingScore(mix.score_fn(sde)), {}
    solve(sde, score, (16, 2), solver="adaptive_sde", rtol=0.05, generator=gen(), info=info)
    assert score.nfe == info["nfe"] and info["nfe"] % 2 == 1        # 2 per iteration + denoising
    assert score.n_scored / 16 == pytest.approx(info["nfe_per_sample"])
    assert info["nfe_per_sample"] == pytest.approx(2 * (info["accepted"] + info["rejected"]) + 1)
    looser = {}
    solve(sde, mix.score_fn(sde), (16, 2), solver="adaptive_sde", rtol=0.2, generator=gen(), info=looser)
    assert looser["nfe_per_sample"] < info["nfe_per_sample"]       # the tolerance is the knob


# --- determinism and generators -------------------------------------------------------------------

STOCHASTIC = [dict(solver="heun", nfe=15, s_churn=20.0), dict(solver="ddim", nfe=10, eta=1.0),
              dict(solver="adaptive_sde", rtol=0.05), dict(solver="adaptive_sde", rtol=0.05, brownian="tree")]


@pytest.mark.parametrize("opts", FIXED[:1] + STOCHASTIC, ids=str)
def test_same_seed_same_samples(opts):
    sde, mix = VESDE(), toy.gauss3()
    opts = dict(opts)
    if "nfe" not in opts and opts["solver"] != "adaptive_sde":
        opts["nfe"] = 9
    a = solve(sde, mix.score_fn(sde), (32, 2), generator=gen(3), **opts)
    b = solve(sde, mix.score_fn(sde), (32, 2), generator=gen(3), **opts)
    c = solve(sde, mix.score_fn(sde), (32, 2), generator=gen(4), **opts)
    assert torch.equal(a, b) and not torch.allclose(a, c)


@pytest.mark.parametrize("opts", STOCHASTIC, ids=str)
def test_per_sample_generators_make_samples_batch_independent(opts):
    sde, mix = VPSDE(), toy.gauss3()
    batch = solve(sde, mix.score_fn(sde), (3, 2), generator=per_sample_generators(7, range(3)), **opts)
    alone = solve(sde, mix.score_fn(sde), (1, 2), generator=per_sample_generators(7, [2]), **opts)
    assert torch.allclose(batch[2:], alone, atol=1e-5)


def test_runs_without_autograd():
    sde, mix = VPSDE(), toy.gauss3()

    def score(x, t):
        assert not torch.is_grad_enabled()
        return mix.score_fn(sde)(x, t)

    for name in SOLVERS:
        kw = {} if name == "adaptive_sde" else dict(nfe=4)
        solve(sde, score, (4, 2), solver=name, generator=gen(), **kw)


# --- the stochastic samplers hit the target moments ----------------------------------------------

@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("opts", [dict(solver="heun", nfe=151, s_churn=10.0, s_tmin=0.05, s_tmax=50.0),
                                  dict(solver="ddim", nfe=200, eta=1.0)], ids=str)
def test_stochastic_samplers_match_mixture_moments(sde, opts):
    mix = toy.gauss3()
    x = solve(sde, mix.score_fn(sde), (2000, 2), generator=gen(1), **opts)
    rep = mix.moment_report(x)
    assert max(rep["weights_z"], rep["means_z"], rep["covs_z"]) < 5.0, rep


def test_adaptive_sde_matches_mixture_moments_in_16d():
    """In 16-D, where the scaled error norm averages over many coordinates (2-D: test_contract.py)."""
    sde, mix = VPSDE(), toy.gmm16d()
    x = solve(sde, mix.score_fn(sde), (1500, 16), solver="adaptive_sde", rtol=0.005, generator=gen(1))
    rep = mix.moment_report(x)
    assert max(rep["weights_z"], rep["means_z"], rep["covs_z"]) < 5.0, rep


# --- the adaptive solver's Brownian path -------------------------------------------------------------

def _path(kind, t_start, n_paths, seed=0):
    if kind == "tree":
        return BrownianTree(tree_seeds(n_paths, gen(seed)), EPS, 1.0, (2,))
    return BrownianMemory(torch.full((n_paths,), t_start, dtype=torch.float64), (2,), gen(seed))


@pytest.mark.parametrize("kind", ["memory", "tree"])
def test_brownian_increments_are_consistent_and_have_variance_h(kind):
    """A step [t, t - h] rejected and retried as [t, t - h/2] + [t - h/2, t - h] sees the same path; the
    pieces are independent N(0, h/2) and a later step past the known points is a fresh N(0, h)."""
    t, h, n = 0.7, 0.1, 4000
    path = _path(kind, t, n)
    w0 = path(torch.full((n,), t))
    full = path(torch.full((n,), t - h))                     # the rejected step
    half = path(torch.full((n,), t - h / 2))                 # the retry: a Brownian bridge value
    assert torch.equal(path(torch.full((n,), t - h)), full)  # the same point, the same value
    first, second = half - w0, full - half
    assert torch.allclose(first + second, full - w0, rtol=0, atol=1e-12)
    path.advance(torch.full((n,), t - h / 2))                # accept the half step
    assert torch.equal(path(torch.full((n,), t - h)), full)  # the rest of the rejected step is kept
    path.advance(torch.full((n,), t - h))
    beyond = path(torch.full((n,), t - 2 * h)) - full        # past every known point
    pieces = torch.stack([first.flatten(), second.flatten(), beyond.flatten()])   # 2n draws each
    m = pieces.shape[1]
    var = pieces.var(1)
    expected = torch.tensor([h / 2, h / 2, h], dtype=torch.float64)
    assert torch.all((var / expected - 1).abs() < 5 * math.sqrt(2 / (m - 1))), var   # 5 standard errors
    corr = torch.corrcoef(pieces)
    assert (corr - torch.eye(3, dtype=torch.float64)).abs().max() < 5 / math.sqrt(m), corr


@pytest.mark.parametrize("kind", ["memory", "tree"])
def test_brownian_path_depends_on_its_own_generator_only(kind):
    def values(indices):
        g = per_sample_generators(5, indices)
        if kind == "tree":
            path = BrownianTree(tree_seeds(len(g), g), EPS, 1.0, (2,))
        else:
            path = BrownianMemory(torch.full((len(g),), 0.7, dtype=torch.float64), (2,), g)
        return torch.stack([path(torch.full((len(g),), s)) for s in (0.6, 0.55, 0.62)], 1)

    batch, alone = values(range(3)), values([1])
    assert torch.equal(batch[1:2], alone)
    assert not torch.allclose(batch[0], batch[1])


def test_tree_hash_is_splitmix64():
    # SplitMix64 seeded with 1234567: first output 6457827717110365317 (int64 products wrap as needed)
    out = mix64(torch.tensor([1234567 + 0x9E3779B97F4A7C15 - (1 << 64)]))
    assert out.item() % (1 << 64) == 6457827717110365317


def test_brownian_memory_refuses_to_go_back():
    path = BrownianMemory(torch.full((3,), 0.5, dtype=torch.float64), (2,), gen())
    with pytest.raises(ValueError, match="towards smaller times"):
        path(torch.full((3,), 0.6))
    with pytest.raises(ValueError, match="only advance to a time it was queried at"):
        path.advance(torch.full((3,), 0.4))


def test_redrawing_the_increment_is_biased_where_a_consistent_path_is_not():
    """Rejection prefers small redrawn increments, which shrinks the spread (Rackauckas & Nie 2017);
    the same tolerance on a consistent path matches the mixture."""
    sde, mix = VPSDE(), toy.gauss3()

    def worst_z(brownian):
        x = solve(sde, mix.score_fn(sde), (1000, 2), solver="adaptive_sde", rtol=0.05, brownian=brownian,
                  generator=gen(1))
        rep = mix.moment_report(x)
        return max(rep["weights_z"], rep["means_z"], rep["covs_z"])

    assert worst_z("redraw") > 10.0
    assert worst_z("memory") < 5.0 and worst_z("tree") < 5.0


@pytest.mark.parametrize("brownian", ["memory", "tree"])
def test_adaptive_sde_from_an_intermediate_time(brownian):
    # x at t_start drawn from the exact marginal p_t (a mixture sample noised by the perturbation kernel):
    # solving from t_start must end at the mixture, as a solve from T does
    sde, mix, n, t0 = VPSDE(), toy.gauss3(), 1000, 0.4
    x0 = mix.sample(n, gen(2)).float()
    x_t = sde.perturb(x0, torch.full((n,), t0), torch.randn(n, 2, generator=gen(3)))
    info = {}
    x = solve(sde, mix.score_fn(sde), (n, 2), solver="adaptive_sde", rtol=0.05, brownian=brownian, x_T=x_t,
              t_start=t0, generator=gen(4), info=info)
    rep = mix.moment_report(x)
    assert max(rep["weights_z"], rep["means_z"], rep["covs_z"]) < 5.0, rep
    full = {}
    solve(sde, mix.score_fn(sde), (n, 2), solver="adaptive_sde", rtol=0.05, brownian=brownian, generator=gen(4),
          info=full)
    assert info["nfe_per_sample"] < full["nfe_per_sample"]   # the stretch from T to t_start is not solved
    with pytest.raises(ValueError, match="t_start must be in"):
        solve(sde, mix.score_fn(sde), (2, 2), solver="adaptive_sde", t_start=1e-4)


# --- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,match", [
    (dict(solver="rk4", nfe=5), "unknown solver"),
    (dict(solver="heun", nfe=5, steps=3), "not both"),
    (dict(solver="heun"), "give nfe"),
    (dict(solver="heun", nfe=1), "nfe must be an integer >= 2"),
    (dict(solver="ddim", steps=0), "steps must be an integer"),
    (dict(solver="heun", nfe=5, schedule="cosine"), "unknown schedule"),
    (dict(solver="dpm_solver", nfe=5, order=4), "order must be one of"),
    (dict(solver="dpm_solver_multistep", nfe=5, prediction="v"), "unknown prediction"),
    (dict(solver="ddim", nfe=5, eta=1.5), "eta must be in"),
    (dict(solver="heun", nfe=5, s_churn=-1.0), "s_churn >= 0"),
    (dict(solver="adaptive_sde", nfe=20), "does not take \\['nfe'\\]"),
    (dict(solver="adaptive_sde", rtol=0.0), "rtol > 0"),
    (dict(solver="adaptive_sde", brownian="bridge"), "unknown brownian 'bridge'; choose one of"),
    (dict(solver="dpm_solver_pp_2m", nfe=5, order=3), "does not take \\['order'\\]"),
    (dict(solver="heun", nfe=5, s_churm=1.0), "does not take \\['s_churm'\\]"),
    (dict(solver="heun", nfe=5, eps=0.0), "eps must be in"),
])
def test_bad_input_is_a_clear_value_error(kwargs, match):
    sde = VPSDE()
    with pytest.raises(ValueError, match=match):
        solve(sde, toy.gauss3().score_fn(sde), (4, 2), **kwargs)


def test_wrong_number_of_generators():
    sde = VPSDE()
    with pytest.raises(ValueError, match="per-sample generators"):
        solve(sde, toy.gauss3().score_fn(sde), (4, 2), solver="ddim", nfe=5,
              generator=per_sample_generators(0, range(3)))


# --- custom time grids (times=) -------------------------------------------------------------------

@pytest.mark.parametrize("sde", ALL_SDES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("opts", FIXED, ids=str)
def test_times_of_a_generated_grid_give_the_same_samples(sde, opts):
    """``times=time_grid(...)`` is the grid ``steps``/``schedule``/``eps`` make: samples equal bit for bit."""
    mix = toy.gauss3()
    for schedule, eps, denoise in (("edm", EPS, True), ("logsnr", 0.02, False)):
        grid = time_grid(sde, 5, schedule, eps)
        got = solve(sde, mix.score_fn(sde), (4, 2), times=grid, denoise=denoise, generator=gen(3), **opts)
        want = solve(sde, mix.score_fn(sde), (4, 2), steps=5, schedule=schedule, eps=eps, denoise=denoise,
                     generator=gen(3), **opts)
        assert torch.equal(got, want)


@pytest.mark.parametrize("opts", [dict(solver="ddim"), dict(solver="dpm_solver_multistep", order=3),
                                  dict(solver="dpm_solver_pp_2m")], ids=str)
def test_times_are_where_the_score_is_evaluated(opts):
    """A grid that starts below T and ends above eps: the score is called at those times, in order (at the
    last one for the denoising step)."""
    sde, mix = VPSDE(), toy.gauss3()
    times = [0.8, 0.55, 0.31, 0.2, 0.07]
    seen = []

    def score(x, t):
        seen.append(t[0].item())
        return mix.score_fn(sde)(x, t)

    solve(sde, score, (3, 2), times=times, generator=gen(), **opts)
    assert seen == pytest.approx(times, rel=1e-7)   # float32 times


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=lambda s: type(s).__name__)
def test_times_start_the_flow_at_times_0(sde):
    """x_T is the state at times[0]: the probability-flow map from t0 = 0.5 to t1 = 0.01 of a Gaussian
    (exact_flow's formula with T -> t0), by singlestep DPM-Solver-3 on 21 log-SNR-spaced times (3rd order,
    errors ~3e-5 here), to 1e-4."""
    t0, t1 = 0.5, 0.01
    sig = torch.exp(torch.linspace(sigma_of_t(sde, t0).log().item(), sigma_of_t(sde, t1).log().item(), 21,
                                   dtype=torch.float64))
    times = t_of_sigma(sde, sig)
    times[0], times[-1] = t0, t1
    x0 = torch.randn(64, 3, generator=gen(5), dtype=torch.float64)
    got = solvers.dpm_solver_singlestep(sde, GAUSS.score_fn(sde), x0.shape, times=times, order=3, denoise=False,
                                        x_T=x0, dtype=torch.float64)
    (a0, s0), (a1, s1) = coeffs(sde, t0), coeffs(sde, t1)
    want = a1 * (MU + torch.sqrt((C ** 2 + (s1 / a1) ** 2) / (C ** 2 + (s0 / a0) ** 2)) * (x0 / a0 - MU))
    assert (got - want).abs().max() < 1e-4


@pytest.mark.parametrize("kwargs,match", [
    (dict(solver="ddim", times=[1.0, 0.5, 0.1], steps=2), "give times or nfe/steps, not both"),
    (dict(solver="heun", times=[1.0, 0.5, 0.1], nfe=5), "heun: give times or nfe/steps, not both"),
    (dict(solver="dpm_solver", times=[1.0, 0.5, 0.1], schedule="uniform"), "give times or schedule='uniform'"),
    (dict(solver="dpm_solver_multistep", times=[1.0, 0.5, 0.1], rho=3.0), "give times or schedule"),
    (dict(solver="dpm_solver_pp_2m", times=[1.0, 0.5, 0.5]), "strictly decreasing"),
    (dict(solver="ddim", times=[0.1, 0.5, 1.0]), "strictly decreasing"),
    (dict(solver="ddim", times=[1.0, 0.0]), "> 0"),
    (dict(solver="ddim", times=[1.0, float("nan"), 0.1]), "finite"),
    (dict(solver="ddim", times=[1.0]), "at least 2 times"),
    (dict(solver="ddim", times=[[1.0, 0.5]]), "1-D"),
    (dict(solver="ddim", times="1.0,0.5"), "a sequence of numbers"),
    (dict(solver="ddim", times=torch.tensor([1.0, 0.5])), "times must be float64"),
    (dict(solver="adaptive_sde", times=[1.0, 0.5]), "does not take \\['times'\\]"),
])
def test_bad_times_are_a_clear_value_error(kwargs, match):
    sde = VPSDE()
    with pytest.raises(ValueError, match=match):
        solve(sde, toy.gauss3().score_fn(sde), (4, 2), **kwargs)
