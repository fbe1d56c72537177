"""The optimisers' kernel helpers, as an internal API for the solvers built on them elsewhere.

Internal: not re-exported by :mod:`multireg` or :mod:`multireg.optimize`, and it changes with
the optimisers. The problems that run their own loops around the optimisers (the corrector and
predictor of :mod:`multireg.problems.homotopy`) follow the optimisers' conventions for their
per-iteration arithmetic:

* :func:`compiled` — ``bk.jit(kernel)``, built once per backend and kernel;
* :func:`host` — a small 1-D array of stacked scalars as Python floats: one device sync;
* :func:`scalar` — a number (a step length, a scale) as a 0-d array of an array's dtype and
  device: data for a compiled kernel, not code (so a new value compiles nothing anew);
* :func:`axpy`, :func:`norm`, :func:`value_and_norm`, :func:`slope_and_norm` — the arithmetic
  the solvers compile.

They are defined in :mod:`multireg.optimize._loop`, next to the loop that uses them: the
bad-input audit (:mod:`multireg.testing.audit`) watches the optimisers' files, that one among
them, for the first call of an optimiser's arithmetic.
"""

from multireg.optimize._loop import (
    axpy,
    compiled,
    host,
    norm,
    scalar,
    slope_and_norm,
    value_and_norm,
)

__all__ = ["axpy", "compiled", "host", "norm", "scalar", "slope_and_norm", "value_and_norm"]
