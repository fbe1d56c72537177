"""ITK interoperability: transform files and displacement fields that ITK, ANTs, SimpleITK and
elastix-based tools load, and back.

Conventions (ITK Software Guide, "Transforms" and "Image" (physical space); ANTs'
``antsApplyTransforms``):

* ITK's physical space is LPS; NIfTI's world (``sform``/``qform``, and multireg's world frame of a
  NIfTI image, :mod:`multireg.io`) is RAS. A world point ``x`` (RAS) is the ITK point
  ``p = F x`` with ``F = diag(−1, −1, 1)`` (2D: ``diag(−1, −1)``, as ITK's NIfTI reader does
  for 2D files). ITK image axis k is multireg's array axis k (``GetImageFromArray`` reverses the
  NumPy axes; :func:`to_sitk` and :func:`from_sitk` take care of it).
* An ITK transform maps points of the fixed (output) image to the moving (input) image, as
  multireg's ``y`` maps reference to template; a linear transform ``p ↦ M (p − c) + c + t``
  is therefore ``y = A x + b`` with ``A = F M F`` and ``b = F (t + c − M c)``.
* A displacement field (ITK's ``DisplacementFieldTransform``, ANTs' ``*Warp.nii.gz``) holds
  ``u = y(x) − x`` at the voxel centres of the fixed grid, as LPS vectors; in NIfTI it is a 5-D
  image of shape ``(m1, m2, m3 or 1, 1, d)`` with intent ``NIFTI_INTENT_VECTOR`` (1007) and the
  grid's RAS affine; ITK reads the vector components as they are stored (no RAS/LPS flip),
  which is why they are stored in LPS.

Transform files: ``.tfm``/``.txt`` (the "Insight Transform File V1.0" text format, written
here without any dependency) and ``.h5``/``.mat`` (through SimpleITK, ``pip install
"multireg[bench]"``). Reading a text file with an ``AffineTransform``,
``MatrixOffsetTransformBase`` or ``TranslationTransform`` needs nothing; any other linear ITK
transform (Euler, Similarity, Versor...) and the binary formats are read through SimpleITK.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from multireg import io
from multireg.grid import Domain
from multireg.transforms import Affine
from multireg.workflow import maps
from multireg.workflow.maps import Map

__all__ = [
    "from_sitk",
    "read_displacement",
    "read_map",
    "read_transform",
    "to_sitk",
    "write_displacement",
    "write_transform",
]

_TEXT = (".tfm", ".txt")
_BINARY = (".h5", ".hdf5", ".mat")
_HEADER = "#Insight Transform File V1.0"
_OBLIQUE_RTOL = 1e-6


def _flip(d: int) -> np.ndarray:
    """``F``: RAS ↔ LPS (its own inverse)."""
    return np.diag([-1.0, -1.0, 1.0][:d])


def _sitk():
    try:
        import SimpleITK
    except ImportError:
        raise ImportError(
            'this needs SimpleITK: pip install "multireg[bench]" (or pip install SimpleITK)'
        ) from None
    return SimpleITK


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


# ---------------------------------------------------------------------------- images


def to_sitk(data: Any, domain: Domain) -> Any:
    """A SimpleITK image of ``data`` (shape ``m``, or ``(*m, d)`` for a vector image) on
    ``domain`` with ITK's geometry: origin ``F (a + h/2)``, spacing ``h``, direction ``F``."""
    sitk = _sitk()
    if not isinstance(domain, Domain):
        raise TypeError(f"domain must be a Domain, not {type(domain).__name__}")
    data = np.asarray(data)
    d = domain.dim
    vector = data.shape == (*domain.m, d) and data.ndim == d + 1
    if not vector and data.shape != domain.m:
        raise ValueError(f"data has shape {data.shape}, but the domain has m = {domain.m}")
    axes = (*range(d - 1, -1, -1), d) if vector else tuple(range(d - 1, -1, -1))
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(data, axes)), isVector=vector)
    F = _flip(d)
    first = np.asarray(domain.lower) + np.asarray(domain.h) / 2
    img.SetOrigin(tuple(float(v) for v in F @ first))
    img.SetSpacing(tuple(float(v) for v in domain.h))
    img.SetDirection(tuple(float(v) for v in F.ravel()))
    return img


def from_sitk(image: Any) -> tuple[np.ndarray, Domain]:
    """``(data, domain)`` of a SimpleITK image whose axes are aligned with the world axes
    (its RAS direction ``F D`` diagonal with entries ±1; axes pointing the other way are
    reversed, as :mod:`multireg.io` does for NIfTI). Vector images give ``(*m, d)`` arrays
    (components as stored, not converted)."""
    sitk = _sitk()
    d = image.GetDimension()
    ras = _flip(d) @ np.asarray(image.GetDirection(), dtype=np.float64).reshape(d, d)
    signs = np.diag(ras)
    if np.max(np.abs(ras - np.diag(signs))) > _OBLIQUE_RTOL or not np.allclose(np.abs(signs), 1):
        raise ValueError(
            "the image's axes are rotated or permuted against the world axes (oblique); "
            "resample it to an axis-aligned grid first"
        )
    data = sitk.GetArrayFromImage(image)
    vector = image.GetNumberOfComponentsPerPixel() > 1
    axes = (*range(d - 1, -1, -1), d) if vector else tuple(range(d - 1, -1, -1))
    data = np.transpose(data, axes)
    m = data.shape[:d]
    h = np.asarray(image.GetSpacing(), dtype=np.float64)
    origin = _flip(d) @ np.asarray(image.GetOrigin(), dtype=np.float64)  # RAS, voxel 0
    first = np.where(signs < 0, origin - (np.asarray(m) - 1) * h, origin)
    for k in np.flatnonzero(signs < 0):
        data = np.flip(data, axis=int(k))
    lower = first - h / 2
    omega = tuple(float(v) for a, hk, mk in zip(lower, h, m) for v in (a, a + mk * hk))
    return np.ascontiguousarray(data), Domain(omega, m)


# ----------------------------------------------------------------------- transforms


def _linear(transform_or_result: Any) -> tuple[np.ndarray, np.ndarray]:
    mp = _as_map(transform_or_result)
    if not mp.is_linear:
        raise ValueError(
            "only a linear map (translation, rigid, affine) is an ITK linear transform; write a "
            "nonparametric or B-spline map with write_displacement"
        )
    return mp.linear_part()


def write_transform(
    path: str | os.PathLike,
    transform_or_result: Any,
    *,
    overwrite: bool = False,
) -> Path:
    """Write a linear map as an ITK ``AffineTransform_double_d_d`` (centre 0), atomically.

    ``.tfm``/``.txt``: ITK's text format; ``.h5``/``.mat``: through SimpleITK. The map
    (anything :func:`multireg.workflow.apply.as_map` takes) must be linear; its ``y = A x + b``
    (RAS) is stored as ``M = F A F``, ``t = F b`` (LPS).
    """
    path = Path(path)
    suffix = _suffix(path)
    if suffix not in _TEXT + _BINARY:
        raise ValueError(
            f"{path}: an ITK transform file ends in {', '.join(_TEXT + _BINARY)}, not {suffix!r}"
        )
    A, b = _linear(transform_or_result)
    d = A.shape[0]
    F = _flip(d)
    M, t = F @ A @ F, F @ b
    if suffix in _BINARY:
        sitk = _sitk()
        tx = sitk.AffineTransform(d)
        tx.SetMatrix(tuple(float(v) for v in M.ravel()))
        tx.SetTranslation(tuple(float(v) for v in t))
        with io.atomic_path(path, overwrite=overwrite) as tmp:
            sitk.WriteTransform(tx, str(tmp))
        return path
    numbers = " ".join(repr(float(v)) for v in (*M.ravel(), *t))
    text = (
        f"{_HEADER}\n#Transform 0\nTransform: AffineTransform_double_{d}_{d}\n"
        f"Parameters: {numbers}\nFixedParameters: {' '.join(['0'] * d)}\n"
    )
    with io.atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


_TYPE = re.compile(
    r"^(AffineTransform|MatrixOffsetTransformBase|TranslationTransform)_(double|float)_(\d)_(\d)$"
)


def _parse_text(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(M, t, c)`` of a text file holding one affine, matrix-offset or translation transform;
    None for any other transform type (left to SimpleITK)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read as an ITK transform file ({err})") from None
    if not lines or not lines[0].startswith("#Insight Transform File"):
        raise ValueError(f"{path}: not an ITK transform file (no '{_HEADER}' header)")
    fields: dict[str, list[str]] = {}
    for line in lines[1:]:
        key, sep, value = line.partition(":")
        if sep and not line.startswith("#"):
            fields.setdefault(key.strip(), []).append(value.strip())
    kinds = fields.get("Transform", [])
    if len(kinds) != 1:
        return None  # a composite or several transforms: SimpleITK decides
    match = _TYPE.match(kinds[0])
    if match is None:
        return None
    name, _, d, d2 = match.groups()
    d = int(d)
    try:
        params = np.array([float(v) for v in fields["Parameters"][0].split()])
        fixed = np.array([float(v) for v in fields.get("FixedParameters", [""])[0].split()])
    except (KeyError, ValueError) as err:
        raise ValueError(f"{path}: malformed ITK transform parameters ({err})") from None
    if name == "TranslationTransform":
        if params.size != d:
            raise ValueError(f"{path}: a {d}D translation needs {d} parameters")
        return np.eye(d), params, np.zeros(d)
    if int(d2) != d or params.size != d * d + d:
        raise ValueError(f"{path}: {kinds[0]} needs {d * d + d} parameters, got {params.size}")
    c = fixed if fixed.size == d else np.zeros(d)
    return params[: d * d].reshape(d, d), params[d * d :], c


def _read_sitk(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    sitk = _sitk()
    try:
        tx = sitk.ReadTransform(str(path))
    except RuntimeError as err:
        raise ValueError(f"{path}: cannot read as an ITK transform ({err})") from None
    if tx.GetTransformEnum() == sitk.sitkComposite:
        composite = sitk.CompositeTransform(tx)
        if composite.GetNumberOfTransforms() != 1:
            raise ValueError(
                f"{path}: holds {composite.GetNumberOfTransforms()} transforms; "
                "only a single linear transform can be read"
            )
        tx = composite.GetNthTransform(0)
    tx = tx.Downcast()
    d = tx.GetDimension()
    if isinstance(tx, sitk.TranslationTransform):
        return np.eye(d), np.asarray(tx.GetOffset(), dtype=np.float64), np.zeros(d)
    if not all(hasattr(tx, k) for k in ("GetMatrix", "GetTranslation", "GetCenter")):
        raise ValueError(
            f"{path}: holds a {tx.GetName()}, not a linear transform; read a displacement "
            "field with read_displacement"
        )
    M = np.asarray(tx.GetMatrix(), dtype=np.float64).reshape(d, d)
    t = np.asarray(tx.GetTranslation(), dtype=np.float64)
    c = np.asarray(tx.GetCenter(), dtype=np.float64)
    return M, t, c


def read_transform(path: str | os.PathLike) -> Map:
    """A linear ITK transform file as a :class:`~multireg.Map` (an :class:`Affine`).

    ITK's ``p ↦ M (p − c) + c + t`` (LPS) becomes ``y = A x + b`` with ``A = F M F``,
    ``b = F (t + c − M c)`` (RAS, multireg's world frame).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    suffix = _suffix(path)
    if suffix not in _TEXT + _BINARY:
        raise ValueError(f"{path}: an ITK transform file ends in {', '.join(_TEXT + _BINARY)}")
    parsed = _parse_text(path) if suffix in _TEXT else None
    M, t, c = parsed if parsed is not None else _read_sitk(path)
    d = M.shape[0]
    if d not in (2, 3):
        raise ValueError(f"{path}: a {d}D transform; multireg registers 2D and 3D images")
    F = _flip(d)
    A, b = F @ M @ F, F @ (t + c - M @ c)
    return Map(None, Affine(d), np.concatenate([A, b[:, None]], axis=1).ravel())


# --------------------------------------------------------------- displacement fields


def write_displacement(
    path: str | os.PathLike,
    transform_or_result: Any,
    *,
    like: Any = None,
    dtype: Any = np.float64,
    overwrite: bool = False,
) -> Path:
    """Write ``u = y(x) − x`` at the cell centres of the reference grid as an ITK/ANTs
    displacement field (NIfTI vector image, LPS components; see the module docstring).

    ``like``: the grid (a Domain or an io.Image), default the map's domain. Any map that
    :func:`multireg.workflow.apply.as_map` takes: parametric maps are sampled on the grid too.
    ``dtype``: float64 (default) or float32 (ANTs' usual).
    """
    nib = io.import_nibabel()

    path = Path(path)
    if _suffix(path) not in (".nii", ".nii.gz"):
        raise ValueError(f"{path}: a displacement field is written as .nii or .nii.gz")
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    mp = _as_map(transform_or_result)
    if like is None:
        if mp.domain is None:
            raise ValueError("like is needed: the map has no reference grid to sample it on")
        grid = mp.domain
    elif isinstance(like, Domain):
        grid = like
    elif isinstance(like, io.Image):
        grid = like.domain
    else:
        raise TypeError(f"like must be a Domain, an io.Image or None, not {type(like).__name__}")
    d = grid.dim
    x = grid.cell_centers()
    u = (mp(x) - x) @ _flip(d)  # LPS components (F is symmetric)
    u = u.reshape(*grid.m, d)
    shape = (*grid.m, *([1] if d == 2 else []), 1, d)
    affine = np.eye(4)
    affine[:d, :d] = np.diag(grid.h)
    affine[:d, 3] = np.asarray(grid.lower) + np.asarray(grid.h) / 2
    img = nib.Nifti1Image(u.reshape(shape).astype(dtype), affine)
    img.header.set_intent("vector")
    img.header.set_xyzt_units("mm")
    with io.atomic_path(path, overwrite=overwrite) as tmp:
        nib.save(img, str(tmp))
    return path


def read_displacement(path: str | os.PathLike) -> Map:
    """An ITK/ANTs displacement field (NIfTI vector image, LPS components) as a
    :class:`~multireg.Map` on its grid: ``y(x) = x + u(x)`` (RAS).

    The grid must be axis-aligned (a diagonal affine; flipped axes are reversed as
    :mod:`multireg.io` does). Shapes ``(m1, m2, m3, 1, 3)``, ``(m1, m2, 1, 1, 2)``.
    """
    nib = io.import_nibabel()

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.get_fdata(dtype=np.float64))
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as err:  # nibabel raises many types for a corrupt file
        raise ValueError(f"{path}: cannot read as NIfTI ({err})") from None
    if data.ndim != 5 or data.shape[3] != 1 or data.shape[4] not in (2, 3):
        raise ValueError(
            f"{path}: a displacement field has shape (m1, m2, m3, 1, d) (ITK/ANTs), got "
            f"{data.shape}"
        )
    d = data.shape[4]
    if d == 2:
        if data.shape[2] != 1:
            raise ValueError(f"{path}: 2 components but a 3D grid {data.shape[:3]}")
        u = data[:, :, 0, 0, :]
    else:
        u = data[:, :, :, 0, :]
    if not np.all(np.isfinite(u)):
        raise ValueError(f"{path}: contains NaN or Inf")
    linear = affine[:d, :d]
    s = np.diag(linear)
    if np.max(np.abs(linear - np.diag(s))) > _OBLIQUE_RTOL * np.max(np.abs(s)) or np.any(s == 0):
        raise ValueError(f"{path}: the grid is oblique (rotated or sheared); resample it first")
    m = u.shape[:d]
    h = np.abs(s)
    t = affine[:d, 3]
    first = np.where(s < 0, t + (np.asarray(m) - 1) * s, t)
    for k in np.flatnonzero(s < 0):
        u = np.flip(u, axis=int(k))
    lower = first - h / 2
    omega = tuple(float(v) for a, hk, mk in zip(lower, h, m) for v in (a, a + mk * hk))
    return Map(Domain(omega, m), displacement=u @ _flip(d))


def read_map(path: str | os.PathLike) -> Map:
    """The map in an ITK file: a NIfTI displacement field (``.nii``, ``.nii.gz``) by
    :func:`read_displacement`, any other file as a transform by :func:`read_transform`."""
    name = Path(path).name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return read_displacement(path)
    return read_transform(path)


def _as_map(transform_or_result: Any) -> Map:
    """:func:`multireg.workflow.apply.as_map`, which imports this module (the arrow points from
    apply to itk, so the writers here read their argument through :mod:`maps` directly)."""
    return maps.as_map(transform_or_result, read_file=read_map)
