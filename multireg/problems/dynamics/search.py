"""Globalisation of the per-frame motions: a translation search at the coarsest level.

Gauss–Newton from the identity finds the motion of a frame only inside its basin of attraction;
a frame moved by a large fraction of the field of view (issue 14: ±20 mm on an 80 mm high
window, cropped after the motion) can end in another basin even at the coarsest level. Given the
intensity model, the frames are independent (frame k's residual rows depend on w_k only; the
regions model's temporal regulariser couples them only weakly), so the whole set of frames can
be searched at once: every frame is put at the same candidate translation t, the linear fit
redone, and each frame ranks the translations by its data term D_k. This is the
global search that initialises local registration in FLIRT (M. Jenkinson and S. Smith, "A
global optimisation method for robust affine registration of brain images", Med. Image Anal. 5
(2001) 143–156: a coarse grid search on a heavily subsampled image, then local optimisation
from the best candidates), here over translations only, on the coarsest grid of the coupled
solve, where it is cheap and the objective smooth.

A search alone trusts the coarse objective at points no local method has refined: with the
field-of-view normalisation a partial overlap can score well there. So
:func:`multireg.problems.dynamics.solve` runs the coupled Gauss–Newton solve again from each
frame's best few candidates (:data:`SEARCH_STARTS`, in different basins) and keeps, frame by
frame, whichever local minimum has the lowest data term: the search only ever adds candidate
basins; a frame's motion changes only where a
refined minimum is better in the objective itself.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import array_api_compat
import numpy as np

from multireg.problems.dynamics.models import _host

Array = Any
# The default search radius, a fraction of ω's extent per axis: a third of the field of view
# (an organ moved farther than that leaves it; chosen on the development phantoms named in
# bench/dynamics.py, never on its evaluation seeds).
SEARCH_RADIUS = 1.0 / 3.0
# Local refinements per frame: from its best few candidate translations (FLIRT refines its best
# few search candidates too) ...
SEARCH_STARTS = 3
# ... at least this many cells (max-norm) apart, so that they lie in different basins
SEPARATION = 2


def translation_columns(kind: str) -> tuple[int, int] | None:
    """The translation parameters of a motion layout (None: no global translation)."""
    return {"affine": (2, 5), "rigid": (1, 2)}.get(kind)


@functools.lru_cache(maxsize=32)
def _frame_terms_kernel(bk: Any, residual: Any) -> Callable:
    """(N,) each frame's data term ‖r_k(w, c)‖² (field-of-view weights included)."""
    xp = bk.xp

    def terms(w, c, *data):
        r = residual.residual(w, c, *data)
        return xp.sum(r * r, axis=1)

    return bk.jit(terms)


def frame_terms(P: Any, w: Array, c: Array | None = None) -> np.ndarray:
    """Each frame's data term at the motions w and coefficients c (default c(w)), on the host."""
    if c is None:
        c = P.inner(w)
    return np.asarray(_host(P.bk, _frame_terms_kernel(P.bk, P.residual)(w, c, *P.data)))


def offsets(domain: Any, radius: float) -> np.ndarray:
    """The candidate translations (T, 2): a grid of one cell's spacing within ±radius × ω's
    extent per axis, the zero offset first."""
    axes = []
    for k in range(2):
        extent = domain.omega[2 * k + 1] - domain.omega[2 * k]
        n = int(np.floor(radius * extent / domain.h[k] + 1e-9))
        axes.append(np.arange(-n, n + 1) * domain.h[k])
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 2)
    order = np.argsort(np.abs(grid).sum(axis=1), kind="stable")
    return grid[order]


def translation_search(P: Any, w: Array, radius: float, starts: int = SEARCH_STARTS) -> list:
    """Starting motions: ``starts`` arrays (N, p), the j-th holding every free frame at its j-th
    best pure translation of :func:`offsets` in the data term (the linear fit redone per
    candidate, all frames at once), candidates within :data:`SEPARATION` cells of a better one
    skipped (one start per basin). The linear part is the identity, as FLIRT's search starts
    from the unrotated image (searching around a solution's own linear part missed the truth
    where a wrong rotation had compensated a translation); the fixed frames keep their row of
    ``w``. The best candidate alone is not enough: at the identity's linear part a far,
    partial overlap can score better than the truth's translation, which wins only once
    refined (measured: the truth's basin ranked second)."""
    bk = P.bk
    mo = P.residual.motion
    cols = translation_columns(mo.kind)
    free = np.zeros(w.shape[0], bool)
    free[list(P.separable.free)] = True
    cand = offsets(P.domain, radius)
    dev = array_api_compat.device(w)
    start = np.tile(mo.identity(), (len(cand), 1))
    start[:, list(cols)] += cand
    fixed = bk.to_numpy(w)
    kernel = _frame_terms_kernel(bk, P.residual)
    on_device = []
    for s in start:
        trial = bk.asarray(np.where(free[:, None], s[None, :], fixed), dtype=w.dtype, device=dev)
        on_device.append(kernel(trial, P.inner(trial), *P.data))
    terms = bk.to_numpy(bk.xp.stack(on_device))  # (T, N): one copy to the host
    cells = cand / np.asarray(P.domain.h)[None, :]
    picks = np.zeros((starts, w.shape[0]), int)
    for k in range(w.shape[0]):
        chosen: list[int] = []
        for i in np.argsort(terms[:, k], kind="stable"):  # the smallest offset among equals
            if all(np.max(np.abs(cells[i] - cells[j])) > SEPARATION for j in chosen):
                chosen.append(int(i))
            if len(chosen) == starts:
                break
        chosen += [chosen[-1]] * (starts - len(chosen))
        picks[:, k] = chosen
    return [
        bk.asarray(np.where(free[:, None], start[picks[j]], fixed), dtype=w.dtype, device=dev)
        for j in range(starts)
    ]


def best_rows(solutions: list) -> tuple[np.ndarray, np.ndarray]:
    """(w, origin) on the host: frame by frame, the row of the solution (problem, w, c) whose data
    term (each with its own fit) is the lowest, and that solution's index (the first among
    equals)."""
    terms = np.stack([frame_terms(P, w, c) for P, w, c in solutions])  # (S, N)
    rows = np.stack([P.bk.to_numpy(w) for P, w, _ in solutions])  # (S, N, p)
    origin = np.argmin(terms, axis=0)
    return rows[origin, np.arange(rows.shape[1])], origin
