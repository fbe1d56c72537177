"""
``read_image(path)`` returns an :class:`Image`: the data as a float64 array of shape ``m`` whose
axis k is domain dimension k (DESIGN.md §4), the domain ``omega`` and what is needed to write an
image back in the same format and geometry. ``write_image``, ``write_json`` and ``write_npz``
write a result. Formats, chosen by the file name's extension:

NIfTI (``.nii``, ``.nii.gz``; needs nibabel, ``pip install "multireg[io]"``)
    The voxel-to-world affine A maps voxel index i (0-based) to the world point A·(i, 1) of the
    voxel's centre (NIfTI-1 standard, ``srow``/``qform``, nibabel's ``img.affine``). When A's
    linear part is diagonal, axis k has spacing ``h_k = |A_kk|`` and ``omega`` is the world
    extent of the voxel grid: ``a_k = min_i (world centre) − h_k/2``, ``b_k = a_k + m_k·h_k``, so
    that the cell centres of ``omega`` are exactly the voxel centres (FAIR's cell-centred grid,
    DESIGN.md §4) and registration parameters are in world units (mm). An axis with negative
    spacing (a flipped axis, e.g. the x axis of a LAS image) is reversed on reading, so that
    the array index grows with the world coordinate, and reversed back on writing (recorded in
    ``Image.flipped``). A linear part with off-diagonal entries (rotated, sheared or permuted
    axes: an *oblique* image) is refused with an error naming the file, because registration
    parameters computed on an axis-aligned box would silently mean something else; with
    ``allow_oblique=True`` the image is read in its own voxel frame instead: axis k has spacing
    ``‖A[:, k]‖`` (the voxel size), ``omega_k = [−h_k/2, (m_k − ½)·h_k]`` (the first voxel's centre
    at 0, axes along the voxel axes, no flips), so the parameters are in that frame, not in world
    coordinates, and ``Image.oblique`` says so. Outputs on the same grid get the input's affine
    and header unchanged, so a round trip reproduces the affine exactly. A 3D file with one
    slice (shape ``(m1, m2, 1)``) is a 2D image; integer data are written back as float32.

PNG, JPEG, TIFF (``.png``, ``.jpg``, ``.jpeg``, ``.tif``, ``.tiff``; needs Pillow)
    Orientation: array row index = first axis x1 (pointing down the image), column index =
    second axis x2 (pointing right): ``data[i1, i2]`` is the pixel in row i1, column i2, as
    NumPy and Pillow store it. (FAIR instead reads ``flipud(imread(file))'``, x2 pointing up;
    :func:`multireg.data.load_fair` follows FAIR.) ``omega = (0, m1·s1, 0, m2·s2)`` with pixel
    spacing ``s`` (default 1, i.e. pixel units). Colour images are converted to grey by the
    luminance of ITU-R BT.601, ``0.299 R + 0.587 G + 0.114 B`` (Pillow's ``convert("L")``
    weights, computed here in float64 without rounding); alpha is dropped; a palette image is
    expanded first. Values keep the file's units (0–255 for 8-bit, 0–65535 for 16-bit). A
    multi-page TIFF is refused. Writing converts back to the input's sample type: 8-bit grey
    for 8-bit and colour inputs (values rounded and clipped to 0–255), 16-bit for 16-bit,
    32-bit float for float TIFFs; JPEG is written at quality 95 (lossy).

NumPy (``.npy``, ``.npz``)
    ``.npy``: the array; ``omega`` in pixel units (or the given spacing). ``.npz``: the entry
    ``image`` (or ``data``, or ``frames`` when reading frames, or the only array), and
    ``omega`` when present; other entries are kept in ``Image.extra`` (e.g. ``times``).

Every file is written atomically through :func:`multireg.io.outputs.atomic_path`.

Errors name the file: :class:`FileNotFoundError` (missing), :class:`ImageReadError` (a
``ValueError``: unreadable or corrupt, unsupported extension, NaN/Inf, empty or constant data,
oblique orientation), :class:`FileExistsError` (an existing output), :class:`ImportError` (an
optional package that the format needs is not installed).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from multireg.grid import Domain
from multireg.io.outputs import atomic_path

__all__ = [
    "FORMATS",
    "Image",
    "ImageReadError",
    "extension_of",
    "format_of",
    "import_nibabel",
    "read_frames",
    "read_image",
    "write_image",
    "write_npz",
]

# extension -> format name; the longest matching suffix wins (".nii.gz" before ".gz")
FORMATS = {
    ".nii": "nifti",
    ".nii.gz": "nifti",
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".npy": "npy",
    ".npz": "npz",
}
_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF"}
# Relative size of an off-diagonal affine entry (to the largest voxel size) that makes an image
# oblique. NIfTI stores the affine in float32, so anything below ~1e-6 is rounding.
_OBLIQUE_RTOL = 1e-5


class ImageReadError(ValueError):
    """An input image cannot be used: unreadable, unsupported, or its values or geometry are."""


@dataclass(frozen=True, eq=False)
class Image:
    """An image read from a file: data, domain, and the geometry to write an output back.

    ``data``: float64, shape ``m`` (2D or 3D), or ``(N, *m)`` when ``frames`` is true.
    ``omega``: the domain ``(a1, b1, a2, b2[, a3, b3])``. ``format``: ``"nifti"``, ``"png"``,
    ``"jpeg"``, ``"tiff"``, ``"npy"`` or ``"npz"``. NIfTI: ``affine`` (4×4 voxel-to-world),
    ``header`` (nibabel's), ``flipped`` (axes reversed on reading), ``oblique`` (read in the voxel
    frame, see the module docstring), ``frame_axis`` (the file's axis holding frames). Pillow
    formats: ``mode`` (Pillow's mode of the file). ``dtype``: the stored sample type.
    ``extra``: other arrays of an ``.npz``.
    """

    data: np.ndarray
    omega: tuple[float, ...]
    format: str
    path: Path | None = None
    affine: np.ndarray | None = None
    header: Any = None
    flipped: tuple[int, ...] = ()
    oblique: bool = False
    mode: str | None = None
    dtype: Any = None
    frames: bool = False
    frame_axis: int | None = None
    extra: Mapping[str, np.ndarray] = field(default_factory=dict)
    frame: str = "pixel"
    """Where ``omega`` comes from: ``"world"`` (a NIfTI affine), ``"voxel"`` (an oblique NIfTI
    read in its voxel frame), ``"stored"`` (an ``.npz``'s ``omega``) or ``"pixel"`` (no
    geometry in the file: pixel units times the given spacing)."""

    @property
    def m(self) -> tuple[int, ...]:
        """The spatial shape (cells per axis)."""
        shape = tuple(int(s) for s in self.data.shape)
        return shape[1:] if self.frames else shape

    @property
    def dim(self) -> int:
        return len(self.m)

    @property
    def domain(self) -> Domain:
        return Domain(self.omega, self.m)

    @property
    def spacing(self) -> tuple[float, ...]:
        return self.domain.h

    def describe(self) -> dict:
        """A JSON-able summary: file, format, shape, omega, spacing, and the affine if any."""
        out = {
            "path": str(self.path) if self.path is not None else None,
            "format": self.format,
            "m": list(self.m),
            "omega": list(self.omega),
            "spacing": list(self.spacing),
            "frame": self.frame,
        }
        if self.frames:
            out["n_frames"] = int(self.data.shape[0])
        if self.affine is not None:
            out["affine"] = np.asarray(self.affine).tolist()
            out["flipped_axes"] = list(self.flipped)
        if self.mode is not None:
            out["mode"] = self.mode
        return out


def format_of(path: str | os.PathLike) -> str:
    """The format of a file from its extension (case-insensitive); ``ValueError`` if unknown."""
    name = Path(path).name.lower()
    for ext in sorted(FORMATS, key=len, reverse=True):
        if name.endswith(ext):
            return FORMATS[ext]
    known = ", ".join(sorted(FORMATS))
    raise ImageReadError(f"{path}: unsupported file extension (supported: {known})")


def extension_of(path: str | os.PathLike) -> str:
    """The recognised extension of ``path`` as written (``.nii.gz`` is one extension)."""
    name = Path(path).name
    for ext in sorted(FORMATS, key=len, reverse=True):
        if name.lower().endswith(ext):
            return name[len(name) - len(ext) :]
    format_of(path)  # raises
    return ""


# ------------------------------------------------------------------------------------ reading


def read_image(
    path: str | os.PathLike,
    *,
    spacing: Iterable[float] | None = None,
    allow_oblique: bool = False,
    check: bool = True,
) -> Image:
    """Read a 2D or 3D image and its domain (formats and conventions: see the module docstring).

    ``spacing``: the pixel size per axis for formats without geometry (PNG, JPEG, TIFF, ``.npy``,
    ``.npz`` without ``omega``); refused for NIfTI, whose geometry is in the file.
    ``allow_oblique``: read an oblique NIfTI in its voxel frame instead of refusing it.
    ``check``: refuse NaN/Inf, empty and constant data (an image one cannot register).
    """
    return _read(path, spacing=spacing, allow_oblique=allow_oblique, check=check, frames=False)


def read_frames(
    path: str | os.PathLike,
    *,
    spacing: Iterable[float] | None = None,
    allow_oblique: bool = False,
    check: bool = True,
) -> Image:
    """Read a stack of frames: ``Image.data`` has shape ``(N, *m)``, ``omega`` is one frame's.

    ``.npy``: an array ``(N, m1, m2[, m3])``, frames first. ``.npz``: the entry ``frames`` (or
    ``data``, ``image``, or the only array), frames first, with ``omega`` and ``times`` when
    present. NIfTI: the last axis holds the frames: a 3D file ``(m1, m2, N)`` is a 2D sequence
    and a 4D file ``(m1, m2, m3, N)`` a 3D one (``(m1, m2, 1, N)``: 2D).
    """
    return _read(path, spacing=spacing, allow_oblique=allow_oblique, check=check, frames=True)


def _read(path, *, spacing, allow_oblique, check, frames) -> Image:
    path = Path(path)
    fmt = format_of(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise ImageReadError(f"{path}: is a folder, not an image file")
    if fmt == "nifti":
        if spacing is not None:
            raise ValueError(f"{path}: spacing applies to images without geometry, not NIfTI")
        image = _read_nifti(path, allow_oblique=allow_oblique, frames=frames)
    else:
        if fmt in _PIL_FORMATS:
            data, mode, dtype = _read_pil(path, fmt)
            if frames:
                raise ImageReadError(f"{path}: a {fmt.upper()} file holds one image, not frames")
            extra: dict = {}
            omega = None
        else:
            data, omega, extra = _read_numpy(path, fmt, frames)
            mode, dtype = None, data.dtype
        if data.dtype.kind not in "biuf":
            raise ImageReadError(f"{path}: holds {data.dtype} values, not real numbers")
        data = np.asarray(data, dtype=np.float64)
        _check_ndim(path, data, frames)
        m = data.shape[1:] if frames else data.shape
        frame = "pixel" if omega is None else "stored"
        if omega is None:
            h = _spacing(path, spacing, len(m))
            omega = tuple(v for hk, mk in zip(h, m) for v in (0.0, hk * mk))
        elif spacing is not None:
            raise ValueError(f"{path}: stores omega; spacing would contradict it")
        image = Image(
            data=data,
            omega=_omega(path, omega, m),
            format=fmt,
            path=path,
            mode=mode,
            dtype=np.dtype(dtype),
            frames=frames,
            extra=extra,
            frame=frame,
        )
    if check:
        _check_values(path, image.data, frames)
    return image


def _spacing(path, spacing, d) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * d
    h = tuple(float(s) for s in spacing)
    if len(h) == 1:
        h = h * d
    if len(h) != d or not all(math.isfinite(s) and s > 0 for s in h):
        raise ValueError(f"spacing must be {d} positive numbers for {path}, got {spacing!r}")
    return h


def _omega(path, omega, m) -> tuple[float, ...]:
    try:
        return Domain(tuple(float(v) for v in np.ravel(omega)), tuple(m)).omega
    except (TypeError, ValueError) as err:
        raise ImageReadError(f"{path}: invalid omega {np.ravel(omega).tolist()}: {err}") from None


def _check_ndim(path, data, frames) -> None:
    want = (3, 4) if frames else (2, 3)
    if data.ndim not in want:
        what = "a stack of 2D or 3D frames" if frames else "a 2D or 3D image"
        raise ImageReadError(f"{path}: expected {what}, got an array of shape {data.shape}")


def _check_values(path, data, frames) -> None:
    if data.size == 0:
        raise ImageReadError(f"{path}: the image is empty (shape {data.shape})")
    spatial = data.shape[1:] if frames else data.shape
    if min(spatial) < 2:
        raise ImageReadError(f"{path}: needs at least 2 cells along every axis, got {spatial}")
    if not np.all(np.isfinite(data)):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        raise ImageReadError(f"{path}: contains {bad} NaN or Inf value(s)")
    if np.ptp(data) == 0:
        raise ImageReadError(f"{path}: the image is constant ({data.flat[0]:g} everywhere)")


def _read_numpy(path, fmt, frames):
    try:
        if fmt == "npy":
            return np.load(path, allow_pickle=False), None, {}
        with np.load(path, allow_pickle=False) as z:
            entries = {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError) as err:
        raise ImageReadError(f"{path}: cannot read as {fmt}: {err}") from None
    except Exception as err:  # zipfile.BadZipFile and the like: a corrupt file
        raise ImageReadError(f"{path}: cannot read as {fmt}: {err}") from None
    omega = entries.pop("omega", None)
    order = ("frames", "data", "image") if frames else ("image", "data")
    key = next((k for k in order if k in entries), None)
    if key is None:
        if len(entries) != 1:
            raise ImageReadError(
                f"{path}: cannot tell which entry is the image; name it "
                f"{' or '.join(repr(k) for k in order)} (entries: {sorted(entries)})"
            )
        key = next(iter(entries))
    data = entries.pop(key)
    return data, omega, entries


def _read_pil(path, fmt):
    try:
        from PIL import Image as PILImage
        from PIL import UnidentifiedImageError
    except ImportError:
        raise ImportError(
            f'reading {fmt.upper()} files needs Pillow: pip install "multireg[io]"'
        ) from None
    try:
        with PILImage.open(path) as im:
            if getattr(im, "n_frames", 1) > 1:
                raise ImageReadError(
                    f"{path}: has {im.n_frames} pages; multi-page images are not supported "
                    "(save the frames as .npy or NIfTI)"
                )
            mode = im.mode
            im.load()
            data = _grey(im)
    except ImageReadError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise ImageReadError(f"{path}: cannot read as {fmt.upper()}: {err}") from None
    return data, mode, data.dtype


def _grey(im) -> np.ndarray:
    """The pixel values as a 2D array; colour to luminance (BT.601), alpha dropped."""
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("1", "L", "I", "F") or im.mode.startswith("I;"):
        a = np.asarray(im)
        return a.astype(np.uint8) if a.dtype == bool else a
    if im.mode == "LA":
        return np.asarray(im)[..., 0]
    if im.mode not in ("RGB", "RGBA", "RGBX"):
        im = im.convert("RGB")
    rgb = np.asarray(im)[..., :3].astype(np.float64)
    return rgb @ np.array([0.299, 0.587, 0.114])


def import_nibabel():
    """The nibabel module, or an ImportError that says how to install it (NIfTI needs it)."""
    try:
        import nibabel
    except ImportError:
        raise ImportError('reading NIfTI files needs nibabel: pip install "multireg[io]"') from None
    return nibabel


def _read_nifti(path, *, allow_oblique, frames) -> Image:
    nib = import_nibabel()
    try:
        img = nib.load(str(path))
        data = np.asarray(img.get_fdata(dtype=np.float64))
        dtype = np.dtype(img.get_data_dtype())
        affine = np.array(img.affine, dtype=np.float64)
    except Exception as err:  # nibabel raises many types for a corrupt file
        raise ImageReadError(f"{path}: cannot read as NIfTI: {err}") from None
    frame_axis = None
    if frames:
        if data.ndim not in (3, 4):
            raise ImageReadError(
                f"{path}: frames need a 3D (m1, m2, N) or 4D (m1, m2, m3, N) file, "
                f"got shape {data.shape}"
            )
        frame_axis = data.ndim - 1
        data = np.moveaxis(data, -1, 0)
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
    else:
        while data.ndim > 3 and data.shape[-1] == 1:
            data = data[..., 0]
        if data.ndim == 3 and data.shape[2] == 1:
            data = data[:, :, 0]
        if data.ndim not in (2, 3):
            raise ImageReadError(f"{path}: expected a 2D or 3D image, got shape {data.shape}")
    m = data.shape[1:] if frames else data.shape
    d = len(m)
    linear = affine[:3, :3]
    scale = float(np.max(np.abs(linear)))
    if scale == 0 or not np.all(np.isfinite(affine)):
        raise ImageReadError(f"{path}: the voxel-to-world affine is degenerate:\n{affine}")
    off = linear - np.diag(np.diag(linear))
    oblique = bool(np.max(np.abs(off)) > _OBLIQUE_RTOL * scale) or bool(
        np.any(np.abs(np.diag(linear)[:d]) <= _OBLIQUE_RTOL * scale)
    )
    flipped: tuple[int, ...] = ()
    if oblique:
        if not allow_oblique:
            raise ImageReadError(
                f"{path}: the voxel axes are rotated, sheared or permuted relative to the world "
                "axes (an oblique affine); registration on an axis-aligned domain would ignore "
                "that. Resample it to an axis-aligned grid, or pass allow_oblique=True "
                "(--allow-oblique) to register in the voxel frame"
            )
        h = np.linalg.norm(linear, axis=0)[:d]
        omega = tuple(v for hk, mk in zip(h, m) for v in (-hk / 2, (mk - 0.5) * hk))
    else:
        s = np.diag(linear)[:d]
        t = affine[:d, 3]
        flipped = tuple(k for k in range(d) if s[k] < 0)
        h = np.abs(s)
        first = np.where(s < 0, t + (np.asarray(m) - 1) * s, t)  # the lowest voxel centre
        lower = first - h / 2
        omega = tuple(v for a, hk, mk in zip(lower, h, m) for v in (a, a + mk * hk))
        for k in flipped:
            data = np.flip(data, axis=k + 1 if frames else k)
    return Image(
        data=np.ascontiguousarray(data),
        omega=_omega(path, omega, m),
        format="nifti",
        path=path,
        affine=affine,
        header=img.header.copy(),
        flipped=flipped,
        oblique=oblique,
        dtype=dtype,
        frames=frames,
        frame_axis=frame_axis,
        frame="voxel" if oblique else "world",
    )


def write_image(
    path: str | os.PathLike,
    data: Any,
    like: Image | None = None,
    *,
    omega: Iterable[float] | None = None,
    overwrite: bool = False,
    protect: Iterable[Any] = (),
) -> Path:
    """Write ``data`` (shape ``m``) as an image in the format of ``path``'s extension.

    Geometry: that of ``like`` when its grid has the same shape (NIfTI: its affine and header,
    exactly; flipped axes reversed back), else the domain ``omega`` (default ``like.omega``, else
    pixel units): NIfTI gets the diagonal affine of ``omega`` (keeping ``like``'s flips), an
    ``.npz`` stores ``omega``. Sample type: ``like``'s (see the module docstring); without
    ``like``, float32 NIfTI/TIFF, 8-bit PNG/JPEG (rounded, clipped to 0–255), float64 NumPy.
    Never writes over ``like.path`` or a path in ``protect``; an existing file needs
    ``overwrite``. Returns the path written.
    """
    path = Path(path)
    fmt = format_of(path)
    data = np.asarray(data)
    if data.dtype.kind not in "biuf":
        raise TypeError(f"data must hold real numbers, not {data.dtype}")
    data = np.asarray(data, dtype=np.float64)
    same_grid = like is not None and tuple(data.shape) == like.m
    if omega is None:
        omega = like.omega if like is not None else _pixel_omega(data.shape)
    omega = Domain(tuple(float(v) for v in omega), data.shape).omega
    writer = _WRITERS[fmt]
    protect = (*protect, *([like] if like is not None else []))
    with atomic_path(path, overwrite=overwrite, protect=protect) as tmp:
        writer(tmp, data, like if same_grid else None, like, omega)
    return path


def _pixel_omega(shape) -> tuple[float, ...]:
    return tuple(v for m in shape for v in (0.0, float(m)))


def _write_npy(tmp: Path, data, like, like_any, omega) -> None:
    with open(tmp, "wb") as fh:
        np.save(fh, data)


def _write_npz(tmp: Path, data, like, like_any, omega) -> None:
    extra = dict(like.extra) if like is not None else {}
    with open(tmp, "wb") as fh:
        np.savez(fh, image=data, omega=np.asarray(omega), **extra)


def _write_pil(tmp: Path, data, like, like_any, omega) -> None:
    fmt = format_of(tmp)
    try:
        from PIL import Image as PILImage
    except ImportError:
        raise ImportError(
            f'writing {fmt.upper()} files needs Pillow: pip install "multireg[io]"'
        ) from None
    if data.ndim != 2:
        raise ValueError(f"{fmt.upper()} holds 2D images; got shape {data.shape}")
    mode = like_any.mode if like_any is not None and like_any.mode is not None else "L"
    if mode == "F" or (like_any is None and fmt == "tiff"):
        if fmt != "tiff":
            raise ValueError(f"float images can be written as TIFF, not {fmt.upper()}")
        out = PILImage.fromarray(data.astype(np.float32), mode="F")
    elif mode.startswith("I;16") or mode == "I":
        if fmt == "jpeg":
            raise ValueError("JPEG holds 8-bit images; write 16-bit data as PNG or TIFF")
        out = PILImage.fromarray(np.clip(np.rint(data), 0, 65535).astype(np.uint16))
    else:
        out = PILImage.fromarray(np.clip(np.rint(data), 0, 255).astype(np.uint8))
    options = {"quality": 95} if fmt == "jpeg" else {}
    with open(tmp, "wb") as fh:
        out.save(fh, format=_PIL_FORMATS[fmt], **options)


def _write_nifti(tmp: Path, data, like, like_any, omega) -> None:
    nib = import_nibabel()
    nifti_like = like_any if like_any is not None and like_any.format == "nifti" else None
    header, dtype = None, np.dtype(np.float32)
    if like is not None and like is nifti_like and not like.frames:
        # the input's own grid: its affine and header verbatim (an exact round trip)
        affine, header = like.affine, like.header.copy()
        if np.dtype(like.dtype).kind == "f":
            dtype = np.dtype(like.dtype)
        file_ndim = len(header.get_data_shape())
        if file_ndim > data.ndim:  # a 2D image read from an (m1, m2, 1) file
            data = data.reshape(*data.shape, *(1,) * (file_ndim - data.ndim))
        flipped = like.flipped
    elif nifti_like is not None and np.allclose(omega, nifti_like.omega, rtol=1e-12, atol=0):
        affine = _resampled_affine(nifti_like, data.shape)
        flipped = nifti_like.flipped
    else:
        flipped = nifti_like.flipped if nifti_like is not None and not nifti_like.oblique else ()
        affine = _affine_of(omega, data.shape, flipped)
    for k in flipped:
        data = np.flip(data, axis=k)
    img = nib.Nifti1Image(np.ascontiguousarray(data), affine, header=header)
    img.header.set_data_dtype(dtype)
    img.header.set_slope_inter(1.0, 0.0)
    nib.save(img, str(tmp))


def _resampled_affine(like: Image, m) -> np.ndarray:
    """``like``'s affine for a grid of ``m`` voxels over the same box (e.g. a finer image).

    New voxel j covers old (continuous, 0-based) voxel indices −½ + [j, j + 1]·r with r = m_old/m
    along every file axis, flipped or not, so its centre is at index (j + ½)·r − ½.
    """
    r = np.asarray(like.m, dtype=np.float64) / np.asarray(m, dtype=np.float64)
    d = len(r)
    affine = np.array(like.affine, dtype=np.float64)
    c = np.zeros(4)
    c[:d] = (r - 1) / 2
    c[3] = 1.0
    origin = affine @ c
    affine[:3, :d] = affine[:3, :d] * r
    affine[:3, 3] = origin[:3]
    return affine


def _affine_of(omega, m, flipped=()) -> np.ndarray:
    """The diagonal voxel-to-world affine whose voxel centres are the cell centres of omega."""
    dom = Domain(omega, tuple(m))
    affine = np.eye(4)
    for k, (a, b, h) in enumerate(zip(dom.lower, dom.upper, dom.h)):
        if k in flipped:
            affine[k, k], affine[k, 3] = -h, b - h / 2
        else:
            affine[k, k], affine[k, 3] = h, a + h / 2
    return affine


_WRITERS = {
    "npy": _write_npy,
    "npz": _write_npz,
    "png": _write_pil,
    "jpeg": _write_pil,
    "tiff": _write_pil,
    "nifti": _write_nifti,
}


def write_npz(
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    protect: Iterable[Any] = (),
    **arrays: Any,
) -> Path:
    """Write named arrays to an ``.npz`` (uncompressed), atomically."""
    path = Path(path)
    if format_of(path) != "npz":
        raise ValueError(f"{path}: write_npz writes .npz files")
    host = {k: np.asarray(v) for k, v in arrays.items()}
    with atomic_path(path, overwrite=overwrite, protect=protect) as tmp:
        _save_npz(tmp, host)
    return path


def _save_npz(tmp: Path, arrays: dict) -> None:
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
