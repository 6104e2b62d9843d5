import math

import pytest
import torch

from sdegen.likelihood import bits_per_dim, log_likelihood
from sdegen.sde import SubVPSDE, VESDE, VPSDE
from sdegen.toy import gauss3

MIX = gauss3()
EPS = 1e-5


def _points(n=48):
    return MIX.sample(n, torch.Generator().manual_seed(0), dtype=torch.float64)


# VE with sigma_max=500 so that the prior N(0, sigma_max^2 I) equals p_T to well under 0.01 nats
@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE(sigma_max=500.0)], ids=lambda s: type(s).__name__)
def test_exact_divergence_matches_exact_log_density(sde):
    x = _points()
    logp = log_likelihood(sde, MIX.score_fn(sde), x, exact_divergence=True, eps=EPS)
    true = MIX.log_prob_t(x, torch.full((x.shape[0],), EPS, dtype=torch.float64), sde)
    assert (logp - true).abs().max().item() < 0.02


def test_hutchinson_is_unbiased():
    sde = VPSDE()
    x = _points(32)
    exact = log_likelihood(sde, MIX.score_fn(sde), x, exact_divergence=True, eps=EPS)
    est = torch.stack([log_likelihood(sde, MIX.score_fn(sde), x, eps=EPS, n_probes=2,
                                      generator=torch.Generator().manual_seed(s)) for s in range(6)])
    err = (est - exact).flatten()
    se = err.std() / math.sqrt(err.numel())
    assert err.std() > 0  # the estimate is random...
    assert abs(err.mean().item()) < 4 * se.item()  # ...and unbiased


def test_gaussian_probes_and_bad_input():
    sde = VPSDE()
    x = _points(4)
    out = log_likelihood(sde, MIX.score_fn(sde), x, probe="gaussian", generator=torch.Generator().manual_seed(0))
    assert out.shape == (4,) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="rademacher"):
        log_likelihood(sde, MIX.score_fn(sde), x, probe="uniform")
    with pytest.raises(ValueError, match="n_probes"):
        log_likelihood(sde, MIX.score_fn(sde), x, n_probes=0)


def test_bits_per_dim():
    # a uniform density on [0, 1]^D has log p = 0: after the 8-bit offset it costs exactly 8 bits/dim
    assert bits_per_dim(torch.zeros(3), dims=12, offset=8.0).tolist() == [8.0] * 3
    # a density on [-1, 1]^D: log p = -D log 2 -> 1 + 7 = 8 bits/dim as well
    logp = torch.tensor([-12 * math.log(2)])
    assert torch.allclose(bits_per_dim(logp, dims=12, offset=7.0), torch.tensor([8.0]))
    with pytest.raises(ValueError):
        bits_per_dim(logp, dims=0)
