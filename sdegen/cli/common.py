"""Helpers shared by the CLI subcommands."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Iterable, Optional


class UsageError(Exception):
    """A user's mistake at the command line: printed as one line, exit status 2."""


def choice(value: str, accepted: Iterable[str], what: str) -> str:
    """Return ``value`` if accepted, else raise a UsageError listing the accepted values."""
    accepted = list(accepted)
    if value not in accepted:
        raise UsageError(f"unknown {what} {value!r}; accepted: {', '.join(map(str, accepted))}")
    return value


def key_values(items: list[str], flag: str) -> dict:
    """``["s_churn=10", "order=2"]`` -> ``{"s_churn": 10.0, "order": 2}`` (values read as YAML)."""
    from omegaconf import OmegaConf
    bad = [i for i in items if "=" not in i or i.startswith("=")]
    if bad:
        raise UsageError(f"{flag} takes KEY=VALUE, got {bad[0]!r}")
    return OmegaConf.to_container(OmegaConf.from_dotlist(items))


def _int_at_least(text: str, low: int) -> int:
    what = "a positive integer" if low == 1 else f"an integer >= {low}"
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    if v < low:
        raise argparse.ArgumentTypeError(f"expected {what}, got {v}")
    return v


def positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {v}")
    return v


def pick_device(name: str | None):
    """:func:`sdegen.train.distributed.resolve_device`, its error as a one-line UsageError."""
    from ..train.distributed import resolve_device
    try:
        return resolve_device(name)
    except ValueError as e:
        raise UsageError(str(e).replace("use device=cpu", "use --device cpu"))


def output_paths(out: str, grid: Optional[str], *, no_grid: bool, overwrite: bool) -> tuple[Path, Optional[Path]]:
    """``(out, grid or None)`` of a sampling command, checked before any work: ``out`` an .npz file name,
    ``grid`` a .png (default: ``out`` with .png; None with ``no_grid``) that is not in the way."""
    from ..train.sample_job import check_output
    try:
        path = check_output(out)
    except ValueError as e:
        raise UsageError(str(e).replace("the output must be", "--out must be"))
    if no_grid:
        if grid is not None:
            raise UsageError("give --grid or --no-grid, not both")
        return path, None
    picture = Path(grid) if grid is not None else path.with_suffix(".png")
    if picture.suffix.lower() != ".png":
        raise UsageError(f"--grid must be a .png file, got {str(picture)!r}")
    if picture.is_dir():
        raise UsageError(f"--grid {picture} is a folder; give a file name ending in .png")
    if picture.exists() and not path.exists() and not overwrite:
        raise UsageError(f"{picture} exists; give --overwrite to replace it, --grid another file or --no-grid")
    return path, picture
