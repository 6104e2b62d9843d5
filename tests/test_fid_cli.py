"""`sdegen fid` and `sdegen fid-stats`: end to end with FD-digits and with random Inception weights, and
the user's mistakes."""
import argparse
import json
import sys
import types

import numpy as np
import pytest
from PIL import Image

from sdegen.cli import fid as fid_cli
from sdegen.cli import fid_stats as stats_cli
from sdegen.cli.common import UsageError
from sdegen.metrics import inception as inc
from sdegen.metrics.fd_digits import digits_stats, fd_digits, load_digits_split
from sdegen.metrics.frechet import load_stats, save_stats




@pytest.fixture(autouse=True)
def fake_data(monkeypatch):
    """``sdegen.data.get_dataset`` stand-in: the digits as (image, label) pairs, floats in [0, 1]."""
    def get_dataset(name, root, split="train", **kwargs):
        if name != "digits":
            raise ValueError(f"unknown data set {name!r}; accepted: digits")
        x, y = load_digits_split(split)
        return list(zip(x, y))

    monkeypatch.setitem(sys.modules, "sdegen.data", types.SimpleNamespace(get_dataset=get_dataset))


@pytest.fixture(scope="module")
def random_inception(tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / "random-inception.pth"  # shared by the test files of a session
    return path if path.is_file() else inc.save_random_inception_weights(path, seed=0)


def cli(module, *argv) -> int:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return module.run(parser.parse_args([str(a) for a in argv]))


def save_samples(path, array):
    np.savez(path, samples=array)
    return path


def test_fd_digits_end_to_end(tmp_path, capsys):
    ref = tmp_path / "digits.npz"
    assert cli(stats_cli, "digits", "--metric", "fd-digits", "--out", ref) == 0
    stats = load_stats(ref)
    assert (stats.count, stats.extractor) == (1437, "fd-digits-cnn")

    x_test = load_digits_split("test")[0]
    samples = save_samples(tmp_path / "s.npz", x_test.numpy())  # float [N, 1, 8, 8] in [0, 1]
    assert cli(fid_cli, samples, "--ref", ref, "--metric", "fd-digits", "--json", tmp_path / "r.json") == 0
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["values"] == [pytest.approx(fd_digits(x_test, digits_stats(load_digits_split("train")[0])))]
    assert "FD-digits" in capsys.readouterr().out
    signed = save_samples(tmp_path / "signed.npz", x_test.numpy() * 2 - 1)
    cli(fid_cli, signed, "--ref", ref, "--metric", "fd-digits", "--value-range", "signed",
        "--json", tmp_path / "g.json")
    assert json.loads((tmp_path / "g.json").read_text())["min"] == pytest.approx(record["min"], rel=1e-6)

    # uint8 [N, H, W, C] as samples are usually saved; three blocks; a data set as reference
    as_uint8 = (x_test.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)
    samples = save_samples(tmp_path / "u8.npz", as_uint8)
    cli(fid_cli, samples, "--ref", "digits", "--metric", "fd-digits", "--seeds", "3", "--json", tmp_path / "b.json")
    blocks = json.loads((tmp_path / "b.json").read_text())
    assert blocks["count"] == 360 and len(blocks["values"]) == 3 and blocks["ref_count"] == 1437
    assert blocks["min"] <= blocks["mean"] and blocks["mean"] < 20
    assert "over 3 blocks" in capsys.readouterr().out

    noise = save_samples(tmp_path / "noise.npz", np.random.default_rng(0).random((360, 8, 8)))
    cli(fid_cli, noise, "--ref", ref, "--metric", "fd-digits", "--json", tmp_path / "n.json")
    assert json.loads((tmp_path / "n.json").read_text())["min"] > 10 * record["min"]


def test_inception_end_to_end_fid_of_a_set_with_itself_is_zero(tmp_path, random_inception, capsys):
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i:03d}.png")
    ref = tmp_path / "ref.npz"
    w = ["--inception-weights", random_inception, "--device", "cpu"]
    cli(stats_cli, folder, "--out", ref, *w)
    assert load_stats(ref).extractor == inc.EXTRACTOR_NAME
    cli(fid_cli, save_samples(tmp_path / "s.npz", images), "--ref", ref, "--json", tmp_path / "r.json", *w)
    out = capsys.readouterr()
    assert abs(json.loads((tmp_path / "r.json").read_text())["min"]) < 1e-3
    assert "biased" in out.err and "FID" in out.out

    # a reference made by another network is refused before any work
    other = tmp_path / "digits.npz"
    save_stats(other, digits_stats(load_digits_split("test")[0]))
    with pytest.raises(UsageError, match="was made with fd-digits-cnn"):
        cli(fid_cli, tmp_path / "s.npz", "--ref", other, *w)


def test_user_mistakes(tmp_path):
    ref = tmp_path / "ref.npz"
    save_stats(ref, digits_stats(load_digits_split("train")[0]))
    fd = ["--metric", "fd-digits"]
    good = save_samples(tmp_path / "good.npz", np.zeros((4, 8, 8, 1), np.uint8))

    with pytest.raises(UsageError, match="no such file"):
        cli(fid_cli, tmp_path / "missing.npz", "--ref", ref, *fd)
    with pytest.raises(UsageError, match="no such file"):
        cli(fid_cli, good, "--ref", tmp_path / "missing.npz", *fd)
    with pytest.raises(UsageError, match="weights-inception-2015-12-05-6726825d.pth"):
        cli(fid_cli, good, "--ref", ref, "--inception-weights", tmp_path / "none.pth", "--device", "cpu")
    np.savez(tmp_path / "nokey.npz", images=np.zeros((4, 8, 8)))
    with pytest.raises(UsageError, match="no array 'samples'"):
        cli(fid_cli, tmp_path / "nokey.npz", "--ref", ref, *fd)
    with pytest.raises(UsageError, match=r"shape \[4, 5, 5, 5\]"):
        cli(fid_cli, save_samples(tmp_path / "bad.npz", np.zeros((4, 5, 5, 5))), "--ref", ref, *fd)
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(UsageError, match="not a readable"):
        cli(fid_cli, tmp_path / "junk.npz", "--ref", ref, *fd)
    np.savez(tmp_path / "foreign.npz", mu=np.zeros(64), sigma=np.eye(64))
    with pytest.raises(UsageError, match="lacks"):
        cli(fid_cli, good, "--ref", tmp_path / "foreign.npz", *fd)
    with pytest.raises(UsageError, match="unknown data set 'cifar11'"):
        cli(fid_cli, good, "--ref", "cifar11", *fd)
    with pytest.raises(UsageError, match="blocks"):
        cli(fid_cli, good, "--ref", ref, "--seeds", "3", *fd)
    with pytest.raises(UsageError, match="must end in .npz"):
        cli(stats_cli, "digits", "--out", tmp_path / "ref.txt", *fd)
    with pytest.raises(UsageError, match="does not exist"):
        cli(stats_cli, "digits", "--out", tmp_path / "no" / "ref.npz", *fd)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no .png"):
        cli(stats_cli, tmp_path / "empty", "--out", tmp_path / "e.npz", *fd)
    with pytest.raises(SystemExit):
        cli(fid_cli, good, "--ref", ref, "--seeds", "0")


def test_metrics_suite_one_json_line_per_metric(tmp_path, random_inception, random_vgg16, capsys):
    """`--metrics fid,kid,is,prc`: a set against itself has FID 0 and precision = recall = 1; a shifted set
    does not; each line's mean and std are those of its per-block values."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    same = save_samples(tmp_path / "same.npz", images)
    w = ["--inception-weights", random_inception, "--vgg16-weights", random_vgg16, "--device", "cpu"]
    assert cli(fid_cli, same, "--ref", same, "--metrics", "fid,kid,is,prc", "--json", tmp_path / "r.jsonl", *w) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["metric"] for r in lines] == ["fid", "kid", "is", "precision", "recall"]
    assert (tmp_path / "r.jsonl").read_text().splitlines() == [json.dumps(r) for r in lines]
    by = {r["metric"]: r for r in lines}
    assert abs(by["fid"]["mean"]) < 1e-3 and by["fid"]["bias_scale"] > 0
    assert by["precision"]["mean"] == by["recall"]["mean"] == 1.0
    assert by["is"]["mean"] >= 1.0 and by["is"]["splits"] == 6 and by["kid"]["subset_size"] == 6

    darker = save_samples(tmp_path / "darker.npz", (images // 4).astype(np.uint8))
    cli(fid_cli, darker, "--ref", same, "--metrics", "fid,prc", "--prc-features", "inception", *w)
    lines = {r["metric"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert lines["fid"]["mean"] > 100 * max(abs(by["fid"]["mean"]), 1e-3) and lines["precision"]["mean"] < 1.0
    assert by["precision"]["extractor"] == "vgg16" and by["kid"]["extractor"] == "inception-v3-compat"


def test_precision_recall_needs_vgg16_weights_or_inception_features(tmp_path, random_inception, monkeypatch, capsys):
    monkeypatch.delenv("SDEGEN_VGG16_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    images = np.random.default_rng(2).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    same = save_samples(tmp_path / "same.npz", images)
    w = ["--inception-weights", random_inception, "--device", "cpu"]
    with pytest.raises(UsageError, match=r"vgg16-397923af.pth.*--prc-features inception"):
        cli(fid_cli, same, "--ref", same, "--metrics", "prc", *w)
    assert cli(fid_cli, same, "--ref", same, "--metrics", "prc", "--prc-features", "inception", *w) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["metric"], r["mean"], r["extractor"]) for r in lines] == [
        ("precision", 1.0, "inception-v3-compat"), ("recall", 1.0, "inception-v3-compat")]


def test_frechet_small_sample_warning_reports_the_bias_scale(tmp_path, capsys):
    x = load_digits_split("test")[0][:64]
    samples = save_samples(tmp_path / "s.npz", x.numpy())
    cli(fid_cli, samples, "--ref", "digits", "--metric", "fd-digits", "--seeds", "3", "--json", tmp_path / "r.json")
    err = capsys.readouterr().err
    record = json.loads((tmp_path / "r.json").read_text())
    assert "FD-digits from 21 < 360 samples is biased upwards" in err and f"{record['bias_scale']:.4g}" in err
    cli(fid_cli, samples, "--ref", "digits", "--metrics", "fd-digits", "--seeds", "3")
    out = capsys.readouterr()
    line = json.loads(out.out)
    assert "FD-digits from 21 < 360" in out.err and line["bias_scale"] == pytest.approx(record["bias_scale"])
    assert line["values"] == pytest.approx(record["values"]) and line["block_count"] == 21
    assert line["mean"] == pytest.approx(np.mean(line["values"])) and line["std"] == pytest.approx(np.std(line["values"]))


def test_file_errors_are_one_line_naming_the_file(tmp_path):
    """Checked before any network loads: with the default metric (FID) and no Inception weights anywhere,
    the error is about the file, not the weights."""
    good = save_samples(tmp_path / "good.npz", np.zeros((4, 8, 8, 1), np.uint8))
    np.savez(tmp_path / "objects.npz", samples=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(UsageError, match=r"objects.npz: 'samples' holds Python objects"):
        cli(fid_cli, tmp_path / "objects.npz", "--ref", good)
    (tmp_path / "notes.txt").write_text("not images")
    with pytest.raises(UsageError, match=r"notes.txt: not an .npz file nor a folder of images"):
        cli(fid_cli, tmp_path / "notes.txt", "--ref", good)
    with pytest.raises(UsageError, match=r"missing.npz: no such file"):
        cli(fid_cli, tmp_path / "missing.npz", "--ref", good)
    with pytest.raises(UsageError, match=r"cifar10_train.npz: no such file"):
        cli(fid_cli, good, "--ref", tmp_path / "cifar10_train.npz")
    folder = tmp_path / "pngs"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"not a png")
    with pytest.raises(UsageError, match=r"a.png: not a readable image"):
        cli(fid_cli, folder, "--ref", good, "--metric", "fd-digits")
    ref = tmp_path / "ref.npz"
    save_stats(ref, digits_stats(load_digits_split("train")[0]))
    with pytest.raises(UsageError, match="kid need the reference's features"):
        cli(fid_cli, good, "--ref", ref, "--metrics", "fid,kid")
    with pytest.raises(UsageError, match=r"--metrics: unknown metric\(s\) \['fdd'\]"):
        cli(fid_cli, good, "--ref", ref, "--metrics", "fid,fdd")
