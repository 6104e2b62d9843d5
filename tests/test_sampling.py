"""Samplers are judged by the distribution they produce: with the exact score of a Gaussian mixture, the
component weights, means and covariances of their samples must match the mixture within 5 standard errors
at the sample size used (see GaussianMixture.moment_report)."""
import pytest
import torch

from sdegen.sampling import CORRECTORS, PREDICTORS, sample, sample_ode
from sdegen.score import CountingScore
from sdegen.sde import SubVPSDE, VESDE, VPSDE
from sdegen.toy import gauss3

N_SAMPLES = 3000
Z_MAX = 5.0
MIX = gauss3()


def _assert_matches(x, mixture=MIX):
    rep = mixture.moment_report(x)
    worst = max(rep["weights_z"], rep["means_z"], rep["covs_z"])
    assert worst < Z_MAX, rep


def test_true_samples_pass_and_a_wrong_score_fails():
    # the check is calibrated (true samples pass) and able to fail (a 20% too small score is caught)
    _assert_matches(MIX.sample(N_SAMPLES, torch.Generator().manual_seed(3)))
    sde = VPSDE()
    exact = MIX.score_fn(sde)
    x = sample(sde, lambda x, t: 0.8 * exact(x, t), (N_SAMPLES, 2), corrector=None,
               generator=torch.Generator().manual_seed(0))
    with pytest.raises(AssertionError):
        _assert_matches(x)


CASES = [
    (sde, pred, corr, {})
    for sde in (VESDE(), VPSDE(), SubVPSDE())
    for pred, corr in [("euler_maruyama", None), ("reverse_diffusion", None), ("ancestral", None),
                       ("reverse_diffusion", "langevin"), ("ancestral", "langevin")]
    if not (pred == "ancestral" and isinstance(sde, SubVPSDE))
] + [
    (VESDE(), None, "annealed_langevin", dict(snr=0.3, n_corrector_steps=2)),
    (VPSDE(), None, "annealed_langevin", dict(snr=0.3, n_corrector_steps=2)),
    (VPSDE(), "euler_maruyama", "langevin", dict(order="corrector_first")),
]


@pytest.mark.parametrize("sde,predictor,corrector,options", CASES,
                         ids=[f"{type(c[0]).__name__}-{c[1]}-{c[2]}-{'-'.join(c[3])}" for c in CASES])
def test_sampler_reproduces_mixture(sde, predictor, corrector, options):
    x = sample(sde, MIX.score_fn(sde), (N_SAMPLES, 2), predictor=predictor, corrector=corrector,
               generator=torch.Generator().manual_seed(0), **options)
    _assert_matches(x)


def test_p2000_runs_2000_steps_and_matches():
    sde = VESDE()
    score = CountingScore(MIX.score_fn(sde))
    x = sample(sde, score, (N_SAMPLES, 2), predictor="reverse_diffusion", corrector=None, steps=2000,
               generator=torch.Generator().manual_seed(1))
    assert score.nfe == 2000
    _assert_matches(x)


def test_pc_counts_score_evaluations():
    sde = VPSDE()
    score = CountingScore(MIX.score_fn(sde))
    sample(sde, score, (10, 2), steps=50, n_corrector_steps=2, generator=torch.Generator().manual_seed(0))
    assert score.nfe == 50 + 49 * 2  # predictor_first: no corrector after the final step


@pytest.mark.parametrize("sde", [VESDE(), VPSDE(), SubVPSDE()], ids=lambda s: type(s).__name__)
def test_probability_flow_ode_reproduces_mixture(sde):
    x = sample_ode(sde, MIX.score_fn(sde), (N_SAMPLES, 2), generator=torch.Generator().manual_seed(0))
    _assert_matches(x)


def test_same_seed_same_samples():
    sde = VPSDE()
    run = lambda seed: sample(sde, MIX.score_fn(sde), (64, 2), steps=100,
                              generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))


@pytest.mark.parametrize("corrector", [None, "langevin", "annealed_langevin"])
def test_per_sample_generators_make_samples_batch_independent(corrector):
    from sdegen.noise import per_sample_generators
    sde = VESDE()
    run = lambda idx: sample(sde, MIX.score_fn(sde), (len(idx), 2), steps=100, corrector=corrector,
                             snr_norm="sample", generator=per_sample_generators(7, idx))
    big = run(range(6))
    small = run(range(2, 4))
    torch.testing.assert_close(big[2:4], small, rtol=1e-5, atol=1e-6)


def test_sample_on_a_generator_device_and_callback():
    sde = VPSDE()
    seen = []
    x = sample(sde, MIX.score_fn(sde), (8, 2), steps=30, generator=torch.Generator().manual_seed(0),
               callback=lambda info: seen.append(info["i"]))
    assert seen == list(range(30)) and x.device.type == "cpu"


def test_too_few_steps_for_the_ddpm_chain_is_an_error():
    sde = VPSDE()
    with pytest.raises(ValueError, match="N > beta_max"):
        sample(sde, MIX.score_fn(sde), (8, 2), steps=10)


# --- errors -----------------------------------------------------------------------------------

def test_unknown_names_list_the_choices():
    sde = VPSDE()
    with pytest.raises(ValueError, match="euler_maruyama"):
        sample(sde, MIX.score_fn(sde), (4, 2), predictor="heun")
    with pytest.raises(ValueError, match="annealed_langevin"):
        sample(sde, MIX.score_fn(sde), (4, 2), corrector="hmc")
    with pytest.raises(ValueError, match="order"):
        sample(sde, MIX.score_fn(sde), (4, 2), order="random")
    with pytest.raises(ValueError, match="both be None"):
        sample(sde, MIX.score_fn(sde), (4, 2), predictor=None, corrector=None)
    assert set(PREDICTORS) == {"euler_maruyama", "reverse_diffusion", "ancestral"}
    assert set(CORRECTORS) == {"langevin", "annealed_langevin"}


def test_ancestral_is_refused_for_subvp():
    sde = SubVPSDE()
    with pytest.raises(ValueError, match="ancestral.*SubVPSDE"):
        sample(sde, MIX.score_fn(sde), (4, 2), predictor="ancestral")


def test_shape_mismatch_is_reported():
    sde = VPSDE()
    with pytest.raises(ValueError, match=r"shape \[batch, 2\]"):
        sample(sde, MIX.score_fn(sde), (4, 3), steps=30)
    with pytest.raises(ValueError, match="shaped like x"):
        sample(sde, lambda x, t: x[:, :1], (4, 2), steps=30)
    with pytest.raises(ValueError, match="shape must be"):
        sample(sde, MIX.score_fn(sde), (0, 2), steps=30)
    with pytest.raises(ValueError, match="per-sample generators"):
        sample(sde, MIX.score_fn(sde), (4, 2), steps=30, generator=[torch.Generator()] * 3)


def test_non_finite_chain_names_step_and_time():
    sde = VPSDE()

    def bad(x, t):
        return torch.where(t[:, None] < 0.5, torch.full_like(x, float("nan")), -x)

    with pytest.raises(FloatingPointError, match=r"step \d+ \(t=0\.4"):
        sample(sde, bad, (4, 2), steps=100, corrector=None)
