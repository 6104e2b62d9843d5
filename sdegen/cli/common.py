"""Helpers shared by the CLI subcommands."""
from __future__ import annotations

import argparse
from typing import Iterable


class UsageError(Exception):
    """A user's mistake at the command line: printed as one line, exit status 2."""


def choice(value: str, accepted: Iterable[str], what: str) -> str:
    """Return ``value`` if accepted, else raise a UsageError listing the accepted values."""
    accepted = list(accepted)
    if value not in accepted:
        raise UsageError(f"unknown {what} {value!r}; accepted: {', '.join(map(str, accepted))}")
    return value


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
    """``auto`` (CUDA when available, else CPU) or an explicit torch device string."""
    import torch
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; accepted: auto, cpu, cuda, cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("device 'cuda' asked for, but no CUDA device is available; use --device cpu")
    return dev
