"""Training batches that are a function of ``(seed, step)`` alone.

Nothing here keeps a state between steps, so a run resumed from a checkpoint of step ``s`` sees the
same data and noise as a run that never stopped, and K processes see together what one process sees:
the global batch of step ``s`` is fixed by ``(seed, s)``; process ``r`` takes rows ``r b .. (r + 1) b``.

- image sets: the samples are taken epoch by epoch, each epoch a permutation seeded by ``(seed, epoch)``;
  flips and dequantization of global row ``j`` draw from a generator seeded by ``(seed, step, j)``;
- toy sets: fresh draws of the whole global batch from a generator seeded by ``(seed, step)``;
- the loss's noise (``t`` and ``z``) of the whole global batch comes from one generator seeded by
  ``(seed, step)``; a process draws it whole and keeps its rows (:class:`sdegen.noise.BatchRows`).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..noise import BatchRows, Generator, derive_seed, per_sample_generators
from ..toy import TOY_SETS, get_toy

# Independent streams of random numbers derived from one seed.
STREAMS = {"data": 1, "epoch": 2, "augment": 3, "noise": 4, "dropout": 5, "label_dropout": 6}


def derived_seed(seed: int, *keys: int, stream: str) -> int:
    """The seed of a named training stream at ``keys`` (step, epoch, rank...): :func:`sdegen.noise.derive_seed`
    of ``(seed, stream number, *keys)``."""
    return derive_seed(seed, STREAMS[stream], *keys)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Batches:
    """``batches(step) -> (x0, noise)``: this process's rows of the global batch of ``step`` (CPU
    float32 ``[b, *shape]``) and the generator of their loss noise (a ``torch.Generator``, or a
    :class:`sdegen.noise.BatchRows` when the batch is split over processes); ``batches.labelled(step) ->
    (x0, y, noise)`` also gives the rows' class labels.

    Args:
        name: a toy set (:data:`sdegen.toy.TOY_SETS`) or an image set (:data:`sdegen.data.DATASETS`).
        global_batch: rows per step over all processes; ``rows``: this process's slice of them.
        root, image_size, centered, flip, dequantize, download: image options (see :func:`sdegen.data.get_dataset`).
        label_dropout: probability that a row's label is replaced by the null label (classifier-free
            guidance, Ho & Salimans 2022); row ``j`` of step ``s`` draws from its own ``(seed, s, j)`` stream.
    """

    def __init__(self, name: str, *, seed: int, global_batch: int, rows: slice = slice(None),
                 root: Optional[str] = None, image_size: Optional[int] = None, centered: bool = True,
                 flip: bool = False, dequantize: bool = False, download: bool = False,
                 label_dropout: float = 0.0):
        self.seed, self.global_batch = int(seed), int(global_batch)
        self.label_dropout = float(label_dropout)
        self.rows = range(global_batch)[rows]
        self.toy = get_toy(name) if name in TOY_SETS else None
        self.dataset = None
        if self.toy is None:
            from ..data import get_dataset
            self.dataset = get_dataset(name, root, image_size=image_size, centered=centered, flip=flip,
                                       dequantize=dequantize, download=download)
            if len(self.dataset) == 0:
                raise ValueError(f"data set {name!r} is empty")
        self._epoch: tuple[int, torch.Tensor] = (-1, torch.empty(0, dtype=torch.long))

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one sample: ``(D,)`` or ``(C, H, W)``."""
        return (self.toy.dim,) if self.toy is not None else tuple(self.dataset.shape)

    @property
    def num_classes(self) -> int:
        """Number of classes of the labels (mixtures: components; 0: the data set has no labels)."""
        if self.toy is not None:
            return int(getattr(self.toy, "n_components", 0))
        labels = self.dataset.labels
        return int(labels.max()) + 1 if labels is not None and len(labels) else 0

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

    def __call__(self, step: int) -> tuple[torch.Tensor, Generator]:
        x, _, noise = self.labelled(step)
        return x, noise

    def labelled(self, step: int) -> tuple[torch.Tensor, Optional[torch.Tensor], Generator]:
        """``(x0, y, generators)``: as ``batches(step)``, with the rows' class labels ``y`` (int64 ``[b]``,
        :data:`~sdegen.nets.layers.NULL_LABEL` where dropped; None when the data set has no labels)."""
        rows = list(self.rows)
        y = None
        if self.toy is not None:
            g = _generator(derived_seed(self.seed, step, stream="data"))
            if self.num_classes:   # a mixture: the label is the component a point was drawn from
                x, y = self.toy.sample(self.global_batch, g, return_labels=True)
                y = y[rows[0]: rows[-1] + 1] if rows else y[:0]
            else:
                x = self.toy.sample(self.global_batch, g)
            x = x[rows[0]: rows[-1] + 1] if rows else x[:0]
        else:
            augment = per_sample_generators(derived_seed(self.seed, step, stream="augment"), rows)
            items = []
            indices = self.indices(step)
            for index, g in zip(indices, augment):
                self.dataset.generator = g  # the item's flip / dequantization draw from its own generator
                items.append(self.dataset[index])
            x = torch.stack(items)
            if self.dataset.labels is not None:
                y = self.dataset.labels[torch.tensor(indices, dtype=torch.long)]
        if y is not None and self.label_dropout > 0:
            from ..nets import NULL_LABEL
            gens = per_sample_generators(derived_seed(self.seed, step, stream="label_dropout"), rows)
            u = torch.stack([torch.rand((), generator=g) for g in gens]) if rows else torch.empty(0)
            y = torch.where(u < self.label_dropout, torch.full_like(y, NULL_LABEL), y)
        # one generator per step (not per row): per-row generators cost more than a small network's step
        noise = _generator(derived_seed(self.seed, step, stream="noise"))
        if len(rows) != self.global_batch:
            noise = BatchRows(noise, self.rows, self.global_batch)
        return x.to(torch.float32), (y.long() if y is not None else None), noise

    def reference(self, n: int, seed: int = 0) -> torch.Tensor:
        """``n`` data samples for pictures (toy sets: fresh draws; image sets: the first ``n`` images)."""
        if self.toy is not None:
            return self.toy.sample(n, _generator(seed))
        return torch.stack([self.dataset[i] for i in range(min(n, len(self.dataset)))])
