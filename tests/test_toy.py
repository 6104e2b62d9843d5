"""The Gaussian-mixture toy's answers against direct computation: the fast score and log-density against
the eigen-basis reference formula, the classifier and class-conditional scores against Bayes' rule on the
time-t components, the conditionals against ``p(x) / p(observed)``."""
import math

import pytest
import torch

from sdegen.sde import SubVPSDE, VESDE, VPSDE
from sdegen.toy import GaussianMixture, gauss3, gmm16d, grid25, ring8

SDES = [VESDE(), VPSDE(), SubVPSDE()]
MIXES = {"gauss3": gauss3, "grid25": grid25, "ring8": ring8, "gmm16d": gmm16d}
G = lambda seed=0: torch.Generator().manual_seed(seed)


def reference_terms(mix, x, t, sde):
    """Per-component log N_k(t) [B, K] and scores [B, K, D] in the eigenbasis of each C_k (float64)."""
    x = x.to(torch.float64)
    a, s = sde.marginal_coeffs(t.to(torch.float64))
    a, s = a.reshape(-1, 1, 1), s.reshape(-1, 1, 1)
    lam, U = torch.linalg.eigh(mix.covs)
    var = a ** 2 * lam + s ** 2
    diff = x[:, None, :] - a * mix.means
    proj = torch.einsum("kdj,bkd->bkj", U, diff)
    logp = -0.5 * ((proj ** 2 / var).sum(-1) + var.log().sum(-1) + mix.dim * math.log(2 * math.pi))
    return logp, -torch.einsum("kdj,bkj->bkd", U, proj / var)


def reference_score(mix, x, t, sde):
    logp, comp = reference_terms(mix, x, t, sde)
    r = torch.softmax(logp + mix.weights.log(), -1)
    return (r[..., None] * comp).sum(1), torch.logsumexp(logp + mix.weights.log(), -1)


def points(mix, sde, t, n, seed):
    # draws from p_t (where samplers evaluate the score) and a few far-off points
    a, s = sde.marginal_coeffs(torch.tensor([t], dtype=torch.float64))
    x0 = mix.sample(n, G(seed), dtype=torch.float64)
    x = a * x0 + s * torch.randn(n, mix.dim, generator=G(seed + 1), dtype=torch.float64)
    return torch.cat([x, 3 * x[:8] + 5.0])


@pytest.mark.parametrize("name", MIXES)
@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_fast_score_equals_reference_in_float64(name, sde):
    mix = MIXES[name]()
    for t_val in (1e-3, 0.05, 0.4, 1.0):
        x = points(mix, sde, t_val, 300, 0)
        t = torch.full((x.shape[0],), t_val, dtype=torch.float64)
        ref, ref_logp = reference_score(mix, x, t, sde)
        torch.testing.assert_close(mix.score_fn(sde)(x, t), ref, rtol=1e-10, atol=1e-10 * ref.abs().max().item())
        torch.testing.assert_close(mix.log_prob_t(x, t, sde), ref_logp, rtol=1e-10, atol=1e-10)
    # one time per row takes the other path
    t = torch.rand(x.shape[0], generator=G(2), dtype=torch.float64) * (1 - 1e-3) + 1e-3
    ref, ref_logp = reference_score(mix, x, t, sde)
    torch.testing.assert_close(mix.score_fn(sde)(x, t), ref, rtol=1e-10, atol=1e-10 * ref.abs().max().item())
    torch.testing.assert_close(mix.log_prob_t(x, t, sde), ref_logp, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", MIXES)
def test_float32_score_is_float32_accurate(name):
    # float32 input is computed in float32: errors stay at float32 rounding of the terms of the score
    mix, sde = MIXES[name](), VESDE()
    for t_val in (1e-3, 0.1, 1.0):
        x = points(mix, sde, t_val, 300, 5)
        t = torch.full((x.shape[0],), t_val, dtype=torch.float64)
        ref, _ = reference_score(mix, x, t, sde)
        _, comp = reference_terms(mix, x, t, sde)
        got = mix.score_fn(sde)(x.float(), t.float())
        assert got.dtype == torch.float32
        scale = comp.abs().amax(dim=(1, 2))[:, None] + 1.0   # the largest term summed, per point
        assert ((got.double() - ref).abs() / scale).max() < 1e-5


def test_structure_is_detected():
    assert grid25().structure == "diagonal" and gauss3().structure == "full"
    assert GaussianMixture([[0.0, 1.0]], [[[1.0, 0.0], [0.0, 2.0]]]).structure == "diagonal"


def direct_component_logp(mix, x, t, sde):
    """log w_k N(x; a mu_k, a^2 C_k + s^2 I) by torch.distributions, [B, K]."""
    a, s = sde.marginal_coeffs(torch.tensor(t, dtype=torch.float64))
    covs = a ** 2 * mix.covs + s ** 2 * torch.eye(mix.dim, dtype=torch.float64)
    dist = torch.distributions.MultivariateNormal(a * mix.means, covs)
    return dist.log_prob(x.to(torch.float64)[:, None, :]) + mix.weights.log()


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_classifier_is_bayes_rule_on_the_noised_components(sde):
    mix = gauss3()
    for t_val in (0.01, 0.3, 0.9):
        x = points(mix, sde, t_val, 200, 3)
        t = torch.full((x.shape[0],), t_val, dtype=torch.float64)
        expected = torch.log_softmax(direct_component_logp(mix, x, t_val, sde), -1)
        torch.testing.assert_close(mix.classifier_fn(sde)(x, t), expected, rtol=1e-10, atol=1e-10)


def test_class_conditional_score_and_classifier_gradient():
    mix, sde = gauss3(), VPSDE()
    x = points(mix, sde, 0.2, 50, 4)
    t = torch.full((x.shape[0],), 0.2, dtype=torch.float64)
    cond = mix.conditional_score_fn(sde)
    _, comp = reference_terms(mix, x, t, sde)
    for k in range(mix.n_components):
        torch.testing.assert_close(cond(x, t, k), comp[:, k], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(mix.component(k).score_fn(sde)(x, t), comp[:, k], rtol=1e-10, atol=1e-10)
        # grad_x log p_t(k | x) = grad log p_t(x | k) - grad log p_t(x)
        xg = x.clone().requires_grad_(True)
        grad, = torch.autograd.grad(mix.classifier_fn(sde)(xg, t)[:, k].sum(), xg)
        torch.testing.assert_close(grad, comp[:, k] - mix.score_fn(sde)(x, t), rtol=1e-8, atol=1e-8)
    labels = torch.tensor([0, -1, 2, 1] * 14 + [-1, 0])  # 58 points
    mixed = cond(x, t, labels)
    torch.testing.assert_close(mixed[labels < 0], mix.score_fn(sde)(x, t)[labels < 0])
    torch.testing.assert_close(mixed[labels == 2], comp[labels == 2, 2])
    with pytest.raises(ValueError, match="labels must be integers < 3"):
        cond(x, t, 3)


@pytest.mark.parametrize("name,mask", [("gauss3", [1, 0]), ("gauss3", [0, 1]),
                                       ("gmm16d", [1, 0, 0, 1] * 4), ("grid25", [0, 1])])
def test_condition_is_joint_over_marginal(name, mask):
    mix = MIXES[name]()
    mask_b = torch.tensor(mask, dtype=torch.bool)
    values = mix.sample(3, G(7), dtype=torch.float64)
    conds = mix.condition(values, mask_b)
    assert len(conds) == 3 and mix.condition(values[1], mask_b).dim == int((~mask_b).sum())
    marginal = mix.marginal(mask_b)
    for v, cond in zip(values, conds):
        xu = cond.sample(64, G(8), dtype=torch.float64)
        xu = xu + 0.3 * torch.randn(64, cond.dim, generator=G(9), dtype=torch.float64)   # also off the draws
        x = v.repeat(64, 1)
        x[:, ~mask_b] = xu
        expected = mix.log_prob(x) - marginal.log_prob(v[mask_b][None])
        torch.testing.assert_close(cond.log_prob(xu), expected, rtol=1e-9, atol=1e-9)


def test_condition_on_a_linear_observation_is_joint_over_observation_density():
    # a mixture over RGB pixels given the grey level: p(c | y) = p_x(x) / (prod(S) p_y(y)), x = offset + basis c
    mix = gmm16d().marginal(torch.arange(16) < 3)
    A = torch.tensor([[1 / 3, 1 / 3, 1 / 3]], dtype=torch.float64)
    S = torch.linalg.svdvals(A)
    y_dist = GaussianMixture(mix.means @ A.T, A @ mix.covs @ A.T, weights=mix.weights)
    ys = mix.sample(2, G(1), dtype=torch.float64) @ A.T
    for y, lin in zip(ys, mix.condition_linear(A, ys)):
        c = lin.mixture.sample(50, G(2), dtype=torch.float64)
        c = c + 0.2 * torch.randn(50, 2, generator=G(3), dtype=torch.float64)
        x = lin.offset + c @ lin.basis.T
        torch.testing.assert_close(x @ A.T, y.expand(50, 1), rtol=0, atol=1e-12)
        torch.testing.assert_close(lin.coordinates(x), c, rtol=0, atol=1e-12)
        expected = mix.log_prob(x) - S.log().sum() - y_dist.log_prob(y[None])
        torch.testing.assert_close(lin.mixture.log_prob(c), expected, rtol=1e-9, atol=1e-9)
        draws = lin.sample(20, G(4), dtype=torch.float64)
        torch.testing.assert_close(draws @ A.T, y.expand(20, 1), rtol=0, atol=1e-12)


def test_bad_conditioning_input_is_an_error():
    mix = gauss3()
    with pytest.raises(ValueError, match="at least one observed and one unobserved"):
        mix.condition([0.0, 0.0], [1, 1])
    with pytest.raises(ValueError, match=r"mask must be \[2\]"):
        mix.condition([0.0, 0.0], [1, 0, 0])
    with pytest.raises(ValueError, match=r"values must have shape \[2\]"):
        mix.condition([0.0, 0.0, 1.0], [1, 0])
    with pytest.raises(ValueError, match="M < 2"):
        mix.condition_linear([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0])
    with pytest.raises(ValueError, match="full row rank"):
        gmm16d().condition_linear([[1.0] * 16, [2.0] * 16], [0.0, 0.0])
    with pytest.raises(ValueError, match="component must be in"):
        mix.component(3)
