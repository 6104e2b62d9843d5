"""Command-line interface: a thin layer over the Python API.

Each subcommand lives in its own module with ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``. ``COMMANDS`` lists them all; a user's mistake raises :class:`UsageError`,
printed as one line with exit status 2.

Every command (and sub-action) takes ``--threads N``, applied here before the command runs (torch's
intra-op threads and the BLAS pools of numpy/scipy); see :func:`default_threads` for the default.
A command with a ``key=value`` positional list (``overrides``, e.g. ``sdegen train``) accepts those
items anywhere on the line, also after its options. Under ``torchrun`` only rank 0 prints errors;
``train`` and ``sample`` also take ``--nproc-per-node K``, which starts the K processes itself
(:mod:`sdegen.cli.launch`).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

from .common import UsageError, positive_int

COMMANDS = {
    "quickstart": "sdegen.cli.quickstart",
    "train": "sdegen.cli.train",
    "sample": "sdegen.cli.sample",
    "toy": "sdegen.cli.toy",
    "likelihood": "sdegen.cli.likelihood",
    "table": "sdegen.cli.table",
    "fid": "sdegen.cli.fid",
    "fid-stats": "sdegen.cli.fid_stats",
    "export": "sdegen.cli.export",
    "gan": "sdegen.cli.gan",
    "ddls": "sdegen.cli.ddls",
    "inpaint": "sdegen.cli.inpaint",
    "colorize": "sdegen.cli.inpaint:colorize",   # module:object, for commands that share a module
}

MAX_DEFAULT_THREADS = 4  # beyond this the small CPU workloads here gain little and contend more
# Under torchrun the first worker to fail makes torchrun stop the others: a silent rank waits this long
# before it exits with an error, so that rank 0 prints the error first.
QUIET_RANK_DELAY_S = 2.0


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_threads() -> int:
    """``OMP_NUM_THREADS`` when set to a positive integer (torchrun sets 1 per process), else
    ``min(4, cores // 2)`` and at least 1: half the cores leaves room for other work on a shared
    machine, where torch's default (every core) runs several times slower."""
    return env_threads() or max(1, min(MAX_DEFAULT_THREADS, usable_cores() // 2))


def env_threads() -> Optional[int]:
    """``OMP_NUM_THREADS`` when it is a positive integer, else None (unset, empty or junk)."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(env) if env.isdigit() and int(env) > 0 else None


def _cpu_times(stat: Path) -> tuple[int, int]:
    """(idle, total) jiffies of all CPUs together: the first line of ``/proc/stat``."""
    fields = [int(v) for v in stat.read_text().splitlines()[0].split()[1:]]
    return fields[3] + (fields[4] if len(fields) > 4 else 0), sum(fields[:8])   # idle + iowait; no guest time


def idle_cores(interval: float = 0.5, stat: str | os.PathLike = "/proc/stat") -> Optional[int]:
    """How many of this process's cores are idle now: the idle share of all CPUs over ``interval``
    seconds (``/proc/stat``) times their number, rounded (a core 75% idle counts), at most
    :func:`usable_cores` and at least 1; None where ``/proc/stat`` is missing (not Linux)."""
    path = Path(stat)
    try:
        idle0, total0 = _cpu_times(path)
        time.sleep(interval)
        idle1, total1 = _cpu_times(path)
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    free = (idle1 - idle0) / (total1 - total0) * (os.cpu_count() or 1)
    return max(1, min(usable_cores(), int(free + 0.25)))


def set_threads(n: int) -> None:
    """Use ``n`` threads in torch's intra-op pool and in the BLAS / OpenMP pools of numpy and scipy."""
    import torch
    torch.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # scikit-learn brings it; without it only torch is limited
        return
    threadpool_limits(n)


def is_main_process() -> bool:
    """False in the processes of rank > 0 under torchrun (``RANK`` set): they stay silent on errors."""
    return os.environ.get("RANK", "0").strip() in ("", "0")


class Parser(argparse.ArgumentParser):
    """Argument errors as one line (what was wrong, what is accepted) with exit status 2, printed by
    rank 0 only. Every parser but the top-level one gets ``--threads``."""

    def __init__(self, *args, threads_option: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        if threads_option:
            self.add_argument(
                "--threads", type=positive_int, default=argparse.SUPPRESS, metavar="N",
                help="CPU threads for torch and BLAS (default: $OMP_NUM_THREADS if set, else "
                     f"min({MAX_DEFAULT_THREADS}, cores // 2), here {default_threads()})")

    def error(self, message: str):
        if not is_main_process():
            time.sleep(QUIET_RANK_DELAY_S)
            self.exit(2)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="sdegen", threads_option=False,
        description="Generative modeling with SDEs: train score models, sample them with every sampler "
                    "of Song et al. 2021, measure them, and sample GANs by latent Langevin dynamics.",
        epilog="Every command explains its options: sdegen COMMAND --help.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for name, target in COMMANDS.items():
        module_name, _, attr = target.partition(":")
        module = importlib.import_module(module_name)
        module = getattr(module, attr) if attr else module
        p = sub.add_parser(name, help=module.HELP, description=module.HELP,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``parser.parse_args(argv)``, except that ``key=value`` items left over after the options join the
    command's ``overrides`` list when it has one (in command-line order)."""
    args, extra = parser.parse_known_args(argv)
    overrides = getattr(args, "overrides", None)
    if isinstance(overrides, list):
        items = [a for a in extra if "=" in a and not a.startswith("-")]
        args.overrides = overrides + items
        extra = [a for a in extra if a not in items]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings at the command line read as one line each (no source file and line)."""
    return f"warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if not argv:  # bare `sdegen`: the usage and the command list
        parser.print_help()
        return 2
    args = parse(parser, argv)
    nproc = getattr(args, "nproc_per_node", 1)
    if nproc > 1:
        from ..train.distributed import launched_by_torchrun
        from .launch import launch, without_option
        if launched_by_torchrun():
            print(f"sdegen {args.command}: error: --nproc-per-node starts the processes itself; under torchrun "
                  "leave it out (torchrun's --nproc-per-node sets their number)", file=sys.stderr)
            return 2
        return launch(nproc, without_option(argv))
    set_threads(getattr(args, "threads", None) or default_threads())
    warnings.formatwarning = one_line_warning
    try:
        return int(args._run(args) or 0)
    except UsageError as e:
        if not is_main_process():
            time.sleep(QUIET_RANK_DELAY_S)
            return 2
        print(f"sdegen {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sdegen {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
