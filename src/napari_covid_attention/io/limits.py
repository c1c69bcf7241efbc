"""The readers' limits on what a chest CT can plausibly be, kept in one place.

They are checked on headers, before any image data is read or memory is allocated, so a
tiny file that declares an enormous volume (a 68-byte .nii.gz claiming 2000x2000x1000
voxels) is refused in milliseconds instead of driving the process out of memory.

* Size: a chest CT has at most 2048 voxels along any axis (512x512 or 1024x1024 slices,
  up to ~2000 thin slices) and at most 2**29 voxels in all, i.e. 2 GiB as float32 (the
  widest type the core keeps; 1 GiB as int16). 512 x 512 x 2048 is exactly the cap.
* Compression: deflate (gzip) cannot expand data more than 1032:1, so a .nii.gz whose
  header declares more data than that is damaged (or crafted) and is refused unread.
* Rescale: HU = stored value x slope + intercept. CT scanners write slopes of about 0.001
  to 10 (1 nearly always) and intercepts of a few thousand at most (-1024, -8192...); a
  zero or negative slope, or values far outside these bounds, cannot give Hounsfield
  units.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

MAX_AXIS = 2048
MAX_VOXELS = 2**29
DEFLATE_MAX_RATIO = 1032

MIN_SLOPE = 1e-4
MAX_SLOPE = 100.0
MAX_ABS_INTERCEPT = 1e5


def size_problem(shape: Sequence[int]) -> str | None:
    """Why a volume of ``shape`` is beyond the limits (end of a sentence), or None."""
    if max(shape, default=0) > MAX_AXIS:
        return f"more than {MAX_AXIS} voxels along an axis (the limit for one chest CT)"
    if math.prod(int(s) for s in shape) > MAX_VOXELS:
        return (
            f"more than {MAX_VOXELS:,} voxels in all (the limit for one chest CT: "
            f"{MAX_VOXELS * 4 >> 30} GiB as float32)"
        )
    return None


def rescale_problem(slope: float, intercept: float, names=("slope", "intercept")) -> str | None:
    """Why ``slope`` and ``intercept`` cannot turn stored values into HU, or None.

    ``names`` are what the file format calls the two (RescaleSlope, scl_slope...).
    """
    slope_name, intercept_name = names
    if not (math.isfinite(slope) and math.isfinite(intercept)):
        return f"{slope_name} or {intercept_name} is not a finite number"
    if slope == 0:
        return f"{slope_name} is 0: the pixel values cannot be converted to HU"
    if slope < 0:
        return f"{slope_name} is {slope:g}: a negative slope inverts the values, which no CT does"
    if not MIN_SLOPE <= slope <= MAX_SLOPE:
        return (
            f"{slope_name} is {slope:g}, far outside what CT scanners write "
            f"({MIN_SLOPE:g} to {MAX_SLOPE:g}): the values cannot be converted to HU"
        )
    if abs(intercept) > MAX_ABS_INTERCEPT:
        return (
            f"{intercept_name} is {intercept:g}, far outside what CT scanners write "
            f"(within ±{MAX_ABS_INTERCEPT:g}): the values cannot be converted to HU"
        )
    return None


def shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


def bytes_text(n: float) -> str:
    """A byte count for a sentence: 68 bytes, 3.1 KB, 150 MB, 7.5 GB."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"
