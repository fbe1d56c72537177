"""Grid functions of nonparametric registration: layout, transfer to cell centres, prolongation.

A nonparametric transformation is a flat 1-D vector ``y`` of d stacked components (the block of
component 1, then component 2, ...). Each block is in C order over that component's grid
(FAIR §3.2; FAIR stacks the same blocks but flattens each in Fortran order):

- ``"cell-centered"``: every component has shape ``m`` (points ``a + (i + 1/2) h``);
- ``"nodal"``: every component has shape ``m + 1`` (points ``a + i h``);
- ``"staggered"``: component k has shape ``m + e_k``, nodal along axis k and cell-centred along
  the others (the MAC grid of FAIR's elastic regulariser).

Everything here uses array-API operations only and is differentiable by the backends; the few
size-dependent constants (interpolation indices and weights) are built on the host. The one
exception is :func:`fair_jacobian_determinant`, FAIR's det ∇y for its count of folded cells: a
diagnostic after the solve, computed on the host in NumPy.

Reference: J. Modersitzki, *FAIR: Flexible Algorithms for Image Registration*, SIAM 2009, §3.2
(grids), ch. 8 (regularisers on their grids) and ch. 9 (nonparametric registration: the grid
transfer P, multilevel prolongation); FAIR's ``stg2center``, ``nodal2center`` and ``MLIR``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import array_api_compat
import numpy as np

from multireg import _checks
from multireg.grid import Domain

__all__ = [
    "KINDS",
    "fair_jacobian_determinant",
    "grid_shape",
    "grid_size",
    "identity_grid",
    "jacobian_determinant",
    "merge",
    "prolong",
    "split",
    "to_cell_centers",
    "to_cell_centers_adjoint",
]

KINDS = ("cell-centered", "nodal", "staggered")


# ---------------------------------------------------------------------------------- checks


def _check_domain(domain: Any, name: str = "domain") -> None:
    if not isinstance(domain, Domain):
        raise TypeError(f"{name} must be a Domain, not {type(domain).__name__}")


def _check_kind(kind: Any) -> None:
    if not isinstance(kind, str) or kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, KINDS))}; got {kind!r}")


def _namespace(name: str, x: Any) -> Any:
    """The array namespace of ``x``, after checking (statically) that it is a real float array."""
    if not array_api_compat.is_array_api_obj(x):
        raise TypeError(f"{name} must be an array, not {type(x).__name__}")
    xp = array_api_compat.array_namespace(x)
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(f"{name} must have a real floating dtype, not {x.dtype}")
    return xp


# ---------------------------------------------------------------------------------- layout


def grid_shape(domain: Domain, kind: str, component: int) -> tuple[int, ...]:
    """Array shape of one component on the grid ``kind`` (see the module docstring)."""
    _check_domain(domain)
    _check_kind(kind)
    if isinstance(component, bool) or not isinstance(component, int):
        raise TypeError(f"component must be an int, not {type(component).__name__}")
    if not 0 <= component < domain.dim:
        raise ValueError(f"component must be in 0..{domain.dim - 1}, got {component}")
    if kind == "cell-centered":
        return domain.m
    if kind == "nodal":
        return tuple(v + 1 for v in domain.m)
    return tuple(v + (j == component) for j, v in enumerate(domain.m))


def grid_size(domain: Domain, kind: str) -> int:
    """Length of the stacked vector ``y``: the sum of the d component sizes."""
    _check_domain(domain)
    return sum(math.prod(grid_shape(domain, kind, k)) for k in range(domain.dim))


def _split(y: Any, domain: Domain, kind: str, name: str) -> tuple:
    xp = _namespace(name, y)
    _check_domain(domain)
    size = grid_size(domain, kind)
    if y.ndim != 1 or y.shape[0] != size:
        raise ValueError(
            f"{name} must be a 1-D vector of length {size} (a {kind} grid function on m = "
            f"{domain.m}), got shape {tuple(y.shape)}"
        )
    parts, start = [], 0
    for k in range(domain.dim):
        shape = grid_shape(domain, kind, k)
        stop = start + math.prod(shape)
        parts.append(xp.reshape(y[start:stop], shape))
        start = stop
    return tuple(parts)


def split(y: Any, domain: Domain, kind: str) -> tuple:
    """The d components of the stacked vector ``y``, each shaped ``grid_shape(domain, kind, k)``."""
    return _split(y, domain, kind, "y")


def merge(components: Sequence[Any]) -> Any:
    """The stacked vector of the components (each flattened in C order): the inverse of split."""
    if not isinstance(components, (tuple, list)) or not components:
        raise TypeError("components must be a non-empty tuple or list of arrays")
    xp = array_api_compat.array_namespace(*components)
    return xp.concat([xp.reshape(c, (-1,)) for c in components])


def identity_grid(
    domain: Domain, kind: str, xp: Any = None, *, dtype: Any = None, device: Any = None
) -> Any:
    """The identity map ``y = x`` on the grid ``kind``, as a stacked vector.

    Component k holds the k-th coordinate of its grid's points (``Domain.cell_centers``,
    ``Domain.nodes`` or ``Domain.staggered``). Default namespace NumPy, default dtype float64.
    """
    _check_domain(domain)
    _check_kind(kind)
    if kind == "staggered":
        grids = domain.staggered(xp, dtype=dtype, device=device)
        columns = [g[:, k] for k, g in enumerate(grids)]
    else:
        points = domain.cell_centers if kind == "cell-centered" else domain.nodes
        x = points(xp, dtype=dtype, device=device)
        columns = [x[:, k] for k in range(domain.dim)]
    return merge(columns)


# ---------------------------------------------------------------------- stencil helpers


def _along(axis: int, index: Any, ndim: int) -> tuple:
    """An index tuple selecting ``index`` along ``axis`` and everything along the other axes."""
    return (slice(None),) * axis + (index,) + (slice(None),) * (ndim - axis - 1)


def _zero_slab(xp: Any, u: Any, axis: int) -> Any:
    shape = tuple(1 if j == axis else s for j, s in enumerate(u.shape))
    return xp.zeros(shape, dtype=u.dtype, device=array_api_compat.device(u))


def _diff(u: Any, axis: int, h: float) -> Any:
    """Forward differences ``(u[i+1] - u[i]) / h`` along ``axis`` (n values give n - 1)."""
    hi, lo = _along(axis, slice(1, None), u.ndim), _along(axis, slice(None, -1), u.ndim)
    return (u[hi] - u[lo]) / h


def _diff_adjoint(z: Any, axis: int, h: float) -> Any:
    """The transpose of :func:`_diff`: ``(z[i-1] - z[i]) / h`` with ``z[-1] = z[n-1] = 0``."""
    xp = array_api_compat.array_namespace(z)
    zero = _zero_slab(xp, z, axis)
    return (xp.concat([zero, z], axis=axis) - xp.concat([z, zero], axis=axis)) / h


def _mean(u: Any, axis: int) -> Any:
    """Averages of neighbours ``(u[i] + u[i+1]) / 2`` along ``axis`` (n values give n - 1)."""
    hi, lo = _along(axis, slice(1, None), u.ndim), _along(axis, slice(None, -1), u.ndim)
    return 0.5 * (u[hi] + u[lo])


def _mean_adjoint(w: Any, axis: int) -> Any:
    """The transpose of :func:`_mean`: ``(w[i-1] + w[i]) / 2`` with ``w[-1] = w[n-1] = 0``."""
    xp = array_api_compat.array_namespace(w)
    zero = _zero_slab(xp, w, axis)
    return 0.5 * (xp.concat([zero, w], axis=axis) + xp.concat([w, zero], axis=axis))


def _central(u: Any, axis: int, h: float) -> Any:
    """Derivative at the same points: central differences inside, one-sided at both ends."""
    xp = array_api_compat.array_namespace(u)
    n = u.ndim
    first = (u[_along(axis, slice(1, 2), n)] - u[_along(axis, slice(0, 1), n)]) / h
    inner = (u[_along(axis, slice(2, None), n)] - u[_along(axis, slice(None, -2), n)]) / (2 * h)
    last = (u[_along(axis, slice(-1, None), n)] - u[_along(axis, slice(-2, -1), n)]) / h
    return xp.concat([first, inner, last], axis=axis)


# ----------------------------------------------------------------- transfer to cell centres


def _centre_axes(kind: str, component: int, dim: int) -> tuple[int, ...]:
    """The axes along which a component is nodal (and is averaged onto the cell centres)."""
    if kind == "nodal":
        return tuple(range(dim))
    if kind == "staggered":
        return (component,)
    return ()


def to_cell_centers(y: Any, domain: Domain, kind: str) -> Any:
    """``P y``: the transformation at the cell centres, shape ``(prod(m), d)``, C order.

    Staggered component k is averaged over the two faces of each cell along axis k; nodal
    components are averaged over the 2^d corners of each cell (one pairwise mean per axis);
    cell-centred vectors are only rearranged. Linear and matrix-free (FAIR's ``stg2center`` and
    ``nodal2center``, ch. 9); its transpose is :func:`to_cell_centers_adjoint`.
    """
    _check_kind(kind)
    components = _split(y, domain, kind, "y")
    xp = array_api_compat.array_namespace(y)
    columns = []
    for k, u in enumerate(components):
        for axis in _centre_axes(kind, k, domain.dim):
            u = _mean(u, axis)
        columns.append(xp.reshape(u, (-1,)))
    return xp.stack(columns, axis=1)


def to_cell_centers_adjoint(z: Any, domain: Domain, kind: str) -> Any:
    """``Pᵀ z`` for points ``z`` of shape ``(prod(m), d)``: a stacked vector on the grid ``kind``.

    Each cell's value is shared out, half to each face (staggered) or 1/2^d to each corner
    (nodal), and the shares of neighbouring cells add up.
    """
    xp = _namespace("z", z)
    _check_domain(domain)
    _check_kind(kind)
    if tuple(z.shape) != (domain.n, domain.dim):
        raise ValueError(
            f"z must have shape (prod(m), d) = {(domain.n, domain.dim)}, got {tuple(z.shape)}"
        )
    components = []
    for k in range(domain.dim):
        u = xp.reshape(z[:, k], domain.m)
        for axis in _centre_axes(kind, k, domain.dim):
            u = _mean_adjoint(u, axis)
        components.append(u)
    return merge(components)


# ---------------------------------------------------------------------------- prolongation


def _linear_weights(
    n_coarse: int, n_fine: int, nodal: bool, boundary: str = "linear"
) -> tuple[np.ndarray, ...]:
    """Indices ``i0, i1`` and weights ``t``: ``u_fine = (1 - t) u[i0] + t u[i1]`` along one axis.

    Coarse and fine points cover the same interval, at ``i / m`` (nodal) or ``(i + 1/2) / m``
    (cell-centred); fine points beyond the outer coarse points are extrapolated linearly
    (``boundary="linear"``), so linear functions are reproduced exactly, or given the outer
    coarse value (``"constant"``, FAIR's mfPu). A single coarse point gives the constant.
    """
    m_coarse, m_fine = (n_coarse - 1, n_fine - 1) if nodal else (n_coarse, n_fine)
    offset = 0.0 if nodal else 0.5
    s = (np.arange(n_fine) + offset) * (m_coarse / m_fine) - offset  # coarse index coordinate
    if n_coarse == 1:
        zero = np.zeros(n_fine, dtype=np.int64)
        return zero, zero, np.zeros(n_fine)
    i0 = np.clip(np.floor(s), 0, n_coarse - 2).astype(np.int64)
    t = s - i0
    if boundary == "constant":
        t = np.clip(t, 0.0, 1.0)
    return i0, i0 + 1, t


def prolong(
    y_coarse: Any, coarse: Domain, fine: Domain, kind: str, *, boundary: str = "linear"
) -> Any:
    """The transformation ``y_coarse`` on ``coarse`` carried over to the grid of ``fine``.

    FAIR's multilevel prolongation (MLIR, ch. 9): ``y_fine = x_fine + P (y_coarse - x_coarse)``,
    the displacement interpolated and the fine identity grid added back. P is tensor-product
    linear interpolation along each axis between the coarse and fine grids of the same kind.
    Over the outer half cells of cell-centred axes (where no coarse point lies beyond the fine
    point) ``boundary`` decides:

    - ``"linear"`` (default): linear extrapolation, so P reproduces linear functions and an
      affine map prolongs to the same affine map (a pre-registration is carried over exactly);
    - ``"constant"``: the outer coarse displacement is copied, as FAIR's mfPu does (its
      expandCj sets the first and last fine value to the first and last coarse one); an affine
      map then bends in the outer half cells. Use it to reproduce FAIR's MLIR.

    Nodal axes are interpolated (their outer points coincide), so both agree there. An axis
    with a single coarse cell-centred point extends the displacement as a constant. ``fine`` is
    any domain with the same ``omega`` (usually ``m`` doubled).
    """
    xp = _namespace("y_coarse", y_coarse)
    _check_domain(coarse, "coarse")
    _check_domain(fine, "fine")
    if fine.omega != coarse.omega:
        raise ValueError(f"fine.omega {fine.omega} must equal coarse.omega {coarse.omega}")
    _check_kind(kind)
    if not isinstance(boundary, str) or boundary not in ("linear", "constant"):
        raise ValueError(f"boundary must be 'linear' or 'constant'; got {boundary!r}")
    device = array_api_compat.device(y_coarse)
    grid = {"xp": xp, "dtype": y_coarse.dtype, "device": device}
    components = _split(y_coarse, coarse, kind, "y_coarse")
    x_coarse = split(identity_grid(coarse, kind, **grid), coarse, kind)
    itype = xp.__array_namespace_info__().default_dtypes(device=device)["indexing"]
    out = []
    for k, (y_k, x_k) in enumerate(zip(components, x_coarse, strict=True)):
        u = y_k - x_k
        for axis in range(coarse.dim):
            if coarse.m[axis] == fine.m[axis]:
                continue
            nodal = kind == "nodal" or (kind == "staggered" and axis == k)
            extra = 1 if nodal else 0
            i0, i1, t = _linear_weights(
                coarse.m[axis] + extra, fine.m[axis] + extra, nodal, boundary
            )
            shape = tuple(-1 if j == axis else 1 for j in range(coarse.dim))
            t = xp.reshape(xp.asarray(t, dtype=u.dtype, device=device), shape)
            u0 = xp.take(u, xp.asarray(i0, dtype=itype, device=device), axis=axis)
            u1 = xp.take(u, xp.asarray(i1, dtype=itype, device=device), axis=axis)
            u = u0 + t * (u1 - u0)
        out.append(u)
    return identity_grid(fine, kind, **grid) + merge(out)


# -------------------------------------------------------------------- Jacobian determinants


def jacobian_determinant(y: Any, domain: Domain, kind: str) -> Any:
    """``det ∇y`` per cell, shape ``m``.

    The Jacobian ``J[i][k] = ∂y_i/∂x_k`` at each cell centre is discretised by grid:

    - ``"nodal"``: differences of the cell's corners, ``∂_k y_i`` being the mean of the 2^(d-1)
      differences along the cell's edges in direction k. This is the Jacobian of the d-linear
      interpolant at the cell centre (FAIR's ``geometry`` uses the corners too); in 2D it is
      exactly the deformed cell's area over the cell's area.
    - ``"staggered"``: ``∂_k y_k`` is the compact difference of the two faces of the cell;
      ``∂_j y_k`` (j ≠ k) is the central difference, along j, of y_k averaged onto the centres.
    - ``"cell-centered"``: central differences of the centre values.

    Central differences become one-sided in the outer cells, so cell-centred and staggered
    grids need ``m_k >= 2``. Identity gives 1, ``y = s x`` gives ``s^d``, any affine ``y = A x + b``
    gives ``det A`` exactly; a folded map gives values ``<= 0``.
    """
    _check_kind(kind)
    components = _split(y, domain, kind, "y")
    if kind != "nodal" and min(domain.m) < 2:
        raise ValueError(f"domain.m must be >= 2 along every axis for {kind} y, got {domain.m}")
    d, h = domain.dim, domain.h
    J = [[None] * d for _ in range(d)]
    for i, u in enumerate(components):
        for k in range(d):
            if kind == "nodal":
                g = _diff(u, k, h[k])
                for axis in range(d):
                    if axis != k:
                        g = _mean(g, axis)
            elif kind == "staggered" and k == i:
                g = _diff(u, i, h[i])
            else:
                centred = _mean(u, i) if kind == "staggered" else u
                g = _central(centred, k, h[k])
            J[i][k] = g
    if d == 1:
        return J[0][0]
    if d == 2:
        return J[0][0] * J[1][1] - J[0][1] * J[1][0]
    return (
        J[0][0] * (J[1][1] * J[2][2] - J[1][2] * J[2][1])
        - J[0][1] * (J[1][0] * J[2][2] - J[1][2] * J[2][0])
        + J[0][2] * (J[1][0] * J[2][1] - J[1][1] * J[2][0])
    )


def fair_jacobian_determinant(y: Any, domain: Domain, kind: str) -> np.ndarray:
    """``det ∇y`` per cell as FAIR's geometry tools compute it, shape ``m`` (NumPy, float64).

    FAIR (``geometry(yn, m, 'Jac')`` on ``yn = grid2grid(y, m, kind, 'nodal')``; Burger,
    Modersitzki & Ruthotto, SISC 35, 2013) measures the deformed cell itself:

    1. ``y`` is carried to the nodes. A staggered component k is averaged onto the nodes along
       every other axis, a cell-centred one along every axis; the two outer nodes of such an
       axis are extrapolated linearly (``1.5 u[0] - 0.5 u[1]``), as grid2grid's ``extend``.
    2. The deformed cell is split into triangles (2D: 4 around the mean of its corners) or
       tetrahedra (3D: 24, through the face and cell centres); their signed volumes add up to
       the volume of the deformed cell, which divided by the cell's volume is det ∇y. In 2D
       this is the shoelace area of the deformed quadrilateral.

    It differs from :func:`jacobian_determinant` (the default everywhere in
    multireg: the Jacobian at the cell centre from compact and central differences on the
    unknown's own grid) by the averaging onto the nodes, which smooths a staggered map: on a
    hands elastic map with α too small multireg counted 33 folded cells where FAIR counts 23.
    The default reads the unknowns where they are; this one reproduces FAIR's fold count.
    Both give ``det A`` for an affine ``y = A x + b`` and 1 for the identity.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, KINDS))}; got {kind!r}")
    if not isinstance(domain, Domain):
        raise TypeError(f"domain must be a Domain, not {type(domain).__name__}")
    host = np.asarray(_checks.to_host(y), dtype=np.float64)
    parts = split(host, domain, kind)
    if kind != "nodal" and min(domain.m) < 2:
        raise ValueError(f"domain.m must be >= 2 along every axis for {kind} y, got {domain.m}")
    d = domain.dim
    nodal = []
    for k, u in enumerate(parts):
        for axis in range(d):
            if kind == "cell-centered" or (kind == "staggered" and axis != k):
                u = _extend(u, axis)
        nodal.append(u)
    corners = np.stack(nodal, axis=-1)  # (*(m + 1), d)
    volume = _cell_volumes(corners, d)
    return volume / math.prod(domain.h)


def _extend(u: np.ndarray, axis: int) -> np.ndarray:
    """Centres to nodes along ``axis``: neighbour means inside, linear extrapolation outside."""
    u = np.moveaxis(u, axis, 0)
    out = np.concatenate(
        [1.5 * u[:1] - 0.5 * u[1:2], 0.5 * (u[1:] + u[:-1]), 1.5 * u[-1:] - 0.5 * u[-2:-1]]
    )
    return np.moveaxis(out, 0, axis)


def _corner(P: np.ndarray, offsets: tuple[int, ...]) -> np.ndarray:
    """The corner ``offsets`` (0 or 1 per axis) of every cell: shape (*m, d)."""
    return P[tuple(slice(o, P.shape[a] - 1 + o) for a, o in enumerate(offsets))]


def _cell_volumes(P: np.ndarray, d: int) -> np.ndarray:
    """Signed volumes of the deformed cells whose corners are the nodal points ``P``."""
    if d == 2:
        A, B, C, D = (_corner(P, o) for o in ((0, 0), (1, 0), (0, 1), (1, 1)))
        e, f = D - A, C - B  # the diagonals: area = ½ e × f
        return 0.5 * (e[..., 0] * f[..., 1] - e[..., 1] * f[..., 0])
    corner = {o: _corner(P, o) for o in np.ndindex(2, 2, 2)}
    M = sum(corner.values()) / 8.0
    total = 0.0
    for axis in range(3):
        a, b = (j for j in range(3) if j != axis)
        for side in (0, 1):
            loop = []  # the face's corners in a cycle
            for ia, ib in ((0, 0), (1, 0), (1, 1), (0, 1)):
                o = [0, 0, 0]
                o[axis], o[a], o[b] = side, ia, ib
                loop.append(corner[tuple(o)])
            F = sum(loop) / 4.0
            # orient every face outwards: the cycle (a, b) is positive about +axis for
            # axis 0 and 2 and negative for axis 1 (a, b = 0, 2), and side 0 faces -axis
            sign = (1.0 if axis != 1 else -1.0) * (1.0 if side else -1.0)
            for p, q in zip(loop, loop[1:] + loop[:1], strict=True):
                u, v, w = p - M, q - M, F - M
                total = total + sign * np.einsum("...i,...i->...", u, np.cross(v, w)) / 6.0
    return total
