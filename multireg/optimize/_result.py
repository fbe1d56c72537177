"""What every optimiser returns: a status code, the solution and the iteration history."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Record", "Result", "Status"]


class Status(enum.Enum):
    """Why an optimiser stopped. Only ``CONVERGED`` is a success."""

    CONVERGED = "converged"
    """A stopping rule held: FAIR's (STOP1 ∧ STOP2 ∧ STOP3) or STOP4, or a step failed where its
    model promised only a round-off decrease of J (x minimises J to working precision)."""
    MAX_ITERATIONS = "max_iterations"
    """``max_iter`` iterations were done without convergence (FAIR's STOP5)."""
    LINE_SEARCH_FAILED = "line_search_failed"
    """The line search found no sufficient decrease; the last iterate is kept."""
    STEP_TOO_SMALL = "step_too_small"
    """The trust region rejected every step it tried; the last iterate is kept."""
    NOT_FINITE = "not_finite"
    """The objective or its gradient is NaN or infinite at the current iterate."""


@dataclass(frozen=True)
class Record:
    """One row of the iteration history (FAIR's ``his`` table).

    Row ``k`` describes the iterate after ``k`` iterations; row 0 is the starting point.
    """

    iteration: int
    fun: float
    """J at the iterate."""
    grad_norm: float
    """‖∇J‖ at the iterate."""
    step_norm: float
    """‖x_k − x_{k−1}‖ (0 in row 0)."""
    step_length: float
    """Line-search step length t; for the trust region, the radius of the accepted step."""
    cg_iterations: int
    """Inner (P)CG iterations spent on this step (0 for dense solves and L-BFGS)."""
    time: float
    """Seconds since the solver started."""


@dataclass(frozen=True)
class Result:
    """The outcome of an optimiser. Non-convergence is reported here, never raised."""

    x: Any
    """The last accepted iterate, a 1-D array of the objective's backend."""
    fun: float
    grad_norm: float
    iterations: int
    nfev: int
    """Objective evaluations (value, or value and gradient), line-search trials included."""
    status: Status
    message: str
    history: tuple[Record, ...] = ()
    timings: Mapping[str, float] = field(default_factory=dict)
    """Seconds: ``total``, ``objective`` (value and gradient at the iterates) and ``step``
    (curvature, linear solve and line search or trust-region trials)."""

    @property
    def success(self) -> bool:
        return self.status is Status.CONVERGED
