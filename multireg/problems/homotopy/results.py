"""What :func:`multireg.problems.homotopy.homotopy` returns: the path's points, its events
(folds, indefinite points), how θ_max was chosen, and the result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from multireg.optimize import Status
from multireg.transforms import Transform


@dataclass(frozen=True)
class PathPoint:
    """One corrected point (θ_k, w_k) of the path. Arrays are NumPy copies (small vectors)."""

    theta: float
    w: np.ndarray
    fun: float
    """J(w_k, θ_k)."""
    grad_norm: float
    """‖∇_w J(w_k, θ_k)‖."""
    iterations: int
    """Corrector iterations of the accepted trial at θ_k."""
    predictor_error: float
    """RMS distance in grid cells between the predicted and the corrected map (NaN at θ_0)."""
    status: Status
    """The corrector's status at θ_k."""
    rejected: int = 0
    """Trials at smaller steps rejected before this one (adaptive steps only)."""
    jump: bool = False
    """The adaptive step found the end of a branch (a fold) and jumped here by warm start."""
    tangent: np.ndarray | None = None
    """dw*/d(log θ) at (θ_k, w_k), when the tangent predictor computed it."""
    min_eigenvalue: float = math.nan
    """Smallest generalised eigenvalue of (∇²_w J, M) at (θ_k, w_k), M the map metric (J per
    squared grid cell of motion); ≤ 0: not a minimiser. NaN for matrix-free Hessians."""


@dataclass(frozen=True)
class PathEvent:
    """A place where the path left its branch of minimisers (see the module docstring)."""

    kind: str
    """``"indefinite"`` (λ_min ≤ 0 at an accepted point) or ``"fold"`` (the step crossed a
    region where λ_min ≤ 0, or an adaptive step jumped past the end of the branch)."""
    theta_from: float
    theta_to: float
    eigenvalue: float
    """λ_min where the event was seen (NaN for an adaptive jump without a dense Hessian)."""


@dataclass(frozen=True)
class ThetaChoice:
    """How θ_max was chosen: ``"data"`` (the information rule), ``"given"`` or ``"fallback"``."""

    method: str
    theta_max: float
    thetas: tuple[float, ...] = ()
    """The grid of θ on which the information was evaluated (``"data"`` only)."""
    information: tuple[float, ...] = ()
    """min over T, R of λ_I(θ)/λ_I(θ_min) on that grid."""


@dataclass(frozen=True)
class HomotopyResult:
    """What :func:`homotopy` returns.

    ``w``, ``warped`` (T_θ(y(w, x)) at the final θ, shape ``m``) belong to the backend that
    computed them; ``distance`` is J(w, θ) at the final θ (which is ``theta``: the last value of
    the schedule, unless an adaptive path stopped early). ``path`` holds the accepted points;
    ``corrector_iterations`` counts every corrector iteration, rejected trials included.
    ``timings``: seconds ``total``, ``corrector`` (coefficients, solves), ``predictor``
    (tangents, extrapolation, error estimates), ``folds`` (λ_min at each point, the middle of each
    step and the retrace of suspicious steps) and ``choose θ`` (θ_max from the data; with several
    starts computed once, and counted in every branch's ``total``). ``events``, ``folded`` and
    ``min_eigenvalues`` describe the branch structure of the path (module docstring);
    ``theta_choice`` how θ_max was set.
    """

    w: Any
    warped: Any
    distance: float
    theta: float
    path: tuple[PathPoint, ...]
    corrector_iterations: int
    rejected: int
    status: Status
    message: str
    transform: Transform
    backend: str
    timings: dict = field(default_factory=dict)
    events: tuple[PathEvent, ...] = ()
    """Folds and bifurcations met on the path (empty: one branch of minimisers throughout)."""
    theta_choice: ThetaChoice | None = None
    branches: tuple[HomotopyResult, ...] = ()
    """With ``starts``: every traced path (this result is the one with the lowest final J)."""
    best_branch: int = 0
    """Index of this path in ``branches``."""

    @property
    def success(self) -> bool:
        """The path reached the last θ, every corrector along it converged, and the final point
        is not a saddle (λ_min > 0 where it was computed)."""
        return (
            self.status is Status.CONVERGED
            and all(p.status is Status.CONVERGED for p in self.path)
            and not self.path[-1].min_eigenvalue <= 0
        )

    @property
    def folded(self) -> bool:
        """The path changed branches (a fold or bifurcation, see ``events``): its end is a
        critical point reached by continuation, not necessarily the global minimiser."""
        return bool(self.events)

    @property
    def min_eigenvalues(self) -> np.ndarray:
        return np.array([p.min_eigenvalue for p in self.path])

    @property
    def thetas(self) -> np.ndarray:
        return np.array([p.theta for p in self.path])

    @property
    def ws(self) -> np.ndarray:
        """The corrected parameters, shape (number of points, n_params)."""
        return np.stack([p.w for p in self.path])

    @property
    def funs(self) -> np.ndarray:
        return np.array([p.fun for p in self.path])

    @property
    def grad_norms(self) -> np.ndarray:
        return np.array([p.grad_norm for p in self.path])

    @property
    def iterations(self) -> np.ndarray:
        """Corrector iterations of the accepted trial at each θ_k."""
        return np.array([p.iterations for p in self.path])

    @property
    def predictor_errors(self) -> np.ndarray:
        return np.array([p.predictor_error for p in self.path])
