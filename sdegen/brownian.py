"""Brownian paths that answer the same on every query, for adaptive SDE solvers that reject steps.

Two constructions, one per sample and vectorised over the batch:

- :class:`BrownianMemory`: rejection sampling with memory (Rackauckas & Nie 2017, RSwM): every point
  of the path drawn so far is remembered until the solver passes it; a new point is drawn from the
  Brownian bridge between its known neighbours (or as a fresh increment beyond them). Exact, one
  normal per element per query; explored in one direction (decreasing ``t``, as a reverse-time solver).
- :class:`BrownianTree`: a path that is a function of its seed alone, queried anywhere in any order.

:class:`BrownianTree` is a virtual Brownian tree (Gaines & Lyons 1997; Li et al. 2020, Sec. 4, as
torchsde's ``BrownianTree``), one independent path per sample, vectorised over the batch. A sample's
path is a function of its 64-bit seed alone (drawn from its own generator), so an adaptive solver
that rejects a step and retries a shorter one sees the same Brownian motion (the increment over the
shorter step is the Brownian bridge's value, not a fresh draw), and a sample does not depend on its
batch.

Construction on ``[t0, t1]``: ``W(t0) = 0``, ``W(t1) = sqrt(t1 - t0) z_0``; the midpoint ``m`` of a
dyadic interval ``[a, b]`` is the Brownian bridge ``W(m) = (W(a) + W(b)) / 2 + sqrt((b - a) / 4) z_k``
(Levy's construction), ``k`` the interval's heap index (root 1, children ``2k``, ``2k + 1``), down to
``depth`` levels; between the knots the path is linear. A query evaluates this in closed form (see
:class:`BrownianTree`), never storing the tree. The normals ``z_k`` are counter-based: SplitMix64
(Steele et al. 2014) seeded with a hash of ``(seed, k)``, two 53-bit uniforms per Box-Muller pair
(Box & Muller 1958), in int64 torch ops (on CPU and CUDA alike; products wrap modulo 2^64 as the
hash needs).

Exactness: at the dyadic knots ``t0 + j (t1 - t0) / 2^depth`` the values are exactly Brownian (up to
float64 rounding); between knots the path is linear, so an increment over ``[s, t]`` has variance
``t - s`` minus at most half a leaf width (``(t1 - t0) / 2^(depth + 1)``; depth 40 on ``[0, 1]``:
``5e-13``). Box-Muller with 53-bit uniforms truncates the normals at ``|z| < 8.6`` (probability ``1e-17``).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from . import noise

# SplitMix64 constants (Steele, Lea & Flood 2014), as signed int64 (the same bits)
_GAMMA = 0x9E3779B97F4A7C15 - (1 << 64)
_M1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_M2 = 0x94D049BB133111EB - (1 << 64)
_ROOT_KEY = 0  # the heap index of W(t1)'s normal (intervals are numbered from 1)


def _shr(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's ``>>`` is arithmetic: it copies the sign bit)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def mix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64's output function (Steele et al. 2014; Stafford's "Mix13" constants) on int64 tensors."""
    x = (x ^ _shr(x, 30)) * _M1
    x = (x ^ _shr(x, 27)) * _M2
    return x ^ _shr(x, 31)


def counter_normals(keys: torch.Tensor, n: int) -> torch.Tensor:
    """Standard normals ``[len(keys), n]`` (float64): row ``i`` is a function of ``keys[i]`` (int64) only.

    Outputs ``2j, 2j + 1`` of SplitMix64 seeded with ``keys[i]`` make two 53-bit uniforms, and Box-Muller
    turns them into normals ``2j`` (cosine) and ``2j + 1`` (sine)."""
    pairs = (n + 1) // 2
    j = torch.arange(pairs, device=keys.device, dtype=torch.int64)
    state = keys[:, None] + (2 * j + 1) * _GAMMA          # SplitMix64: state_i = seed + i * gamma
    u1 = (_shr(mix64(state), 11) + 1).double() * 2.0 ** -53   # (0, 1]
    u2 = _shr(mix64(state + _GAMMA), 11).double() * 2.0 ** -53   # [0, 1)
    r, theta = torch.sqrt(-2.0 * torch.log(u1)), (2.0 * math.pi) * u2   # Box & Muller 1958
    return torch.stack([r * torch.cos(theta), r * torch.sin(theta)], dim=-1).reshape(len(keys), 2 * pairs)[:, :n]


def tree_seeds(batch: int, generator: noise.Generator = None, device=None) -> torch.Tensor:
    """``batch`` 53-bit seeds (int64, on ``device``); with one generator per sample, seed ``i`` is drawn
    from ``generator[i]`` alone."""
    u = noise.rand((batch,), generator, device=device, dtype=torch.float64)
    return (u * 2.0 ** 53).long()


class BrownianTree:
    """Independent Brownian motions ``W_i(t)``, ``t`` in ``[t0, t1]``, ``W_i(t0) = 0``, of shape ``shape``
    each, one per seed (see the module doc for the construction and its resolution).

    A query sums the construction in closed form (the Levy-Ciesielski / Schauder expansion): with
    ``u = (t - t0) / (t1 - t0)``, ``W(t) = u W(t1) + sum_d sqrt((t1 - t0) / 2^(d + 2)) hat_d(t) z_(2^d + p_d)``
    over levels ``d < depth``, ``p_d = floor(u 2^d)`` the level-``d`` interval holding ``t`` and ``hat_d`` its
    tent (1 at its midpoint, 0 at its ends). Only one interval per level is touched, so a query costs
    ``depth + 1`` normals per element, computed in one batch (no loop over levels).

    Args:
        seeds: int64 ``[B]``, one per path (:func:`tree_seeds`); the device of the paths.
        t0, t1: the time interval (``t0 < t1``).
        shape: the shape of one sample (e.g. ``[C, H, W]``).
        depth: levels; the path is exactly Brownian at the ``2^depth + 1`` dyadic knots and linear
            between them. At most 52 (``u 2^d`` stays exact in float64).
        chunk: at most this many normals are held at once (levels are summed in chunks).
    """

    def __init__(self, seeds: torch.Tensor, t0: float, t1: float, shape: Sequence[int], depth: int = 40,
                 chunk: int = 1 << 22):
        if seeds.dtype != torch.int64 or seeds.dim() != 1:
            raise ValueError(f"seeds must be an int64 tensor [B], got {seeds.dtype} of shape {tuple(seeds.shape)}")
        if not t0 < t1:
            raise ValueError(f"a Brownian tree needs t0 < t1, got [{t0}, {t1}]")
        if not isinstance(depth, int) or not 1 <= depth <= 52:
            raise ValueError(f"depth must be an integer in [1, 52], got {depth!r}")
        self.t0, self.t1, self.depth, self.chunk = float(t0), float(t1), depth, chunk
        self.shape, self.n = tuple(int(s) for s in shape), math.prod(int(s) for s in shape)
        self.seeds = mix64(seeds ^ _M2)   # a hashed seed per path: nearby seeds give unrelated keys

    def __call__(self, t: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """``W_i(t_i)`` for paths ``i`` in ``index`` (default: all) at times ``t`` ``[len(index)]``:
        float64 ``[len(index), *shape]``. Equal queries give equal values, whatever the batch."""
        seeds = self.seeds if index is None else self.seeds[index]
        k, dev = seeds.shape[0], seeds.device
        t = torch.as_tensor(t, dtype=torch.float64, device=dev).expand(k)
        if not ((t >= self.t0) & (t <= self.t1)).all():
            raise ValueError(f"Brownian tree queried at t in [{t.min().item():.6g}, {t.max().item():.6g}], "
                             f"outside its interval [{self.t0}, {self.t1}]")
        span = self.t1 - self.t0
        u = ((t - self.t0) / span).clamp(0.0, 1.0)
        # level -1 is W(t1) (heap key 0, coefficient u); level d >= 0 is the midpoint of interval 2^d + p_d
        level = torch.arange(-1, self.depth, device=dev, dtype=torch.int64)
        size = 2.0 ** level.clamp_min(0).double()                          # intervals per level
        scaled = u[:, None] * size                                          # exact: a power-of-2 scaling
        p = torch.minimum(scaled.floor(), size - 1)
        frac = scaled - p
        coef = torch.where(level >= 0, (span / (4.0 * size)).sqrt() * (1.0 - (2.0 * frac - 1.0).abs()),
                           math.sqrt(span) * u[:, None])                   # Levy construction: bridge tents
        node = torch.where(level >= 0, size.long() + p.long(), _ROOT_KEY)   # [k, depth + 1]
        keys = mix64(seeds[:, None] ^ mix64(node))
        out = torch.zeros(k, self.n, dtype=torch.float64, device=dev)
        per = max(1, self.chunk // max(1, k * self.n))                      # levels per chunk
        for a in range(0, self.depth + 1, per):
            z = counter_normals(keys[:, a:a + per].reshape(-1), self.n).reshape(k, -1, self.n)
            out += (coef[:, a:a + per, None] * z).sum(1)
        return out.reshape((k,) + self.shape)

    def advance(self, q: torch.Tensor, index: torch.Tensor | None = None) -> None:
        """Nothing to do: a tree's path does not depend on the order of queries (the solver's interface)."""


def _gather(values: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
    """``values[i, slot[i]]`` for ``values [k, S, n]``, ``slot [k]``."""
    return values.gather(1, slot[:, None, None].expand(-1, 1, values.shape[2])).squeeze(1)


class BrownianMemory:
    """Independent Brownian motions ``W_i``, one per sample, explored from ``t_start`` towards smaller
    times: ``W_i(t_start) = 0`` and ``W_i(s) - W_i(t) ~ N(0, t - s)`` for ``s < t``.

    Rejection sampling with memory (Rackauckas & Nie 2017, RSwM3): each path keeps its current time
    ``t`` (advanced by :meth:`advance` when a step is accepted) and every point queried below it. A
    query at ``q`` returns the remembered value if ``q`` was queried before; else it draws ``W(q)`` given
    its nearest known neighbours ``L > q > R`` (Brownian bridge, Levy: mean ``W_L + (L - q) / (L - R)
    (W_R - W_L)``, variance ``(L - q)(q - R) / (L - R)``), or ``W_L + sqrt(L - q) z`` with no known point
    below ``q``. By the Markov property this is the exact conditional law, so a rejected step retried on
    a shorter interval sees the same path. Exact (float64), no resolution limit.

    Every query draws one normal per element for every path from ``generator`` (used or not), so with
    one generator per sample a path depends on its own generator and the number of queries alone.

    Args:
        t_start: float64 ``[B]``, each path's start time (its device is the paths').
        shape: the shape of one sample.
        generator: see :mod:`sdegen.noise`.
    """

    def __init__(self, t_start: torch.Tensor, shape: Sequence[int], generator: noise.Generator = None):
        self.t = t_start.to(torch.float64).clone()
        self.shape, self.n = tuple(int(s) for s in shape), math.prod(int(s) for s in shape)
        self.generator = noise.check_generator(generator)
        B, dev = self.t.shape[0], self.t.device
        self.w = torch.zeros(B, self.n, dtype=torch.float64, device=dev)
        self.times = torch.full((B, 1), -math.inf, dtype=torch.float64, device=dev)   # -inf: an empty slot
        self.values = torch.zeros(B, 1, self.n, dtype=torch.float64, device=dev)

    def _index(self, index):
        return torch.arange(self.t.shape[0], device=self.t.device) if index is None else index

    def __call__(self, q: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """``W_i(q_i)`` for paths ``i`` in ``index`` (default: all), ``q [len(index)]`` at or below each
        path's current time: float64 ``[len(index), *shape]``; the new points are remembered."""
        B, dev = self.t.shape[0], self.t.device
        z = noise.randn((B, self.n), self.generator, device=dev, dtype=torch.float64)  # every path draws
        index = self._index(index)
        q = torch.as_tensor(q, dtype=torch.float64, device=dev).expand(index.shape[0])
        t, w, times, values, z = self.t[index], self.w[index], self.times[index], self.values[index], z[index]
        if (q > t).any():
            raise ValueError("BrownianMemory explores each path towards smaller times: a query lies after its "
                             "path's current time")
        known = torch.isfinite(times)
        same = known & (times == q[:, None])
        above, below = known & (times > q[:, None]), known & (times < q[:, None])
        l_slot = torch.where(above, times, math.inf).argmin(1)
        has_l = above.any(1)
        t_l = torch.where(has_l, _gather(times[..., None], l_slot)[:, 0], t)
        w_l = torch.where(has_l[:, None], _gather(values, l_slot), w)
        r_slot = torch.where(below, times, -math.inf).argmax(1)
        has_r = below.any(1)
        t_r = torch.where(has_r, _gather(times[..., None], r_slot)[:, 0], q)
        w_r = _gather(values, r_slot)
        gap = torch.where(has_r, t_l - t_r, 1.0)
        frac = torch.where(has_r, (t_l - q) / gap, 0.0)
        var = torch.where(has_r, (t_l - q) * (q - t_r) / gap, t_l - q)          # bridge, or free increment
        new = w_l + frac[:, None] * (w_r - w_l) + var.clamp_min(0.0).sqrt()[:, None] * z
        has_same = same.any(1) | (q == t)
        old = torch.where((q == t)[:, None], w, _gather(values, same.int().argmax(1)))
        out = torch.where(has_same[:, None], old, new)
        # remember the new points in a free slot (one more slot for all paths when some path has none)
        insert = ~has_same
        if (insert & known.all(1)).any():
            self.times = torch.cat([self.times, self.times.new_full((B, 1), -math.inf)], 1)
            self.values = torch.cat([self.values, self.values.new_zeros(B, 1, self.n)], 1)
            times, values, known = self.times[index], self.values[index], torch.isfinite(self.times[index])
        slot = (~known).int().argmax(1)
        rows = index[insert]
        self.times[rows, slot[insert]] = q[insert]
        self.values[rows, slot[insert]] = out[insert]
        return out.reshape((-1,) + self.shape)

    def advance(self, q: torch.Tensor, index: torch.Tensor | None = None) -> None:
        """Move paths ``index`` to time ``q`` (a point queried before, below their current time) and
        forget their points at or above it."""
        index = self._index(index)
        q = torch.as_tensor(q, dtype=torch.float64, device=self.t.device).expand(index.shape[0])
        times = self.times[index]
        same = torch.isfinite(times) & (times == q[:, None])
        if not (same.any(1) | (q == self.t[index])).all():
            raise ValueError("BrownianMemory.advance: a path can only advance to a time it was queried at")
        w = torch.where((q == self.t[index])[:, None], self.w[index], _gather(self.values[index], same.int().argmax(1)))
        self.t[index], self.w[index] = q, w
        self.times[index] = torch.where(times >= q[:, None], -math.inf, times)
