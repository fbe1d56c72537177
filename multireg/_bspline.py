"""Tensor-product cubic B-spline sums at scattered points (shared by image models and FFDs).

``evaluate(c, xi)`` computes ``s(xi) = sum_j c[j] prod_k b(xi_k - j_k)`` for index coordinates
``xi`` (0-based: sample j sits at xi = j), with ``c`` zero outside its index range, so ``s`` is C²
everywhere and exactly 0 once a coordinate leaves (-2, m_k + 1). ``b`` is FAIR's unnormalised
cubic B-spline, ``b(0) = 4``, ``b(±1) = 1`` (6 × the cardinal B-spline; Modersitzki, FAIR §3.4).

Written with array-API operations only (floor, clip, take, where), so every backend
differentiates it, in forward and reverse mode, with respect to the points and the coefficients.
"""

from __future__ import annotations

from typing import Any

import array_api_compat

OFFSETS = (-1, 0, 1, 2)


def weights(t: Any) -> tuple[Any, Any, Any, Any]:
    """``b(t - o)`` for the offsets o = -1, 0, 1, 2 and ``t`` in [0, 1)."""
    u = 1.0 - t
    return (u**3, 4.0 - 6.0 * t**2 + 3.0 * t**3, 4.0 - 6.0 * u**2 + 3.0 * u**3, t**3)


def index_dtype(xp: Any, x: Any) -> Any:
    return xp.__array_namespace_info__().default_dtypes(device=array_api_compat.device(x))[
        "indexing"
    ]


# Gathers are done in chunks of at most this many (point, stencil-entry) pairs: the trailing
# axes' stencils are vectorised (few, large array operations), the leading ones looped over.
CHUNK_ELEMENTS = 1 << 24


def evaluate(c: Any, xi: Any) -> Any:
    """Spline sum at ``xi`` (shape ``(n, d)``, index units) for coefficients ``c`` (shape ``m``).

    Returns shape ``(n,)``. Zero outside the coefficients' support, with zero derivative there.
    The 4^d stencil is gathered with one ``take`` per chunk: the trailing axes' offsets are
    broadcast into an ``(n, 4, ..., 4)`` index array while it stays below
    :data:`CHUNK_ELEMENTS` entries, and the leading axes' offsets are looped over.
    """
    xp = array_api_compat.array_namespace(c, xi)
    m = tuple(c.shape)
    d = len(m)
    n = xi.shape[0]
    itype = index_dtype(xp, xi)
    flat = xp.reshape(c, (-1,))
    strides = [1] * d
    for k in range(d - 2, -1, -1):
        strides[k] = strides[k + 1] * m[k + 1]
    offsets = xp.asarray(OFFSETS, dtype=itype, device=array_api_compat.device(xi))
    index, weight = [], []  # per axis: (n, 4) flat-index contributions and masked weights
    for k in range(d):
        s = xp.clip(xi[:, k], -3.0, float(m[k] + 2))  # keeps the integer cast finite
        p = xp.floor(s)
        w = xp.stack(weights(s - p), axis=1)
        j = xp.astype(p, itype)[:, None] + offsets[None, :]
        inside = (j >= 0) & (j <= m[k] - 1)
        index.append(xp.clip(j, 0, m[k] - 1) * strides[k])
        weight.append(xp.where(inside, w, xp.zeros_like(w)))
    vectorised = 1  # number of trailing axes whose offsets are broadcast
    while vectorised < d and n * 4 ** (vectorised + 1) <= CHUNK_ELEMENTS:
        vectorised += 1
    lead = d - vectorised
    idx_tail = None
    for k in range(lead, d):
        shape = (n,) + (1,) * (k - lead) + (4,) + (1,) * (d - k - 1)
        i_k = xp.reshape(index[k], shape)
        idx_tail = i_k if idx_tail is None else idx_tail + i_k
    total = None
    for combo in _product([range(4)] * lead):
        idx, w_lead = idx_tail, None
        for k, o in enumerate(combo):
            idx = idx + xp.reshape(index[k][:, o], (n,) + (1,) * vectorised)
            w_lead = weight[k][:, o] if w_lead is None else w_lead * weight[k][:, o]
        values = xp.reshape(xp.take(flat, xp.reshape(idx, (-1,))), idx.shape)
        # contract one axis at a time, last first: fewer products than forming the full
        # tensor-product weight, and a cheaper reverse pass
        for k in range(d - 1, lead - 1, -1):
            w_k = xp.reshape(weight[k], (n,) + (1,) * (k - lead) + (4,))
            # four explicit terms: torch reduces a length-4 last axis slowly
            values = sum(values[..., o] * w_k[..., o] for o in range(4))
        term = values if w_lead is None else values * w_lead
        total = term if total is None else total + term
    return total


def _product(ranges):
    if not ranges:
        yield ()
        return
    for head in ranges[0]:
        for tail in _product(ranges[1:]):
            yield (head, *tail)
