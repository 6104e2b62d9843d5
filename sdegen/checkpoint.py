"""Checkpoint files that survive a kill at any moment, carry a checksum, and load without executing code.

A file is written to a temporary file in the same folder, fsync'ed, then renamed over the target (atomic
on POSIX). It holds ``{"format": CHECKED, "sha256": ..., "run": ..., "payload": uint8 tensor}``: the
payload is the ``torch.save`` bytes of the saved object and ``sha256`` their digest, verified on load, so
a flipped byte anywhere in the payload is refused. Reads use ``torch.load(weights_only=True)``; a file
that asks for anything but tensors and plain data is refused as not trusted. Files written before
checksums existed (a bare ``torch.save`` of the object) still load, unchecked.

A run folder keeps ``ckpt_<step>.pt`` files; :func:`load_latest` returns the newest that passes every
check, reporting (and skipping) the others, and raises :class:`NoUsableCheckpointError` listing each file
and why it was refused when none passes. :func:`prune` deletes only files of the given run.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional

import torch

CHECKED = "sdegen-checked-v1"   # the "format" entry of a file with a checksum
_NAME = re.compile(r"^ckpt_(\d+)\.pt$")
_GLOBAL = re.compile(r"GLOBAL (\S+)")


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupt, untrusted or not of the expected layout."""


class NoUsableCheckpointError(CheckpointError, ValueError):
    """A folder holds checkpoint files but none passes the checks; the message lists each and why."""


_UMASK = os.umask(0o022)
os.umask(_UMASK)   # read the process's umask (it can only be read by setting it)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """The one atomic file writer: ``write(f)`` into a temp file beside ``path``, fsync, rename over
    ``path``, fsync the folder. A kill at any moment leaves the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)   # the permissions open() would give (mkstemp makes it private)
        with os.fdopen(fd, "wb") as f:
            write(f)
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


def atomic_save(obj: Any, path: str | os.PathLike, *, run: Optional[str] = None) -> Path:
    """Save ``obj`` (tensors and plain data) to ``path`` atomically (temp file, fsync, rename), with the
    sha256 of its serialized bytes; ``run`` tags the file as belonging to a run (see :func:`prune`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(obj, buf)
    view = buf.getbuffer()
    record = {"format": CHECKED, "sha256": hashlib.sha256(view).hexdigest(), "run": run,
              "payload": torch.frombuffer(view, dtype=torch.uint8) if len(view) else torch.zeros(0, dtype=torch.uint8)}
    try:
        atomic_write(path, lambda f: torch.save(record, f))
    finally:
        del record, view
    return path


def _why(e: Exception) -> str:
    """A one-line reason for a failed ``torch.load``; never torch's advice to load without weights_only."""
    text = str(e)
    if "Weights only load failed" in text:   # the safe unpickler refused something
        found = _GLOBAL.search(text)
        if found:
            return (f"not a checkpoint this tool trusts: it holds pickled code or objects other than tensors "
                    f"and plain data (it asks for {found.group(1)})")
        after = text.partition("WeightsUnpickler error:")[2].strip().splitlines()
        return ("corrupt or not a checkpoint this tool trusts (the safe loader stopped at: "
                f"{after[0].strip() if after else 'an unsupported pickle'})")
    return f"corrupt or truncated ({type(e).__name__}: {text.splitlines()[0] if text else ''})"


def safe_load(path: str | os.PathLike, map_location="cpu", what: str = "file") -> Any:
    """``torch.load(path, weights_only=True)``: nothing in the file is executed. A refused or broken file is a
    ValueError naming it and why, never torch's advice to load it unsafely."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, forbidden global...
        raise ValueError(f"{what} {path} is {_why(e)}") from None


def _torch_load(source, path: Path, map_location, **kw) -> Any:
    try:
        return torch.load(source, map_location=map_location, weights_only=True, **kw)
    except Exception as e:  # truncated zip, bad pickle, forbidden global...
        raise CheckpointError(f"checkpoint {path} is {_why(e)}") from None


def _is_checked(record: Any) -> bool:
    return isinstance(record, dict) and record.get("format") == CHECKED


def load(path: str | os.PathLike, map_location="cpu",
         check: Optional[Callable[[Any, Path], None]] = None) -> Any:
    """Load a checkpoint safely (``weights_only=True``), verifying its checksum (files without one, written
    by older versions, load unchecked); then ``check(obj, path)`` may refuse it by raising
    :class:`CheckpointError`. Raises :class:`CheckpointError` with a one-line reason."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    record = _torch_load(path, path, "cpu")
    if not _is_checked(record) and map_location != "cpu":  # an old file: load it where asked
        record = _torch_load(path, path, map_location)
    if _is_checked(record):
        payload = record.get("payload")
        if not (isinstance(payload, torch.Tensor) and payload.dtype == torch.uint8 and payload.dim() == 1):
            raise CheckpointError(f"checkpoint {path} is corrupt (its payload is not a byte tensor)")
        data = payload.numpy()
        if hashlib.sha256(data).hexdigest() != record.get("sha256"):
            raise CheckpointError(f"checkpoint {path} is corrupt: its contents do not match their sha256 checksum")
        obj = _torch_load(io.BytesIO(data.tobytes()), path, map_location)
    else:
        obj = record
    if check is not None:
        check(obj, path)
    return obj


def run_of(path: str | os.PathLike) -> Optional[str]:
    """The run tag of a checkpoint file (None if it has none or does not load); reads only its header."""
    try:
        record = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return None
    run = record.get("run") if _is_checked(record) else None
    return run if isinstance(run, str) else None


def checkpoint_path(folder: str | os.PathLike, step: int) -> Path:
    return Path(folder) / f"ckpt_{step:08d}.pt"


def list_checkpoints(folder: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``ckpt_<step>.pt`` in ``folder``, newest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name)) and p.is_file()]
    return sorted(found, reverse=True)


def load_latest(folder: str | os.PathLike, map_location="cpu",
                check: Optional[Callable[[Any, Path], None]] = None) -> tuple[Any, Path] | None:
    """The newest checkpoint of ``folder`` that loads and passes ``check`` (see :func:`load`), with its
    path; ``None`` if there is no checkpoint file.

    Refused ones are reported with a warning and skipped, so a run resumes from the last good one; if
    every file is refused, raises :class:`NoUsableCheckpointError` listing each file and why."""
    refused = []
    for _, path in list_checkpoints(folder):
        try:
            return load(path, map_location, check), path
        except CheckpointError as e:
            warnings.warn(f"{e}; falling back to an earlier checkpoint", RuntimeWarning)
            refused.append(str(e).removeprefix("checkpoint "))
    if refused:
        raise NoUsableCheckpointError(f"none of the {len(refused)} checkpoint(s) in {folder} can be used: "
                                      + "; ".join(refused))
    return None


def prune(folder: str | os.PathLike, keep: int, run: Optional[str] = None) -> list[Path]:
    """Delete all but the ``keep`` newest checkpoints of ``folder``; return the deleted paths.

    With ``run``, only files tagged with that run (see :func:`atomic_save`) count and are deleted: files
    of another run, untagged, unreadable or corrupt files are never touched. Without it, every file counts."""
    found = [p for _, p in list_checkpoints(folder) if run is None or run_of(p) == run]
    for path in found[keep:]:
        path.unlink(missing_ok=True)
    return found[keep:]


def stats_upto(path: str | os.PathLike, step: int) -> list[dict]:
    """The rows of a run's ``stats.jsonl`` up to ``step`` (rows logged after the last checkpoint of a killed
    run are dropped from the file too, atomically, so a resumed run logs them once)."""
    import json

    path = Path(path)
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["step"] <= step]
    text = "".join(json.dumps(r) + "\n" for r in rows).encode()
    atomic_write(path, lambda f: f.write(text))
    return rows


def all_finite(obj: Any) -> bool:
    """Whether every floating-point tensor in ``obj`` (nested dicts, lists, tuples) is finite."""
    if isinstance(obj, torch.Tensor):
        return not obj.is_floating_point() or bool(torch.isfinite(obj).all())
    if isinstance(obj, dict):
        return all(all_finite(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return all(all_finite(v) for v in obj)
    return not isinstance(obj, float) or obj == obj and abs(obj) != float("inf")


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
