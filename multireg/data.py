"""Built-in synthetic images and a loader for FAIR's example images (not shipped).

The synthetic images are made here, from a seed, so that demos, tests and benchmarks need no
downloads. FAIR's images are read from a folder the user names (``MULTIREG_FAIR_DATA``); they are
never part of this package (FAIR is LGPL-3.0; the images carry third-party provenance).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from multireg.grid import Domain

__all__ = ["FAIR_EXAMPLES", "blobs", "fair_data_dir", "load_fair"]


def blobs(
    m: tuple[int, ...],
    omega: tuple[float, ...] | None = None,
    *,
    n_blobs: int = 7,
    seed: int = 0,
) -> tuple[np.ndarray, Domain]:
    """A smooth, asymmetric test image: a sum of anisotropic Gaussian blobs, values in [0, 1].

    Returns ``(data, domain)``; ``data`` has shape ``m`` (float64) and ``omega`` defaults to the
    unit box. The blobs lie well inside the domain, so the image is close to 0 at the boundary and
    moving it by a few cells loses no content.
    """
    m = tuple(int(v) for v in m)
    omega = tuple(float(v) for v in (omega if omega is not None else (0.0, 1.0) * len(m)))
    domain = Domain(omega, m)
    rng = np.random.default_rng(seed)
    x = domain.cell_centers()
    a, ext = np.array(domain.lower), np.array(domain.extent)
    u = (x - a) / ext  # unit coordinates
    img = np.zeros(len(u))
    for _ in range(n_blobs):
        c = rng.uniform(0.3, 0.7, size=len(m))
        s = rng.uniform(0.05, 0.14, size=len(m))
        img += rng.uniform(0.4, 1.0) * np.exp(-0.5 * np.sum(((u - c) / s) ** 2, axis=1))
    img /= img.max()
    return img.reshape(m), domain


# name -> (template file, reference file, omega, m); see shared/data/fair/README.md
FAIR_EXAMPLES = {
    "hands": ("hands-T.jpg", "hands-R.jpg", (0.0, 20.0, 0.0, 25.0), (128, 128)),
    "disc": ("disc.jpg", "c.jpg", (0.0, 1.0, 0.0, 1.0), (128, 128)),
    "gauss": ("Gauss-T.jpg", "Gauss-R.jpg", (0.0, 1.0, 0.0, 1.0), (256, 256)),
}


def fair_data_dir() -> Path | None:
    """The folder holding FAIR's example images, from ``MULTIREG_FAIR_DATA``, or None."""
    env = os.environ.get("MULTIREG_FAIR_DATA")
    if env:
        path = Path(env)
        return path if path.is_dir() else None
    return None


def load_fair(name: str, directory: str | os.PathLike | None = None):
    """Read one of FAIR's example pairs as ``(T, R, domain)`` in FAIR's orientation.

    FAIR reads an image as ``double(flipud(imread(file))')``: rows flipped, then transposed, so
    that array index (i1, i2) runs along (x1, x2) with x2 pointing up. Needs Pillow.
    """
    if name not in FAIR_EXAMPLES:
        raise ValueError(f"name must be one of {sorted(FAIR_EXAMPLES)}, got {name!r}")
    folder = Path(directory) if directory is not None else fair_data_dir()
    if folder is None:
        raise FileNotFoundError(
            "FAIR's example images are not bundled; set MULTIREG_FAIR_DATA to their folder"
        )
    from PIL import Image

    t_file, r_file, omega, m = FAIR_EXAMPLES[name]

    def read(file: str) -> np.ndarray:
        with Image.open(folder / file) as im:
            return np.asarray(im.convert("L"), dtype=np.float64)[::-1, :].T.copy()

    T, R = read(t_file), read(r_file)
    return T, R, Domain(omega, m)
