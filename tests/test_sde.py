import math

import pytest
import torch

from sdegen.sde import SubVPSDE, VESDE, VPSDE, get_sde

SDES = [VESDE(), VPSDE(), SubVPSDE()]


@pytest.mark.parametrize("sde,k", [(s, k) for s in SDES for k in (99, 499, 998)] + [(VESDE(), 0)],
                         ids=lambda v: type(v).__name__ if not isinstance(v, int) else str(v))
def test_marginal_matches_discrete_forward_chain(sde, k):
    """Run the forward chain x_{i+1} = x_i + f_i + G_i z over indices 0..k and compare its empirical mean
    and std with marginal_prob at the time the chain has reached: sigma_k = sigma(k/(N-1)) for VE; for VP
    (DDPM betas = beta(t)/N) and sub-VP (Euler-Maruyama, dt = 1/N), t = (k+1)/N."""
    em = isinstance(sde, SubVPSDE)
    g = torch.Generator().manual_seed(k)
    n = 20000
    x0 = torch.tensor([1.0, -0.5], dtype=torch.float64).expand(n, 2)
    x = x0.clone()
    for i in range(k + 1):
        t = torch.full((n,), i / sde.N if em else i / (sde.N - 1), dtype=torch.float64)
        f, G = sde.discretize(x, t)
        x = x + f + G[:, None] * torch.randn(n, 2, generator=g, dtype=torch.float64)
    t = torch.full((n,), k / (sde.N - 1) if isinstance(sde, VESDE) else (k + 1) / sde.N, dtype=torch.float64)
    mean, std = sde.marginal_prob(x0, t)
    emp_mean, emp_std = x.mean(0), x.std(0)
    s = std[0].item()
    # standard errors of a mean and of a std from n normal draws; 5 SE
    assert torch.allclose(emp_mean, mean[0], atol=5 * s / math.sqrt(n)), (emp_mean, mean[0])
    assert torch.allclose(emp_std, torch.full_like(emp_std, s), rtol=5 / math.sqrt(2 * n)), (emp_std, s)


def test_vp_discrete_chain_coefficients_close_to_continuous():
    sde = VPSDE()
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    a_d, s_d = sde.discrete_marginal_coeffs(t)
    a_c, s_c = sde.marginal_coeffs(t)
    assert torch.allclose(a_d, a_c, atol=0.01) and torch.allclose(s_d, s_c, atol=0.01)


def test_closed_forms():
    t = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    ve = VESDE(0.01, 50.0)
    assert torch.allclose(ve.marginal_coeffs(t)[1], 0.01 * 5000 ** t)
    x = torch.zeros(3, 4, dtype=torch.float64)
    g = ve.sde(x, t)[1]
    # g^2 = d sigma^2/dt = 2 sigma^2 log(smax/smin)
    assert torch.allclose(g ** 2, 2 * (0.01 * 5000 ** t) ** 2 * math.log(5000))
    vp = VPSDE(0.1, 20.0)
    ib = 0.1 * t + 0.5 * t ** 2 * 19.9
    assert torch.allclose(vp.marginal_coeffs(t)[0], torch.exp(-0.5 * ib))
    assert torch.allclose(vp.marginal_coeffs(t)[1], torch.sqrt(1 - torch.exp(-ib)))
    sub = SubVPSDE(0.1, 20.0)
    assert torch.allclose(sub.marginal_coeffs(t)[1], 1 - torch.exp(-ib))
    assert torch.allclose(sub.sde(x, t)[1] ** 2, (0.1 + t * 19.9) * (1 - torch.exp(-2 * ib)))


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_prior_logp_is_the_prior_density(sde):
    z = sde.prior_sampling((7, 3, 2, 2), torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = torch.distributions.Normal(0.0, sde.prior_std).log_prob(z).reshape(7, -1).sum(-1)
    assert torch.allclose(sde.prior_logp(z), ref)


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
def test_reverse_drifts(sde):
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    t = torch.rand(5, dtype=torch.float64)
    score = lambda x, t: -x * 0.7
    f, g = sde.sde(x, t)
    rev_f, rev_g = sde.reverse(score).sde(x, t)
    ode_f, ode_g = sde.reverse(score, probability_flow=True).sde(x, t)
    assert torch.allclose(rev_f, f - g[:, None, None] ** 2 * score(x, t))
    assert torch.allclose(ode_f, f - 0.5 * g[:, None, None] ** 2 * score(x, t))
    assert torch.equal(rev_g, g) and (ode_g == 0).all()


@pytest.mark.parametrize("sde", SDES, ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_outputs_follow_input_dtype(sde, dtype):
    x = torch.randn(4, 3, dtype=dtype)
    t = torch.rand(4, dtype=dtype)
    for out in (*sde.sde(x, t), *sde.marginal_prob(x, t), *sde.discretize(x, t), sde.perturb(x, t, x)):
        assert out.dtype == dtype and out.device == x.device


@pytest.mark.parametrize("kwargs,name", [
    (dict(sigma_min=1.0, sigma_max=0.5), "sigma_min"),
    (dict(sigma_min=0.0), "sigma_min"),
    (dict(N=0), "N"),
])
def test_ve_bad_parameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        VESDE(**kwargs)


@pytest.mark.parametrize("cls", [VPSDE, SubVPSDE])
@pytest.mark.parametrize("kwargs,name", [(dict(beta_min=0.0), "beta_min"), (dict(beta_max=-1.0), "beta_max"),
                                         (dict(N=0), "N")])
def test_vp_bad_parameters(cls, kwargs, name):
    with pytest.raises(ValueError, match=name):
        cls(**kwargs)


def test_get_sde_names():
    assert isinstance(get_sde("vp"), VPSDE) and isinstance(get_sde("sub-vp"), SubVPSDE)
    with pytest.raises(ValueError, match="choose one of"):
        get_sde("xx")


def test_with_steps_changes_only_N():
    s = VESDE(0.02, 10.0).with_steps(2000)
    assert (s.sigma_min, s.sigma_max, s.N) == (0.02, 10.0, 2000)
