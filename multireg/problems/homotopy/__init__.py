"""Homotopy in the image scale θ: follow the minimiser w*(θ) from smooth images to sharp ones.

The objective is J(w, θ) = D(T_θ(y(w, x)), R_θ(x)): template and reference are both cubic
B-splines with the same smoothing weight θ (:func:`multireg.spline_coefficients`, FAIR's moments
regulariser in index units), y(w, x) a parametric map, D a distance (SSD by default,
ψ = ½·hd·‖r‖²). Large θ gives blobs whose J has few local minimisers; θ → 0 gives the sharp
images. Along a path of minimisers ∇_w J(w*(θ), θ) = 0, so differentiating in θ gives

    H · dw*/dθ = −∂²J/∂w∂θ,        H = ∇²_w J(w*(θ), θ).

Both H and the mixed derivative are exact, from the backend's automatic differentiation; the mixed
derivative is the gradient in w of θ·∂J/∂θ (reverse over reverse), so it differentiates through the
coefficient solves of *both* T_θ and R_θ (θ enters the kernels as a 0-d array).

Parametrisation. The path is followed in s = log θ: dw*/ds = θ·dw*/dθ = −H⁻¹·θ∂θ∇_w J. θ acts
multiplicatively (the study's schedule is geometric, 40 values from 1e3 to 1e-3), a uniform step
in s is exactly such a schedule, and step sizes in s are relative, which is what the adaptive
control needs. The Euler step in s differs from the study's Euler step in θ only by the factor
Δs vs e^Δs − 1 along the same tangent; on the hands benchmark both give predictor errors of the
same size (median ratio 1.07 over the 40-value schedule; θ-steps are better near θ → 0, where
w*(θ) becomes linear in θ, s-steps at intermediate θ). The predictor error falls like Δs² (tested).

Predictor–corrector (Allgower & Georg, *Numerical Continuation Methods*, Springer 1990, ch. 2
and 6; Watson, Cherry, Lang, Ruthotto, "Applications of Automatic Differentiation in Image
Registration", arXiv 2411.02806, the homotopy experiment):

- predictor ``"tangent"``: one explicit Euler step w_k + Δs·dw*/ds(s_k) from the corrected point,
  with H exact (``hessian="exact"``, the study's method) or Gauss–Newton (``"gauss-newton"``,
  H_GN = J_rᵀ W J_r, for SSD hd·J_rᵀJ_r — scaled like the objective; the study's code used
  J_rᵀJ_r for an objective without the ½, half the consistent matrix). The mixed derivative is
  exact in both cases.
- ``"secant"``: extrapolation through the last two corrected points (no derivatives; second order
  like the tangent once two points exist).
- ``"none"``: warm start from the last corrected point, i.e. classical multiscale continuation
  in θ (FAIR's MSIR-style scale space, no grid coarsening).
- corrector: ``"newton"`` (exact Hessian, Armijo line search), ``"trust-region"`` (exact Hessian,
  Steihaug CG) or ``"gauss-newton"`` from :mod:`multireg.optimize`, stopped by the gradient test
  ‖∇_w J‖ ≤ ``tol``·(1 + |J(w_id, θ)|) only (FAIR's STOP3 with Jstop at the identity). When
  the line search (trust region) fails only because the decrease ½gᵀH⁻¹g that is left is below
  the rounding error of J (64·eps·|J|), the point is reported as converged to working precision.

Step control (``step="adaptive"``, beyond the published method). After each corrected step the
predictor's error δ is measured as the RMS distance, in grid cells, between the predicted and the
corrected map, δ = (mean_i Σ_k ((y(w_pred, x_i) − y(w*, x_i))_k / h_k)²)^½, a scale that is the
same for every transformation. For a predictor of order p (p = 2 for tangent and secant, 1 for
none) δ ≈ C·Δs^p, and with the corrector's iteration count n the deceleration factor is
(Allgower & Georg §6.1, steplength adaptation by asymptotic expansion)

    f = max((δ/δ₀)^(1/p), n/n₀),     δ₀ = ``target_error``, n₀ = ``target_iterations``.

The step is rejected (and retried from the same point with Δs/clip(f, 2, 4)) when the corrector
did not converge within 2·n₀ + 1 iterations (beyond that f > 2 anyway, so a trial stops there) or
f > 2; otherwise it is accepted and the next step is Δs/max(f, ½) (at most doubling). Rejected
trials count in the total of corrector iterations.

Folds. A path of minimisers can end: at a fold (limit point) the minimiser merges with a saddle
and H becomes singular, the tangent grows without bound and no step, however small, is accepted.
Arclength continuation (Allgower & Georg ch. 1–2) would turn around the fold onto the saddle
branch, which is useless for minimisation; multiscale methods simply step over it. Here, once the
step falls below ``min_step`` (in log θ) the path jumps: the corrector starts from the last
point at θ·e^(−min_step) (no prediction, the full ``max_corrector_iter``) and the minimiser it
descends to starts a new branch (``PathPoint.jump``), followed again from the initial step size.
With fixed steps every step is taken whatever its error, so folds are crossed the same way.

Schedule from the data (``theta_range=None``, the default). The study's schedule, θ from 1e3
to 1e-3, was chosen on the hands at m = 32; θ acts on the spline coefficients in index units, so
the same θ smooths a 32² image far more, relative to its content, than a 256² one, and on other
images θ = 1e3 can leave template and reference as near-featureless bumps. There the minimiser
of J(·, θ_max) is not determined by the data (the Hessian is close to singular in some
direction, e.g. the rotation of an almost round bump), and which branch the path follows is an
accident. The default θ_max is therefore the largest θ at which the smoothed images still
determine w: for each image I ∈ {T, R} the information matrix G_I(θ) = ∇²_w D(I_θ(y(w, ·)),
I_θ)|_{w = identity} (the Hessian of registering the image to itself, for SSD hd·J_rᵀJ_r, the
Fisher information of w under Gaussian noise) is compared with the map metric
M = mean_x (∂y/∂w)ᵀ diag(h)⁻² (∂y/∂w), which makes the comparison independent of how w is
parametrised; λ_I(θ) is the smallest generalised eigenvalue of (G_I(θ), M), the curvature of J per
squared grid cell of motion in the least determined direction. θ_max is the largest θ (on a
half-decade grid from θ_min up to 1e6, interpolated in log θ) with min_I λ_I(θ)/λ_I(θ_min) ≥
``THETA_INFORMATION`` = 1e-3: the smoothing may cost at most three decades of curvature in the
weakest direction; beyond that the starting problem is conditioned a thousand times worse than
the sharp one and its minimiser is decided by the rounding and the start rather than the data.
The smoothing is FAIR's spline smoothing (Modersitzki, *FAIR*, SIAM 2009, §3.6), whose weight
FAIR and the study (Watson et al., above) leave to the user; this rule makes it a property of the
data. Since θ is in index units (a smoothing length ∝ θ^¼ cells), the same image on a grid twice
as fine gets a θ_max about 2⁴ = 16 times larger (tested), where a fixed θ_max would smooth it 2×
less (for smooth content; an image with detail at the finer scale, such as the hands at 128²
against their 32² reduction, gets less than the factor 4⁴ = 256, since its fine detail is part
of what smoothing removes). On the hands at m = 32 the rule gives θ_max ≈ 2100 (affine),
on the blob, text and natural images of bench/homotopy.py 1000–4000 at m = 32, i.e. about the
study's 1e3 at the study's size. The threshold was set on the bench's table 4: with 1e-2
(θ_max ≈ 330) the affine paths from the identity succeeded on 17 of 28 rotated images, with 1e-3
on 19, with the fixed 1e3 on 20. No θ_max helps the large rotations (90°–170°) from the identity:
they lie outside the identity's branch at every θ, which is what ``starts`` is for. Cost: two
p×p Hessians per grid value, 2·19 in all. For matrix-free transformations (more than
``optimize.DENSE_MAX`` parameters) the rule is not evaluated and θ_max = 1e3. ``theta_range``
or ``thetas`` override it.

Folds and bifurcations (beyond the published method). At every accepted point the smallest
generalised eigenvalue λ_min of (∇²_w J, M) is recorded (dense Hessians only). A branch of
minimisers ends where λ_min reaches 0 (a fold, or a pitchfork where the minimiser becomes a
saddle). Two events are recorded in ``HomotopyResult.events``: ``"indefinite"``, λ_min ≤ 0 at
an accepted point (the corrector's gradient test holds at a saddle: the point is not a minimiser),
and ``"fold"``, the Hessian at the middle of a step, (w_k + w_k+1)/2 at θ = (θ_k·θ_k+1)^½, has
λ_min ≤ 0 while both ends are minimisers, and the step, retraced from its start by adaptive
tangent steps (predictor error ≤ 0.1 cells, down to 1/64 of the step), either jumps past the end
of its branch or ends at a different minimiser; or an adaptive step of the path itself jumped
past the end of its branch. Where the branch is smooth the middle point lies within O(Δs²) of it,
where λ_min > 0, so the retrace (the expensive part) runs only on steps whose middle is not convex:
the branch turns sharply there, as it does near a fold, and the retrace tells a sharp turn from a
change of branch. After an event the final
point is a local minimiser (or a saddle) of J(·, θ_min) reached by a path that changed branches,
not necessarily the global minimiser; ``folded`` says so, and the message too.

Several starts (``starts=``). The branch followed is decided at θ_max; ``starts=n`` traces n paths
from rotations by 360°·k/n about the domain's centre (2D rigid and affine), ``starts=[w, ...]``
from given parameters, and returns the path with the lowest final J; every path is in
``branches``.

Every kernel is built once per configuration (backend, transformation, distance, domain), with the
images, grid and θ as arguments, and compiled by the backend (``jax.jit`` traces it once).

The package: :mod:`.path` (the entry point :func:`homotopy`: checks, the start, the best of
several paths), :mod:`.tracer` (the tracer's steps: corrector, tangent, predictor, step control,
fold and bifurcation events), :mod:`.kernels` (the compiled kernels of J(w, θ), λ_min, θ_max from
the data), :mod:`.options` (the checks of the options) and :mod:`.results`.
"""

from multireg.problems.homotopy.kernels import THETA_INFORMATION, THETA_MIN
from multireg.problems.homotopy.options import TRANSFORMS
from multireg.problems.homotopy.path import CORRECTORS, HESSIANS, PREDICTORS, STEPS, homotopy
from multireg.problems.homotopy.results import HomotopyResult, PathEvent, PathPoint, ThetaChoice

__all__ = [
    "CORRECTORS",
    "HESSIANS",
    "PREDICTORS",
    "STEPS",
    "THETA_INFORMATION",
    "THETA_MIN",
    "TRANSFORMS",
    "HomotopyResult",
    "PathEvent",
    "PathPoint",
    "ThetaChoice",
    "homotopy",
]
