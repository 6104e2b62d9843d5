"""Random draws that go through explicit generators, and the one seed derivation.

A ``generator`` argument anywhere in sdegen is one of
- ``None``: torch's global generator;
- a ``torch.Generator``: reproducible for a given shape;
- a sequence of ``torch.Generator``, one per sample: sample ``i`` draws only from ``generator[i]``,
  so its result depends on its own seed alone, not on the batch it shares (EDM's per-seed scheme);
- :class:`BatchRows`: some rows of draws made for a whole batch from one generator (a process's share
  of a global training batch), as fast as one generator.
Anything else is a TypeError.

Seeds derived from a seed and some integer keys (a sample index, a step, a named stream) come from
:func:`derive_seed`, a hash of the keys: distinct keys give unrelated seeds, whatever their sizes.
"""
from __future__ import annotations

from typing import Iterable, Sequence, Union

import numpy as np
import torch



class BatchRows:
    """Rows ``rows`` of draws made for a batch of ``total`` rows from one ``generator``: a draw of shape
    ``[len(rows), ...]`` is the ``rows`` slice of the same draw of shape ``[total, ...]``, so processes
    that split a batch draw together exactly what one process drawing it whole does."""

    def __init__(self, generator: torch.Generator, rows: range, total: int):
        if not isinstance(generator, torch.Generator) or rows.step != 1 or not 0 <= rows.start <= rows.stop <= total:
            raise ValueError(f"BatchRows needs a torch.Generator and a contiguous range of rows within 0..{total}, "
                             f"got {type(generator).__name__} and {rows}")
        self.generator, self.rows, self.total = generator, rows, int(total)

    @property
    def device(self) -> torch.device:
        return self.generator.device


Generator = Union[None, torch.Generator, Sequence[torch.Generator], BatchRows]


def derive_seed(*keys: int) -> int:
    """A 63-bit seed hashed from the integers ``keys`` (numpy's ``SeedSequence``), e.g. ``(seed, index)``.

    Each key is written as a header word (number of 32-bit limbs, and its sign) followed by the limbs of
    its magnitude, so different tuples of keys (of any sizes and signs) are different entropy words and
    give independent seeds (equal only by a 64-bit hash collision)."""
    words: list[int] = []
    for key in keys:
        if isinstance(key, (bool, np.bool_)) or not isinstance(key, (int, np.integer)):
            raise TypeError(f"seed keys must be integers, got {type(key).__name__} {key!r}")
        mag = abs(int(key))
        limbs = [(mag >> s) & 0xFFFFFFFF for s in range(0, max(mag.bit_length(), 1), 32)]
        words += [2 * len(limbs) + (key < 0), *limbs]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> np.uint64(1))


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample ``index`` of a job seeded ``seed``: :func:`derive_seed` of ``(seed, index)``."""
    return derive_seed(seed, index)


def per_sample_generators(seed: int, indices: Iterable[int], device="cpu") -> list[torch.Generator]:
    """One generator per sample index, seeded by :func:`sample_seed` of ``(seed, index)`` only."""
    return [torch.Generator(device=device).manual_seed(sample_seed(seed, i)) for i in indices]


def check_generator(generator: Generator) -> Generator:
    """``generator`` if it is ``None``, a ``torch.Generator`` or a sequence of them; else a TypeError."""
    if generator is None or isinstance(generator, (torch.Generator, BatchRows)):
        return generator
    if isinstance(generator, (str, bytes)) or not isinstance(generator, Sequence):
        raise TypeError(f"generator must be None, a torch.Generator or a list of torch.Generator (one per "
                        f"sample), got {type(generator).__name__} {generator!r:.40}")
    bad = [type(g).__name__ for g in generator if not isinstance(g, torch.Generator)]
    if bad:
        raise TypeError(f"a list of generators must hold only torch.Generator (one per sample), got {bad[0]}")
    return generator


def _draw(sampler, shape: Sequence[int], generator: Generator, device, dtype: torch.dtype) -> torch.Tensor:
    shape = tuple(shape)
    if check_generator(generator) is None or isinstance(generator, torch.Generator):
        gen_device = generator.device if generator is not None else device
        out = sampler(shape, generator=generator, device=gen_device, dtype=dtype)
        return out.to(device) if device is not None else out
    if isinstance(generator, BatchRows):
        if len(generator.rows) != shape[0]:
            raise ValueError(f"a draw of {shape[0]} rows from BatchRows holding {len(generator.rows)} rows")
        out = sampler((generator.total, *shape[1:]), generator=generator.generator, device=generator.device,
                      dtype=dtype)[generator.rows.start:generator.rows.stop]
        return out.to(device) if device is not None else out
    if len(generator) != shape[0]:
        raise ValueError(f"got {len(generator)} per-sample generators for a batch of {shape[0]}; "
                         "pass one generator per sample, or a single torch.Generator")
    return torch.stack([sampler(shape[1:], generator=g, device=g.device, dtype=dtype) for g in generator]).to(device)


def randn(shape: Sequence[int], generator: Generator = None, *, device=None,
          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal tensor of ``shape`` drawn from ``generator`` (see module doc)."""
    return _draw(torch.randn, shape, generator, device, dtype)


def rand(shape: Sequence[int], generator: Generator = None, *, device=None,
         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Uniform [0, 1) tensor of ``shape`` drawn from ``generator`` (see module doc)."""
    return _draw(torch.rand, shape, generator, device, dtype)


def randn_like(x: torch.Tensor, generator: Generator = None) -> torch.Tensor:
    return randn(x.shape, generator, device=x.device, dtype=x.dtype)


def generator_device(generator: Generator, default=None):
    """The device of ``generator`` (of the first of a list), or ``default`` for ``None``."""
    if check_generator(generator) is None:
        return default
    if isinstance(generator, (torch.Generator, BatchRows)):
        return generator.device
    return generator[0].device if len(generator) else default
