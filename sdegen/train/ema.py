"""Exponential moving average (EMA) of a network's weights, the weights that are sampled from.

As in the official score_sde code, only the trainable parameters (``requires_grad``) are averaged (the
fixed Fourier features of NCSN++ are copied), and by default the decay warms up:
``decay = min(rate, (1 + n) / (10 + n))`` after ``n`` updates.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """A frozen copy ``module`` of ``model`` whose trainable parameters track ``model``'s.

    ``update(model)``: ``shadow <- decay shadow + (1 - decay) param`` (Polyak averaging), buffers copied."""

    def __init__(self, model: nn.Module, rate: float, warmup: bool = True):
        if not 0 < rate < 1:
            raise ValueError(f"EMA rate must be in (0, 1), got {rate}")
        self.rate, self.warmup, self.num_updates = float(rate), bool(warmup), 0
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        own = dict(self.module.named_parameters())
        self._shadow = [own[n] for n in self.names]

    def decay(self) -> float:
        """Decay of the next update."""
        n = self.num_updates + 1
        return min(self.rate, (1 + n) / (10 + n)) if self.warmup else self.rate

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards ``model`` (the bare network, not a DDP or compiled wrapper)."""
        weight = 1.0 - self.decay()
        params = dict(model.named_parameters())
        torch._foreach_lerp_(self._shadow, [params[n].detach() for n in self.names], weight)
        for own, theirs in zip(self.module.buffers(), model.buffers()):
            own.copy_(theirs)
        self.num_updates += 1

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "num_updates": self.num_updates, "rate": self.rate}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"], strict=True)
        self.num_updates = int(state["num_updates"])
