"""Registration with intensity dynamics: motion and a linear intensity model, jointly.

Frames d_k at times t_k (contrast-enhanced MRI: a contrast agent arrives and washes out while
the patient moves), motions y_k = y(w_k, ·) and an intensity model I_k(x; c) linear in its
coefficients c. The problem (DESIGN.md §1; the dynamics study of Watson, Cherry & Lang,
arXiv:2411.02806, code ``solve_Dynamics.ipynb``) is

    min_{w, c}  ½ Σ_k h ‖d_k(y(w_k, x)) − I_k(x; c)‖² + ½ ‖L c‖²  (+ ½ Σ_k β ‖∇ u_k‖²)

on the cell-centred grid x of ``omega`` (h the cell volume: FAIR's midpoint quadrature), each
frame evaluated through its cubic-spline image model (coefficients computed once; FAIR §3.4).
It is linear in c and nonlinear in w, and frame k's residual depends on w only through w_k: an
instance of the separable engine :mod:`multireg.separable` (Golub & Pereyra 1973, 2003), like
super-resolution.

Intensity models (each linear in its unknowns; :class:`IntensityModel` is the protocol):

* :class:`Regions` (the study's model): I_k = d_ref + Σ_r α_{k,r} M_r(x) with given region
  masks (boolean or partial-volume weights), unknown time curves α and a temporal smoothness
  regulariser.
* :class:`Basis`: I_k(x) = Σ_j c_j(x) φ_j(t_k) with a temporal basis φ (cubic B-splines in time,
  :func:`bspline_basis`; a tracer-kinetic basis, :func:`kinetic_basis`; the leading temporal
  modes of the data, ``"pca"``; or a matrix), unknown coefficient maps c_j and a spatial
  regulariser. No masks are needed.

Both work in orthonormalised coordinates (the masks' Gram factor, the basis' QR factor), so the
data part of the linear normal matrix is the identity: its solves are exact (regions) or a few
CG steps (basis); coefficients are mapped back to α and c_j for the user.

Because the model does not depend on w, the data matrix A of the linear part is constant and
the reduced (VarPro) Gauss–Newton matrix has the closed form

    J̃ᵀJ̃ = J_bᵀJ_b − (AᵀJ_b)ᵀ (AᵀA + LᵀL)⁻¹ (AᵀJ_b),

J_b the block-diagonal Jacobian of the warped frames. ``jacobian="projected"`` (the default)
uses it. It equals the engine's ``"implicit"`` and ``"kaufman"`` Jacobians here (the term that
Kaufman drops vanishes when A is constant), at the cost of p forward products per iteration
instead of one per parameter and frame; the engine's variants remain available.

Motions: ``"affine"`` and ``"rigid"`` (FAIR layouts, about the origin of the coordinates) and
``"nonparametric"``: a cubic B-spline displacement on a coarse control grid (the layout of
``multireg.transform("bspline", omega=omega, p=p)``) with a diffusive regulariser on the
control grid appended to its frame's residual rows, so that each frame's rows still depend on
its own parameters only.

Baselines: :func:`frame_by_frame` (each frame registered to the reference by SSD with
:func:`multireg.register`), :func:`fit` (the linear fit at given motions; no registration at
the identity) and :func:`preregister_then_fit`. :func:`kidney_phantom` is a procedural synthetic
kidney DCE series with its truth; :func:`large_motion_phantom` the same in issue 14's regime
(large affine motion, organs near the edge, frames cropped after they moved).

References: G. H. Golub and V. Pereyra, SIAM J. Numer. Anal. 10 (1973) 413–432 and Inverse
Problems 19 (2003) R1–R26; L. Kaufman, BIT 15 (1975) 49–57; J. Modersitzki, FAIR, SIAM 2009;
G. A. Buonaccorsi et al., "Tracer kinetic model-driven registration for dynamic
contrast-enhanced MRI time-series data", Magn. Reson. Med. 58 (2007) 1010–1019 (motion and a
kinetic model, jointly); W. Huizinga et al., "PCA-based groupwise image registration for
quantitative MRI", Med. Image Anal. 29 (2016) 65–78 (temporal modes as the model);
S. P. Sourbron and D. L. Buckley, "Classic models for dynamic contrast-enhanced MRI", NMR
Biomed. 26 (2013) 1004–1027 (the two-compartment model).

The package: :mod:`.models` (the intensity models and their kernels), :mod:`.problem` (motions,
residual, :func:`build` and the input checks), :mod:`.solver` (:func:`solve`, :func:`fit`, the
baselines), :mod:`.search` (the coarse translation search that globalises the per-frame
motions) and :mod:`.phantom` (the synthetic series); every public name is importable from
``multireg.problems.dynamics``.
"""

from multireg.problems.dynamics.models import (
    Basis,
    IntensityModel,
    ModelKernel,
    Regions,
    Setting,
    bspline_basis,
    kinetic_basis,
)
from multireg.problems.dynamics.phantom import (
    KINETICS,
    LARGE_MOTION_PATTERNS,
    Phantom,
    kidney_phantom,
    large_motion_phantom,
    study_aif,
    two_compartment,
)
from multireg.problems.dynamics.problem import (
    COARSE_ITERATIONS,
    FOV_WIDTH,
    JACOBIANS,
    METHODS,
    MODELS,
    MOTIONS,
    Problem,
    build,
)
from multireg.problems.dynamics.search import SEARCH_RADIUS, SEARCH_STARTS
from multireg.problems.dynamics.solver import (
    DynamicsResult,
    FrameByFrame,
    fit,
    frame_by_frame,
    motion_error,
    preregister_then_fit,
    solve,
    varpro_projected,
)

__all__ = [
    "COARSE_ITERATIONS",
    "FOV_WIDTH",
    "JACOBIANS",
    "KINETICS",
    "LARGE_MOTION_PATTERNS",
    "METHODS",
    "MODELS",
    "MOTIONS",
    "SEARCH_RADIUS",
    "SEARCH_STARTS",
    "Basis",
    "DynamicsResult",
    "FrameByFrame",
    "IntensityModel",
    "ModelKernel",
    "Phantom",
    "Problem",
    "Regions",
    "Setting",
    "bspline_basis",
    "build",
    "fit",
    "frame_by_frame",
    "kidney_phantom",
    "kinetic_basis",
    "large_motion_phantom",
    "motion_error",
    "preregister_then_fit",
    "solve",
    "study_aif",
    "two_compartment",
    "varpro_projected",
]
