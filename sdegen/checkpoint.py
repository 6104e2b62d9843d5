"""Checkpoint files that survive a kill at any moment, and load without executing code.

Writes go to a temporary file in the same folder, are fsync'ed, then renamed over the target (atomic on
POSIX). Reads use ``torch.load(weights_only=True)``. A run folder keeps ``ckpt_<step>.pt`` files;
:func:`load_latest` returns the newest one that loads, reporting (and skipping) corrupt ones.
"""
from __future__ import annotations

import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

_NAME = re.compile(r"^ckpt_(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupt or not of the expected layout."""


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically (temp file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load(path: str | os.PathLike, map_location="cpu") -> Any:
    """Load a checkpoint safely (``weights_only=True``); raise :class:`CheckpointError` if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, forbidden global...
        raise CheckpointError(f"checkpoint {path} is corrupt or not a tensor checkpoint: "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e


def checkpoint_path(folder: str | os.PathLike, step: int) -> Path:
    return Path(folder) / f"ckpt_{step:08d}.pt"


def list_checkpoints(folder: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``ckpt_<step>.pt`` in ``folder``, newest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found, reverse=True)


def load_latest(folder: str | os.PathLike, map_location="cpu") -> tuple[Any, Path] | None:
    """The newest checkpoint of ``folder`` that loads, with its path; ``None`` if there is none.

    Corrupt ones are reported with a warning and skipped, so a run resumes from the last good one."""
    for _, path in list_checkpoints(folder):
        try:
            return load(path, map_location), path
        except CheckpointError as e:
            warnings.warn(f"{e}; falling back to an earlier checkpoint", RuntimeWarning)
    return None


def prune(folder: str | os.PathLike, keep: int) -> None:
    """Delete all but the ``keep`` newest checkpoints of ``folder``."""
    for _, path in list_checkpoints(folder)[keep:]:
        path.unlink(missing_ok=True)


def rng_state() -> dict:
    """RNG states of torch (CPU and CUDA) for a bitwise resume."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
