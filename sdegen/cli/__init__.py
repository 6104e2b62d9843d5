"""Command-line interface: a thin layer over the Python API.

Each subcommand lives in its own module with ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``. ``COMMANDS`` lists them all; a user's mistake raises :class:`UsageError`,
printed as one line with exit status 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .common import UsageError

COMMANDS = {
    "quickstart": "sdegen.cli.quickstart",
    "train": "sdegen.cli.train",
    "sample": "sdegen.cli.sample",
    "toy": "sdegen.cli.toy",
    "likelihood": "sdegen.cli.likelihood",
    "table": "sdegen.cli.table",
    "fid": "sdegen.cli.fid",
    "fid-stats": "sdegen.cli.fid_stats",
    "gan": "sdegen.cli.gan",
    "ddls": "sdegen.cli.ddls",
}


class Parser(argparse.ArgumentParser):
    """Argument errors as one line (what was wrong, what is accepted) with exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="sdegen",
        description="Generative modeling with SDEs: train score models, sample them with every sampler "
                    "of Song et al. 2021, measure them, and sample GANs by latent Langevin dynamics.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except UsageError as e:
        print(f"sdegen {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sdegen {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
