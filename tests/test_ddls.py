"""DDLS: energy, the exact case (optimal logit, invertible G), MALA vs ULA bias, csinva DCGAN layout,
eval mode, gradients, batch independence, calibration."""
import math

import pytest
import torch
from torch.nn import functional as F

from sdegen import noise
from sdegen.gan.ddls import StandardNormal, calibrate_logit, ddls, latent_energy
from sdegen.gan.io import load_csinva_dcgan
from sdegen.nets.dcgan import DCGANDiscriminator, DCGANGenerator
from sdegen.nets.gan_mlp import MLPDiscriminator, MLPGenerator
from sdegen.toy import GaussianMixture




# --- energy ------------------------------------------------------------------------------------

A = torch.tensor([[1.2, 0.3], [0.0, 0.8]], dtype=torch.float64)
C = torch.tensor([0.2, -0.1], dtype=torch.float64)


def affine_G(z):
    return z @ A.T.to(z.dtype) + C.to(z.dtype)


def test_energy_and_gradient_closed_form():
    w, b = torch.tensor([0.7, -1.3], dtype=torch.float64), 0.4
    d = lambda x: x @ w + b                                               # noqa: E731
    z = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    E = latent_energy(affine_G, d)
    # E(z) = |z|^2/2 + log(2 pi) - w.(Az + c) - b ;  grad E = z - A^T w
    expected = 0.5 * z.pow(2).sum(1) + math.log(2 * math.pi) - (affine_G(z) @ w + b)
    torch.testing.assert_close(E(z), expected)
    zr = z.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(E(zr).sum(), zr)
    torch.testing.assert_close(grad, z - (A.T @ w)[None])


def test_one_step_is_algorithm_1():
    """z1 = z0 - (e/2) grad E(z0) + sqrt(e) n, with n the generator's first draw."""
    w = torch.tensor([0.7, -1.3], dtype=torch.float64)
    d = lambda x: x @ w                                                   # noqa: E731
    z0 = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    e = 0.3
    res = ddls(affine_G, d, z0, step_size=e, n_steps=1, rng=torch.Generator().manual_seed(7))
    n = noise.randn((4, 2), torch.Generator().manual_seed(7), dtype=torch.float64)
    expected = z0 - e / 2 * (z0 - (A.T @ w)[None]) + math.sqrt(e) * n
    torch.testing.assert_close(res.z, expected)
    torch.testing.assert_close(res.x, affine_G(expected))
    torch.testing.assert_close(res.logit, affine_G(expected) @ w)


# --- the exact case: optimal logit, invertible affine G ---------------------------------------

P_DATA = GaussianMixture([[-1.0, 0.0], [1.0, 0.5], [0.3, -1.2]],
                         [[[0.40, 0.10], [0.10, 0.30]], [[0.30, -0.10], [-0.10, 0.50]],
                          [[0.35, 0.00], [0.00, 0.25]]], weights=[0.5, 0.3, 0.2])
P_G = torch.distributions.MultivariateNormal(C, A @ A.T)      # G(z), z ~ N(0, I)


def optimal_logit(x):
    return (P_DATA.log_prob(x.double()) - P_G.log_prob(x.double())).to(x.dtype)   # d* = log p_data - log p_g


def moment_z_scores(x):
    """(estimate - exact) / standard error of E[r_k], E[r_k x], E[r_k x x^T] (r_k: responsibilities),
    whose exact values are w_k, w_k mu_k, w_k (C_k + mu_k mu_k^T)."""
    x = x.double()
    r = P_DATA.responsibilities(x)
    f = torch.cat([r, (r[:, :, None] * x[:, None]).flatten(1),
                   (r[:, :, None, None] * x[:, None, :, None] * x[:, None, None, :]).flatten(1)], 1)
    w, mu, cov = P_DATA.weights, P_DATA.means, P_DATA.covs
    exact = torch.cat([w, (w[:, None] * mu).flatten(),
                       (w[:, None, None] * (cov + mu[:, :, None] * mu[:, None, :])).flatten()])
    return (f.mean(0) - exact) / (f.std(0) / math.sqrt(len(x)))


N_CHAINS = 2000


def test_exact_case_small_step_langevin_matches_p_data():
    res = ddls(affine_G, optimal_logit, n=N_CHAINS, step_size=0.05, n_steps=300,
               rng=torch.Generator().manual_seed(1), latent_shape=(2,))
    assert moment_z_scores(res.x).abs().max() < 5


def test_exact_case_mala_is_exact_where_ula_is_biased():
    kw = dict(n=N_CHAINS, step_size=1.0, n_steps=150, latent_shape=(2,))
    ula = ddls(affine_G, optimal_logit, rng=torch.Generator().manual_seed(1), **kw)
    mala = ddls(affine_G, optimal_logit, mala=True, rng=torch.Generator().manual_seed(1), **kw)
    assert moment_z_scores(ula.x).abs().max() > 6            # the plain chain's bias is detected
    assert moment_z_scores(mala.x).abs().max() < 5           # MALA matches p_data at the same step
    assert 0.3 < mala.acceptance_rate < 0.9
    assert ula.acceptance_rate is None


def test_without_logit_ddls_keeps_the_generator_distribution():
    """d = 0: the target is the prior, so G(z) stays ~ p_g (a check of the prior term's sign)."""
    res = ddls(affine_G, lambda x: torch.zeros(len(x), dtype=x.dtype), n=N_CHAINS, step_size=0.5,
               n_steps=50, mala=True, rng=torch.Generator().manual_seed(3), latent_shape=(2,))
    z = res.z
    assert z.mean(0).abs().max() < 5 / math.sqrt(N_CHAINS)
    assert (z.var(0) - 1).abs().max() < 5 * math.sqrt(2 / N_CHAINS)


# --- csinva DCGAN layout -----------------------------------------------------------------------

def csinva_state_dicts(g: torch.Generator, with_counts: bool = True):
    """Random state dicts with the key names and shapes of the csinva CIFAR-10 DCGAN, built from its spec."""
    def bn(sd, i, c):
        sd[f"main.{i}.weight"] = 1 + 0.1 * torch.randn(c, generator=g)
        sd[f"main.{i}.bias"] = 0.1 * torch.randn(c, generator=g)
        sd[f"main.{i}.running_mean"] = 0.1 * torch.randn(c, generator=g)
        sd[f"main.{i}.running_var"] = 0.5 + torch.rand(c, generator=g)
        if with_counts:
            sd[f"main.{i}.num_batches_tracked"] = torch.tensor(1000)

    gsd = {}
    # ConvT(100->512,4,1,0) BN ReLU | ConvT(512->256) BN ReLU | (256->128) | (128->64) | ConvT(64->3,1,1,0) Tanh
    for i, (cin, cout, k) in zip([0, 3, 6, 9, 12], [(100, 512, 4), (512, 256, 4), (256, 128, 4),
                                                   (128, 64, 4), (64, 3, 1)]):
        gsd[f"main.{i}.weight"] = 0.05 * torch.randn(cin, cout, k, k, generator=g)
        if i < 12:
            bn(gsd, i + 1, cout)
    dsd = {}
    # Conv(3->64,4,2,1) LReLU | Conv(64->128) BN LReLU | (128->256) | (256->512) | Conv(512->1,2,2,0) Sigmoid
    for i, (cin, cout, k) in zip([0, 2, 5, 8, 11], [(3, 64, 4), (64, 128, 4), (128, 256, 4),
                                                   (256, 512, 4), (512, 1, 2)]):
        dsd[f"main.{i}.weight"] = 0.05 * torch.randn(cout, cin, k, k, generator=g)
        if i in (2, 5, 8):
            bn(dsd, i + 1, cout)
    return gsd, dsd


def reference_forward(gsd, dsd, z):
    """The csinva G and D (before the Sigmoid) written with functional ops from the spec."""
    def bn(h, sd, i):
        return F.batch_norm(h, sd[f"main.{i}.running_mean"], sd[f"main.{i}.running_var"],
                            sd[f"main.{i}.weight"], sd[f"main.{i}.bias"], False, 0.0, 1e-5)

    h = F.relu(bn(F.conv_transpose2d(z, gsd["main.0.weight"], stride=1, padding=0), gsd, 1))
    for i in (3, 6, 9):
        h = F.relu(bn(F.conv_transpose2d(h, gsd[f"main.{i}.weight"], stride=2, padding=1), gsd, i + 1))
    x = torch.tanh(F.conv_transpose2d(h, gsd["main.12.weight"]))
    h = F.leaky_relu(F.conv2d(x, dsd["main.0.weight"], stride=2, padding=1), 0.2)
    for i in (2, 5, 8):
        h = F.leaky_relu(bn(F.conv2d(h, dsd[f"main.{i}.weight"], stride=2, padding=1), dsd, i + 1), 0.2)
    return x, F.conv2d(h, dsd["main.11.weight"], stride=2).reshape(-1)


@pytest.mark.parametrize("with_counts", [True, False])
def test_csinva_layout_loads_and_computes_the_spec(tmp_path, with_counts):
    gsd, dsd = csinva_state_dicts(torch.Generator().manual_seed(0), with_counts)
    torch.save(gsd, tmp_path / "netG_epoch_199.pth")
    torch.save(dsd, tmp_path / "netD_epoch_199.pth")
    G, D = load_csinva_dcgan(tmp_path / "netG_epoch_199.pth", tmp_path / "netD_epoch_199.pth")
    assert not G.training and not D.training
    assert G.latent_shape == (100, 1, 1)
    z = torch.randn(3, 100, 1, 1, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        x, logit = G(z), D(G(z))
        x_ref, logit_ref = reference_forward(gsd, dsd, z)
    assert x.shape == (3, 3, 32, 32) and logit.shape == (3,)
    assert x.abs().max() <= 1
    torch.testing.assert_close(x, x_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logit, logit_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(D.prob(x), torch.sigmoid(logit_ref), rtol=1e-4, atol=1e-5)


def test_csinva_loading_errors(tmp_path):
    gsd, dsd = csinva_state_dicts(torch.Generator().manual_seed(0))
    g_path, d_path = tmp_path / "g.pth", tmp_path / "d.pth"
    torch.save(gsd, g_path)
    torch.save(dsd, d_path)
    with pytest.raises(FileNotFoundError, match="no file"):
        load_csinva_dcgan(tmp_path / "missing.pth", d_path)
    with pytest.raises(ValueError, match="csinva DCGAN generator"):
        load_csinva_dcgan(d_path, g_path)                                   # swapped
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth is corrupt or not a checkpoint this tool trusts"):
        load_csinva_dcgan(tmp_path / "junk.pth", d_path)
    bad = dict(dsd)
    bad["main.3.weight"] = torch.ones(7)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="wrong shape"):
        load_csinva_dcgan(g_path, tmp_path / "bad.pth")


def test_dcgan_sizes():
    for size in (8, 16, 32):
        G, D = DCGANGenerator(nz=8, ngf=8, nc=1, image_size=size), DCGANDiscriminator(ndf=8, nc=1, image_size=size)
        x = G(torch.randn(2, 8))
        assert x.shape == (2, 1, size, size) and D(x).shape == (2,)


# --- eval mode, gradients, batch independence, MALA -------------------------------------------

def _bn_nets():
    torch.manual_seed(0)
    G = DCGANGenerator(nz=4, ngf=8, nc=1, image_size=8)
    D = DCGANDiscriminator(ndf=8, nc=1, image_size=8)
    with torch.no_grad():                          # non-trivial running statistics
        for _ in range(3):
            D(G(torch.randn(16, 4, 1, 1)))
    return G.train(), D.train()


def test_eval_mode_restored_and_no_parameter_gradients():
    G, D = _bn_nets()
    stats = {k: v.clone() for k, v in {**G.state_dict(), **D.state_dict()}.items()}
    modes = []
    res = ddls(G, D, n=6, step_size=0.01, n_steps=3, mala=True, rng=torch.Generator().manual_seed(0),
               callback=lambda info: modes.append((G.training, D.training)))
    assert modes == [(False, False)] * 3                     # eval mode during the run
    assert G.training and D.training                         # restored after
    assert all(all(m.training for m in net.modules()) for net in (G, D))
    assert all(p.grad is None for p in list(G.parameters()) + list(D.parameters()))
    after = {**G.state_dict(), **D.state_dict()}
    assert all(torch.equal(stats[k], after[k]) for k in stats)   # BN statistics untouched
    assert 0 < res.acceptance_rate <= 1 and res.z.shape == (6, 4, 1, 1) and res.x.shape == (6, 1, 8, 8)


@pytest.mark.parametrize("mala", [False, True])
def test_chains_independent_of_batch(mala):
    G, D = _bn_nets()
    kw = dict(step_size=0.02, n_steps=5, mala=mala)
    small = ddls(G, D, n=2, rng=noise.per_sample_generators(3, range(2)), **kw)
    large = ddls(G, D, n=5, rng=noise.per_sample_generators(3, range(5)), **kw)
    torch.testing.assert_close(small.z, large.z[:2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(small.x, large.x[:2], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(large.z[0], large.z[1])


def test_mala_acceptance_in_unit_interval_and_falls_with_step():
    torch.manual_seed(0)
    G, D = MLPGenerator(2, 2, 32, 2), MLPDiscriminator(2, 32, 2)
    rates = [ddls(G, D, n=200, step_size=e, n_steps=20, mala=True, rng=torch.Generator().manual_seed(0)
                  ).acceptance_rate for e in (0.01, 1.0, 6.0)]
    assert all(0 < r <= 1 for r in rates)
    assert rates[0] > rates[1] > rates[2]


def test_input_errors():
    G, D = MLPGenerator(), MLPDiscriminator()
    with pytest.raises(ValueError, match="z0 or the number"):
        ddls(G, D, step_size=0.1, n_steps=1)
    with pytest.raises(ValueError, match="step_size"):
        ddls(G, D, n=2, step_size=0.0, n_steps=1)
    with pytest.raises(ValueError, match="latent shape"):
        ddls(lambda z: z, D, n=2, step_size=0.1, n_steps=1)
    with pytest.raises(ValueError, match="one value per sample"):
        ddls(G, lambda x: x, n=2, step_size=0.1, n_steps=1)
    assert StandardNormal((3,)).sample(4).shape == (4, 3)


# --- calibration -------------------------------------------------------------------------------

def test_calibration_recovers_a_scaled_logit():
    """A critic c = (d* - 1) / 3 of two Gaussians: the fitted head is a = 3, b = 1 and calibrates it."""
    g = torch.Generator().manual_seed(0)
    p, q = torch.distributions.Normal(1.0, 1.0), torch.distributions.Normal(-1.0, 1.0)
    critic = lambda x: ((p.log_prob(x) - q.log_prob(x)).squeeze(1) - 1.0) / 3.0    # noqa: E731
    real = 1.0 + torch.randn(6000, 1, generator=g)
    fake = -1.0 + torch.randn(4000, 1, generator=g)
    cal = calibrate_logit(critic, real, fake, generator=g)
    assert abs(cal.a - 3.0) < 0.3 and abs(cal.b - 1.0) < 0.15
    assert cal.after["log_loss"] < cal.before["log_loss"] - 0.05
    assert cal.after["ece"] < 0.03 < cal.before["ece"]
    x = torch.randn(5, 1, generator=g)
    torch.testing.assert_close(cal.logit(x), cal.a * critic(x) + cal.b)


# --- CLI: DDLS with a calibrated logit -----------------------------------------------------------

def _cli_ddls(argv):
    import argparse

    from sdegen.cli import ddls as cli_ddls
    parser = argparse.ArgumentParser()
    cli_ddls.add_arguments(parser)
    return cli_ddls.run(parser.parse_args([str(a) for a in argv]))


def test_cli_calibrate_makes_ddls_invariant_to_the_logit_scale(tmp_path, capsys):
    """d and 3 d (the last, linear layer scaled) calibrate to the same a d + b, hence the same chains;
    uncalibrated, they are different targets."""
    import numpy as np

    from sdegen.cli.common import UsageError
    from sdegen.gan import save_net
    torch.manual_seed(0)
    G = DCGANGenerator(nz=4, ngf=8, nc=1, image_size=8)
    D = DCGANDiscriminator(ndf=8, nc=1, image_size=8)
    with torch.no_grad():                                       # images and logits that vary with z
        for m in G.modules():
            if isinstance(m, torch.nn.ConvTranspose2d):
                m.weight.mul_(25.0)
    save_net(G, tmp_path / "g.pt")
    for name, scale in (("d", 1000.0), ("d3", 3000.0)):
        Ds = DCGANDiscriminator(ndf=8, nc=1, image_size=8)
        Ds.load_state_dict(D.state_dict())
        with torch.no_grad():
            Ds.main[-1].weight.mul_(scale)
        save_net(Ds, tmp_path / f"{name}.pt")
    common = ["--generator", tmp_path / "g.pt", "--n", 8, "--batch-size", 5, "--steps", 4,
              "--step-size", 0.1, "--mala", "--no-progress"]
    out = {}
    for name in ("d", "d3"):
        for cal in (False, True):
            extra = ["--calibrate", "--data", "digits", "--calibrate-n", 100] if cal else []
            argv = common + ["--discriminator", tmp_path / f"{name}.pt", "--out", tmp_path / f"{name}{cal}.npz"]
            assert _cli_ddls(argv + extra) == 0
            out[name, cal] = np.load(tmp_path / f"{name}{cal}.npz")
    printed = capsys.readouterr().out
    assert "calibration on 100 real (digits test split) vs 100 generated" in printed
    assert "log_loss" in printed and "before" in printed and "after" in printed
    a, a3 = float(out["d", True]["calibration_a"]), float(out["d3", True]["calibration_a"])
    assert a3 == pytest.approx(a / 3, rel=2e-3) and abs(a) > 0.1      # (up to the fit's tiny ridge)
    assert float(out["d3", True]["calibration_b"]) == pytest.approx(float(out["d", True]["calibration_b"]),
                                                                  rel=2e-3, abs=1e-4)
    np.testing.assert_allclose(out["d", True]["latents"], out["d3", True]["latents"], atol=1e-4)
    np.testing.assert_allclose(out["d", True]["logit_trace"], out["d3", True]["logit_trace"], atol=1e-3)
    assert np.abs(out["d", False]["latents"] - out["d3", False]["latents"]).max() > 1e-2
    assert "calibration_a" not in out["d", False]

    base = common + ["--discriminator", tmp_path / "d.pt", "--out", tmp_path / "e.npz"]
    with pytest.raises(UsageError, match="--calibrate needs --data"):
        _cli_ddls(base + ["--calibrate"])
    with pytest.raises(UsageError, match="with --calibrate only"):
        _cli_ddls(base + ["--data", "digits"])
    with pytest.raises(UsageError, match="unknown data 'nope'"):
        _cli_ddls(base + ["--calibrate", "--data", "nope"])
    with pytest.raises(UsageError, match="toy set grid25 has 2-d points"):
        _cli_ddls(base + ["--calibrate", "--data", "grid25"])
    with pytest.raises(UsageError, match="mnist"):
        _cli_ddls(base + ["--calibrate", "--data", "mnist", "--data-root", tmp_path / "none"])


# --- bad input: clear errors (Python API and CLI), outputs never overwritten silently ---------------

def small_gan():
    torch.manual_seed(0)
    return MLPGenerator(2, 2, 16, 2), MLPDiscriminator(2, 16, 2)


def test_ddls_refuses_bad_arguments_with_clear_errors():
    G, D = small_gan()
    kw = dict(step_size=0.01, n_steps=2)
    with pytest.raises(ValueError, match="n must be an integer >= 1, got 0"):
        ddls(G, D, n=0, **kw)
    with pytest.raises(TypeError, match="n_steps must be an integer >= 0, got float 2.5"):
        ddls(G, D, n=3, step_size=0.01, n_steps=2.5)
    with pytest.raises(ValueError, match=r"z0 holds latents of shape \[3\]; the generator takes \[2\]"):
        ddls(G, D, torch.zeros(4, 3), **kw)
    with pytest.raises(ValueError, match=r"latent_shape \[3\] does not fit the generator"):
        ddls(G, D, n=4, latent_shape=(3,), **kw)
    with pytest.raises(TypeError, match="z0 is torch.float64 but the generator's weights are torch.float32"):
        ddls(G, D, torch.zeros(4, 2, dtype=torch.float64), **kw)
    with pytest.raises(TypeError, match="generator must be None, a torch.Generator"):
        ddls(G, D, n=4, rng=0, **kw)
    with pytest.raises(ValueError, match="n=5 does not match z0 with 4 chains"):
        ddls(G, D, torch.zeros(4, 2), n=5, **kw)


def test_cli_ddls_job_errors_and_outputs(tmp_path, capsys):
    from sdegen.cli.common import UsageError
    from sdegen.gan import save_net

    G, D = small_gan()
    save_net(G, tmp_path / "g.pt")
    save_net(D, tmp_path / "d.pt")
    common = ["--generator", tmp_path / "g.pt", "--discriminator", tmp_path / "d.pt", "--n", 5, "--batch-size", 2,
              "--steps", 3, "--no-progress"]
    with pytest.raises(UsageError, match=r"became non-finite at step \d+; lower --step-size \(now 1e\+06\)") as e:
        _cli_ddls(common + ["--steps", 20, "--step-size", 1e6, "--out", tmp_path / "big.npz"])
    assert len(str(e.value).splitlines()) == 1
    assert not (tmp_path / "big.npz").exists() and not (tmp_path / "big.npz.shards").exists()
    out = tmp_path / "s.npz"
    assert _cli_ddls(common + ["--out", out]) == 0
    printed = capsys.readouterr().out
    assert f"grid -> {tmp_path / 's.png'}" in printed and f"chain plot -> {tmp_path / 's_chain.png'}" in printed
    assert (tmp_path / "s.png").is_file() and (tmp_path / "s_chain.png").is_file()
    stamp = out.stat().st_mtime_ns
    assert _cli_ddls(common + ["--out", out]) == 0                       # the same job: nothing to do
    assert "is finished already" in capsys.readouterr().out and out.stat().st_mtime_ns == stamp
    with pytest.raises(UsageError, match="s.npz exists; give --overwrite"):
        _cli_ddls(common + ["--out", out, "--seed", 1])
    assert _cli_ddls(common + ["--out", out, "--seed", 1, "--overwrite"]) == 0
    (tmp_path / "d.npz").mkdir()
    with pytest.raises(UsageError, match="is a folder"):
        _cli_ddls(common + ["--out", tmp_path / "d.npz"])
