"""EDM's training recipe on every SDE (Karras et al. 2022, Table 1): the preconditioning, the score of a
preconditioned network, the loss's noise levels and its minimiser, and a short training that converges."""
import math

import pytest
import torch
from scipy import stats

from sdegen.losses import LOSSES, edm_loss
from sdegen.score import denoiser_from_model, edm_loss_weight, edm_preconditioning, score_fn_from_model
from sdegen.sde import SubVPSDE, VESDE, VPSDE
from sdegen.toy import GaussianMixture, gauss3

SDES = [VESDE(sigma_min=0.01, sigma_max=20.0), VPSDE(), SubVPSDE()]
IDS = ["VE", "VP", "subVP"]
MU = torch.tensor([0.7, -0.4], dtype=torch.float64)
STD = torch.tensor([0.3, 1.1], dtype=torch.float64)      # data std per dimension, unlike sigma_data
GAUSS = GaussianMixture(MU[None], torch.diag(STD ** 2)[None])


def sigma_of(sde, t):
    a, s = sde.marginal_coeffs(t)
    return s / a


def sigma_from_labels(sde, labels):
    """What an oracle network recovers from the labels sdegen feeds it: VE sigma itself, VP / sub-VP 999 t."""
    return labels if isinstance(sde, VESDE) else sigma_of(sde, labels / 999)


class ExactF(torch.nn.Module):
    """The raw network F that makes EDM's D the exact denoiser E[x0 | x_hat] of the Gaussian GAUSS:
    F = (D* - c_skip x_hat) / c_out, from its input c_in x_hat and the labels (times ``scale``, plus ``shift``)."""

    def __init__(self, sde, sigma_data, scale=1.0, shift=0.0):
        super().__init__()
        self.sde, self.sigma_data, self.scale, self.shift = sde, sigma_data, scale, shift

    def forward(self, inp, labels):
        sigma = sigma_from_labels(self.sde, labels.to(torch.float64))[:, None]
        c_skip, c_out, c_in = edm_preconditioning(sigma, self.sigma_data)
        x_hat = inp / c_in
        exact = MU + STD ** 2 / (STD ** 2 + sigma ** 2) * (x_hat - MU)      # Gaussian posterior mean
        return self.scale * (exact - c_skip * x_hat) / c_out + self.shift


def test_preconditioning_matches_table_1_and_its_derivation():
    sd = 0.5
    sigma = torch.tensor([1e-3, 0.1, 0.5, 2.0, 80.0], dtype=torch.float64)
    c_skip, c_out, c_in = edm_preconditioning(sigma, sd)
    # Table 1: c_skip = sd^2 / (s^2 + sd^2), c_out = s sd / sqrt(s^2 + sd^2), c_in = 1 / sqrt(s^2 + sd^2)
    torch.testing.assert_close(c_skip, sd ** 2 / (sigma ** 2 + sd ** 2))
    torch.testing.assert_close(c_out, sigma * sd / (sigma ** 2 + sd ** 2).sqrt())
    torch.testing.assert_close(c_in, (sigma ** 2 + sd ** 2).rsqrt())
    # Appendix B.6: unit-variance input, unit-variance target, and c_skip minimising c_out (data of std sd)
    torch.testing.assert_close(c_in ** 2 * (sd ** 2 + sigma ** 2), torch.ones_like(sigma))
    target_var = (1 - c_skip) ** 2 * sd ** 2 + c_skip ** 2 * sigma ** 2        # Var[x0 - c_skip (x0 + sigma n)]
    torch.testing.assert_close(target_var, c_out ** 2)
    torch.testing.assert_close(edm_loss_weight(sigma, sd) * c_out ** 2, torch.ones_like(sigma))
    assert c_skip[0] > 0.99999 and c_out[0] < 1.001e-3 and c_skip[-1] < 1e-4   # identity at low noise


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_edm_parametrization_of_the_exact_denoiser_is_the_exact_score(sde):
    sd = 0.5
    net = ExactF(sde, sd)
    score_fn = score_fn_from_model(net, sde, parametrization="edm", sigma_data=sd)
    denoiser = denoiser_from_model(net, sde, sigma_data=sd)
    exact = GAUSS.score_fn(sde)
    g = torch.Generator().manual_seed(0)
    for tv in (1e-4, 1e-2, 0.1, 0.5, 1.0):
        t = torch.full((256,), tv, dtype=torch.float64)
        a, s = sde.marginal_coeffs(t)
        x0 = GAUSS.sample(256, g, dtype=torch.float64)
        x = a[:, None] * x0 + s[:, None] * torch.randn(256, 2, generator=g, dtype=torch.float64)
        # the oracle's F = (D - c_skip x_hat) / c_out loses 1e-16 / sigma^2 to float64 round-off as sigma -> 0
        want, tol = exact(x, t), 1e-9 + 1e-15 / (s / a).min().item() ** 2
        assert ((score_fn(x, t) - want).abs().max() / want.abs().max()).item() < tol
        sigma = (s / a)[:, None]
        posterior = MU + STD ** 2 / (STD ** 2 + sigma ** 2) * (x / a[:, None] - MU)
        torch.testing.assert_close(denoiser(x, t), posterior, rtol=1e-9, atol=1e-9)


def test_edm_parametrization_errors():
    with pytest.raises(ValueError, match="continuous"):
        score_fn_from_model(torch.nn.Identity(), VPSDE(), "edm", continuous=False)
    with pytest.raises(ValueError, match="sigma_data must be > 0"):
        score_fn_from_model(torch.nn.Identity(), VPSDE(), "edm", sigma_data=0.0)
    with pytest.raises(ValueError, match="choose one of"):
        score_fn_from_model(torch.nn.Identity(), VPSDE(), "x0")


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_noise_levels_are_the_truncated_log_normal(sde):
    """sigma(t) of the times the loss draws follows log sigma ~ N(P_mean, P_std^2) restricted to
    [sigma(eps), sigma(T)] (Kolmogorov-Smirnov, n = 4000)."""
    p_mean, p_std, eps = -0.5, 2.0, 1e-3     # wide, so that both ends of the SDE's range cut it
    seen = []

    def spy(x, t):
        seen.append(t.clone())
        return -x

    edm_loss(sde, spy, torch.zeros(4000, 1, dtype=torch.float64), p_mean=p_mean, p_std=p_std, eps=eps,
             generator=torch.Generator().manual_seed(0))
    log_sigma = sigma_of(sde, seen[0]).log().numpy()
    lo, hi = [math.log(sigma_of(sde, torch.tensor(v, dtype=torch.float64)).item()) for v in (eps, sde.T)]
    assert log_sigma.min() >= lo - 1e-9 and log_sigma.max() <= hi + 1e-9
    law = stats.truncnorm((lo - p_mean) / p_std, (hi - p_mean) / p_std, loc=p_mean, scale=p_std)
    assert stats.kstest(log_sigma, law.cdf).pvalue > 1e-3


def _gap(sde, exact, wrong, x_sampler, **kw):
    diffs = []
    for seed in range(8):
        x0 = x_sampler(1000, torch.Generator().manual_seed(100 + seed))
        good = edm_loss(sde, exact, x0, generator=torch.Generator().manual_seed(seed), **kw)
        bad = edm_loss(sde, wrong, x0, generator=torch.Generator().manual_seed(seed), **kw)
        diffs.append((bad - good).item())
    d = torch.tensor(diffs)
    return d.mean().item(), d.std().item() / math.sqrt(len(diffs))


@pytest.mark.parametrize("sde", SDES, ids=IDS)
@pytest.mark.parametrize("wrong", [(0.9, 0.0), (1.1, 0.0), (1.0, 0.1)], ids=["x0.9", "x1.1", "shift"])
def test_edm_loss_is_minimised_by_the_exact_denoiser(sde, wrong):
    sample = lambda n, g: GAUSS.sample(n, g, dtype=torch.float64)  # noqa: E731
    mean, se = _gap(sde, ExactF(sde, 0.5), ExactF(sde, 0.5, *wrong), sample)
    assert mean > 3 * se and mean > 0, (mean, se)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_edm_loss_of_any_score_is_minimised_by_the_exact_score(sde):
    # a plain score function (a mixture's exact score) against one whose denoiser D = (x + s^2 score) / a is
    # off by 0.05: the same weighting and noise levels as for a preconditioned network
    mix = gauss3()
    exact = mix.score_fn(sde)

    def wrong(x, t):
        a, s = sde.marginal_coeffs(t)
        return exact(x, t) + (0.05 * a / s ** 2)[:, None]

    mean, se = _gap(sde, exact, wrong, lambda n, g: mix.sample(n, g, dtype=torch.float64))
    assert mean > 3 * se and mean > 0, (mean, se)


def test_edm_loss_value_equals_the_preconditioned_target_form():
    # lambda ||D - x0||^2 = ||F - (x0 - c_skip x_hat) / c_out||^2 (EDM eq. 8), here for F = 0
    sde, sd = VPSDE(), 0.5
    zero = lambda inp, labels: torch.zeros_like(inp)  # noqa: E731
    net = torch.nn.Module()
    net.forward = zero
    x0 = GAUSS.sample(2000, torch.Generator().manual_seed(1), dtype=torch.float64)
    got = edm_loss(sde, net, x0, generator=torch.Generator().manual_seed(2))
    seen = []
    edm_loss(sde, lambda x, t: seen.append((x, t)) or -x, x0, generator=torch.Generator().manual_seed(2))
    x, t = seen[0]
    a, s = sde.marginal_coeffs(t)
    x_hat = x / a[:, None]
    c_skip, c_out, _ = edm_preconditioning((s / a)[:, None], sd)
    expected = (((x0 - c_skip * x_hat) / c_out) ** 2).sum(1).mean()
    torch.testing.assert_close(got, expected)


def test_edm_loss_registry_and_errors():
    assert LOSSES["edm"] is edm_loss
    x0 = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="own weighting"):
        edm_loss(VPSDE(), lambda x, t: -x, x0, likelihood_weighting=True)
    with pytest.raises(ValueError, match="continuous"):
        edm_loss(VPSDE(), lambda x, t: -x, x0, continuous=False)
    with pytest.raises(ValueError, match="puts no mass"):
        edm_loss(VESDE(sigma_min=0.01, sigma_max=1.0), lambda x, t: -x, x0, p_mean=8.0, p_std=0.1)


@pytest.mark.parametrize("sde", [VPSDE(), VESDE(sigma_min=0.01, sigma_max=20.0)], ids=["VP", "VE"])
def test_a_short_edm_training_on_a_gaussian_learns_its_denoiser(sde):
    """A small MLP trained 300 steps with the EDM loss on a 2-D Gaussian. Its excess loss over the exact
    denoiser D*, E[lambda ||D - D*||^2] (the loss minus its minimum, for these data), over the bulk of
    the noise levels (log sigma within P_mean +- 2 P_std), falls by 10x and below 5 % of the minimum."""
    from sdegen.nets import MLPScoreNet
    from sdegen.solvers import t_of_sigma

    torch.manual_seed(0)
    fourier = isinstance(sde, VESDE)   # VE feeds sigma: Fourier features of log sigma, as the VE presets
    net = MLPScoreNet(2, hidden=64, layers=2, embed_dim=32, embedding="fourier" if fourier else "positional",
                      fourier_scale=1.0)
    if fourier:
        inner = net.forward
        net.forward = lambda x, labels: inner(x, labels.log())
    sigma = torch.exp(-1.2 + 1.2 * torch.linspace(-2, 2, 9, dtype=torch.float64)).repeat_interleave(500)
    t = t_of_sigma(sde, sigma)
    a, s = sde.marginal_coeffs(t)
    g = torch.Generator().manual_seed(1)
    x = a[:, None] * GAUSS.sample(len(t), g, dtype=torch.float64) + s[:, None] * torch.randn(len(t), 2, generator=g,
                                                                                              dtype=torch.float64)
    best_d = denoiser_from_model(ExactF(sde, 0.5), sde)(x, t)
    minimum = (edm_loss_weight(s / a) * (STD ** 2 * (s / a)[:, None] ** 2 / (STD ** 2 + (s / a)[:, None] ** 2)).sum(1)).mean()

    def excess():
        with torch.no_grad():
            d = denoiser_from_model(net, sde)(x.float(), t.float()).double()
        return (edm_loss_weight(s / a) * ((d - best_d) ** 2).sum(1)).mean().item()

    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    start = excess()
    for step in range(300):
        x0 = GAUSS.sample(256, torch.Generator().manual_seed(step))
        loss = edm_loss(sde, net, x0, generator=torch.Generator().manual_seed(10_000 + step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = excess()
    assert end < 0.1 * start and end < 0.05 * minimum.item(), (start, end, minimum.item())


def test_the_edm_recipe_trains_from_a_config_and_samples_as_a_score(tmp_path):
    """training.loss=edm with the edm parametrization: the loop passes the config's noise levels and
    sigma_data, the run's model is a continuous score of its SDE with that sigma_data, and the loss falls."""
    from sdegen.train import ConfigError, load_config, train

    cfg = load_config("toy2d_vp", ["training.loss=edm", "model.options.parametrization=edm", "training.steps=120",
                                   "training.log_every=20", "training.ckpt_every=120", "training.edm_sigma_data=1.3",
                                   "training.edm_p_mean=-0.5", "model.options.hidden=32", "sampling.n=8",
                                   "sampling.steps=30", "training.tensorboard=false", "training.device=cpu"])
    run = train(cfg, tmp_path, progress=False, verbose=False)
    model = run.model
    assert model.parametrization == "edm" and model.continuous and model.sigma_data == 1.3
    losses = [r["loss"] for r in run.stats]
    mix, x0 = gauss3(), gauss3().sample(20_000, torch.Generator().manual_seed(0), dtype=torch.float64)
    best = edm_loss(model.sde, mix.score_fn(model.sde), x0, p_mean=-0.5, sigma_data=1.3, reduce_mean=True,
                    generator=torch.Generator().manual_seed(1)).item()   # the exact score's loss, the minimum
    assert losses[0] - losses[-1] > (losses[0] - best) / 3, (losses, best)   # a third of the way in 120 steps
    x, t = torch.randn(16, 2), torch.rand(16) * 0.9 + 0.05
    expected = score_fn_from_model(model.net, model.sde, "edm", sigma_data=1.3)(x, t)
    torch.testing.assert_close(model.score_fn()(x, t), expected)
    assert not torch.allclose(score_fn_from_model(model.net, model.sde, "edm", sigma_data=0.5)(x, t), expected)
    with pytest.raises(ConfigError, match="own weighting"):
        load_config("toy2d_vp", ["training.loss=edm", "training.likelihood_weighting=true"])
    with pytest.raises(ConfigError, match="edm_p_std must be > 0"):
        load_config("toy2d_vp", ["training.loss=edm", "training.edm_p_std=0"])
