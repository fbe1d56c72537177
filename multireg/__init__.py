"""multireg: variational image registration and coupled inverse problems.

The algorithms are written once against the Python array API; torch and JAX adapters supply the
derivatives. ``import multireg`` imports neither framework: a backend's framework is imported the
first time that backend is used.
"""

from multireg._backend import (
    Backend,
    available_backends,
    get_backend,
    resolve_backend,
    set_backend,
    use_backend,
)
from multireg.grid import Domain, Level, multilevel, restrict

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "Domain",
    "Level",
    "available_backends",
    "get_backend",
    "multilevel",
    "resolve_backend",
    "restrict",
    "set_backend",
    "use_backend",
]
