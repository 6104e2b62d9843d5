"""sdegen.metrics: Frechet distance, statistics files, FID pipeline (random Inception weights), KID, IS,
FD-digits, and the low-dimensional distances."""
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from sdegen.metrics.fd_digits import DigitsFeatures, digits_stats, fd_digits, load_digits_split
from sdegen.metrics import inception as inc
from sdegen.metrics import suite
from sdegen.metrics.frechet import (FeatureStats, feature_stats, fid_from_stats, frechet_distance, load_stats,
                                    save_stats, split_stats, summarize)
from sdegen.metrics.lowdim import mmd_rbf, mode_stats, sliced_wasserstein

ROOT = Path(__file__).resolve().parents[1]




def random_cov(d, n, seed):
    a = np.random.default_rng(seed).standard_normal((d, n))
    return a @ a.T / n


# --- Frechet distance ---------------------------------------------------------------------------

def test_frechet_one_dimensional_closed_form():
    # (m1 - m2)^2 + s1^2 + s2^2 - 2 s1 s2 = 9 + 4 + 1 - 4
    assert frechet_distance([0.0], [[4.0]], [3.0], [[1.0]]) == pytest.approx(10.0, abs=1e-12)


def test_frechet_matches_matrix_sqrt_and_torch_fidelity():
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(12), rng.standard_normal(12)
    s1, s2 = random_cov(12, 30, 1), random_cov(12, 30, 2)
    reference = mu1 @ mu1 - 2 * mu1 @ mu2 + mu2 @ mu2 + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    d = frechet_distance(mu1, s1, mu2, s2)
    assert d == pytest.approx(reference, rel=1e-9)
    tf = fid_statistics_to_metric({"mu": mu1, "sigma": s1}, {"mu": mu2, "sigma": s2}, False)
    assert d == pytest.approx(tf["frechet_inception_distance"], rel=1e-9)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(d, rel=1e-9)
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-9


def test_frechet_singular_covariances():
    s1, s2 = np.diag([1.0, 0.0, 0.0]), np.diag([4.0, 0.0, 0.0])  # tr = 1 + 4 - 2 * 2
    assert frechet_distance(np.zeros(3), s1, np.zeros(3), s2) == pytest.approx(1.0, abs=1e-9)
    # rank 5 of 40, like few samples of many features: c1 = A A^T / 5, c2 = B B^T / 5, and
    # tr (c1 c2)^(1/2) = (sum of singular values of A^T B) / 5
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((40, 5)), rng.standard_normal((40, 5))
    c1, c2 = a @ a.T / 5, b @ b.T / 5
    d = frechet_distance(np.zeros(40), c1, np.zeros(40), c2)
    exact = np.trace(c1 + c2) - 2 * np.linalg.svd(a.T @ b, compute_uv=False).sum() / 5
    assert d == pytest.approx(exact, rel=1e-6)  # round-off eigenvalues ~1e-16 contribute their roots
    assert abs(frechet_distance(np.zeros(40), c1, np.zeros(40), c1)) < 1e-6


def test_frechet_rejects_bad_input():
    eye = np.eye(2)
    with pytest.raises(ValueError, match="means"):
        frechet_distance(np.zeros(2), eye, np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="sigma2 must be"):
        frechet_distance(np.zeros(2), eye, np.zeros(2), np.eye(3))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.array([np.nan, 0]), eye, np.zeros(2), eye)
    with pytest.raises(ValueError, match="positive semi-definite"):  # sqrt of eigenvalue -1 is i
        frechet_distance(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), eye)


def test_feature_stats_and_files(tmp_path):
    f = np.random.default_rng(0).standard_normal((50, 4))
    mu, sigma = feature_stats(f)
    np.testing.assert_allclose(mu, f.mean(0))
    np.testing.assert_allclose(sigma, np.cov(f.T, ddof=1))
    with pytest.raises(ValueError, match="N >= 2"):
        feature_stats(f[:1])

    a = FeatureStats.from_features(f, "net-a", "0" * 64)
    save_stats(tmp_path / "a.npz", a)
    b = load_stats(tmp_path / "a.npz")
    np.testing.assert_array_equal(b.mu, a.mu)
    np.testing.assert_array_equal(b.sigma, a.sigma)
    assert (b.count, b.extractor, b.weights_sha256) == (50, "net-a", "0" * 64)
    assert abs(fid_from_stats(a, b)) < 1e-9

    with pytest.raises(ValueError, match="different feature extractors"):
        fid_from_stats(a, FeatureStats(a.mu, a.sigma, 50, "net-b", "0" * 64))
    with pytest.raises(ValueError, match="different weights"):
        fid_from_stats(a, FeatureStats(a.mu, a.sigma, 50, "net-a", "1" * 64))
    np.savez(tmp_path / "foreign.npz", mu=mu, sigma=sigma)
    with pytest.raises(ValueError, match="lacks count, extractor, weights_sha256"):
        load_stats(tmp_path / "foreign.npz")
    with pytest.raises(FileNotFoundError):
        load_stats(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="not a readable"):
        load_stats(tmp_path / "junk.npz")


def test_split_stats_blocks_are_disjoint():
    f = np.arange(20.0)[:, None] * np.ones((1, 2)) + np.random.default_rng(0).standard_normal((20, 2))
    blocks = split_stats(f, 3, "n", "h")
    assert [b.count for b in blocks] == [7, 7, 6]
    np.testing.assert_allclose(blocks[2].mu, f[14:].mean(0))
    s = summarize([3.0, 1.0, 2.0])
    assert (s["min"], s["mean"], s["std"]) == (1.0, 2.0, pytest.approx(math.sqrt(2 / 3)))
    with pytest.raises(ValueError, match="blocks"):
        split_stats(f, 11, "n", "h")


def test_quantize_uint8_round_trips_and_repeats_gray():
    q = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    np.testing.assert_array_equal(inc.quantize_uint8(q.float() / 255, (0, 1))[:, :1], q)
    np.testing.assert_array_equal(inc.quantize_uint8(q.float() / 127.5 - 1, (-1, 1))[:, :1], q)
    out = inc.quantize_uint8(q, None)
    assert out.shape == (1, 3, 16, 16) and (out == q).all()
    clipped = inc.quantize_uint8(torch.tensor([-3.0, 0.5, 7.0]).reshape(1, 1, 1, 3), (0, 1))
    assert clipped.flatten()[:3].tolist() == [0, 128, 255]
    with pytest.raises(ValueError, match="value_range"):
        inc.quantize_uint8(q.float(), None)
    with pytest.raises(ValueError, match="1 or 3"):
        inc.quantize_uint8(torch.zeros(1, 2, 4, 4), (0, 1))


# --- FID pipeline with randomly initialised Inception weights -----------------------------------

@pytest.fixture(scope="module")
def random_inception(tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / "random-inception.pth"  # shared by the test files of a session
    return path if path.is_file() else inc.save_random_inception_weights(path, seed=0)


def test_fid_pipeline_with_random_weights(random_inception):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = (torch.rand(6, 1, 32, 32, generator=g) * 0.5)  # other images: gray, darker, float in [0, 1]
    kw = dict(weights_path=random_inception, device="cpu")

    with pytest.warns(UserWarning, match="biased"):
        stats_x = inc.compute_stats(x, **kw)
    assert stats_x.mu.shape == (2048,) and stats_x.sigma.shape == (2048, 2048)
    assert stats_x.extractor == inc.EXTRACTOR_NAME and len(stats_x.weights_sha256) == 64
    assert stats_x.sigma.diagonal().max() > 1e-4  # features vary across images

    # deterministic and independent of batching; float input quantised to the same uint8 gives the same
    # features, hence the same statistics (FID(x, x) = 0 end to end is checked in test_fid_cli.py)
    feats = inc.inception_features(x.float() / 127.5 - 1, value_range=(-1, 1), batch_size=4, **kw)
    assert feats.shape == (6, 2048) and np.isfinite(feats).all()
    again = FeatureStats.from_features(feats, stats_x.extractor, stats_x.weights_sha256)
    np.testing.assert_allclose(again.mu, stats_x.mu, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(again.sigma, stats_x.sigma, rtol=1e-4, atol=1e-8)

    with pytest.warns(UserWarning, match="biased"):
        stats_y = inc.compute_stats(y, value_range=(0, 1), **kw)
    assert fid_from_stats(stats_x, stats_y) > 1e-2


def test_inception_score_of_identical_images_is_one(random_inception):
    img = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1)).expand(4, -1, -1, -1)
    mean, std = inc.inception_score(img, value_range=(0, 1), weights_path=random_inception, splits=2,
                                    device="cpu")
    assert mean == pytest.approx(1.0, abs=1e-5) and std == pytest.approx(0.0, abs=1e-5)


def test_kid_via_torch_fidelity():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((200, 16)), rng.standard_normal((200, 16))
    same, _ = suite.kid(a, b, subsets=20, subset_size=100)
    shifted, _ = suite.kid(a, b + 1.0, subsets=20, subset_size=100)
    assert abs(same) < 0.05 and shifted > 10 * max(abs(same), 0.01)
    with pytest.raises(ValueError, match="subset_size"):
        suite.kid(a, b, subset_size=1000)


def test_inception_weights_resolution(tmp_path, monkeypatch, random_inception):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv(inc.INCEPTION_ENV, raising=False)
    with pytest.raises(FileNotFoundError) as e:
        inc.resolve_inception_weights(download=False)
    assert inc.INCEPTION_FILENAME in str(e.value) and "github.com/toshas/torch-fidelity/releases" in str(e.value)
    with pytest.raises(FileNotFoundError, match=inc.INCEPTION_FILENAME):
        inc.resolve_inception_weights(tmp_path / "nowhere.pth")
    monkeypatch.setenv(inc.INCEPTION_ENV, str(random_inception))
    assert inc.resolve_inception_weights(download=False) == random_inception
    cached = tmp_path / "torch-home" / "hub" / "checkpoints" / inc.INCEPTION_FILENAME
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    monkeypatch.delenv(inc.INCEPTION_ENV)
    assert inc.resolve_inception_weights(download=False) == cached

    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="does not hold Inception-v3 weights"):
        inc.InceptionV3(tmp_path / "wrong.pth", device="cpu")
    torch.save({"when": Path("x")}, tmp_path / "pickled.pth")  # an object that needs code to unpickle
    with pytest.raises(ValueError, match="pickled.pth is not a checkpoint this tool trusts"):
        inc.InceptionV3(tmp_path / "pickled.pth", device="cpu")


# --- FD-digits ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits():
    return load_digits_split("train"), load_digits_split("test")


def binomial_blur(x):
    k = torch.tensor([1.0, 2.0, 1.0])
    k = (k[:, None] * k[None]) / 16  # about a Gaussian of std 0.7 pixel
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k[None, None])


def test_fd_digits_orders_real_blurred_noise(digits):
    (x_train, _), (x_test, _) = digits
    ref = digits_stats(x_train)
    g = torch.Generator().manual_seed(0)
    real = fd_digits(x_test, ref)
    blurred = fd_digits(binomial_blur(x_test), ref)
    noise = fd_digits((0.5 + 0.5 * torch.randn(x_test.shape, generator=g)).clamp(0, 1), ref)
    uniform = fd_digits(torch.rand(x_test.shape, generator=g), ref)
    assert real < 0.1 * blurred, (real, blurred)
    assert blurred < noise and blurred < uniform, (blurred, noise, uniform)
    assert real < 0.05 * min(noise, uniform)


def test_fd_digits_inputs_and_reference(digits):
    (_, _), (x_test, y_test) = digits
    default_ref = fd_digits(x_test)  # against all 1797 digits (which include these)
    assert 0 <= default_ref < 10
    assert fd_digits(x_test * 2 - 1, value_range=(-1, 1)) == pytest.approx(default_ref, rel=1e-6)
    # 16x16 nearest upsampling is undone exactly by the area resampling to 8x8
    up = F.interpolate(x_test, scale_factor=2, mode="nearest")
    assert fd_digits(up) == pytest.approx(default_ref, rel=1e-6)
    assert fd_digits(up.expand(-1, 3, -1, -1)) == pytest.approx(default_ref, rel=1e-6)  # RGB -> gray
    missing_classes = fd_digits(x_test[y_test < 5])
    assert missing_classes > 5 * default_ref
    with pytest.raises(ValueError, match="value_range"):
        fd_digits(x_test, value_range=None)


def test_fd_digits_network_is_trained_and_its_training_deterministic(digits):
    (_, _), (x_test, y_test) = digits
    net = DigitsFeatures().net
    with torch.no_grad():
        assert (net(x_test).argmax(1) == y_test).float().mean() > 0.95
    spec = importlib.util.spec_from_file_location("train_fd_digits", ROOT / "scripts" / "train_fd_digits.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    a, _ = script.train(epochs=1, seed=0)
    b, _ = script.train(epochs=1, seed=0)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


# --- low-dimensional distances ------------------------------------------------------------------

def test_sliced_wasserstein_known_values():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 1, generator=g, dtype=torch.float64)
    assert sliced_wasserstein(x, x + 2.0, 8, generator=g) == pytest.approx(2.0, abs=1e-9)  # 1-D: W2
    # unequal sizes in 1-D: W2^2 between {0, 1} and {0, 1/2, 1} is 1/12
    assert sliced_wasserstein([[0.0], [1.0]], [[0.0], [0.5], [1.0]], 4, generator=g) == \
        pytest.approx(math.sqrt(1 / 12), abs=1e-12)
    # y = x + delta in d dims: SW^2 = E (theta . delta)^2 = |delta|^2 / d
    x4 = torch.randn(300, 4, generator=g, dtype=torch.float64)
    delta = torch.tensor([2.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    sw = sliced_wasserstein(x4, x4 + delta, 4096, generator=torch.Generator().manual_seed(1))
    assert sw == pytest.approx(1.0, rel=0.05)
    again = sliced_wasserstein(x4, x4 + delta, 4096, generator=torch.Generator().manual_seed(1))
    assert again == sw
    with pytest.raises(ValueError, match="dimension"):
        sliced_wasserstein(x4, x, 4)


def test_mmd_rbf_matches_gaussian_closed_form():
    g = torch.Generator().manual_seed(0)
    n, d, s, h = 1500, 2, 1.0, 1.0
    x = s * torch.randn(n, d, generator=g, dtype=torch.float64)
    y = s * torch.randn(n, d, generator=g, dtype=torch.float64)
    delta = torch.tensor([1.0, 0.0], dtype=torch.float64)
    # N(0, s^2 I) vs N(delta, s^2 I), kernel exp(-|a-b|^2 / 2h^2): 2 c (1 - exp(-|delta|^2 / 2(h^2 + 2 s^2)))
    c = (h ** 2 / (h ** 2 + 2 * s ** 2)) ** (d / 2)
    exact = 2 * c * (1 - math.exp(-1.0 / (2 * (h ** 2 + 2 * s ** 2))))
    assert mmd_rbf(x, y + delta, bandwidths=[h]) == pytest.approx(exact, abs=0.015)
    assert abs(mmd_rbf(x, y, bandwidths=[h])) < 0.005
    assert mmd_rbf(x, y + delta) > 10 * abs(mmd_rbf(x, y))  # median-heuristic bandwidths
    with pytest.raises(ValueError, match="bandwidths"):
        mmd_rbf(x, y, bandwidths=[0.0])


def test_mode_stats_counts_modes_and_quality():
    grid = torch.tensor([[i, j] for i in range(-4, 5, 2) for j in range(-4, 5, 2)], dtype=torch.float64)
    std = 0.05
    g = torch.Generator().manual_seed(0)
    hit = grid[:20].repeat_interleave(10, 0)
    samples = torch.cat([hit + std * torch.randn(hit.shape, generator=g, dtype=torch.float64),
                         torch.full((10, 2), 1.0, dtype=torch.float64)])  # 10 samples between modes
    out = mode_stats(samples, grid, std)
    assert out["modes_recovered"] == 20
    assert out["high_quality_share"] == pytest.approx(200 / 210)
    assert out["counts"] == [10] * 20 + [0] * 5
    assert mode_stats(samples, grid, std, min_count=11)["modes_recovered"] == 0
    with pytest.raises(ValueError, match="std"):
        mode_stats(samples, grid, -1.0)


def test_vgg16_features_are_torch_fidelitys(random_vgg16, tmp_path):
    # the same weights through torch-fidelity's own extractor (it loads the file itself; ours is weights_only)
    from torch_fidelity.feature_extractor_vgg16 import FeatureExtractorVGG16

    from sdegen.metrics.vgg import VGG16

    x = torch.randint(0, 256, (2, 3, 20, 12), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    ours = VGG16(random_vgg16, device="cpu")
    (theirs,) = FeatureExtractorVGG16("vgg16", ["fc2_relu"], feature_extractor_weights_path=str(random_vgg16))(x)
    assert ours(x, None).shape == (2, 4096)
    torch.testing.assert_close(ours(x, None), theirs.double(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours(x.float() / 255, (0.0, 1.0)), ours(x, None))   # floats are quantised first
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="does not hold torchvision VGG-16 weights"):
        VGG16(bad, device="cpu")
    with pytest.raises(FileNotFoundError, match="vgg16-397923af.pth"):
        VGG16(tmp_path / "missing.pth")
