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


def evaluate(c: Any, xi: Any) -> Any:
    """Spline sum at ``xi`` (shape ``(n, d)``, index units) for coefficients ``c`` (shape ``m``).

    Returns shape ``(n,)``. Zero outside the coefficients' support, with zero derivative there.
    """
    xp = array_api_compat.array_namespace(c, xi)
    m = tuple(c.shape)
    d = len(m)
    itype = index_dtype(xp, xi)
    flat = xp.reshape(c, (-1,))
    strides = [1] * d
    for k in range(d - 2, -1, -1):
        strides[k] = strides[k + 1] * m[k + 1]
    # per dimension: 4 (masked) weights and 4 clipped indices
    per_dim = []
    for k in range(d):
        s = xp.clip(xi[:, k], -3.0, float(m[k] + 2))  # keeps the integer cast finite
        p = xp.floor(s)
        ws = weights(s - p)
        base = xp.astype(p, itype)
        entries = []
        for o, w in zip(OFFSETS, ws):
            j = base + o
            inside = (j >= 0) & (j <= m[k] - 1)
            entries.append((xp.clip(j, 0, m[k] - 1) * strides[k], xp.where(inside, w, 0.0)))
        per_dim.append(entries)
    total = None
    for combo in _product(per_dim):
        idx = combo[0][0]
        w = combo[0][1]
        for j, wk in combo[1:]:
            idx = idx + j
            w = w * wk
        term = xp.take(flat, idx) * w
        total = term if total is None else total + term
    return total


def _product(per_dim):
    if not per_dim:
        yield ()
        return
    for head in per_dim[0]:
        for tail in _product(per_dim[1:]):
            yield (head, *tail)
