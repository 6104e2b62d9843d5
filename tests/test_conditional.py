"""Controllable generation judged by exact answers: with the exact scores and classifier of Gaussian
mixtures, guided sampling must reproduce a component and inpainting / colorization the exact conditional
(z-scores of weights and moments under Z_MAX at the sample size used, as in test_sampling.py)."""
import pytest
import torch

import sdegen
from sdegen.conditional import colorize, decoupled_color_basis, inpaint
from sdegen.noise import per_sample_generators
from sdegen.sde import SubVPSDE, VESDE, VPSDE
from sdegen.toy import GaussianMixture, gauss3

Z_MAX = 5.0
MIX = gauss3()
SDES = [VESDE(), VPSDE(), SubVPSDE()]
G = lambda seed=0: torch.Generator().manual_seed(seed)


def worst_z(rep: dict) -> float:
    return max(v for k, v in rep.items() if k.endswith("_z"))


# --- guidance -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler,options", [("pc", dict(steps=200)), ("dpm_solver_pp_2m", dict(nfe=50))],
                         ids=["pc", "dpm_solver_pp_2m"])
@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_classifier_guidance_with_the_exact_classifier_samples_a_component(sde, sampler, options):
    # score + grad log p_t(y | x) is the exact score of component y (Song et al. 2021, eq. 14)
    score = sdegen.guided_score(MIX.score_fn(sde), MIX.classifier_fn(sde), 1)
    x = sdegen.generate(sde, score, (2000, 2), sampler=sampler, generator=G(0), **options)
    assert worst_z(MIX.component(1).moment_report(x)) < Z_MAX


def test_guidance_takes_one_label_per_row_and_a_scale():
    sde = VPSDE()
    y = torch.tensor([0, 2] * 1000)
    score = sdegen.guided_score(MIX.score_fn(sde), MIX.classifier_fn(sde), y)
    x = sdegen.generate(sde, score, (2000, 2), sampler="dpm_solver_pp_2m", nfe=50, generator=G(1))
    assert worst_z(MIX.component(0).moment_report(x[y == 0])) < Z_MAX
    assert worst_z(MIX.component(2).moment_report(x[y == 2])) < Z_MAX
    # the scale multiplies the classifier's gradient: s * grad log p(y|x) = scaled - unguided
    xt, t = MIX.sample(16, G(2)), torch.full((16,), 0.3)
    base = MIX.score_fn(sde)(xt, t)
    one = sdegen.guided_score(MIX.score_fn(sde), MIX.classifier_fn(sde), 2)(xt, t)
    three = sdegen.guided_score(MIX.score_fn(sde), MIX.classifier_fn(sde), 2, scale=3.0)(xt, t)
    torch.testing.assert_close(three - base, 3 * (one - base), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sde", [VESDE(), VPSDE()], ids=lambda s: type(s).__name__)
def test_classifier_free_guidance_at_w0_is_the_conditional(sde):
    cond = MIX.conditional_score_fn(sde)
    score = sdegen.classifier_free_score(cond, 2, guidance=0.0)
    x = sdegen.generate(sde, score, (2000, 2), sampler="dpm_solver_pp_2m", nfe=50, generator=G(3))
    assert worst_z(MIX.component(2).moment_report(x)) < Z_MAX


def test_classifier_free_guidance_combines_conditional_and_null_scores():
    sde = VPSDE()
    cond = MIX.conditional_score_fn(sde)
    x, t = MIX.sample(32, G(4), dtype=torch.float64), torch.full((32,), 0.4, dtype=torch.float64)
    y = torch.arange(32) % 3
    got = sdegen.classifier_free_score(cond, y, guidance=1.5)(x, t)
    expected = 2.5 * cond(x, t, y) - 1.5 * cond(x, t, sdegen.NULL_LABEL)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert sdegen.NULL_LABEL == -1
    torch.testing.assert_close(cond(x, t, sdegen.NULL_LABEL), MIX.score_fn(sde)(x, t))


def test_guidance_input_errors():
    sde = VPSDE()
    x, t = MIX.sample(4, G(0)), torch.full((4,), 0.5)
    with pytest.raises(ValueError, match=r"y must be in \[0, 3\)"):
        sdegen.guided_score(MIX.score_fn(sde), MIX.classifier_fn(sde), 3)(x, t)
    with pytest.raises(ValueError, match="y must be an int or a LongTensor"):
        sdegen.guided_score(MIX.score_fn(sde), MIX.classifier_fn(sde), torch.tensor([0, 1]))(x, t)
    with pytest.raises(ValueError, match="y must be an int or a LongTensor"):
        sdegen.classifier_free_score(MIX.conditional_score_fn(sde), 0.5, guidance=1.0)(x, t)
    with pytest.raises(ValueError, match="logits"):
        sdegen.guided_score(MIX.score_fn(sde), lambda x, t: x.sum(1), 0)(x, t)
    with pytest.raises(ValueError, match="guidance must be a finite number"):
        sdegen.classifier_free_score(MIX.conditional_score_fn(sde), 0, guidance=float("nan"))


# --- inpainting ---------------------------------------------------------------------------------------

# coordinate 0 has the same law under both components: observing it says nothing of coordinate 1, so the
# conditional is the marginal of coordinate 1 and every method, the replacement included, must be exact
INDEPENDENT = GaussianMixture([[0.5, -2.0], [0.5, 2.0]], [[[0.3, 0.0], [0.0, 0.1]], [[0.3, 0.0], [0.0, 0.2]]],
                              weights=[0.7, 0.3])


@pytest.mark.parametrize("method,sampler,options", [
    ("replace", "pc", dict(steps=200)),
    ("replace", "dpm_solver_pp_2m", dict(nfe=50)),
    ("repaint", "pc", dict(steps=200, resample=2, jump=10)),
    ("repaint", "heun", dict(steps=30, s_churn=5.0, resample=3, jump=5)),
    ("repaint", "dpm_solver_pp_2m", dict(steps=30, resample=3, jump=5)),
    ("repaint", "adaptive_sde", dict(resample=2, jump=100, rtol=0.05)),
    ("smc", "pc", dict(steps=200, particles=4)),
], ids=["replace-pc", "replace-dpm_solver_pp_2m", "repaint", "repaint-heun", "repaint-dpm_solver_pp_2m",
        "repaint-adaptive_sde", "smc"])
def test_every_method_is_exact_when_the_observation_is_uninformative(method, sampler, options):
    sde = VPSDE()
    known = torch.tensor([[1.3, 123.0]]).repeat(1500, 1)   # unobserved entries may hold anything
    mask = torch.tensor([1, 0])
    x = inpaint(sde, INDEPENDENT.score_fn(sde), known, mask, method=method, sampler=sampler,
                generator=G(5), **options)
    assert torch.equal(x[:, 0], known[:, 0])
    exact = INDEPENDENT.condition(known[0].double(), mask)
    assert worst_z(exact.moment_report(x[:, 1:])) < Z_MAX


def informative_case(n):
    # gauss3 given x_0 = -1: components 0 and 2, 76% / 24%, the unobserved mean pulled by the correlation
    value, mask = torch.tensor([-1.0, 0.0]), torch.tensor([True, False])
    return value.repeat(n, 1), mask, MIX.condition(value.double(), mask)


def test_smc_reaches_the_exact_conditional():
    sde = VPSDE()
    known, mask, exact = informative_case(1500)
    x = inpaint(sde, MIX.score_fn(sde), known, mask, method="smc", particles=16, steps=200, generator=G(6))
    assert torch.equal(x[:, 0], known[:, 0])
    assert worst_z(exact.distribution_report(x[:, 1:])) < Z_MAX


# two correlated components; x_0 = 0 lies between them, and the replacement misses their weights badly
HARD = GaussianMixture([[-1.5, -1.0], [1.5, 1.0]], [[[0.3, 0.25], [0.25, 0.3]], [[0.3, -0.2], [-0.2, 0.3]]],
                       weights=[0.6, 0.4])


def test_smc_reaches_the_exact_conditional_where_replacement_is_biased_and_improves_with_particles():
    # TDS targets the chain's exact conditional: with K = 16 the component weights, mean and covariance pass
    # the z-tests at n = 2000, where the replacement misses the weights by many standard errors; its error
    # (a self-normalised importance-sampling bias, O(1/K)) falls as K grows
    sde, n = VPSDE(), 2000
    mask = torch.tensor([True, False])
    known = torch.zeros(n, 2)
    exact = HARD.condition(known[0].double(), mask)
    replace = exact.distribution_report(inpaint(sde, HARD.score_fn(sde), known, mask, steps=200, corrector=None,
                                                generator=G(12))[:, 1:])
    assert replace["weights_z"] > 3 * Z_MAX, replace
    rep = {k: exact.distribution_report(inpaint(sde, HARD.score_fn(sde), known, mask, method="smc", particles=k,
                                                 steps=200, generator=G(12))[:, 1:]) for k in (1, 4, 16)}
    assert worst_z(rep[16]) < Z_MAX, rep[16]
    # sampling noise of the TV at n = 2000: about 0.008; K = 1 (the twisted proposal alone) is off by > 0.1
    tv = {k: r["tv"] for k, r in rep.items()}
    assert tv[1] > 0.1 and tv[1] > tv[4] + 0.02 and tv[4] > tv[16] + 0.03, tv


def test_smc_needs_a_differentiable_score():
    sde = VPSDE()
    known, mask, _ = informative_case(4)
    detached = lambda x, t: MIX.score_fn(sde)(x, t).detach()
    with pytest.raises(ValueError, match="needs the gradient of score_fn"):
        inpaint(sde, detached, known, mask, method="smc", particles=2, steps=30)


def test_repaint_resampling_beats_plain_replacement():
    # Lugmayr et al. 2022: resampling harmonises the unobserved part with the observed one (given x_1 = 0.5:
    # components 0 and 1, 63% / 37%); the replacement gets the conditional covariance wrong
    sde = VPSDE()
    value, mask = torch.tensor([0.0, 0.5]), torch.tensor([False, True])
    known, exact = value.repeat(2000, 1), MIX.condition(value.double(), mask)
    common = dict(steps=200, corrector=None, generator=G(7))
    plain = inpaint(sde, MIX.score_fn(sde), known, mask, method="replace", **common)
    repaint = inpaint(sde, MIX.score_fn(sde), known, mask, method="repaint", resample=5, jump=10, **common)
    assert torch.equal(repaint[:, 1], known[:, 1])
    rep_plain, rep_repaint = exact.distribution_report(plain[:, :1]), exact.distribution_report(repaint[:, :1])
    assert rep_plain["cov_z"] > Z_MAX and rep_repaint["cov_err"] < 0.6 * rep_plain["cov_err"], (rep_plain, rep_repaint)


def test_repaint_with_one_pass_is_the_replacement():
    sde = VPSDE()
    known, mask, _ = informative_case(64)
    common = dict(steps=50, corrector=None, generator=None)
    a = inpaint(sde, MIX.score_fn(sde), known, mask, method="replace", **{**common, "generator": G(8)})
    b = inpaint(sde, MIX.score_fn(sde), known, mask, method="repaint", resample=1, **{**common, "generator": G(8)})
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("sampler,options", [("ddim", dict(steps=40, eta=1.0)), ("dpm_solver_pp_2m", dict(nfe=21))])
def test_repaint_on_a_solver_with_one_pass_is_the_replacement(sampler, options):
    # the pieces of the grid, run one after the other, are the whole run (ddim has no history to refill;
    # the multistep solver's first step of each piece is 1st order, so only the pass structure is compared there)
    sde = VPSDE()
    known, mask, _ = informative_case(64)
    a = inpaint(sde, MIX.score_fn(sde), known, mask, sampler=sampler, generator=G(8), **options)
    b = inpaint(sde, MIX.score_fn(sde), known, mask, method="repaint", resample=1, jump=10, sampler=sampler,
                generator=G(8), **options)
    if sampler == "ddim":
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    else:
        assert (a - b).abs().max() < 0.05 and not torch.equal(a, b)


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_transition_kernel_composes_with_the_perturbation_kernel(sde):
    # x(s) ~ p_0s(. | x0), then x(t) ~ p_st(. | x(s)) must be a draw of p_0t(. | x0) (Chapman-Kolmogorov)
    n, x0, s, t = 20000, torch.full((20000, 1), 0.7, dtype=torch.float64), 0.2, 0.6
    g = G(3)
    xs = sde.perturb(x0, torch.full((n,), s, dtype=torch.float64), torch.randn(n, 1, generator=g, dtype=torch.float64))
    xt = sde.transition(xs, s, t, torch.randn(n, 1, generator=g, dtype=torch.float64))
    a, std = (v.item() for v in sde.marginal_coeffs(torch.tensor([t], dtype=torch.float64)))
    mean_z = (xt.mean() - a * 0.7) / (std / n ** 0.5)
    var_z = (xt.var() / std ** 2 - 1) / (2 / (n - 1)) ** 0.5
    assert abs(mean_z) < Z_MAX and abs(var_z) < Z_MAX, (mean_z, var_z)
    with pytest.raises(ValueError, match="0 <= s < t"):
        sde.transition(xs, t, s, xs)


@pytest.mark.parametrize("method,options", [("smc", dict(particles=3)), ("replace", dict(corrector=None))])
def test_per_row_generators_make_rows_independent_of_the_batch(method, options):
    sde = VESDE()
    known, mask, _ = informative_case(6)
    run = lambda idx: inpaint(sde, MIX.score_fn(sde), known[list(idx)], mask, method=method, steps=30,
                              generator=per_sample_generators(11, idx), **options)
    torch.testing.assert_close(run(range(6))[2:4], run(range(2, 4)), rtol=1e-5, atol=1e-5)


def test_inpaint_input_errors():
    sde, score = VPSDE(), MIX.score_fn(VPSDE())
    known, mask = torch.zeros(4, 2), torch.tensor([1, 0])
    with pytest.raises(ValueError, match="unknown method"):
        inpaint(sde, score, known, mask, method="guess")
    with pytest.raises(ValueError, match=r"takes no option \['particles'\]"):
        inpaint(sde, score, known, mask, method="replace", particles=4)
    with pytest.raises(ValueError, match="resample must be an integer >= 1"):
        inpaint(sde, score, known, mask, method="repaint", resample=0)
    with pytest.raises(ValueError, match="cannot take a step_hook"):
        inpaint(sde, score, known, mask, sampler="ode")
    with pytest.raises(ValueError, match="travels back up in time, which the 'ode' sampler cannot follow"):
        inpaint(sde, score, known, mask, method="repaint", sampler="ode")
    with pytest.raises(ValueError, match="runs the 'pc' sampler's chain"):
        inpaint(sde, score, known, mask, method="smc", sampler="heun")
    with pytest.raises(ValueError, match="give nfe .* or steps"):
        inpaint(sde, score, known, mask, method="repaint", sampler="ddim")
    with pytest.raises(ValueError, match="leave corrector=None"):
        inpaint(sde, score, known, mask, method="smc", corrector="langevin")
    with pytest.raises(ValueError, match=r"takes no option \['nfe'\]"):
        inpaint(sde, score, known, mask, method="smc", nfe=10)
    with pytest.raises(ValueError, match="does not broadcast"):
        inpaint(sde, score, known, torch.tensor([1, 0, 1]))
    with pytest.raises(ValueError, match="0/1"):
        inpaint(sde, score, known, torch.tensor([0.5, 0.0]))


# --- colorization -------------------------------------------------------------------------------------

PIXELS = GaussianMixture([[0.8, -0.4, -0.5], [-0.5, 0.7, -0.3], [-0.2, -0.4, 0.9]],
                         torch.stack([0.04 * torch.eye(3) + 0.01, 0.03 * torch.eye(3), 0.05 * torch.eye(3) - 0.01]),
                         weights=[0.5, 0.3, 0.2])
A_GREY = [[1 / 3, 1 / 3, 1 / 3]]


def test_decoupled_basis_is_orthogonal_and_matches_the_paper():
    M = decoupled_color_basis(3)
    torch.testing.assert_close(M.T @ M, torch.eye(3, dtype=torch.float64))
    paper = torch.tensor([[5.7735014e-01, -8.1649649e-01, 4.7008697e-08],
                          [5.7735026e-01, 4.0824834e-01, 7.0710671e-01],
                          [5.7735026e-01, 4.0824822e-01, -7.0710683e-01]], dtype=torch.float64)
    # the same grey axis; the chroma plane spanned alike (a rotation within it is immaterial)
    torch.testing.assert_close(M[:, 0], paper[:, 0], rtol=0, atol=1e-6)
    torch.testing.assert_close(M[:, 1:] @ M[:, 1:].T, paper[:, 1:] @ paper[:, 1:].T, rtol=0, atol=1e-6)


def test_colorize_pixels_matches_the_exact_conditional_given_the_grey_level():
    sde = VPSDE()
    gray = torch.full((1500, 1), 0.0)                        # between the colours: all three plausible
    x = colorize(sde, PIXELS.score_fn(sde), gray, method="smc", particles=8, steps=200, generator=G(9))
    assert x.shape == (1500, 3)
    torch.testing.assert_close(x.mean(1, keepdim=True), gray, rtol=0, atol=1e-6)
    exact = PIXELS.condition_linear(A_GREY, gray[0].double())
    assert worst_z(exact.mixture.distribution_report(exact.coordinates(x))) < Z_MAX


def test_colorize_images_keeps_the_grey_level_per_pixel():
    # a 2x2 image of independent pixels; the replacement method; the channel mean is the grey image
    sde = VESDE()
    pixel_score = PIXELS.score_fn(sde)

    def score(x, t):
        b, c, h, w = x.shape
        flat = x.permute(0, 2, 3, 1).reshape(-1, c)
        return pixel_score(flat, t.repeat_interleave(h * w)).reshape(b, h, w, c).permute(0, 3, 1, 2)

    gray = torch.tensor([[0.1, -0.2], [0.0, 0.25]]).expand(300, 1, 2, 2)
    for method, options in (("replace", {}), ("smc", dict(particles=4))):   # smc: batched over the pixels
        x = colorize(sde, score, gray, steps=100, generator=G(10), method=method, **options)
        assert x.shape == (300, 3, 2, 2)
        torch.testing.assert_close(x.mean(1, keepdim=True), gray, rtol=0, atol=1e-6)
    # smc: the pixel whose grey level is 0 (between the colours) follows the exact conditional
    exact = PIXELS.condition_linear(A_GREY, torch.zeros(1, dtype=torch.float64))
    assert worst_z(exact.mixture.distribution_report(exact.coordinates(x[:, :, 1, 0]))) < Z_MAX
    with pytest.raises(ValueError, match=r"gray must be a tensor \[batch, 1, \.\.\.\]"):
        colorize(sde, score, torch.zeros(4, 3, 2, 2))


def test_the_names_the_issue_gives_are_exported():
    import sdegen
    from sdegen import conditional, score
    assert sdegen.inpaint is conditional.inpaint and sdegen.colorize is conditional.colorize
    assert sdegen.guided_score is score.guided_score and sdegen.classifier_free_score is score.classifier_free_score
