"""The one seed derivation and the one sampling job: seeds, resume, lazy plans, no silent overwrite,
the output lock (two real processes), the `sdegen sample` outputs and its errors."""
import os
import signal
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pytest
import torch

import sdegen
from sdegen import noise
from sdegen.train import sample_job
from sdegen.train.sample_job import read_job, run_job, shards_folder

from test_train_cli import sdegen as run_cli, toy_run, toy_yaml  # noqa: F401  (fixtures)


# --- the one seed derivation ------------------------------------------------------------------------

def first_draws(seed: int, indices) -> torch.Tensor:
    return torch.stack([torch.randn(4, generator=g) for g in noise.per_sample_generators(seed, indices)])


def test_sample_seeds_do_not_overlap_between_neighbouring_seeds():
    s, i = 5, np.arange(20)
    # the old scheme seeded sample i of seed s with s * 1_000_003 + i: sample i + 1_000_003 of s was sample i of s + 1
    a, b = first_draws(s, i + 1_000_003), first_draws(s + 1, i)
    assert (a - b).abs().min() > 0
    assert noise.sample_seed(s, 1_000_003) != noise.sample_seed(s + 1, 0)
    keys = [(seed, index) for seed in (-2**70, -1, 0, 1, 2**32, 2**64 + 1)
            for index in (0, 1, 2**32, 2**40, 10**18)]
    seeds = {noise.sample_seed(*k) for k in keys}
    assert len(seeds) == len(keys) and all(0 <= v < 2**63 for v in seeds)   # distinct, valid torch seeds
    assert noise.derive_seed(1) != noise.derive_seed(1, 0) != noise.derive_seed(1, 0, 0)   # no padding collisions
    with pytest.raises(TypeError, match="integers"):
        noise.derive_seed(1, 2.5)


def test_sample_seeds_are_deterministic_across_processes():
    code = ("import importlib.util as u, sys; spec = u.spec_from_file_location('noise', sys.argv[1]); "
            "m = u.module_from_spec(spec); spec.loader.exec_module(m); print(m.sample_seed(3, 7), m.sample_seed(-4, 2**40))")
    out = subprocess.run([sys.executable, "-c", code, noise.__file__], capture_output=True, text=True,
                         check=True).stdout.split()
    assert [int(v) for v in out] == [noise.sample_seed(3, 7), noise.sample_seed(-4, 2**40)]
    torch.testing.assert_close(first_draws(3, [7]), first_draws(3, [7]), rtol=0, atol=0)


def test_a_generator_that_is_not_one_is_a_clear_type_error():
    sde = sdegen.VPSDE()
    for bad, what in ((0, "int"), ("seed", "str"), ([torch.Generator(), 3], "int")):
        with pytest.raises(TypeError, match=f"generator.*{what}"):
            sdegen.sample(sde, lambda x, t: -x, (2, 2), steps=2, generator=bad)
    with pytest.raises(TypeError, match="torch.Generator"):
        noise.randn((2,), 0)


# --- the generic job --------------------------------------------------------------------------------

def toy_draw(calls=None, fail_at=None):
    """Items drawn from their own generators (a value and its index, to check the order)."""
    def draw(indices, gens):
        if calls is not None:
            calls.append(list(indices))
            if fail_at is not None and len(calls) == fail_at:
                raise KeyboardInterrupt
        x = torch.stack([torch.randn(3, generator=g) for g in gens])
        return {"samples": x, "index": torch.tensor(indices)}
    return draw


def test_job_is_batch_free_resumes_and_never_overwrites_silently(tmp_path):
    job = {"source": "toy"}
    one = run_job(tmp_path / "a.npz", toy_draw(), n=10, batch_size=10, seed=3, job=job)
    with np.load(one.path) as f:
        a = f["samples"]
        assert f["index"].tolist() == list(range(10))
    torch.testing.assert_close(torch.from_numpy(a), first_draws(3, range(10))[:, :3], rtol=0, atol=0)
    assert read_job(one.path) == {"source": "toy", "n": 10, "batch_size": 10, "seed": 3}
    calls = []
    with pytest.raises(KeyboardInterrupt):             # killed in its third batch
        run_job(tmp_path / "b.npz", toy_draw(calls, fail_at=3), n=10, batch_size=3, seed=3, job=job)
    assert sorted(p.name for p in shards_folder(tmp_path / "b.npz").glob("shard_*")) == [
        "shard_000000.npz", "shard_000001.npz"]
    calls.clear()
    done = run_job(tmp_path / "b.npz", toy_draw(calls), n=10, batch_size=3, seed=3, job=job)
    assert calls == [[6, 7, 8], [9]] and done.resumed == 2 and not shards_folder(tmp_path / "b.npz").exists()
    with np.load(done.path) as f:
        np.testing.assert_array_equal(f["samples"], a)                  # any batch size, bit for bit
    calls.clear()
    again = run_job(tmp_path / "b.npz", toy_draw(calls), n=10, batch_size=3, seed=3, job=job)
    assert again.already_done and calls == []                            # finished: nothing recomputed
    with pytest.raises(ValueError, match="b.npz exists; give --overwrite"):
        run_job(tmp_path / "b.npz", toy_draw(calls), n=10, batch_size=3, seed=4, job=job)
    before = (tmp_path / "b.npz").read_bytes()
    redone = run_job(tmp_path / "b.npz", toy_draw(calls), n=10, batch_size=3, seed=4, job=job, overwrite=True)
    assert not redone.already_done and (tmp_path / "b.npz").read_bytes() != before
    assert read_job(redone.path)["seed"] == 4
    memory = run_job(None, toy_draw(), n=10, batch_size=4, seed=3, job=job)   # in memory: same items
    assert memory.path is None and np.array_equal(memory.arrays["samples"], a)


def test_outputs_are_checked_before_any_work(tmp_path):
    calls = []
    (tmp_path / "d.npz").mkdir()
    for out, message in ((tmp_path / "d.npz", "is a folder"), (tmp_path / "x.txt", "must be a .npz")):
        with pytest.raises(ValueError, match=message):
            run_job(out, toy_draw(calls), n=4, batch_size=2, seed=0, job={})
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        run_job(tmp_path / "e.npz", toy_draw(calls), n=0, batch_size=2, seed=0, job={})
    assert calls == [] and not shards_folder(tmp_path / "e.npz").exists()


def test_a_huge_job_is_planned_lazily_and_a_clean_error_leaves_nothing(tmp_path):
    def broken(indices, gens):
        raise ValueError("the sampler refused its options")

    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="refused"):
            run_job(tmp_path / "big.npz", broken, n=1_000_000_000, batch_size=1, seed=0, job={})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000                                  # an index list of 10^9 batches would be GBs
    assert not shards_folder(tmp_path / "big.npz").exists() and not (tmp_path / "big.npz").exists()
    assert not (tmp_path / "big.npz.lock").exists()


def test_job_progress_prints_a_line_per_batch_off_a_terminal(tmp_path, capsys):
    run_job(tmp_path / "p.npz", toy_draw(), n=5, batch_size=2, seed=0, job={}, progress=True, what="toy")
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split(" done")[0] for line in lines] == [
        "toy: batch 1/3 (items 0..1)", "toy: batch 2/3 (items 2..3)", "toy: batch 3/3 (items 4..4)"]


# --- `sdegen sample` ------------------------------------------------------------------------------

def test_sample_writes_a_grid_by_default_and_says_where(toy_run, tmp_path, capsys):
    out = tmp_path / "s.npz"
    code, printed, err = run_cli(capsys, "sample", toy_run, "--n", 6, "--steps", 5, "--out", out, "--no-progress")
    assert code == 0, err
    assert f"-> {out}" in printed and f"grid -> {tmp_path / 's.png'}" in printed and (tmp_path / "s.png").is_file()
    stamp = out.stat().st_mtime_ns
    code, printed, err = run_cli(capsys, "sample", toy_run, "--n", 6, "--steps", 5, "--out", out, "--no-progress")
    assert code == 0 and "is finished already" in printed and out.stat().st_mtime_ns == stamp
    code, _, err = run_cli(capsys, "sample", toy_run, "--n", 7, "--steps", 5, "--out", out, "--no-progress")
    assert code == 2 and "exists; give --overwrite" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "sample", toy_run, "--n", 7, "--steps", 5, "--out", out, "--overwrite",
                           "--no-progress")
    with np.load(out) as f:
        assert code == 0 and len(f["samples"]) == 7
    code, printed, _ = run_cli(capsys, "sample", toy_run, "--n", 2, "--steps", 5, "--out", tmp_path / "n.npz",
                               "--no-grid", "--no-progress")
    assert code == 0 and "grid ->" not in printed and not (tmp_path / "n.png").exists()


def test_sample_refuses_a_folder_as_output_before_loading_anything(tmp_path, capsys):
    (tmp_path / "dir.npz").mkdir()
    code, _, err = run_cli(capsys, "sample", tmp_path / "no_such_run", "--out", tmp_path / "dir.npz")
    assert code == 2 and "is a folder" in err and len(err.strip().splitlines()) == 1


def test_two_sample_processes_on_one_output(toy_run, tmp_path, capsys):
    """A live `sdegen sample` process holds its --out: this process's `sdegen sample` on it stops with one
    line naming the holder's PID; once the holder is killed, its lock blocks nothing."""
    out = tmp_path / "locked.npz"
    cmd = [sys.executable, "-m", "sdegen", "sample", str(toy_run), "--steps", "1000", "--batch-size", "100",
           "--n", "100000", "--out", str(out), "--no-progress"]
    first = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not shards_folder(out).is_dir() and time.time() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert shards_folder(out).is_dir(), first.stderr.read().decode() if first.poll() is not None else "timeout"
        code, _, err = run_cli(capsys, *cmd[3:])
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert f"in use by another process (PID {first.pid})" in err
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # the dead holder's lock does not block; its unfinished job is discarded with --overwrite
    code, _, err = run_cli(capsys, "sample", toy_run, "--steps", 5, "--n", 3, "--out", out, "--overwrite",
                           "--no-progress")
    assert code == 0, err
    with np.load(out) as f:
        assert len(f["samples"]) == 3
    assert not shards_folder(out).exists() and not (tmp_path / "locked.npz.lock").exists()


def test_sample_job_draws_through_generate(monkeypatch, toy_run):
    """A score model's batch goes through sdegen.sampling.generate with the sampler name and options."""
    from sdegen import sampling
    from sdegen.train import load_run
    from sdegen.train.sample_job import SamplerOptions

    seen = []
    real = sampling.generate

    def spy(sde, score_fn, shape, *, sampler, **kw):
        seen.append((sampler, shape, sorted(kw)))
        return real(sde, score_fn, shape, sampler=sampler, **kw)

    monkeypatch.setattr(sampling, "generate", spy)
    model = load_run(toy_run)
    opts = SamplerOptions("heun", {"steps": 3})
    x = sample_job.draw(model, [4, 1], 9, opts)
    assert seen[-1] == ("heun", (2, 2), ["callback", "device", "generator", "steps"])
    alone = sample_job.draw(model, [1], 9, opts)
    torch.testing.assert_close(x[1:], alone, rtol=1e-5, atol=1e-6)        # its own seed, any batch
    with pytest.raises(ValueError, match=r"sampler 'heun' does not take \['churn'\]"):
        SamplerOptions("heun", {"churn": 1}).check()
