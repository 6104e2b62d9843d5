"""Training what guidance needs: the noise-conditional classifier loss, class-conditional score networks with
a null label, label dropout, labelled batches, and the classifier / conditional presets (train, checkpoint,
resume bitwise, load)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sdegen import checkpoint
from sdegen.losses import classifier_loss
from sdegen.nets import NULL_LABEL, PRESETS, build_network
from sdegen.noise import per_sample_generators
from sdegen.sde import get_sde
from sdegen.toy import get_toy
from sdegen.train import ConfigError, load_config, load_run, train
from sdegen.train.batches import Batches
from sdegen.train.runs import build


def assert_bitwise(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# --- the classifier loss ------------------------------------------------------------------------------

class Recorder(nn.Module):
    """A classifier that remembers its inputs and returns fixed-weight logits of them."""

    def __init__(self, dim: int, classes: int):
        super().__init__()
        self.lin = nn.Linear(dim + 1, classes)
        self.seen = []

    def forward(self, x, labels):
        self.seen.append((x.detach().clone(), labels.detach().clone()))
        return self.lin(torch.cat([x, labels[:, None].to(x) / 1000], 1))


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_classifier_loss_is_the_cross_entropy_on_noised_inputs(sde_name):
    sde = get_sde(sde_name)
    torch.manual_seed(0)
    net = Recorder(2, 3)
    x0 = torch.randn(64, 2)
    y = torch.randint(0, 3, (64,))
    eps = 1e-3
    loss = classifier_loss(sde, net, x0, y=y, eps=eps, generator=per_sample_generators(7, range(64)))
    xt, labels = net.seen[0]
    # the same per-row draws, done by hand: t ~ U(eps, T), x_t = a(t) x0 + s(t) z (Song et al. 2021, App. I.1)
    gens = per_sample_generators(7, range(64))
    t = torch.stack([torch.rand((), generator=g) for g in gens]) * (sde.T - eps) + eps
    z = torch.stack([torch.randn(2, generator=g) for g in gens])
    a, s = sde.marginal_coeffs(t)
    torch.testing.assert_close(xt, a[:, None] * x0 + s[:, None] * z)
    torch.testing.assert_close(labels, s if sde_name == "ve" else 999 * t)   # the score networks' labels
    assert torch.equal(loss, F.cross_entropy(net(xt, labels), y))
    assert t.min() >= eps and t.max() <= sde.T
    with pytest.raises(ValueError, match=r"needs class labels y of shape \[64\]"):
        classifier_loss(sde, net, x0, y=y[:10])


def test_a_trained_toy_classifier_approaches_the_exact_posterior(tmp_path):
    """200 steps on gauss3: the cross-entropy of the learned p_t(k | x) on noised data comes within 15% of
    that of the exact posterior of the mixture (the lowest any classifier can reach)."""
    cfg = load_config(None, {"data": {"name": "gauss3"}, "training": {"loss": "classifier", "batch_size": 128,
                                                                       "steps": 200, "log_every": 50,
                                                                       "ckpt_every": 200, "tensorboard": False,
                                                                       "sample_every": 0},
                             "model": {"preset": "mlp2d_classifier", "options": {"hidden": 32, "layers": 2, "embed_dim": 16}},
                             "optim": {"lr": 3e-3, "warmup": 20, "ema_rate": 0.9}})
    run = train(cfg, tmp_path, progress=False)
    model = load_run(tmp_path)
    assert model.is_classifier and not model.is_conditional and model.num_classes == 3
    toy, sde = get_toy("gauss3"), model.sde
    g = torch.Generator().manual_seed(1)
    x0, y = toy.sample(4000, g, return_labels=True)
    t = torch.rand(4000, generator=g) * 0.5 + 1e-3           # where the classes still overlap little
    a, s = sde.marginal_coeffs(t)
    xt = a[:, None] * x0 + s[:, None] * torch.randn(4000, 2, generator=g)
    learned = F.cross_entropy(model.classifier_fn()(xt, t), y).item()
    exact = F.nll_loss(toy.classifier_fn(sde)(xt, t).float(), y).item()
    assert exact < learned < 1.15 * exact + 0.02, (learned, exact)
    assert run.stats[-1]["loss"] < run.stats[0]["loss"]
    with pytest.raises(ValueError, match="classifier"):
        model.score_fn()


# --- conditional networks ------------------------------------------------------------------------------

NETS = {"mlp": {"name": "mlp", "dim": 2, "hidden": 16, "layers": 2, "embed_dim": 8},
        "ncsnpp": {**PRESETS["tiny8"], "nf": 8}}


def inputs(name: str, n: int = 4):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 2, generator=g) if name == "mlp" else torch.randn(n, 1, 8, 8, generator=g)
    return x, torch.rand(n, generator=g) * 999


@pytest.mark.parametrize("name", list(NETS))
def test_a_conditional_network_with_the_null_label_is_an_unconditional_one(name):
    torch.manual_seed(0)
    plain = build_network(NETS[name]).eval()
    with torch.no_grad():   # random weights everywhere (NCSN++ starts with its last layers near zero)
        for p in plain.parameters():
            p.normal_(0, 0.3)
    cond = build_network({**NETS[name], "num_classes": 5}).eval()
    # the class embedding lives outside the unconditional network's weights: those load unchanged
    assert set(cond.state_dict()) - set(plain.state_dict()) == {"class_embed.embed.weight"}
    cond.load_state_dict({**plain.state_dict(), "class_embed.embed.weight": cond.class_embed.embed.weight}, strict=True)
    x, labels = inputs(name)
    with torch.no_grad():
        cond.class_embed.embed.weight[5] = 0.0                   # a zero null embedding: exactly the plain net
        torch.testing.assert_close(cond(x, labels), plain(x, labels), rtol=0, atol=0)
        torch.testing.assert_close(cond(x, labels, NULL_LABEL), plain(x, labels), rtol=0, atol=0)
        out = {k: cond(x, labels, k) for k in range(5)}
        mixed = cond(x, labels, torch.tensor([3, NULL_LABEL, 0, 3]))
    assert out[0].shape == x.shape
    for j, k in enumerate([3, None, 0, 3]):                      # each row follows its own label
        torch.testing.assert_close(mixed[j], (out[k] if k is not None else plain(x, labels))[j])
    assert all((out[k] - out[k + 1]).abs().max() > 1e-3 for k in range(4))  # the label changes the output
    with pytest.raises(ValueError, match=r"class labels must be in 0\.\.4 or NULL_LABEL=-1, got 5"):
        cond(x, labels, 5)
    with pytest.raises(ValueError, match="integers of shape"):
        cond(x, labels, torch.zeros(4))
    with pytest.raises(ValueError, match="unconditional"):
        plain(x, labels, 1)


def test_a_conditional_score_model_gives_conditional_and_null_scores():
    cfg = load_config("digits_vp_cond", ["model.options.nf=8"])
    torch.manual_seed(0)
    model = build(cfg)
    model.net.eval().requires_grad_(False)
    for p in model.net.parameters():   # random weights everywhere (NCSN++ starts with its last layers near zero)
        p.normal_(0, 0.3)
    assert model.is_conditional and model.num_classes == 10 and not model.is_classifier
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([0.1, 0.5, 0.9])
    cond = model.cond_score_fn()
    assert torch.equal(cond(x, t, NULL_LABEL), model.score_fn()(x, t))
    assert (cond(x, t, 7) - cond(x, t, 2)).abs().max() > 1e-4
    assert torch.equal(cond(x, t, torch.tensor([7, 2, 7]))[1], cond(x, t, 2)[1])
    guided = model.with_score_fn(lambda x, t: cond(x, t, 7))
    assert torch.equal(guided.score_fn()(x, t), cond(x, t, 7)) and model.score_override is None


# --- labelled batches -----------------------------------------------------------------------------------

def test_batches_carry_the_labels_and_drop_them_at_the_asked_rate():
    from sdegen.metrics.fd_digits import DigitsCNN, WEIGHTS_PATH
    from safetensors.torch import load_file

    plain = Batches("digits", seed=3, global_batch=500)
    x, y, _ = plain.labelled(2)
    assert torch.equal(x, plain(2)[0]) and y.dtype == torch.int64 and plain.num_classes == 10
    cnn = DigitsCNN()
    cnn.load_state_dict(load_file(str(WEIGHTS_PATH)))
    with torch.no_grad():
        predicted = cnn.eval()((x + 1) / 2).argmax(1)           # the labels are those of the images
    assert (predicted == y).float().mean() > 0.9

    p, n = 0.3, 0
    dropped = Batches("digits", seed=3, global_batch=500, label_dropout=p)
    hits = 0
    for step in range(6):
        x_d, y_d, _ = dropped.labelled(step)
        x_p, y_p, _ = plain.labelled(step)
        assert torch.equal(x_d, x_p)                              # dropout touches the labels only
        kept = y_d != NULL_LABEL
        assert torch.equal(y_d[kept], y_p[kept])
        hits, n = hits + int((~kept).sum()), n + len(y_d)
    assert abs(hits / n - p) < 4 * math.sqrt(p * (1 - p) / n)   # 4 standard errors
    halves = [Batches("digits", seed=3, global_batch=500, rows=slice(r * 250, r * 250 + 250),
                      label_dropout=p).labelled(4)[1] for r in (0, 1)]
    assert torch.equal(torch.cat(halves), dropped.labelled(4)[1])  # the same drops whatever the sharding

    toy = Batches("gauss3", seed=0, global_batch=4000)           # a mixture: the label is the component
    x, y, _ = toy.labelled(1)
    means = get_toy("gauss3").means.float()
    for k in range(3):
        sel = x[y == k]
        assert (sel.mean(0) - means[k]).abs().max() < 6 * sel.std(0).max() / math.sqrt(len(sel))
    assert Batches("moons", seed=0, global_batch=8).labelled(0)[1] is None


# --- presets: train, checkpoint, resume, load -----------------------------------------------------------

TINY = ["training.batch_size=8", "training.log_every=2", "training.ckpt_every=2", "training.tensorboard=false",
        "model.options.nf=8", "training.sample_every=0"]
PRESET_CASES = {"digits_classifier_vp": [], "digits_vp_cond": ["sampling.n=4", "sampling.steps=2"]}


@pytest.mark.parametrize("preset", list(PRESET_CASES))
def test_presets_train_checkpoint_and_resume_bitwise(preset, tmp_path):
    extra = TINY + PRESET_CASES[preset]
    full = train(load_config(preset, extra + ["training.steps=4"]), tmp_path / "a", progress=False)
    train(load_config(preset, extra + ["training.steps=2"]), tmp_path / "b", progress=False)
    resumed = train(load_config(preset, extra + ["training.steps=4"]), tmp_path / "b", progress=False)
    assert_bitwise(resumed.model.net.state_dict(), full.model.net.state_dict())
    a = checkpoint.load(tmp_path / "a" / "checkpoints" / "ckpt_00000004.pt")
    b = checkpoint.load(tmp_path / "b" / "checkpoints" / "ckpt_00000004.pt")
    assert_bitwise(a["model"], b["model"])
    assert [r["loss"] for r in resumed.stats] == [r["loss"] for r in full.stats]
    loaded = load_run(tmp_path / "b")
    classifier = preset == "digits_classifier_vp"
    assert (loaded.is_classifier, loaded.is_conditional, loaded.num_classes) == (classifier, not classifier, 10)
    assert (tmp_path / "a" / "samples").is_dir() != classifier   # a classifier draws no pictures


def test_other_presets_load_and_build():
    for name in ("mnist_vp_cond", "mnist_classifier_vp", "cifar10_ddpmpp_vp_cond", "cifar10_classifier_vp"):
        cfg = load_config(name)
        with torch.device("meta"):
            model = build(cfg)
        assert model.num_classes == 10 and model.is_classifier == ("classifier" in name)
        assert (cfg.training.label_dropout > 0) == (not model.is_classifier)


@pytest.mark.parametrize("overrides, match", [
    (["training.label_dropout=0.2"], "label_dropout needs a class-conditional score network"),
    (["training.label_dropout=1.0"], r"label_dropout must be in \[0, 1\)"),
    (["training.loss=classifier"], "trains a classifier, but model.preset=mlp2d is a score network"),
    (["model.preset=mlp2d_classifier"], "is a classifier; use training.loss=classifier"),
])
def test_config_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        build(load_config("toy2d_vp", overrides))


def test_data_must_have_the_networks_classes(tmp_path):
    base = ["training.steps=1", "training.tensorboard=false", "model.options.num_classes=4"]
    with pytest.raises(ConfigError, match="gauss3 has 3 classes but .* num_classes=4"):
        train(load_config("toy2d_vp", base), tmp_path / "a", progress=False)
    with pytest.raises(ConfigError, match="moons has no class labels"):
        train(load_config("toy2d_vp", base + ["data.name=moons"]), tmp_path / "b", progress=False)


# --- CLI: sample --class / --classifier / --guidance, inpaint, colorize ----------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny runs (2 training steps): a conditional digits model, a digits classifier, an RGB model."""
    from PIL import Image

    root = tmp_path_factory.mktemp("runs")
    common = ["training.steps=2", "training.batch_size=8", "training.tensorboard=false", "model.options.nf=8",
              "training.sample_every=0"]
    train(load_config("digits_vp_cond", common + ["sampling.steps=2"]), root / "cond", progress=False)
    train(load_config("digits_classifier_vp", common), root / "clf", progress=False)
    images = root / "images"
    images.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(4):
        pixels = (torch.rand(8, 8, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(images / f"{i}.png")
    train(load_config("digits_vp", common + ["sampling.steps=2", "data.name=folder", f"data.root={images}",
                                             "model.options.num_channels=3"]), root / "rgb", progress=False)
    return root


def cli(argv, capsys):
    from sdegen.cli import main
    code = main([str(a) for a in argv])
    return code, capsys.readouterr()


def test_sample_cli_draws_the_guided_classes(runs, tmp_path, capsys):
    import numpy as np
    from sdegen.train import SamplerOptions, draw

    model, classifier = load_run(runs / "cond"), load_run(runs / "clf")
    opts = SamplerOptions.from_config(model.config.sampling)
    cases = {"a": (["--class", "3", "--guidance", "1.5"], lambda i: model.class_score_fn(3, guidance=1.5)),
             "b": (["--class", "7", "--classifier", runs / "clf", "--scale", "2"],
                   lambda i: model.class_score_fn(7, classifier=classifier, scale=2.0)),
             "c": ([], lambda i: model.class_score_fn(i % 10)),      # no --class: sample i has class i mod 10
             "d": (["--class", "null"], lambda i: model.score_fn())}
    for name, (flags, score) in cases.items():
        code, out = cli(["sample", runs / "cond", "--n", 2, "--out", tmp_path / f"{name}.npz", "--no-progress",
                         *flags], capsys)
        assert code == 0, out.err
        with np.load(tmp_path / f"{name}.npz") as f:
            got = torch.from_numpy(f["samples_float"])
        for i in range(2):
            want = draw(model.with_score_fn(score(i)), [i], 0, opts)
            torch.testing.assert_close(got[i:i + 1], model.to_signed(want), atol=1e-5, rtol=1e-5)
    for flags, match in ((["--class", "12"], "--class must be a class in 0..9"),
                         (["--scale", "2"], "--scale is the scale of classifier guidance: it needs --classifier"),
                         (["--classifier", runs / "cond"], "is a score run, not a classifier run")):
        code, out = cli(["sample", runs / "cond", "--n", 2, "--out", tmp_path / "e.npz", *flags], capsys)
        assert code == 2 and match in out.err and len(out.err.strip().splitlines()) == 1, out.err
    code, out = cli(["sample", runs / "clf", "--n", 2, "--out", tmp_path / "e.npz"], capsys)
    assert code == 2 and "is a classifier run" in out.err


def test_parse_mask(tmp_path):
    from PIL import Image
    from sdegen.cli.common import UsageError
    from sdegen.cli.inpaint import parse_mask

    hidden = {k: ~parse_mask(k, 2, (4, 6))[0, 0] for k in ("left", "right", "top", "bottom", "center")}
    assert hidden["left"][:, :3].all() and not hidden["left"][:, 3:].any()
    assert torch.equal(hidden["right"], ~hidden["left"]) and torch.equal(hidden["bottom"], ~hidden["top"])
    assert hidden["top"][:2].all() and not hidden["top"][2:].any()
    assert hidden["center"].sum() == 2 * 4 and hidden["center"][1:3, 1:5].all()
    random = parse_mask("random:0.25", 50, (8, 8), seed=1)
    assert random.shape == (50, 1, 8, 8) and not torch.equal(random[0], random[1])
    assert abs((~random).float().mean().item() - 0.25) < 4 * math.sqrt(0.25 * 0.75 / random.numel())
    picture = torch.zeros(16, 16, dtype=torch.uint8)
    picture[:, 8:] = 255                                             # white right half: observed
    Image.fromarray(picture.numpy()).save(tmp_path / "m.png")
    assert torch.equal(parse_mask(str(tmp_path / "m.png"), 3, (8, 8)), parse_mask("left", 3, (8, 8)))
    for spec, match in (("diag", "unknown --mask 'diag'"), ("random:1.5", "0 < P < 1"),
                        (str(tmp_path / "none.png"), "no file")):
        with pytest.raises(UsageError, match=match):
            parse_mask(spec, 1, (8, 8))


def test_inpaint_and_colorize_cli(runs, tmp_path, capsys):
    import numpy as np

    code, out = cli(["inpaint", runs / "cond", "--mask", "left", "--n", 4, "--steps", 3, "--grid", tmp_path / "i.png",
                     "--out", tmp_path / "i.npz"], capsys)
    assert code == 0, out.err
    with np.load(tmp_path / "i.npz") as f:
        samples, originals, mask = f["samples"], f["originals"], f["mask"]
    assert samples.shape == (4, 1, 8, 8) and mask[..., :4].sum() == 0 and mask[..., 4:].all()
    assert np.array_equal(samples[mask], originals[mask])            # observed pixels are kept exactly
    assert np.abs(samples[~mask] - originals[~mask]).max() > 0.1
    from PIL import Image
    with Image.open(tmp_path / "i.png") as im:                       # 3 rows of 4 images
        assert 4 * im.size[1] / 3 == pytest.approx(im.size[0], rel=0.1)
    code, out = cli(["colorize", runs / "rgb", "--n", 2, "--split", "train", "--method", "repaint", "--steps", 25,
                     "--option", "predictor=euler_maruyama", "--option", "corrector=none",
                     "--resample", 2, "--jump", 2, "--grid", tmp_path / "c.png", "--out", tmp_path / "c.npz"], capsys)
    assert code == 0, out.err
    with np.load(tmp_path / "c.npz") as f:
        np.testing.assert_allclose(f["samples"].mean(1), f["originals"].mean(1), atol=1e-5)
        assert f["samples"].shape == (2, 3, 8, 8) and np.abs(f["samples"] - f["originals"]).max() > 0.05
    code, out = cli(["colorize", runs / "cond", "--n", 2], capsys)
    assert code == 2 and "colorize needs an RGB run" in out.err
    code, out = cli(["inpaint", runs / "cond", "--n", 2, "--method", "repaint", "--sampler", "ddim", "--steps", 4,
                     "--jump", 2, "--resample", 2, "--grid", tmp_path / "r.png", "--out", tmp_path / "r.npz"], capsys)
    assert code == 0, out.err
    with np.load(tmp_path / "r.npz") as f:
        assert np.array_equal(f["samples"][f["mask"]], f["originals"][f["mask"]])
    code, out = cli(["inpaint", runs / "cond", "--n", 2, "--method", "repaint", "--sampler", "ode"], capsys)
    assert code == 2 and "cannot follow" in out.err and "Traceback" not in out.err
    code, out = cli(["inpaint", runs / "cond", "--n", 2, "--method", "smc", "--sampler", "ddim"], capsys)
    assert code == 2 and "smc runs the pc sampler's chain" in out.err
