"""The DSM losses are minimised by the true score: with the exact score of a mixture the loss is lower than
with perturbed scores by more than the Monte-Carlo error (same random draws for both, 8 independent batches)."""
import math

import pytest
import torch

from sdegen.losses import ddpm_loss, dsm_loss, get_loss, smld_loss
from sdegen.sde import SubVPSDE, VESDE, VPSDE
from sdegen.toy import gauss3

MIX = gauss3()
PERTURB = {
    "x0.9": lambda s: (lambda x, t: 0.9 * s(x, t)),
    "x1.1": lambda s: (lambda x, t: 1.1 * s(x, t)),
    "shift": lambda s: (lambda x, t: s(x, t) + 0.3),
}


def _gap(loss_fn, sde, exact, wrong, **kw):
    diffs = []
    for seed in range(8):
        x0 = MIX.sample(1000, torch.Generator().manual_seed(100 + seed), dtype=torch.float64)
        good = loss_fn(sde, exact, x0, generator=torch.Generator().manual_seed(seed), **kw)
        bad = loss_fn(sde, wrong, x0, generator=torch.Generator().manual_seed(seed), **kw)
        diffs.append((bad - good).item())
    d = torch.tensor(diffs)
    return d.mean().item(), d.std().item() / math.sqrt(len(diffs))


@pytest.mark.parametrize("sde", [VESDE(), VPSDE(), SubVPSDE()], ids=lambda s: type(s).__name__)
@pytest.mark.parametrize("likelihood_weighting", [False, True])
@pytest.mark.parametrize("perturb", sorted(PERTURB))
def test_dsm_minimised_by_true_score(sde, likelihood_weighting, perturb):
    exact = MIX.score_fn(sde)
    mean, se = _gap(dsm_loss, sde, exact, PERTURB[perturb](exact), likelihood_weighting=likelihood_weighting)
    assert mean > 3 * se and mean > 0, (mean, se)


@pytest.mark.parametrize("loss_fn,sde", [(smld_loss, VESDE()), (ddpm_loss, VPSDE())], ids=["smld", "ddpm"])
@pytest.mark.parametrize("perturb", sorted(PERTURB))
def test_discrete_losses_minimised_by_true_score(loss_fn, sde, perturb):
    exact = MIX.score_fn(sde)
    mean, se = _gap(loss_fn, sde, exact, PERTURB[perturb](exact))
    assert mean > 3 * se and mean > 0, (mean, se)


def test_eps_parametrisation_gives_the_noise_prediction_loss():
    # a network predicting eps: std * score + z = z - eps_theta, so predicting the true noise gives zero loss
    sde = VPSDE()

    class Oracle(torch.nn.Module):
        def forward(self, x, labels):  # labels = 999 t; recover t and invert x = a x0 + s z with x0 = 0
            a, s = sde.marginal_coeffs(labels / 999)
            return x / s[:, None]

    x0 = torch.zeros(64, 2)
    loss = dsm_loss(sde, Oracle(), x0, parametrization="eps", generator=torch.Generator().manual_seed(0))
    assert loss.item() < 1e-8


def test_reduce_mean_divides_by_dimension():
    sde = VESDE()
    x0 = torch.randn(32, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    score = lambda x, t: -x
    s = dsm_loss(sde, score, x0, generator=torch.Generator().manual_seed(1))
    m = dsm_loss(sde, score, x0, reduce_mean=True, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(s, 48 * m)


def test_loss_registry_and_errors():
    assert get_loss("dsm") is dsm_loss
    with pytest.raises(ValueError, match="choose one of"):
        get_loss("nce")
    with pytest.raises(ValueError, match="VESDE"):
        smld_loss(VPSDE(), lambda x, t: x, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="VPSDE"):
        ddpm_loss(VESDE(), lambda x, t: x, torch.zeros(2, 2))
