"""Backend-neutral optimisers: Gauss–Newton, Newton(–CG), trust region, L-BFGS.

Solvers are pure functions ``solver(objective, x0, *, options) -> Result``; the objective comes
from :func:`least_squares` or :func:`general`, which take the derivatives from a backend. Every
solver uses FAIR's stopping rules and reports non-convergence in ``Result.status``.
"""

from multireg.optimize._objective import (
    DENSE_MAX,
    LinearOperator,
    Objective,
    general,
    least_squares,
)
from multireg.optimize._result import Record, Result, Status
from multireg.optimize.cg import CGResult, SteihaugResult, cg, steihaug_cg
from multireg.optimize.lbfgs import lbfgs
from multireg.optimize.linesearch import LineSearchResult, armijo
from multireg.optimize.newton import gauss_newton, newton
from multireg.optimize.trust_region import trust_region

__all__ = [
    "DENSE_MAX",
    "CGResult",
    "LineSearchResult",
    "LinearOperator",
    "Objective",
    "Record",
    "Result",
    "Status",
    "SteihaugResult",
    "armijo",
    "cg",
    "gauss_newton",
    "general",
    "lbfgs",
    "least_squares",
    "newton",
    "steihaug_cg",
    "trust_region",
]
