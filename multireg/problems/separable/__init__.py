"""The separable least-squares engine: problems linear in f and nonlinear in w.

A separable problem is

    Φ(w, f) = ½ ‖F(w, f)‖²,    F(w, f) = [ r(w, f) ; L f ],

where the data residual ``r(w, f)`` (shape ``(N, q)``: one row per frame) is affine in f, and
row k depends on w only through ``w[k]`` (shape ``(N, p)``: p parameters per frame), and the
regulariser ``L`` is linear (any weights, e.g. √α and quadrature, are folded into r and L). The
engine never forms A(w) = ∂r/∂f: it reaches A(w) v and A(w)ᵀ u by ``bk.jvp`` / ``bk.vjp`` in f.

What it provides:

* :func:`solve_linear`: the inner regularised least squares f(w) = argmin_f Φ(w, f), by CG on
  the normal equations (AᵀA + LᵀL) f = −Aᵀ r(w, 0) or by LSQR on the stacked system
  [A; L] f ≈ −[r(w, 0); 0] (Paige & Saunders 1982), warm-started, matrix-free.
* :func:`varpro`: Gauss–Newton on the reduced function Φ(w, f(w)) (variable projection, Golub
  & Pereyra 1973, 2003), with the reduced Jacobian J̃ = ∂F/∂w + ∂F/∂f · df/dw from

  - ``"implicit"``: implicit differentiation of the normal equations,
    df/dw = −N⁻¹ ∂_w(∇_f Φ), N = J_fᵀJ_f: one inner solve per product, memory independent of
    the inner iteration count (the mixed derivative ∂_w ∇_f Φ by jvp-of-vjp);
  - ``"unrolled"``: forward-mode differentiation through a fixed number of CG iterations
    (Watson, Cherry & Lang, arXiv:2411.02806, "Diff All");
  - ``"kaufman"``: Kaufman's (1975) approximation J̃ ≈ P⊥ ∂F/∂w, which drops the term of the
    mixed derivative that is multiplied by the residual (O'Leary & Rust 2013, §2);
  - ``"partial"``: ∂F/∂w with f frozen (df/dw := 0; the paper's "No Diff").

  The gradient of the reduced objective is the partial one, J_wᵀF (Golub & Pereyra's envelope
  result: it is exact when the inner solve is), for every variant. The implicit and Kaufman
  Gauss–Newton matrices are either formed (P batched solves) or applied matrix-free
  (``matrix_free=True``: one inner solve per product J̃v or J̃ᵀu, the outer system by PCG).
* :func:`bcd`: block coordinate descent (one inner solve in f, then one Gauss–Newton step in w
  with the per-frame p×p blocks solved by batched Cholesky).
* :func:`lap`: linearise and project (Herring, Nagy & Ruthotto 2018): the joint Gauss–Newton
  step with δw eliminated frame by frame, the projected system in δf solved by CG or LSQR;
  optional bounds on f (projected Gauss–Newton).
* :func:`full_gauss_newton`: Gauss–Newton on the joint (w, f), the joint normal equations
  solved by block-Jacobi preconditioned CG (or LSQR on the column-scaled stacked system).

The block-diagonal Gauss–Newton matrix in w (p×p per frame) is formed with p forward products,
one per parameter index for all frames at once (the frames' columns do not overlap), and solved
by a batched Cholesky factorisation. Kernels are compiled once per (backend, residual,
regulariser) with ``bk.jit``; data are their arguments, never captured.

References: G. H. Golub and V. Pereyra, SIAM J. Numer. Anal. 10 (1973) 413–432 and Inverse
Problems 19 (2003) R1–R26; L. Kaufman, BIT 15 (1975) 49–57; D. P. O'Leary and B. W. Rust,
Comput. Optim. Appl. 54 (2013) 579–593; J. L. Herring, J. G. Nagy and L. Ruthotto, "LAP: a
linearize and project method for solving inverse problems with coupled variables",
arXiv:1705.09992 (2018); C. C. Paige and M. A. Saunders, ACM Trans. Math. Softw. 8 (1982)
43–71 (LSQR); M. R. Hestenes and E. Stiefel, J. Res. Nat. Bur. Standards 49 (1952) 409–436 (CG).

The package: :mod:`.problem` (the problem, its kernels, its result, the parameter maps),
:mod:`.inner` (the inner linear solves), :mod:`.reduced` (the reduced Jacobian and the batched
step in w), :mod:`.projection` (VarPro), :mod:`.block_descent` (BCD) and :mod:`.joint` (LAP and
the full Gauss–Newton). The problems built on the engine use its internal API:
:func:`.problem.assemble_parameters`, :func:`.problem.free_parameters`, :func:`.inner.batched_cg`,
:func:`.inner.check_tolerances`, :func:`.joint.check_bounds` and :func:`.projection.joint_check`.
"""

from multireg.problems.separable.block_descent import bcd
from multireg.problems.separable.inner import InnerSolve, solve_linear
from multireg.problems.separable.joint import full_gauss_newton, lap
from multireg.problems.separable.problem import (
    INNER_SOLVERS,
    JACOBIANS,
    SeparableProblem,
    SeparableResult,
)
from multireg.problems.separable.projection import varpro
from multireg.problems.separable.reduced import cholesky_solve, reduced_jacobian

__all__ = [
    "INNER_SOLVERS",
    "JACOBIANS",
    "InnerSolve",
    "SeparableProblem",
    "SeparableResult",
    "bcd",
    "cholesky_solve",
    "full_gauss_newton",
    "lap",
    "reduced_jacobian",
    "solve_linear",
    "varpro",
]
