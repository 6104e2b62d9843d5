"""GAN training: the seed's losses, learning a toy mixture, bitwise resume, net files, CLI."""
import argparse
import dataclasses
import math

import numpy as np
import pytest
import torch

from sdegen import checkpoint, noise
from sdegen.cli import ddls as cli_ddls
from sdegen.cli import gan as cli_gan
from sdegen.cli.common import UsageError
from sdegen.gan import GANConfig, d_loss, g_loss, load_config, load_net, save_net, train_gan
from sdegen.gan.train import STREAMS
from sdegen.nets.dcgan import DCGANDiscriminator, DCGANGenerator
from sdegen.nets.gan_mlp import MLPDiscriminator, MLPGenerator
from sdegen.toy import get_toy




SMALL = dict(data="gauss3", hidden=32, depth=2, batch_size=64, lr=1e-3, log_every=10, sample_every=0)


def test_losses_are_the_seed_formulas():
    real, fake = torch.tensor([2.0, -0.5, 0.3]), torch.tensor([-1.0, 0.7])
    D = torch.sigmoid
    expected_d = -torch.log(D(real)).mean() - torch.log(1 - D(fake)).mean()
    torch.testing.assert_close(d_loss(real, fake), expected_d)
    torch.testing.assert_close(g_loss(fake), -torch.log(D(fake)).mean())
    # at D = 1/2 everywhere, L_D = 2 log 2 and L_G = log 2
    assert d_loss(torch.zeros(4), torch.zeros(4)).item() == pytest.approx(2 * math.log(2))


def test_training_learns_a_toy_mixture(tmp_path):
    cfg = GANConfig(**SMALL, steps=600, ckpt_every=600)
    toy = get_toy("gauss3")
    z = torch.randn(2000, 2, generator=torch.Generator().manual_seed(5))
    with torch.random.fork_rng():
        torch.manual_seed(noise.derive_seed(cfg.seed, STREAMS["init"]))
        G0 = MLPGenerator(2, 2, 32, 2)                    # the run's initial generator
    run = train_gan(cfg, tmp_path, progress=False)
    with torch.no_grad():
        ll_before, ll_after = toy.log_prob(G0(z)), toy.log_prob(run.G(z))
        ll_data = toy.log_prob(toy.sample(2000, torch.Generator().manual_seed(6)))
    inside = ll_data.quantile(0.05)                       # the data's 95% highest-density region
    assert ll_after.median() > ll_before.median() + 5     # samples moved onto the data
    assert ll_after.median() > ll_data.median() - 1.5
    assert (ll_before > inside).float().mean() == 0 and (ll_after > inside).float().mean() > 0.4
    # near the game's value 2 log 2 and log 2, averaged over the last 100 steps (one batch's loss is noisy)
    loss_d, loss_g = (sum(r[k] for r in run.stats[-10:]) / 10 for k in ("loss_D", "loss_G"))
    assert abs(loss_d - 2 * math.log(2)) < 0.35 and 0.4 < loss_g < 1.2
    assert (tmp_path / "generator.pt").is_file() and (tmp_path / "samples" / "step_00000600.png").is_file()
    assert [r["step"] for r in run.stats] == list(range(10, 601, 10))


def _states_equal(a, b):
    return all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys()


def test_resume_is_bitwise_and_skips_a_corrupt_checkpoint(tmp_path):
    cfg = GANConfig(**SMALL, steps=40, ckpt_every=20)
    full = train_gan(cfg, tmp_path / "a", progress=False)
    train_gan(dataclasses.replace(cfg, steps=20), tmp_path / "b", progress=False)
    resumed = train_gan(cfg, tmp_path / "b", progress=False)
    assert _states_equal(full.G.state_dict(), resumed.G.state_dict())
    assert _states_equal(full.D.state_dict(), resumed.D.state_dict())
    assert resumed.stats == full.stats
    # a truncated newest checkpoint: resume from the one before, and still end the same
    newest = checkpoint.checkpoint_path(tmp_path / "b", 40)
    newest.write_bytes(newest.read_bytes()[:100])
    with pytest.warns(RuntimeWarning, match="corrupt"):
        again = train_gan(cfg, tmp_path / "b", progress=False)
    assert _states_equal(full.G.state_dict(), again.G.state_dict())
    with pytest.raises(ValueError, match="differs in \\['lr'\\]"):
        train_gan(dataclasses.replace(cfg, lr=5e-4, steps=60), tmp_path / "b", progress=False)


def test_config_schema(tmp_path):
    (tmp_path / "c.yaml").write_text("data: ring8\nsteps: 7\n")
    cfg = load_config(tmp_path / "c.yaml", {"batch_size": 32})
    assert (cfg.data, cfg.steps, cfg.batch_size, cfg.lr) == ("ring8", 7, 32, 2e-4)
    (tmp_path / "typo.yaml").write_text("stepz: 7\n")
    with pytest.raises(ValueError, match="stepz"):
        load_config(tmp_path / "typo.yaml")
    with pytest.raises(ValueError, match="unknown data"):
        load_config(None, {"data": "nope"})


def test_net_files(tmp_path):
    G, D = MLPGenerator(3, 2, 16, 1), MLPDiscriminator(2, 16, 1)
    save_net(G, tmp_path / "g.pt")
    save_net(D, tmp_path / "d.pt")
    G2 = load_net(tmp_path / "g.pt", "generator")
    assert G2.latent_shape == (3,) and _states_equal(G.state_dict(), G2.state_dict())
    with pytest.raises(ValueError, match="not a generator"):
        load_net(tmp_path / "d.pt", "generator")
    torch.save({"main.0.weight": torch.zeros(1)}, tmp_path / "sd.pt")
    with pytest.raises(ValueError, match="not an sdegen GAN net file"):
        load_net(tmp_path / "sd.pt")
    with pytest.raises(FileNotFoundError):
        load_net(tmp_path / "nope.pt")


# --- CLI -----------------------------------------------------------------------------------------

def cli(module, argv):
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return module.run(parser.parse_args([str(a) for a in argv]))


def test_cli_train_then_ddls(tmp_path, capsys):
    work = tmp_path / "run"
    assert cli(cli_gan, ["train", "--data", "gauss3", "--steps", "30", "--batch-size", "32", "--set",
                         "hidden=16", "--set", "ckpt_every=10", "--workdir", work, "--no-progress"]) == 0
    assert "step 30" in capsys.readouterr().out
    common = ["--generator", work / "generator.pt", "--discriminator", work / "discriminator.pt",
              "--n", 7, "--steps", 4, "--step-size", 0.05, "--mala", "--no-progress"]
    assert cli(cli_ddls, common + ["--batch-size", 3, "--out", tmp_path / "a.npz", "--grid",
                                   tmp_path / "a.png"]) == 0
    assert cli(cli_ddls, common + ["--batch-size", 7, "--out", tmp_path / "b.npz"]) == 0
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    assert a["samples"].shape == (7, 2) and a["samples"].dtype == np.float32
    np.testing.assert_allclose(a["samples"], b["samples"], rtol=1e-5, atol=1e-6)   # batch-size free
    assert a["energy_trace"].shape == a["logit_trace"].shape == (5,)
    assert 0 < float(a["acceptance_rate"]) <= 1
    assert (tmp_path / "a.png").is_file() and (tmp_path / "a_chain.png").is_file()

    with pytest.raises(UsageError, match="expected a state dict"):
        cli(cli_ddls, common + ["--format", "csinva-dcgan", "--out", tmp_path / "c.npz"])
    with pytest.raises(UsageError, match="no file"):
        cli(cli_ddls, ["--generator", tmp_path / "nope.pt", "--discriminator", work / "discriminator.pt",
                       "--out", tmp_path / "c.npz"])
    with pytest.raises(UsageError, match="not a generator"):
        cli(cli_ddls, ["--generator", work / "discriminator.pt", "--discriminator",
                       work / "discriminator.pt", "--out", tmp_path / "c.npz"])
    with pytest.raises(UsageError, match="unknown format"):
        cli(cli_ddls, common + ["--format", "pickle", "--out", tmp_path / "c.npz"])
    with pytest.raises(UsageError, match="unknown data"):
        cli(cli_gan, ["train", "--data", "nope", "--workdir", tmp_path / "x"])


def test_cli_ddls_csinva_images(tmp_path):
    # the csinva CIFAR-10 layout (checked against its spec in test_ddls.py)
    torch.manual_seed(0)
    torch.save(DCGANGenerator(nz=100, ngf=64, nc=3, image_size=32).state_dict(), tmp_path / "g.pth")
    torch.save(DCGANDiscriminator(ndf=64, nc=3, image_size=32).state_dict(), tmp_path / "d.pth")
    assert cli(cli_ddls, ["--generator", tmp_path / "g.pth", "--discriminator", tmp_path / "d.pth",
                          "--format", "csinva-dcgan", "--n", 3, "--batch-size", 2, "--steps", 2,
                          "--out", tmp_path / "s.npz", "--grid", tmp_path / "s.png", "--no-progress"]) == 0
    s = np.load(tmp_path / "s.npz")
    assert s["samples"].shape == (3, 32, 32, 3) and s["samples"].dtype == np.uint8
    assert s["latents"].shape == (3, 100)
    assert (tmp_path / "s.png").is_file() and (tmp_path / "s_chain.png").is_file()
