"""Training batches that are a function of ``(seed, step)`` alone.

Nothing here keeps a state between steps, so a run resumed from a checkpoint of step ``s`` sees the
same data and noise as a run that never stopped, and K processes see together what one process sees:
the global batch of step ``s`` is fixed by ``(seed, s)``; process ``r`` takes rows ``r b .. (r + 1) b``.

- image sets: the samples are taken epoch by epoch, each epoch a permutation seeded by ``(seed, epoch)``;
  flips and dequantization of global row ``j`` draw from a generator seeded by ``(seed, step, j)``;
- toy sets: fresh draws of the whole global batch from a generator seeded by ``(seed, step)``;
- the loss's noise (``t`` and ``z``) of row ``j`` comes from its own generator seeded by ``(seed, step, j)``.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ..noise import per_sample_generators
from ..toy import TOY_SETS, get_toy

# Independent streams of random numbers derived from one seed.
STREAMS = {"data": 1, "epoch": 2, "augment": 3, "noise": 4, "dropout": 5}


def derived_seed(seed: int, *keys: int, stream: str) -> int:
    """A 63-bit seed mixed from ``seed``, the ``keys`` (step, epoch, rank...) and a named stream."""
    words = [STREAMS[stream], int(seed) & 0xFFFFFFFF, int(seed) >> 32, *(int(k) for k in keys)]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> np.uint64(1))


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Batches:
    """``batches(step) -> (x0, generators)``: this process's rows of the global batch of ``step`` (CPU
    float32 ``[b, *shape]``) and one noise generator per row.

    Args:
        name: a toy set (:data:`sdegen.toy.TOY_SETS`) or an image set (:data:`sdegen.data.DATASETS`).
        global_batch: rows per step over all processes; ``rows``: this process's slice of them.
        root, image_size, centered, flip, dequantize: image options (see :func:`sdegen.data.get_dataset`).
    """

    def __init__(self, name: str, *, seed: int, global_batch: int, rows: slice = slice(None),
                 root: Optional[str] = None, image_size: Optional[int] = None, centered: bool = True,
                 flip: bool = False, dequantize: bool = False):
        self.seed, self.global_batch = int(seed), int(global_batch)
        self.rows = range(global_batch)[rows]
        self.toy = get_toy(name) if name in TOY_SETS else None
        self.dataset = None
        if self.toy is None:
            from ..data import get_dataset
            self.dataset = get_dataset(name, root, image_size=image_size, centered=centered, flip=flip,
                                       dequantize=dequantize)
            if len(self.dataset) == 0:
                raise ValueError(f"data set {name!r} is empty")
        self._epoch: tuple[int, torch.Tensor] = (-1, torch.empty(0, dtype=torch.long))

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one sample: ``(D,)`` or ``(C, H, W)``."""
        return (self.toy.dim,) if self.toy is not None else tuple(self.dataset.shape)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if self._epoch[0] != epoch:
            n = len(self.dataset)
            self._epoch = (epoch, torch.randperm(n, generator=_generator(derived_seed(self.seed, epoch,
                                                                                        stream="epoch"))))
        return self._epoch[1]

    def indices(self, step: int) -> list[int]:
        """Data set indices of this process's rows at ``step`` (image sets)."""
        n = len(self.dataset)
        out = []
        for j in self.rows:
            position = step * self.global_batch + j
            out.append(int(self._permutation(position // n)[position % n]))
        return out

    def __call__(self, step: int) -> tuple[torch.Tensor, list[torch.Generator]]:
        rows = list(self.rows)
        if self.toy is not None:
            x = self.toy.sample(self.global_batch, _generator(derived_seed(self.seed, step, stream="data")))
            x = x[rows[0]: rows[-1] + 1] if rows else x[:0]
        else:
            augment = per_sample_generators(derived_seed(self.seed, step, stream="augment"), rows)
            items = []
            for index, g in zip(self.indices(step), augment):
                self.dataset.generator = g  # the item's flip / dequantization draw from its own generator
                items.append(self.dataset[index])
            x = torch.stack(items)
        noise = per_sample_generators(derived_seed(self.seed, step, stream="noise"), rows)
        return x.to(torch.float32), noise

    def reference(self, n: int, seed: int = 0) -> torch.Tensor:
        """``n`` data samples for pictures (toy sets: fresh draws; image sets: the first ``n`` images)."""
        if self.toy is not None:
            return self.toy.sample(n, _generator(seed))
        return torch.stack([self.dataset[i] for i in range(min(n, len(self.dataset)))])
