"""The domain, its grids, and the multilevel pyramid (FAIR conventions, DESIGN.md §4).

A domain ``omega = (a1, b1, a2, b2[, a3, b3])`` is divided into ``m = (m1, m2[, m3])`` cells of
size ``h = (b - a) / m``. Cell-centred points are ``x_i = a + (i - 1/2) h`` (i = 1..m); nodal
points are ``a + i h`` (i = 0..m); staggered component k is nodal along axis k and cell-centred
along the others (the MAC grid of FAIR's elastic regulariser). Points are arrays of shape
``(n, d)`` in C order (the last axis varies fastest); an image array has shape ``m``.
Integrals are midpoint sums weighted by ``prod(h)`` (:attr:`Domain.cell_volume`).

Reference: J. Modersitzki, *FAIR: Flexible Algorithms for Image Registration*, SIAM 2009, §3.2
(grids) and §3.7 (multilevel representation).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import array_api_compat
import numpy as np

__all__ = ["Domain", "Level", "multilevel", "pyramid_domains", "restrict", "restriction_matrix"]


@dataclass(frozen=True)
class Domain:
    """A box ``omega`` divided into ``m`` cells; 1, 2 or 3 dimensions.

    >>> Domain((0, 20, 0, 25), (128, 128)).h
    (0.15625, 0.1953125)
    """

    omega: tuple[float, ...]
    m: tuple[int, ...]

    def __post_init__(self) -> None:
        try:
            omega = tuple(float(v) for v in self.omega)
        except (TypeError, ValueError):
            raise TypeError(f"omega must be a sequence of numbers, got {self.omega!r}") from None
        try:
            m = tuple(int(v) for v in np.atleast_1d(self.m))
        except (TypeError, ValueError):
            raise TypeError(f"m must be a sequence of integers, got {self.m!r}") from None
        if any(int(v) != v for v in np.atleast_1d(self.m)):
            raise TypeError(f"m must hold integers, got {self.m!r}")
        if len(m) not in (1, 2, 3):
            raise ValueError(f"m must have 1, 2 or 3 entries, got {len(m)}")
        if len(omega) != 2 * len(m):
            raise ValueError(
                f"omega must have 2*len(m) = {2 * len(m)} entries (a1, b1, a2, b2, ...), "
                f"got {len(omega)}"
            )
        if not all(math.isfinite(v) for v in omega):
            raise ValueError(f"omega must be finite, got {omega}")
        if any(b <= a for a, b in zip(omega[0::2], omega[1::2])):
            raise ValueError(f"omega needs a_k < b_k in every dimension, got {omega}")
        if any(v < 1 for v in m):
            raise ValueError(f"m must be positive, got {m}")
        object.__setattr__(self, "omega", omega)
        object.__setattr__(self, "m", m)

    # ------------------------------------------------------------------ geometry
    @property
    def dim(self) -> int:
        return len(self.m)

    @property
    def lower(self) -> tuple[float, ...]:
        return self.omega[0::2]

    @property
    def upper(self) -> tuple[float, ...]:
        return self.omega[1::2]

    @property
    def extent(self) -> tuple[float, ...]:
        return tuple(b - a for a, b in zip(self.lower, self.upper))

    @property
    def h(self) -> tuple[float, ...]:
        return tuple(e / n for e, n in zip(self.extent, self.m))

    @property
    def cell_volume(self) -> float:
        """``prod(h)``, the midpoint-quadrature weight."""
        return math.prod(self.h)

    @property
    def volume(self) -> float:
        return math.prod(self.extent)

    @property
    def n(self) -> int:
        """Number of cells."""
        return math.prod(self.m)

    def with_m(self, m: Sequence[int]) -> Domain:
        return Domain(self.omega, tuple(m))

    def coarsen(self) -> Domain:
        """The next coarser level: every ``m_k`` halved (rounded up), the same ``omega``."""
        return self.with_m(tuple(max(1, -(-v // 2)) for v in self.m))

    @property
    def level(self) -> int:
        """FAIR's level number, ``ceil(log2(min(m)))`` (7 for 128 x 128)."""
        return math.ceil(math.log2(min(self.m))) if min(self.m) > 1 else 0

    # ------------------------------------------------------------------ grids
    def _axes(self, counts, offsets, xp, dtype, device):
        return [
            a + (xp.arange(c, dtype=dtype, device=device) + off) * hk
            for a, hk, c, off in zip(self.lower, self.h, counts, offsets)
        ]

    def _points(self, axes, xp) -> Any:
        mesh = xp.meshgrid(*axes, indexing="ij")
        return xp.stack([xp.reshape(g, (-1,)) for g in mesh], axis=1)

    def cell_centers(self, xp: Any = None, *, dtype: Any = None, device: Any = None) -> Any:
        """Cell-centred points, shape ``(prod(m), d)``, C order."""
        xp, dtype = _namespace(xp, dtype)
        return self._points(self._axes(self.m, [0.5] * self.dim, xp, dtype, device), xp)

    def nodes(self, xp: Any = None, *, dtype: Any = None, device: Any = None) -> Any:
        """Nodal points, shape ``(prod(m + 1), d)``, C order."""
        xp, dtype = _namespace(xp, dtype)
        counts = [v + 1 for v in self.m]
        return self._points(self._axes(counts, [0.0] * self.dim, xp, dtype, device), xp)

    def staggered(self, xp: Any = None, *, dtype: Any = None, device: Any = None) -> tuple:
        """The MAC grid: a tuple of d point arrays; component k is nodal along axis k."""
        xp, dtype = _namespace(xp, dtype)
        grids = []
        for k in range(self.dim):
            counts = [v + (j == k) for j, v in enumerate(self.m)]
            offsets = [0.0 if j == k else 0.5 for j in range(self.dim)]
            grids.append(self._points(self._axes(counts, offsets, xp, dtype, device), xp))
        return tuple(grids)


def _namespace(xp: Any, dtype: Any) -> tuple[Any, Any]:
    if xp is None:
        import array_api_compat.numpy as xp
    return xp, (xp.float64 if dtype is None else dtype)


# ---------------------------------------------------------------------------------- pyramid


def restriction_matrix(m_fine: int, m_coarse: int) -> np.ndarray:
    """Cell averages of a piecewise-constant function on ``m_fine`` cells over ``m_coarse`` cells.

    Entry (J, i) is the fraction of coarse cell J covered by fine cell i (rows sum to 1). For
    ``m_fine = 2 m_coarse`` it is FAIR's block averaging (pairwise means); for odd sizes it is the
    area-weighted average over the overlaps, so any ``m`` restricts without padding or
    resampling. Built on the host: it depends on sizes only. :func:`restrict` applies it along
    each axis; super-resolution's forward model is built from it too
    (:mod:`multireg.problems.superres`).
    """
    fine = np.linspace(0.0, 1.0, m_fine + 1)
    coarse = np.linspace(0.0, 1.0, m_coarse + 1)
    lo = np.maximum(coarse[:-1, None], fine[None, :-1])
    hi = np.minimum(coarse[1:, None], fine[None, 1:])
    return np.clip(hi - lo, 0.0, None) * m_coarse


def restrict(data: Any, domain: Domain, coarse: Domain | None = None) -> Any:
    """Average an image (shape ``domain.m``) onto the cells of ``coarse`` (default: next level)."""
    coarse = domain.coarsen() if coarse is None else coarse
    if coarse.omega != domain.omega:
        raise ValueError(f"coarse.omega {coarse.omega} differs from domain.omega {domain.omega}")
    if tuple(data.shape) != domain.m:
        raise ValueError(f"data has shape {tuple(data.shape)}, but the domain has m = {domain.m}")
    xp = array_api_compat.array_namespace(data)
    device = array_api_compat.device(data)
    out = data
    for axis, (mf, mc) in enumerate(zip(domain.m, coarse.m)):
        if mf == mc:
            continue
        r = xp.asarray(restriction_matrix(mf, mc), dtype=data.dtype, device=device)
        out = xp.moveaxis(xp.tensordot(r, out, axes=([1], [axis])), 0, axis)
    return out


@dataclass(frozen=True)
class Level:
    """One level of a multilevel representation: its domain and the images restricted to it."""

    domain: Domain
    images: tuple

    @property
    def level(self) -> int:
        return self.domain.level


def multilevel(domain: Domain, *images: Any, min_size: int = 4) -> list[Level]:
    """FAIR's multilevel representation, coarsest level first.

    Each level halves every ``m_k`` (rounded up) by averaging cells, down to the last level whose
    smallest ``m_k`` is at least ``min_size``. The finest level holds the images unchanged.
    """
    if not isinstance(domain, Domain):
        raise TypeError(f"domain must be a Domain, not {type(domain).__name__}")
    if int(min_size) != min_size or min_size < 1:
        raise ValueError(f"min_size must be a positive integer, got {min_size!r}")
    for i, img in enumerate(images):
        if tuple(img.shape) != domain.m:
            raise ValueError(f"images[{i}] has shape {tuple(img.shape)}, but m = {domain.m}")
    domains = pyramid_domains(domain, min_size=min_size)[::-1]  # finest first
    levels = [Level(domain, tuple(images))]
    for fine, coarse in itertools.pairwise(domains):
        levels.append(
            Level(coarse, tuple(restrict(img, fine, coarse) for img in levels[-1].images))
        )
    return levels[::-1]


def pyramid_domains(domain: Domain, *, min_size: int = 4) -> list[Domain]:
    """The domains of :func:`multilevel`'s levels, coarsest first, without touching any data."""
    domains = [domain]
    while True:
        coarse = domains[-1].coarsen()
        if coarse.m == domains[-1].m or min(coarse.m) < min_size:
            return domains[::-1]
        domains.append(coarse)
