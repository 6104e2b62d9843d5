"""The main parser: --threads on every command, bare `sdegen`, key=value anywhere in `train`, silent ranks
under torchrun, and the data download of `sdegen train --download`."""
import struct
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch

from sdegen import cli
from sdegen.cli import build_parser, default_threads, parse


def test_every_command_takes_threads(capsys):
    for name in cli.COMMANDS:
        argv = [name, "train"] if name == "gan" else [name]        # gan's options belong to its action
        with pytest.raises(SystemExit) as e:
            parse(build_parser(), argv + ["--help"])
        assert e.value.code == 0
        assert "--threads N" in capsys.readouterr().out, name


def test_default_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads() == 3
    for cores, expected in ((1, 1), (2, 1), (4, 2), (8, 4), (64, 4)):
        monkeypatch.delenv("OMP_NUM_THREADS")
        monkeypatch.setattr(cli, "usable_cores", lambda: cores)
        assert default_threads() == expected
        monkeypatch.setenv("OMP_NUM_THREADS", "")          # empty or junk: ignored
        assert default_threads() == expected


def test_idle_cores_reads_the_idle_share_of_all_cpus(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    monkeypatch.setattr(cli.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(cli, "usable_cores", lambda: 2)
    # /proc/stat's first line: user nice system idle iowait irq softirq steal guest guest_nice (jiffies)
    for (idle, iowait, busy), expected in (((180, 10, 10), 2), ((95, 5, 100), 1), ((5, 0, 195), 1)):
        stat.write_text("cpu  0 0 0 0 0 0 0 0 0 0\ncpu0 1 2 3\n")
        later = f"cpu  {busy} 0 0 {idle} {iowait} 0 0 0 7 7\ncpu0 1 2 3\n"   # guest time is in user already
        monkeypatch.setattr(cli.time, "sleep", lambda seconds: stat.write_text(later))
        assert cli.idle_cores(stat=stat) == expected, (idle, iowait, busy)
    monkeypatch.setattr(cli.os, "cpu_count", lambda: 8)       # 8 idle cores, 2 of them this process's
    stat.write_text("cpu  0 0 0 0 0 0 0 0 0 0\n")
    monkeypatch.setattr(cli.time, "sleep", lambda seconds: stat.write_text("cpu  0 0 0 800 0 0 0 0 0 0\n"))
    assert cli.idle_cores(stat=stat) == 2
    monkeypatch.undo()
    assert cli.idle_cores(stat=tmp_path / "missing") is None     # not Linux: unknown
    real = cli.idle_cores(interval=0.05)
    assert real is None or 1 <= real <= cli.usable_cores()


def test_quickstart_threads_are_the_idle_cores(monkeypatch):
    from sdegen.cli import quickstart

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert quickstart.training_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    for idle, expected in ((None, 1), (1, 1), (2, 2), (16, 4)):
        monkeypatch.setattr(quickstart, "idle_cores", lambda: idle)
        assert quickstart.training_threads() == expected


def test_threads_are_applied_before_the_command(tmp_path, capsys, monkeypatch):
    from threadpoolctl import threadpool_info

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cli, "usable_cores", lambda: 4)
    # the command fails at once (no such run), after the threads were set
    assert cli.main(["sample", str(tmp_path / "missing"), "--threads", "2", "--device", "cpu"]) == 2
    assert torch.get_num_threads() == 2
    assert all(p["num_threads"] == 2 for p in threadpool_info())
    assert cli.main(["sample", str(tmp_path / "missing"), "--device", "cpu"]) == 2
    assert torch.get_num_threads() == 2                      # min(4, 4 // 2)
    assert parse(build_parser(), ["quickstart"]).threads is None  # quickstart decides when it runs
    assert parse(build_parser(), ["gan", "train", "--workdir", "w", "--threads", "3"]).threads == 3
    with pytest.raises(SystemExit):
        parse(build_parser(), ["sample", "x", "--threads", "0"])
    assert "expected a positive integer, got 0" in capsys.readouterr().err


def test_bare_sdegen_prints_usage(capsys):
    assert cli.main([]) == 2
    out = capsys.readouterr().out
    assert out.startswith("usage: sdegen") and all(name in out for name in cli.COMMANDS)


def test_train_takes_key_value_anywhere(capsys):
    parser = build_parser()
    args = parse(parser, ["train", "digits_vp", "a.b=1", "--workdir", "runs/x", "training.steps=10", "--no-progress",
                          "optim.lr=1e-3"])
    assert args.config == "digits_vp" and args.workdir == "runs/x" and args.no_progress
    assert args.overrides == ["a.b=1", "training.steps=10", "optim.lr=1e-3"]   # in command-line order
    for argv, bad in ((["train", "digits_vp", "--workdir", "x", "oops"], "oops"),
                      (["train", "digits_vp", "--workdir", "x", "--bogus"], "--bogus"),
                      (["sample", "runs/x", "a=1"], "a=1")):          # only commands with overrides take them
        with pytest.raises(SystemExit) as e:
            parse(parser, argv)
        assert e.value.code == 2
        assert capsys.readouterr().err == f"sdegen: error: unrecognized arguments: {bad}\n"


def test_ranks_after_the_first_stay_silent(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "QUIET_RANK_DELAY_S", 0.0)
    argv = ["sample", str(tmp_path / "missing"), "--device", "cpu"]
    monkeypatch.setenv("RANK", "0")
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("sdegen sample: error:") and err.count("\n") == 1
    monkeypatch.setenv("RANK", "1")
    assert cli.main(argv) == 2
    with pytest.raises(SystemExit) as e:
        cli.main(["train"])                                   # an argument error
    assert e.value.code == 2
    assert capsys.readouterr().err == ""


# --- sdegen train --download ---------------------------------------------------------------------------

def _write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack(">i", magic) + b"".join(struct.pack(">i", s) for s in array.shape)
                     + array.astype(np.uint8).tobytes())


def test_download_fetches_mnist_with_torchvision(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv

    fetched = []

    def fake_download(url, download_root, extract_root=None, filename=None, md5=None, **kwargs):
        fetched.append((url, Path(download_root)))
        name = filename[:-3]                                     # what extraction of the .gz leaves
        n = 5 if name.startswith("train") else 3
        if "images" in name:
            _write_idx(Path(download_root) / name, np.full((n, 28, 28), 255), 2051)
        else:
            _write_idx(Path(download_root) / name, np.arange(n), 2049)

    monkeypatch.setattr(tv, "download_and_extract_archive", fake_download)
    from sdegen.train.batches import Batches

    with pytest.raises(FileNotFoundError, match="sdegen train --download"):
        Batches("mnist", seed=0, global_batch=2, root=str(tmp_path))   # nothing fetched without download
    assert fetched == []
    batches = Batches("mnist", seed=0, global_batch=2, root=str(tmp_path), download=True)
    assert {u.rsplit("/", 1)[1] for u, _ in fetched} == {"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                                                          "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"}
    assert {root for _, root in fetched} == {tmp_path / "MNIST" / "raw"}         # torchvision's layout
    x, _ = batches(0)
    assert x.shape == (2, 1, 28, 28) and torch.equal(x, torch.ones_like(x))     # code 255 -> 1 in [-1, 1]


def test_train_download_without_network_is_one_line(tmp_path, capsys, monkeypatch):
    import torchvision.datasets.utils as tv

    def offline(url, *args, **kwargs):
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(tv, "download_and_extract_archive", offline)
    rc = cli.main(["train", "cifar10_ncsnpp_ve", "--workdir", str(tmp_path / "run"), "--download",
                   f"data.root={tmp_path / 'data'}", "training.device=cpu", "model.options.nf=8", "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("sdegen train: error: could not download https://") and "Name or service not known" in err


def test_nproc_per_node_launches_processes_and_reports_errors_in_one_line(tmp_path):
    import os
    import subprocess
    import sys
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    sdegen = [sys.executable, "-m", "sdegen"]
    run = str(tmp_path / "run")
    assert cli.main(["train", "digits_vp", "--workdir", run, "training.steps=2", "training.sample_every=0",
                     "training.tensorboard=false", "--no-progress"]) == 0
    ok = subprocess.run(sdegen + ["sample", run, "--n", "4", "--steps", "3", "--out", str(tmp_path / "s.npz"),
                                  "--no-progress", "--nproc-per-node", "2"], env=env, capture_output=True, text=True,
                        timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert np.load(tmp_path / "s.npz")["samples"].shape[0] == 4 and ok.stdout.count("s.npz") == 1  # rank 0 reports
    bad = subprocess.run(sdegen + ["train", "mnist_vp", "--workdir", str(tmp_path / "m"), f"data.root={tmp_path}/none",
                                   "--nproc-per-node=2"], env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert bad.returncode == 2 and len(lines) == 1 and "MNIST not found" in lines[0], bad.stderr
    # torchrun's own parser would take sample's --n for its --nnodes: --num-samples passes through it
    assert parse(build_parser(), ["sample", run, "--num-samples", "7"]).n == 7
    torchrun = subprocess.run(sdegen + ["train", "digits_vp", "--workdir", str(tmp_path / "x"), "--nproc-per-node", "2"],
                              env={**env, "WORLD_SIZE": "2", "RANK": "0"}, capture_output=True, text=True, timeout=300)
    assert torchrun.returncode == 2 and "under torchrun leave it out" in torchrun.stderr
