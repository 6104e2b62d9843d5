import math

import pytest
import torch

from sdegen.langevin import langevin, langevin_step, value_and_grad


def std_normal_logp(x):
    return -0.5 * x.pow(2).sum(-1)


def test_step_formula():
    x, g, z = torch.ones(3, 2), torch.full((3, 2), 2.0), torch.full((3, 2), 0.5)
    new, mean = langevin_step(x, g, 0.1, z)
    assert torch.allclose(mean, x + 0.1 * g) and torch.allclose(new, mean + math.sqrt(0.2) * z)


def test_value_and_grad_does_not_accumulate():
    w = torch.nn.Parameter(torch.tensor(2.0))
    logp, grad = value_and_grad(lambda x: -(w * x).pow(2).sum(-1), torch.ones(4, 3))
    assert torch.allclose(grad, -2 * 4.0 * torch.ones(4, 3)) and w.grad is None


@pytest.mark.parametrize("mala", [False, True])
def test_stationary_variance_ula_biased_mala_exact(mala):
    # On N(0, 1), ULA with step eps has stationary variance 1/(1 - eps/2); MALA is exact.
    eps, n = 0.9, 4000
    chain = langevin(torch.zeros(n, 2), std_normal_logp, step_size=eps, n_steps=60, mala=mala,
                     generator=torch.Generator().manual_seed(0))
    var = chain.x.var(0).mean().item()
    se = math.sqrt(2 / (2 * n)) * (1 / (1 - eps / 2) if not mala else 1.0)
    expected = 1.0 if mala else 1 / (1 - eps / 2)
    assert abs(var - expected) < 5 * se, (var, expected)
    if mala:
        assert 0 < chain.acceptance_rate <= 1 and chain.acceptance_rate < 0.99
    else:
        assert chain.acceptance_rate is None


def test_per_sample_generators_make_chains_independent_of_batch():
    from sdegen.noise import per_sample_generators
    run = lambda idx: langevin(torch.zeros(len(idx), 2), std_normal_logp, step_size=0.3, n_steps=10, mala=True,
                               generator=per_sample_generators(1, idx)).x
    torch.testing.assert_close(run(range(5))[1:3], run(range(1, 3)))


def test_bad_arguments():
    with pytest.raises(ValueError, match="step_size"):
        langevin(torch.zeros(2, 2), std_normal_logp, step_size=0.0, n_steps=1)
    with pytest.raises(ValueError, match="one value per sample"):
        langevin(torch.zeros(2, 2), lambda x: x.sum(), step_size=0.1, n_steps=1)
    with pytest.raises(FloatingPointError, match="step size"):
        langevin(torch.ones(2, 2), lambda x: x.pow(4).sum(-1) * 1e6, step_size=10.0, n_steps=5)
