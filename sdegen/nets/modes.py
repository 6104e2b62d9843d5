"""Switching networks between train and eval mode for a while."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn


@contextmanager
def eval_mode(*nets: object) -> Iterator[None]:
    """Put every ``nn.Module`` among ``nets`` (and all its submodules) in eval mode; restore on exit.

    Other objects (plain callables) are ignored."""
    modules = [m for net in nets if isinstance(net, nn.Module) for m in net.modules()]
    flags = [m.training for m in modules]
    for m in modules:
        m.training = False
    try:
        yield
    finally:
        for m, flag in zip(modules, flags):
            m.training = flag
