"""Two gloo processes under torchrun train like one process with the same global batch, and their
sampling shards merge to the samples of one process."""
import json
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from sdegen.cli import main
from sdegen.train import load_run, train

from test_train import _merge, subprocess_env, write_yaml

SCRIPT = """
import json, sys
from sdegen.cli import COMMANDS, main
from sdegen.train.distributed import session
COMMANDS.setdefault("train", "sdegen.cli.train")
COMMANDS.setdefault("sample", "sdegen.cli.sample")
with session("cpu"):   # one process group for both commands
    codes = [main(argv) for argv in json.loads(sys.argv[1])]
sys.exit(max(codes))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]




# the plain toy run, and a class-conditional one with label dropout (its per-row drops must not depend on
# how the batch is split over processes)
CONDITIONAL = ["model.options.num_classes=3", "training.label_dropout=0.3"]


@pytest.mark.parametrize("extra", [[], CONDITIONAL], ids=["plain", "conditional"])
def test_two_processes_train_and_sample_like_one(tmp_path, extra):
    cfg = _merge(["training.steps=12", "training.log_every=1", "training.ckpt_every=6", "training.batch_size=64",
                  *extra])
    yaml = write_yaml(tmp_path / "toy.yaml", cfg)
    one = train(cfg, tmp_path / "one", progress=False)
    ref = tmp_path / "one.npz"   # one process, one batch (a conditional run: sample i of class i mod 3)
    assert main(["sample", str(tmp_path / "one"), "--n", "10", "--batch-size", "10", "--seed", "4", "--out", str(ref),
                 "--device", "cpu", "--no-progress", "--no-grid", "--threads", "1"]) == 0

    script = tmp_path / "launch.py"
    script.write_text(SCRIPT)
    commands = [["train", str(yaml), "--workdir", str(tmp_path / "two"), "--no-progress"],
                ["sample", str(tmp_path / "one"), "--n", "10", "--batch-size", "3", "--seed", "4",
                 "--out", str(tmp_path / "two.npz"), "--device", "cpu", "--no-progress"]]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(script), json.dumps(commands)]
    done = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("step 12, loss") == 1                   # rank 0 prints, rank 1 does not

    rows = [json.loads(line) for line in (tmp_path / "two" / "stats.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 13))           # written once, by rank 0
    np.testing.assert_allclose([r["loss"] for r in rows], [r["loss"] for r in one.stats], rtol=1e-5)
    np.testing.assert_allclose([r["grad_norm"] for r in rows], [r["grad_norm"] for r in one.stats], rtol=1e-4)
    two = load_run(tmp_path / "two")                                  # the EMA weights agree too
    for (name, a), b in zip(one.model.net.state_dict().items(), two.net.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)

    with np.load(ref) as f1, np.load(tmp_path / "two.npz") as f2:    # shards of 2 processes, batches of 3
        np.testing.assert_allclose(f2["samples"], f1["samples"], rtol=1e-5, atol=1e-5)
    assert not (tmp_path / "two.npz.shards").exists()
