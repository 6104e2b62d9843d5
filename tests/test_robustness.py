"""Runs never lose work: locked run folders (two real processes), checkpoints checked before they are
trusted (checksum, layout, finite values), no silent restart, pruning that spares foreign files, divergence
stops, and one-line errors for hostile inputs (gzip bombs, bad IDX headers, bad covariances, bad SDEs)."""
import gzip
import os
import signal
import struct
import subprocess
import sys
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from sdegen import checkpoint, cli
from sdegen.locking import LockedError, hold_lock, lock_path
from sdegen.train import NonFiniteLossError, train
from sdegen.train.config import to_yaml

from test_train import REPO, _merge, assert_bitwise

CKPT = "checkpoints"


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def sdegen(capsys, *argv):
    """Run the CLI in this process; return (exit status, stdout, stderr)."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def cfg(*overrides: str):
    return _merge(["training.steps=30", "sampling.n=20", "sampling.steps=5", *overrides])


def wait_for(condition, proc, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the process ended early: {proc.communicate()}")
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.02)


# --- locks ------------------------------------------------------------------------------------------

HOLDER = """
import sys, time
from sdegen.locking import hold_lock
with hold_lock(sys.argv[1], "output", folder=sys.argv[2] == "folder"):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.mark.parametrize("kind", ["folder", "file"])
def test_a_lock_refuses_a_second_process_and_a_dead_holder_never_blocks(tmp_path, kind):
    target = tmp_path / ("run" if kind == "folder" else "out.npz")
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(target), kind], env=env(), stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(LockedError) as e:
            with hold_lock(target, "output", folder=kind == "folder"):
                pass
        message = str(e.value)
        assert f"PID {proc.pid}" in message and str(target) in message and "\n" not in message
        assert isinstance(e.value, ValueError)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert lock_path(target, kind == "folder").exists()          # left behind by kill -9 ...
    with hold_lock(target, "output", folder=kind == "folder") as lock:   # ... and it does not block
        assert lock.read_text().strip() == str(os.getpid())
    assert not lock.exists()                                       # a released lock leaves no file


def test_hold_lock_refuses_a_file_where_a_folder_is_wanted(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        with hold_lock(tmp_path / "f", "run folder", folder=True):
            pass


def test_a_second_train_on_a_live_run_folder_refuses_before_touching_it(tmp_path, capsys):
    yaml = tmp_path / "toy.yaml"
    yaml.write_text(to_yaml(cfg("training.steps=1000000", "training.ckpt_every=5", "training.log_every=5")))
    work = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "sdegen", "train", str(yaml), "--workdir", str(work),
                              "--no-progress"], env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: checkpoint.list_checkpoints(work / CKPT), first)
        first.send_signal(signal.SIGSTOP)    # freeze it: the folder must stay exactly as it is
        before = {p.name: p.stat().st_mtime_ns for p in (work / CKPT).iterdir()}
        for extra in ([], ["--no-resume"], ["--restart"]):
            code, out, err = sdegen(capsys, "train", yaml, "--workdir", work, "--no-progress", *extra)
            assert code == 2 and f"PID {first.pid}" in err and len(err.strip().splitlines()) == 1, err
            assert "in use by another process" in err
        assert {p.name: p.stat().st_mtime_ns for p in (work / CKPT).iterdir()} == before
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    last = checkpoint.list_checkpoints(work / CKPT)[-1][0]          # (a loaded machine may have run it far)
    code, out, err = sdegen(capsys, "train", yaml, f"training.steps={last + 5}", "--workdir", work, "--no-progress")
    assert code == 0 and "resuming from" in err, err             # the dead holder's lock is gone with it


def test_train_on_a_file_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, _, err = sdegen(capsys, "train", "toy2d_vp", "--workdir", tmp_path / "file")
    assert code == 2 and "is a file, not a folder" in err and len(err.strip().splitlines()) == 1


# --- divergence -------------------------------------------------------------------------------------

def poison(monkeypatch, at: int, how: str):
    """Make training step ``at`` (1-based) diverge: an infinite gradient, an exploding loss, or NaN EMA."""
    from sdegen.train import loop
    real, calls = loop.get_loss, [0]

    def get_loss(name):
        fn = real(name)

        def loss(*args, **kwargs):
            calls[0] += 1
            value = fn(*args, **kwargs)
            if calls[0] == at and how == "grad":
                value.register_hook(lambda g: g * float("inf"))   # finite loss, infinite gradients
            if calls[0] == at and how == "explode":
                value = value * 1e8
            return value
        return loss

    monkeypatch.setattr(loop, "get_loss", get_loss)


@pytest.mark.parametrize("how, message", [("grad", "the gradient norm became (inf|nan) at step 13"),
                                          ("explode", r"the loss exploded to .* at step 13")])
def test_an_infinite_gradient_or_an_exploding_loss_stops_the_run(tmp_path, monkeypatch, how, message):
    poison(monkeypatch, 13, how)
    with pytest.raises(NonFiniteLossError, match=message + r"; training stopped, .*ckpt_00000010\.pt \(step 10\)"):
        train(cfg("training.ckpt_every=5", "training.log_every=4"), tmp_path, progress=False)
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path / CKPT)] == [10, 5]
    state = checkpoint.load(tmp_path / CKPT / "ckpt_00000010.pt")
    assert checkpoint.all_finite([state["model"], state["ema"], state["optimizer"]])


def test_a_checkpoint_is_never_written_with_non_finite_weights(tmp_path, monkeypatch):
    from sdegen.train import ema as ema_module
    real, calls = ema_module.EMA.update, [0]

    def update(self, model):
        real(self, model)
        calls[0] += 1
        if calls[0] == 7:
            with torch.no_grad():
                next(self.module.parameters()).fill_(float("nan"))   # loss and gradients stay finite

    monkeypatch.setattr(ema_module.EMA, "update", update)
    with pytest.raises(NonFiniteLossError, match=r"NaN or infinite values at step 10; .*ckpt_00000005\.pt"):
        train(cfg("training.ckpt_every=5", "training.log_every=5"), tmp_path, progress=False)
    assert [s for s, _ in checkpoint.list_checkpoints(tmp_path / CKPT)] == [5]


def test_a_real_divergence_stops_before_any_bad_checkpoint(tmp_path):
    # lr 1 without warm-up or clipping: the toy model's loss blows up within a few steps
    with pytest.raises(NonFiniteLossError, match=r"(exploded|became (nan|inf))") as e:
        train(cfg("optim.lr=1", "optim.warmup=0", "optim.grad_clip=0", "training.steps=200",
                  "training.ckpt_every=1", "training.log_every=1"), tmp_path, progress=False)
    for _, path in checkpoint.list_checkpoints(tmp_path / CKPT):
        state = checkpoint.load(path)
        assert checkpoint.all_finite([state["model"], state["ema"], state["optimizer"]]), path
    assert "\n" not in str(e.value)


def test_a_failing_picture_never_stops_a_run(tmp_path, monkeypatch, capsys):
    from sdegen.train import loop
    monkeypatch.setattr(loop, "draw", lambda model, idx, *a, **k: torch.full((len(idx), 2), float("nan")))
    run = train(cfg("training.steps=10"), tmp_path, progress=False)
    assert run.step == 10 and (tmp_path / CKPT / "ckpt_00000010.pt").is_file()
    assert "warning: no picture of step 10: 20 of the 20 samples hold NaN" in capsys.readouterr().err


# --- checkpoints checked before they are trusted ----------------------------------------------------

@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A finished 30-step run (checkpoints at 10, 20, 30) to copy and damage."""
    work = tmp_path_factory.mktemp("reference")
    run = train(cfg(), work, progress=False)
    return work, run.model.net.state_dict()


def copy_run(src: Path, dst: Path) -> Path:
    (dst / CKPT).mkdir(parents=True)
    for p in (src / CKPT).iterdir():
        (dst / CKPT / p.name).write_bytes(p.read_bytes())
    return dst


def flip_optimizer_byte(path: Path) -> None:
    state = checkpoint.load(path)
    needle = state["optimizer"]["state"][0]["exp_avg"].numpy().tobytes()
    raw = bytearray(path.read_bytes())
    at = raw.find(needle)
    assert at > 0
    raw[at + len(needle) // 2] ^= 0x10
    path.write_bytes(bytes(raw))


def wrong_keys(path: Path) -> None:
    state = checkpoint.load(path)
    state["model"] = {k + "_renamed": v for k, v in state["model"].items()}
    checkpoint.atomic_save(state, path)            # a valid checksum: only the layout is wrong


def non_finite(path: Path) -> None:
    state = checkpoint.load(path)
    next(iter(state["optimizer"]["state"].values()))["exp_avg_sq"].fill_(float("nan"))
    checkpoint.atomic_save(state, path)


DAMAGE = {
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:1000]), "corrupt or truncated"),
    "empty dict": (lambda p: torch.save({}, p), "not a dict|not an sdegen training checkpoint"),
    "bare tensor": (lambda p: torch.save(torch.zeros(3), p), "holds a Tensor, not a dict"),
    "wrong keys": (wrong_keys, "does not fit the network: missing"),
    "flipped byte": (flip_optimizer_byte, "do not match their sha256 checksum"),
    "non-finite": (non_finite, "optimizer state holds NaN"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_checkpoint_is_reported_and_skipped(reference, tmp_path, damage):
    src, weights = reference
    work = copy_run(src, tmp_path)
    spoil, reason = DAMAGE[damage]
    spoil(work / CKPT / "ckpt_00000030.pt")
    with pytest.warns(RuntimeWarning, match=rf"ckpt_00000030\.pt.*({reason})"):
        resumed = train(cfg(), work, progress=False)                  # falls back to step 20, redoes 21..30
    assert_bitwise(resumed.model.net.state_dict(), weights)


def test_every_checkpoint_unreadable_stops_with_a_list_and_restart_keeps_them(reference, tmp_path, capsys):
    work = copy_run(reference[0], tmp_path)
    yaml = tmp_path / "toy.yaml"
    yaml.write_text(to_yaml(cfg()))
    for step, (spoil, _) in zip((10, 20, 30), (DAMAGE["truncated"], DAMAGE["bare tensor"], DAMAGE["flipped byte"])):
        spoil(work / CKPT / f"ckpt_{step:08d}.pt")
    damaged = {p.name: p.read_bytes() for p in (work / CKPT).iterdir()}
    with pytest.warns(RuntimeWarning):
        code, _, err = sdegen(capsys, "train", yaml, "--workdir", work, "--no-progress")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "none of the 3 checkpoint(s)" in err and "--restart" in err
    for name, why in (("ckpt_00000010.pt", "truncated"), ("ckpt_00000020.pt", "holds a Tensor"),
                      ("ckpt_00000030.pt", "sha256")):
        assert name in err and why in err
    assert {p.name: p.read_bytes() for p in (work / CKPT).iterdir()} == damaged      # nothing deleted
    code, out, err = sdegen(capsys, "train", yaml, "training.keep=1", "--workdir", work, "--no-progress",
                            "--restart")
    assert code == 0 and "step 30" in out and "moved 3 earlier checkpoint(s)" in err
    (old,) = (work / CKPT).glob("old_*")
    assert {p.name: p.read_bytes() for p in old.iterdir()} == damaged                 # kept, aside
    assert [s for s, _ in checkpoint.list_checkpoints(work / CKPT)] == [30]


def test_pruning_spares_files_this_run_did_not_write(reference, tmp_path):
    first = train(cfg("training.keep=1", "training.ckpt_every=5", "training.steps=15"), tmp_path, progress=False)
    assert first.step == 15 and [s for s, _ in checkpoint.list_checkpoints(tmp_path / CKPT)] == [15]
    ckdir = tmp_path / CKPT
    torch.save(torch.zeros(2), ckdir / "ckpt_00000001.pt")                          # not a checkpoint
    checkpoint.atomic_save({"weights": torch.zeros(2)}, ckdir / "ckpt_00000002.pt", run="another run")
    torch.save({"legacy": 1}, ckdir / "ckpt_00000003.pt")                           # no checksum, no run tag
    (ckdir / "ckpt_00000004.pt").write_bytes((reference[0] / CKPT / "ckpt_00000010.pt").read_bytes())  # a good
    train(cfg("training.keep=1", "training.ckpt_every=5", "training.steps=30"), tmp_path, progress=False)
    assert [s for s, _ in checkpoint.list_checkpoints(ckdir)] == [30, 4, 3, 2, 1]   # only its own were pruned


def test_an_old_checkpoint_without_checksum_still_loads(reference, tmp_path):
    src, weights = reference
    work = copy_run(src, tmp_path)
    for step in (10, 20, 30):
        path = work / CKPT / f"ckpt_{step:08d}.pt"
        torch.save(checkpoint.load(path), path)                   # the layout written before checksums
    state = checkpoint.load(work / CKPT / "ckpt_00000030.pt")
    assert state["step"] == 30
    resumed = train(cfg("training.steps=30"), work, progress=False)
    assert_bitwise(resumed.model.net.state_dict(), weights)


class Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return os.mkdir, (self.target,)


def test_a_malicious_checkpoint_is_refused_without_torchs_advice(tmp_path, capsys):
    from sdegen.nets import load_score_sde_checkpoint
    marker = tmp_path / "pwned"
    evil = tmp_path / "ckpt_00000001.pt"
    torch.save({"model": Payload(str(marker))}, evil)
    with pytest.raises(checkpoint.CheckpointError) as e:
        checkpoint.load(evil)
    with pytest.raises(ValueError) as official:
        load_score_sde_checkpoint(evil, "tiny8")
    code, _, err = sdegen(capsys, "sample", evil, "--n", 2, "--out", tmp_path / "s.npz", "--no-progress")
    for text in (str(e.value), str(official.value), err):
        assert "not a checkpoint this tool trusts" in text, text
        assert "weights_only" not in text and "Re-running" not in text, text
    assert code == 2 and not marker.exists()


# --- inputs at the edges ----------------------------------------------------------------------------

def idx_header(dims, code=0x08) -> bytes:
    return struct.pack(">i", (code << 8) | len(dims)) + struct.pack(f">{len(dims)}i", *dims)


def test_a_gzip_bomb_is_not_decompressed_past_its_header(tmp_path):
    from sdegen.data import DataError, read_idx
    z = zlib.compressobj(9, zlib.DEFLATED, 31)                 # gzip container
    parts = [z.compress(idx_header([10, 28, 28]))]
    zeros = bytes(1 << 20)
    parts += [z.compress(zeros) for _ in range(256)]           # 256 MB of zeros in about 250 kB
    bomb = tmp_path / "train-images-idx3-ubyte.gz"
    bomb.write_bytes(b"".join(parts) + z.flush())
    assert bomb.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="longer than its header says"):
            read_idx(bomb, 2051)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, peak                                # the header promises 7.8 kB
    # a header promising more than the compressed file can hold is refused without decompressing
    huge = tmp_path / "huge.gz"
    huge.write_bytes(gzip.compress(idx_header([60000, 28000, 28000]) + bytes(100)))
    with pytest.raises(DataError, match="truncated: .* compressed"):
        read_idx(huge, 2051)


@pytest.mark.parametrize("header, message", [
    (idx_header([-5, 28, 28]), "negative dimensions"),
    (struct.pack(">i", 0x08FF) + bytes(4 * 255), "255 dimensions; at most 32"),
])
def test_bad_idx_dimensions_are_errors_naming_the_file(tmp_path, header, message):
    from sdegen.data import DataError, read_idx
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(header)
    with pytest.raises(DataError, match=message) as e:
        read_idx(path)
    assert str(path) in str(e.value)


def test_frechet_distance_refuses_a_covariance_that_is_not_one():
    from sdegen.metrics.frechet import frechet_distance
    mu, eye = np.zeros(2), np.eye(2)
    with pytest.raises(ValueError, match="sigma1 is not positive semi-definite"):
        frechet_distance(mu, -eye, mu, -eye)
    with pytest.raises(ValueError, match="sigma2 is not symmetric"):
        frechet_distance(mu, eye, mu, np.array([[1.0, 1.0], [0.0, 1.0]]))
    # rank-deficient covariances from few float32 samples are PSD within round-off: accepted
    rng = np.random.default_rng(0)
    f = rng.normal(size=(10, 64)).astype(np.float32)
    sigma = np.cov(f, rowvar=False).astype(np.float32)
    assert frechet_distance(f.mean(0), sigma, f.mean(0), sigma) == pytest.approx(0.0, abs=1e-3)
    assert frechet_distance(mu, eye, np.ones(2), 4 * eye) == pytest.approx(2 + 2 * (1 - 2) ** 2)


@pytest.mark.parametrize("make, message", [
    (lambda s: s.VESDE(sigma_max=float("inf")), "sigma_max must be a finite number > 0, got inf"),
    (lambda s: s.VESDE(sigma_min=float("nan")), "sigma_min must be a finite number > 0, got nan"),
    (lambda s: s.VESDE(sigma_min=5.0, sigma_max=1.0), "sigma_min must be < sigma_max"),
    (lambda s: s.VPSDE(beta_max=float("inf")), "beta_max must be a finite number > 0, got inf"),
    (lambda s: s.VPSDE(beta_min=-0.1), "beta_min must be a finite number > 0, got -0.1"),
    (lambda s: s.SubVPSDE(beta_min=3.0, beta_max=1.0), "beta_min must be <= beta_max"),
    (lambda s: s.VPSDE(beta_max="20"), "beta_max must be a finite number > 0, got '20'"),
])
def test_sdes_refuse_bad_parameters_at_construction(make, message):
    import sdegen
    with pytest.raises(ValueError, match=message):
        make(sdegen)


def test_a_wrongly_typed_model_option_names_the_key(tmp_path, capsys):
    code, _, err = sdegen(capsys, "train", "toy2d_vp", "model.options.hidden=abc", "--workdir", tmp_path)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "model.options.hidden='abc' must be an integer" in err


def test_log_likelihood_reports_a_nan_score_before_the_solver_underflows():
    import sdegen
    with pytest.raises(FloatingPointError, match="score_fn returned non-finite values"):
        sdegen.log_likelihood(sdegen.VPSDE(), lambda x, t: x * float("nan"), torch.randn(4, 2))
