"""multireg: variational image registration and coupled inverse problems.

The algorithms are written once against the Python array API; torch and JAX adapters supply the
derivatives. ``import multireg`` imports neither framework: a backend's framework is imported the
first time that backend is used.
"""

from multireg import io, optimize
from multireg._backend import (
    Backend,
    available_backends,
    get_backend,
    resolve_backend,
    set_backend,
    use_backend,
)
from multireg._cache import cache_dir, set_cache_dir
from multireg._version import __version__ as __version__
from multireg.distances import MI, NCC, NGF, SSD, Distance, distance
from multireg.grid import Domain, Level, multilevel, restrict
from multireg.interpolation import (
    ImageModel,
    image_model,
    linear_interpolate,
    spline_coefficients,
    spline_interpolate,
)
from multireg.problems import dynamics, separable, superres
from multireg.problems.batch import register_batch
from multireg.problems.homotopy import HomotopyResult, homotopy
from multireg.problems.registration import RegistrationResult, register
from multireg.regularizers import Curvature, Diffusive, Elastic, Regularizer, regularizer
from multireg.transforms import Affine, BSpline, Rigid, Transform, Translation, transform
from multireg.workflow import figures, itk, metrics
from multireg.workflow.apply import Map, apply, transform_points  # the function shadows the module
from multireg.workflow.many import register_many
from multireg.workflow.metrics import evaluate
from multireg.workflow.validate import ValidationReport, validate  # the function shadows the module

__all__ = [
    "MI",
    "NCC",
    "NGF",
    "SSD",
    "Affine",
    "BSpline",
    "Backend",
    "Curvature",
    "Diffusive",
    "Distance",
    "Domain",
    "Elastic",
    "HomotopyResult",
    "ImageModel",
    "Level",
    "Map",
    "RegistrationResult",
    "Regularizer",
    "Rigid",
    "Transform",
    "Translation",
    "ValidationReport",
    "apply",
    "available_backends",
    "cache_dir",
    "distance",
    "dynamics",
    "evaluate",
    "figures",
    "get_backend",
    "homotopy",
    "image_model",
    "io",
    "itk",
    "linear_interpolate",
    "metrics",
    "multilevel",
    "optimize",
    "register",
    "register_batch",
    "register_many",
    "regularizer",
    "resolve_backend",
    "restrict",
    "separable",
    "set_backend",
    "set_cache_dir",
    "spline_coefficients",
    "spline_interpolate",
    "superres",
    "transform",
    "transform_points",
    "use_backend",
    "validate",
]
