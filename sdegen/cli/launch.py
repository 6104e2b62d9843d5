"""``--nproc-per-node K``: run a command in K processes on this machine through torchrun's own launcher
(``torch.distributed.run``, standalone rendezvous), as ``torchrun --standalone --nproc-per-node=K -m
sdegen ...`` would, but with sdegen's error reporting: a user's mistake is the one line that rank 0 prints
and the command's exit status (2), without the launcher's failure summary and traceback."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from .common import positive_int

OPTION = "--nproc-per-node"
# the launcher's loggers: it reports each worker's start, exit and failure there
LAUNCHER_LOGGERS = ("torch.distributed.run", "torch.distributed.elastic", "torch.distributed.launcher")


def add_nproc_argument(parser: argparse.ArgumentParser) -> None:
    """``--nproc-per-node K`` for a command that runs under torchrun (``train``, ``sample``)."""
    parser.add_argument(OPTION, type=positive_int, default=1, metavar="K",
                        help="run in K processes on this machine (DDP, as torchrun --standalone "
                             "--nproc-per-node=K -m sdegen ...), with one-line errors")


def without_option(argv: list[str]) -> list[str]:
    """``argv`` without ``--nproc-per-node K`` / ``--nproc-per-node=K`` (what each process runs)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == OPTION:
            skip = True
        elif not arg.startswith(OPTION + "="):
            out.append(arg)
    return out


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``python -m sdegen ARGV`` in ``nproc`` processes (DDP: gloo on CPU, NCCL on GPUs, as under
    torchrun); return 0, or the exit status of the first process that failed."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    for name in LAUNCHER_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    os.environ.setdefault("OMP_NUM_THREADS", "1")   # torchrun's default per process, without its warning
    args = parse_args(["--standalone", f"--nproc-per-node={nproc}", "--module", "sdegen"])
    args.training_script_args = list(argv)   # not through the launcher's parser: it would take --n for --nnodes
    try:
        run(args)
    except ChildFailedError as e:
        codes = [f.exitcode for f in sorted(e.failures.values(), key=lambda f: f.timestamp)]
        code = next((c for c in codes if c > 0), 1)   # a negative code is a signal
        if code != 2:   # 2: a user's mistake, which rank 0 has explained
            print(f"sdegen: a process failed with exit status {codes[0]} (see its output above)", file=sys.stderr)
        return code
    return 0
