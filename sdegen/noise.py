"""Random draws that go through explicit generators.

A ``generator`` argument anywhere in sdegen is one of
- ``None``: torch's global generator;
- a ``torch.Generator``: reproducible for a given shape;
- a sequence of ``torch.Generator``, one per sample: sample ``i`` draws only from ``generator[i]``,
  so its result depends on its own seed alone, not on the batch it shares (EDM's per-seed scheme).
"""
from __future__ import annotations

from typing import Sequence, Union

import torch

Generator = Union[None, torch.Generator, Sequence[torch.Generator]]


def _check_batch(generator: Sequence[torch.Generator], shape: Sequence[int]) -> None:
    if len(generator) != shape[0]:
        raise ValueError(f"got {len(generator)} per-sample generators for a batch of {shape[0]}; "
                         "pass one generator per sample, or a single torch.Generator")


def _draw(sampler, shape: Sequence[int], generator: Generator, device, dtype: torch.dtype) -> torch.Tensor:
    shape = tuple(shape)
    if generator is None or isinstance(generator, torch.Generator):
        gen_device = generator.device if generator is not None else device
        out = sampler(shape, generator=generator, device=gen_device, dtype=dtype)
        return out.to(device) if device is not None else out
    _check_batch(generator, shape)
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


def per_sample_generators(seed: int, indices: Sequence[int], device="cpu") -> list[torch.Generator]:
    """One generator per sample index, seeded from ``(seed, index)`` only."""
    gens = []
    for i in indices:
        g = torch.Generator(device=device)
        g.manual_seed((int(seed) * 1_000_003 + int(i)) % (2 ** 63 - 1))
        gens.append(g)
    return gens


def generator_device(generator: Generator, default=None):
    if generator is None:
        return default
    if isinstance(generator, torch.Generator):
        return generator.device
    return generator[0].device if len(generator) else default
