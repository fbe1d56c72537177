"""Files: images with their geometry (:mod:`multireg.io.images`: the formats, :class:`Image`,
``read_image``, ``read_frames``, ``write_image``, ``write_npz``) and outputs written atomically
(:mod:`multireg.io.outputs`: ``write_json``, :func:`atomic_path`, :class:`OutputSet`, the
temporaries). Everything public is re-exported here, so ``multireg.io.read_image`` and
``multireg.io.OutputSet`` are the names to use.

Errors name the file: :class:`FileNotFoundError` (missing), :class:`ImageReadError` (a
``ValueError``: unreadable or corrupt, unsupported extension, NaN/Inf, empty or constant data,
oblique orientation), :class:`FileExistsError` (an existing output), :class:`ImportError` (an
optional package that the format needs is not installed).
"""

from __future__ import annotations

# Besides __all__, the package uses atomic_path, check_output, extension_of, import_nibabel,
# to_jsonable and TEMP_PREFIX by these names; _WRITERS (the format -> writer table, the same dict
# as images._WRITERS) is what tests patch to interrupt a write.
from multireg.io.images import (  # noqa: F401
    _WRITERS,
    FORMATS,
    Image,
    ImageReadError,
    extension_of,
    format_of,
    import_nibabel,
    read_frames,
    read_image,
    write_image,
    write_npz,
)
from multireg.io.outputs import (  # noqa: F401
    TEMP_PREFIX,
    OutputSet,
    atomic_path,
    check_output,
    remove_stale_temporaries,
    to_jsonable,
    write_json,
)

__all__ = [
    "FORMATS",
    "Image",
    "ImageReadError",
    "OutputSet",
    "format_of",
    "read_frames",
    "read_image",
    "remove_stale_temporaries",
    "write_image",
    "write_json",
    "write_npz",
]
